"""`atrous.predict` and its image handling: results against a hand-computed linear model, every input
form, unreadable files (one-line AtrousError naming the file) and a hypothesis fuzz of hostile input."""

import io
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from atrous.api import ModelMeta, label_image, meta_from_checkpoint, overlay_image, predict, read_image
from atrous.errors import AtrousError
from atrous.inference import MultiScaleFlip

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PALETTE = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]


def linear_model() -> nn.Module:
    """A 1x1 convolution with known weights: logits = W @ normalised pixel + b, pixel by pixel."""
    model = nn.Conv2d(3, 4, 1).eval()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1]]).view(4, 3, 1, 1))
        model.bias.copy_(torch.tensor([0.0, 0.1, -0.1, 0.2]))
    model.meta = ModelMeta(
        name="linear",
        options={},
        num_classes=4,
        classes=["a", "b", "c", "d"],
        palette=PALETTE,
        mean=MEAN,
        std=STD,
    )
    return model


def expected_by_hand(rgb: np.ndarray):
    x = (rgb.astype(np.float64) / 255.0 - np.array(MEAN)) / np.array(STD)  # (H, W, 3)
    w = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1]])
    logits = x @ w.T + np.array([0.0, 0.1, -0.1, 0.2])  # (H, W, 4)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return logits.argmax(-1), probs.transpose(2, 0, 1)


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (13, 21, 3), dtype=np.uint8)


def test_predict_matches_hand_computation_for_every_input_form(rgb, tmp_path):
    model = linear_model()
    labels_ref, probs_ref = expected_by_hand(rgb)
    path = tmp_path / "ünï code.png"
    Image.fromarray(rgb).save(path)
    for image in (rgb, Image.fromarray(rgb), path, str(path)):
        labels = predict(model, image)
        assert labels.dtype == np.int64 and labels.shape == (13, 21)
        np.testing.assert_array_equal(labels, labels_ref)
    labels, probs = predict(model, rgb, probabilities=True)
    np.testing.assert_array_equal(labels, labels_ref)
    assert probs.dtype == np.float32 and probs.shape == (4, 13, 21)
    np.testing.assert_allclose(probs, probs_ref, atol=1e-5)
    assert len(np.unique(labels_ref)) > 1  # the image exercises several classes


def test_predict_uses_eval_mode_and_restores_the_mode(rgb):
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    with torch.no_grad():
        model[1].running_mean.copy_(torch.tensor([100.0, 0, 0, 0]))  # in eval mode class 0 never wins
    model.meta = linear_model().meta
    model.train()
    labels = predict(model, rgb)
    assert model.training  # the caller's mode is restored
    assert (labels != 0).all()
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        assert (model(x).argmax(1) == 0).any()  # train mode (batch statistics) would have predicted class 0


def test_predict_converts_grey_and_rgba_images(rgb):
    model = linear_model()
    grey = Image.fromarray(rgb[..., 0])  # mode "L": each channel equals the grey value
    np.testing.assert_array_equal(predict(model, grey), expected_by_hand(np.repeat(rgb[..., :1], 3, -1))[0])
    rgba = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]))
    np.testing.assert_array_equal(predict(model, rgba), expected_by_hand(rgb)[0])


def test_predict_with_a_strategy(rgb):
    # a pixel-wise model is flip-equivariant and scale-consistent at scale 1: TTA must not change labels
    model = linear_model()
    labels = predict(model, rgb, infer=MultiScaleFlip(scales=(1.0,), flip=True))
    np.testing.assert_array_equal(labels, expected_by_hand(rgb)[0])


def test_predict_argument_errors(rgb):
    model = linear_model()
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\)"):
        predict(model, rgb.astype(np.float32))
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\)"):
        predict(model, rgb[..., 0])
    with pytest.raises(ValueError, match="PIL image"):
        predict(model, [1, 2, 3])
    with pytest.raises(ValueError, match=r"atrous\.load"):
        predict(nn.Conv2d(3, 4, 1), rgb)


