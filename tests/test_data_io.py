"""The one reader (`atrous.data.io`): the same file gives the same tensor through every entry point (data
set, `atrous eval`'s data, `atrous.predict`), the documented 16-bit rule on the real stardist image,
EXIF orientation for images (never for masks), and the spec grammar."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import atrous
import atrous.api
from _realdata import stardist_files
from atrous.api import ModelMeta
from atrous.data import IMAGE_SUFFIXES, build_dataset, eval_transform, parse_spec
from atrous.data.io import find_images, read_image, read_mask
from atrous.errors import AtrousError

DEEP = np.array([[0, 1000, 40000, 65535], [7, 300, 12345, 2]], dtype=np.uint16)  # 16-bit, max > 255


class _Capture(nn.Module):
    """Records the input `atrous.predict` feeds it; predicts class 0 everywhere."""

    def __init__(self):
        super().__init__()
        self.seen = None
        self.meta = ModelMeta(
            name="capture", options={}, num_classes=2, classes=["a", "b"], palette=[(0, 0, 0), (9, 9, 9)],
            mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
        )  # fmt: skip

    def forward(self, x):
        self.seen = x.clone()
        return torch.zeros(x.shape[0], 2, *x.shape[2:])


def _predict_input(path, **kwargs) -> np.ndarray:
    """The uint8 (H, W, 3) pixels `atrous.predict` gives the model (mean 0, std 1: x = pixel / 255)."""
    model = _Capture()
    atrous.predict(model, path, **kwargs)
    return np.round(model.seen[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def _folder(root, image_name, image: Image.Image, mask: np.ndarray):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    image.save(root / "images" / image_name)
    Image.fromarray(mask.astype(np.uint8), mode="L").save(root / "masks" / f"{image_name.split('.')[0]}.png")
    return root


@pytest.mark.parametrize("intensity", ["auto", "full", "minmax", "percentile"])
def test_16bit_png_and_tiff_give_the_same_tensor_through_every_entry_point(tmp_path, intensity):
    g = DEEP.astype(np.float64)
    lo, hi = np.percentile(g, (1, 99.8))
    # Each rule computed here independently of atrous.data.io.
    expected = {
        "auto": g * 255 / g.max(),
        "full": g / 257,
        "minmax": (g - g.min()) * 255 / (g.max() - g.min()),
        "percentile": (g - lo) * 255 / (hi - lo),
    }[intensity]
    expected = np.clip(np.round(expected), 0, 255).astype(np.uint8)
    expected = np.stack([expected] * 3, axis=2)
    mask = np.array([[0, 1, 1, 0], [1, 0, 0, 1]])
    results = []
    for name in ("deep.png", "deep.tif"):
        root = _folder(tmp_path / name.replace(".", "_"), name, Image.fromarray(DEEP), mask)
        path = root / "images" / name
        with Image.open(path) as im:
            assert im.mode.startswith("I;16")  # really stored as 16-bit
        spec = f"folder:{root}?intensity={intensity}"
        ds = build_dataset(spec, num_classes=2)
        from_dataset = ds[0][0].permute(1, 2, 0).numpy()
        # atrous eval reads its data through build_dataset with eval_transform: undo the normalisation.
        ev = build_dataset(spec, num_classes=2, transform=eval_transform(mean=(0, 0, 0), std=(1, 1, 1)))
        from_eval = np.round(ev[0][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        from_api = _predict_input(path, intensity=intensity)
        for got in (from_dataset, from_eval, from_api, read_image(path, intensity=intensity)):
            assert np.array_equal(got, expected)
        results.append(from_dataset)
    assert np.array_equal(*results)


def test_predict_and_eval_feed_the_model_the_same_floats(tmp_path):
    # One normalisation (data.transforms.normalize): atrous.predict's input equals eval's to the last bit
    # with real mean/std (two hand-written formulas differed by up to 7e-7 before).
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    root = _folder(tmp_path / "d", "a.png", Image.fromarray(image), np.zeros((9, 11)))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ev = build_dataset(f"folder:{root}", num_classes=2, transform=eval_transform(mean=mean, std=std))
    model = _Capture()
    model.meta = dataclasses.replace(model.meta, mean=mean, std=std)
    atrous.predict(model, root / "images" / "a.png")
    assert torch.equal(model.seen[0], ev[0][0])
    by_hand = (
        torch.from_numpy(image).permute(2, 0, 1).double() / 255 - torch.tensor(mean).view(3, 1, 1).double()
    )
    by_hand = by_hand / torch.tensor(std).view(3, 1, 1).double()
    assert torch.allclose(model.seen[0].double(), by_hand, atol=1e-6)


def test_16bit_rule_on_stardist_img2d_tif():
    image_path, _ = stardist_files()
    with Image.open(image_path) as im:
        raw = np.asarray(im)
    assert raw.dtype == np.uint16 and raw.min() == 0 and raw.max() == 235  # what the rule is chosen for
    got = read_image(image_path)
    # auto: values that fit in 8 bits are kept unchanged (today's /257 rule read this image all but black).
    assert np.array_equal(got, np.stack([raw.astype(np.uint8)] * 3, axis=2))
    assert np.array_equal(_predict_input(image_path), got)
    full = read_image(image_path, intensity="full")
    assert full.max() == 1 and np.array_equal(full[..., 0], np.round(raw / 257).astype(np.uint8))
    minmax = read_image(image_path, intensity="minmax")[..., 0]
    assert minmax.max() == 255 and np.array_equal(minmax, np.round(raw * (255 / 235)).astype(np.uint8))
    lo, hi = np.percentile(raw.astype(np.float64), (1, 99.8))
    pct = np.clip(np.round((raw - lo) * 255 / (hi - lo)), 0, 255).astype(np.uint8)
    assert np.array_equal(read_image(image_path, intensity="percentile")[..., 0], pct)
    with pytest.raises(
        AtrousError, match="intensity='bogus' is not a 16-bit intensity rule: use one of auto"
    ):
        build_dataset("folder:/tmp?intensity=bogus")


def test_exif_orientation_is_applied_to_images_and_never_to_masks(tmp_path):
    # Stored 6 wide x 4 high with orientation 6 ("rotate 90 degrees clockwise to show"): shown 4 wide x 6 high.
    stored = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    shown = np.rot90(stored, k=-1)  # clockwise, computed without PIL
    mask = np.random.default_rng(1).integers(0, 2, (6, 4))  # drawn on the image as shown
    exif = Image.Exif()
    exif[0x0112] = 6
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(stored).save(root / "images" / "phone.png", exif=exif)
    mask_exif = Image.Exif()
    mask_exif[0x0112] = 6  # a mask carrying the tag too: masks are data, never turned
    Image.fromarray(mask.astype(np.uint8), mode="L").save(root / "masks" / "phone.png", exif=mask_exif)
    ds = build_dataset(f"folder:{root}", num_classes=2)
    image, got_mask = ds[0]
    assert np.array_equal(image.permute(1, 2, 0).numpy(), shown)
    assert np.array_equal(got_mask.numpy(), mask)
    assert np.array_equal(read_mask(root / "masks" / "phone.png"), mask)
    assert np.array_equal(_predict_input(root / "images" / "phone.png"), shown)
    # A mask drawn on the stored (unrotated) pixels does not match the image as shown: named, one line.
    Image.fromarray(np.zeros((4, 6), np.uint8), mode="L").save(root / "masks" / "phone.png")
    with pytest.raises(AtrousError, match=r"is 6x4 but .* is 4x6 \(as shown, EXIF orientation applied\)"):
        build_dataset(f"folder:{root}", num_classes=2)


@pytest.mark.parametrize("suffix", [".tif", ".bmp", ".webp", ".png", ".jpg"])
def test_every_image_suffix_trains_as_it_predicts(tmp_path, suffix):
    rgb = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    kwargs = {"lossless": True} if suffix == ".webp" else {}
    root = _folder(tmp_path / "d", f"x{suffix}", Image.fromarray(rgb), np.ones((5, 7)))
    if kwargs:
        Image.fromarray(rgb).save(root / "images" / f"x{suffix}", **kwargs)
    ds = build_dataset(f"folder:{root}", num_classes=2)
    got = ds[0][0].permute(1, 2, 0).numpy()
    with Image.open(root / "images" / f"x{suffix}") as im:
        assert np.array_equal(got, np.asarray(im.convert("RGB")))  # PIL's decode, as predict's
    if suffix != ".jpg":
        assert np.array_equal(got, rgb)  # lossless formats: the pixels written
    assert np.array_equal(_predict_input(root / "images" / f"x{suffix}"), got)
    assert [p for p, _ in find_images([root / "images"], tmp_path / "out")] == [
        root / "images" / f"x{suffix}"
    ]
    assert suffix in IMAGE_SUFFIXES and atrous.api.IMAGE_SUFFIXES is IMAGE_SUFFIXES


def test_spec_grammar_for_every_kind_and_paths_with_question_marks(tmp_path):
    assert parse_spec("folder:data?map=0:0,255:1&reduce_zero_label=1") == (
        "folder",
        "data",
        {"map": "0:0,255:1", "reduce_zero_label": 1},
    )
    assert parse_spec("mmseg:/d?img_suffix=_leftImg8bit.png") == (
        "mmseg",
        "/d",
        {"img_suffix": "_leftImg8bit.png"},
    )
    # A `?` without key=value after it is part of the path; a trailing `?` ends a path holding `?...=`.
    assert parse_spec("folder:odd?name") == ("folder", "odd?name", {})
    assert parse_spec("folder:a?b=c?") == ("folder", "a?b=c", {})
    assert parse_spec("folder:a?b=c?ignore=11") == ("folder", "a?b=c", {"ignore": "11"})
    weird = tmp_path / "we?ird=1"
    _folder(weird, "p.png", Image.fromarray(np.zeros((2, 2, 3), np.uint8)), np.full((2, 2), 255))
    assert len(build_dataset(f"folder:{weird}?", num_classes=1)) == 1
    assert len(build_dataset(f"folder:{weird}", num_classes=1)) == 1  # an existing folder is the path
    assert build_dataset(f"folder:{weird}?map=255:1", num_classes=2)[0][1].tolist() == [[1, 1], [1, 1]]
    with pytest.raises(AtrousError, match="option 'x' must be key=value"):
        parse_spec("folder:d?map=0:1&x")
    with pytest.raises(
        AtrousError, match="has no option 'bogus': valid options are mask_suffix, palette, map"
    ):
        build_dataset(f"folder:{weird}?bogus=1")
    with pytest.raises(AtrousError, match="option 'map' is given twice"):
        parse_spec("folder:d?map=0:1&map=1:0")


def test_warnings_about_skipped_files_do_not_advise_skipping(tmp_path):
    import warnings

    from atrous.api import predict_files

    root = _folder(
        tmp_path / "d", "good.png", Image.fromarray(np.zeros((3, 3, 3), np.uint8)), np.zeros((3, 3))
    )
    (root / "images" / "bad.png").write_bytes(b"")
    Image.fromarray(np.zeros((3, 3), np.uint8), mode="L").save(root / "masks" / "bad.png")
    with pytest.raises(AtrousError, match=r"bad.png: the file is empty .*--skip-bad"):
        build_dataset(f"folder:{root}", num_classes=1)  # stopping: the message says how to go on
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = build_dataset(f"folder:{root}", num_classes=1, skip_bad=True)
    assert len(ds) == 1 and any("bad.png: the file is empty" in str(w.message) for w in caught)
    assert not any("skip-bad" in str(w.message) or "skip_bad" in str(w.message) for w in caught)
    results = list(predict_files(_Capture(), [root / "images"], tmp_path / "out", skip_bad=True))
    (bad,) = [r for r in results if r.status == "bad"]
    assert "the file is empty" in bad.detail and "skip-bad" not in bad.detail and "skip bad" not in bad.detail


def test_image_modes_are_read_as_rgb(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (3, 4, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgba[:, :, :3])  # alpha dropped
    grey = np.random.default_rng(1).integers(0, 256, (3, 4), dtype=np.uint8)
    Image.fromarray(grey, mode="L").convert("P").save(tmp_path / "pal.png")
    assert np.array_equal(read_image(tmp_path / "pal.png"), np.stack([grey] * 3, axis=2))
    deep = np.array([[0, 257, 65535], [128, 32768, 1000]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    expected = np.round(deep / 257.0).astype(np.uint8)  # auto: max 65535 > 255, so value * 255 / 65535
    assert np.array_equal(read_image(tmp_path / "deep.png"), np.stack([expected] * 3, axis=2))


def test_predict_reads_16bit_images_by_the_rule_the_model_was_trained_with(tmp_path):
    from dataclasses import replace

    from atrous.api import meta_from_checkpoint

    ck = {
        "model": {"name": "m", "num_classes": 2},
        "normalize": {"mean": [0, 0, 0], "std": [1, 1, 1]},
        "config": {"data": {"train": "folder:cells?intensity=percentile&map=0:0,255:1"}},
    }
    assert meta_from_checkpoint(ck).intensity == "percentile"
    assert meta_from_checkpoint({**ck, "config": {}}).intensity == "auto"  # older checkpoints
    outlier = (np.arange(400, dtype=np.uint16) * 10).reshape(20, 20)
    outlier[0, 0] = 65535  # one hot pixel: auto scales by it, percentile clips it
    Image.fromarray(outlier).save(tmp_path / "deep.tif")
    model = _Capture()
    model.meta = replace(model.meta, intensity="percentile")
    atrous.predict(model, tmp_path / "deep.tif")  # no intensity given: the model's
    seen = np.round(model.seen[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert np.array_equal(seen, read_image(tmp_path / "deep.tif", intensity="percentile"))
    assert not np.array_equal(seen, read_image(tmp_path / "deep.tif"))  # the rules differ on this file
    atrous.predict(model, tmp_path / "deep.tif", intensity="full")  # an explicit rule wins
    assert model.seen.max() * 255 <= 255.5 and np.array_equal(
        np.round(model.seen[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8),
        read_image(tmp_path / "deep.tif", intensity="full"),
    )