def _png_bytes(rgb: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"this is a text file, not an image\n", "not an image"),
        ("truncated-png", "truncated"),
        ("truncated-jpeg", "truncated"),
    ],
)
def test_unreadable_files_give_one_line_naming_the_file(tmp_path, rgb, content, message):
    if content == "truncated-png":
        content = _png_bytes(rgb)[:-40]
    elif content == "truncated-jpeg":
        content = _png_bytes(np.tile(rgb, (8, 8, 1)), "JPEG")[:300]
    path = tmp_path / "bad file.png"
    path.write_bytes(content)
    with pytest.raises(AtrousError, match=message) as info:
        read_image(path)
    text = str(info.value)
    assert str(path) in text and "\n" not in text and ("replace" in text or "downscale" in text)
    with pytest.raises(AtrousError):
        predict(linear_model(), path)
    with pytest.raises(AtrousError, match="no such image"):
        read_image(tmp_path / "missing.png")


def test_label_and_overlay_images(rgb):
    labels = np.random.default_rng(1).integers(0, 4, rgb.shape[:2])
    mask = label_image(labels, PALETTE)
    assert mask.mode == "P"
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    reread = Image.open(io.BytesIO(buf.getvalue()))
    np.testing.assert_array_equal(np.asarray(reread), labels)  # pixel values are the class indices
    np.testing.assert_array_equal(np.asarray(reread.convert("RGB")), np.asarray(PALETTE, np.uint8)[labels])
    overlay = np.asarray(overlay_image(rgb, labels, PALETTE, alpha=0.25)).astype(int)
    expected = np.floor(0.75 * rgb + 0.25 * np.asarray(PALETTE)[labels] + 0.5)
    np.testing.assert_array_equal(overlay, expected)
    big = label_image(np.array([[0, 300]]), [(0, 0, 0)] * 301)  # more classes than 8 bits hold
    np.testing.assert_array_equal(np.asarray(big), [[0, 300]])


def test_missing_palette_entries_get_pascal_voc_colours():
    ck = {"model": {"name": "m", "num_classes": 21, "options": {}}, "classes": [], "palette": [[1, 2, 3]]}
    meta = meta_from_checkpoint({**ck, "normalize": {"mean": MEAN, "std": STD}})
    # the checkpoint's colour, then VOC's for the rest: aeroplane, bicycle, bird, boat, ..., person (15)
    assert meta.palette[:5] == [(1, 2, 3), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128)]
    assert meta.palette[15] == (192, 128, 128) and len(meta.palette) == 21
    assert meta.classes == [f"class_{i}" for i in range(21)]


# ----------------------------------------------------------------------------------------------------------
# fuzz: hostile files and arrays. A file either predicts correctly-shaped labels or raises a one-line
# AtrousError naming it; an array either works or raises ValueError; nothing else escapes.
# ----------------------------------------------------------------------------------------------------------
def _valid_image_bytes(draw) -> tuple[bytes, tuple[int, int]]:
    h = draw(st.integers(1, 12))
    w = draw(st.integers(1, 12))
    mode = draw(st.sampled_from(["RGB", "L", "P", "RGBA", "I;16", "1"]))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "TIFF"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image = Image.fromarray(arr).convert(mode if mode != "I;16" else "I")
    if mode == "I;16":
        image = Image.fromarray((rng.integers(0, 65536, (h, w))).astype(np.uint16))
    buf = io.BytesIO()
    try:
        image.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):  # a mode this format cannot store: fall back to PNG
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue(), (h, w)


@st.composite
def hostile_files(draw):
    data, size = _valid_image_bytes(draw)
    how = draw(st.sampled_from(["intact", "truncate", "flip-bytes", "random", "empty", "header-only"]))
    if how == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif how == "flip-bytes":
        data = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        data = bytes(data)
    elif how == "random":
        data = draw(st.binary(max_size=200))
    elif how == "empty":
        data = b""
    elif how == "header-only":
        data = data[:16]
    name = draw(st.text(st.characters(categories=["L", "N", "Zs"]), min_size=1, max_size=12)).strip()
    return (name or "x") + draw(st.sampled_from([".png", ".jpg", ".bin", ""])), data, how, size


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # corrupt TIFF tags warn before they fail
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hostile_files())
def test_fuzz_predict_files(tmp_path, case):
    name, data, how, size = case
    path = tmp_path / name
    path.write_bytes(data)
    model = linear_model()
    try:
        labels = predict(model, path)
    except AtrousError as e:
        event(f"{how}: refused")
        text = str(e)
        assert str(path) in text and "\n" not in text
        assert how != "intact", text  # an intact image must be read
    else:
        event(f"{how}: predicted")
        assert labels.dtype == np.int64 and labels.ndim == 2 and min(labels.shape) >= 1
        assert labels.min() >= 0 and labels.max() < 4
        if how == "intact":
            assert labels.shape == size
    finally:
        os.remove(path)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([np.uint8, np.int64, np.float32, np.bool_]),
    st.lists(st.integers(0, 5), min_size=1, max_size=4),
)
def test_fuzz_predict_arrays(dtype, shape):
    array = np.zeros(shape, dtype=dtype)
    model = linear_model()
    ok = dtype == np.uint8 and len(shape) == 3 and shape[2] == 3 and min(shape) >= 1
    if ok:
        assert predict(model, array).shape == tuple(shape[:2])
    else:
        with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\)"):
            predict(model, array)


# ----------------------------------------------------------------------------------------------------------
# atrous.load
# ----------------------------------------------------------------------------------------------------------
def test_load_rebuilds_model_and_meta(tmp_path):
    from _inference_helpers import CLASSES, MEAN, PALETTE, STD, write_checkpoint
    from atrous import load, models
    from atrous.checkpoint import load_checkpoint

    path = write_checkpoint(tmp_path / "ck.pt", name="dilated_net", channels=8, rates=(1, 2))
    model = load(path)
    assert not model.training
    meta = model.meta
    assert (meta.name, meta.options, meta.num_classes) == ("dilated_net", {"channels": 8, "rates": [1, 2]}, 3)
    assert meta.classes == CLASSES and meta.palette == [tuple(c) for c in PALETTE]
    assert meta.mean == pytest.approx(MEAN) and meta.std == pytest.approx(STD)
    # the weights are the checkpoint's: same logits as a model built by hand from the stored state_dict
    ck = load_checkpoint(path)
    reference = models.build("dilated_net", 3, channels=8, rates=(1, 2)).eval()
    reference.load_state_dict(ck["state_dict"])
    x = torch.randn(1, 3, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_load_refuses_a_checkpoint_that_does_not_fit_its_model(tmp_path):
    from _inference_helpers import write_checkpoint
    from atrous import load
    from atrous.checkpoint import load_checkpoint, save_checkpoint

    path = write_checkpoint(tmp_path / "ck.pt", name="dilated_net", channels=8, rates=(1, 2))
    ck = load_checkpoint(path)
    ck["model"]["options"]["channels"] = 16  # claims another model than its weights
    save_checkpoint(tmp_path / "other.pt", {k: v for k, v in ck.items() if k not in ("format", "version")})
    with pytest.raises(AtrousError, match=r"other\.pt") as info:
        load(tmp_path / "other.pt")
    assert "\n" not in str(info.value)
    ck["model"]["options"] = {"channels": 8, "rates": [1, 2], "bogus": 1}  # an option the model lacks
    save_checkpoint(tmp_path / "option.pt", {k: v for k, v in ck.items() if k not in ("format", "version")})
    with pytest.raises(AtrousError, match=r"option\.pt.*bogus"):
        load(tmp_path / "option.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(AtrousError, match=r"junk\.pt"):
        load(tmp_path / "junk.pt")
