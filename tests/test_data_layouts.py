"""Layouts users arrive with (mmsegmentation, ADE20K, CamVid, CVAT colour exports, 0/255 and 1-based
masks) on small trees the tests write, label options usable with every spec, predictions written back in
the data's own convention, and the real stardist nuclei image written in each layout and read back."""

import json

import numpy as np
import pytest
from PIL import Image

import atrous
from _realdata import read_stardist
from atrous.api import ModelMeta, predict_files
from atrous.data import LabelConvention, available_splits, build_dataset, encode_prediction
from atrous.data.ade20k import CLASSES as ADE_CLASSES
from atrous.data.cityscapes import CONVENTION as CITYSCAPES
from atrous.data.cityscapes import LABEL_TO_TRAIN
from atrous.errors import AtrousError


def _rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def _items(ds):
    return [(ds[i][0].permute(1, 2, 0).numpy(), ds[i][1].numpy()) for i in range(len(ds))]


def test_mmseg_layout_with_its_options(tmp_path):
    masks = {}
    for split, n in (("train", 2), ("val", 1)):
        for i in range(n):
            mask = np.random.default_rng(i).integers(0, 4, (5, 6)).astype(np.uint8)
            _save(tmp_path / "img_dir" / split / f"f{i}.jpg", _rgb(5, 6, i))
            _save(tmp_path / "ann_dir" / split / f"f{i}.png", mask, "L")
            masks[(split, i)] = mask
    assert available_splits(f"mmseg:{tmp_path}") == ["train", "val"]
    ds = build_dataset(f"mmseg:{tmp_path}", "train")
    assert len(ds) == 2 and ds.num_classes == max(int(m.max()) for m in masks.values()) + 1
    assert np.array_equal(ds[1][1].numpy(), masks[("train", 1)])
    # Cityscapes-style names through the options: images/x_leftImg8bit.png, labels/x_labelTrainIds.png.
    root = tmp_path / "cs"
    _save(root / "images" / "val" / "x_leftImg8bit.png", _rgb(3, 4, 0))
    _save(root / "labels" / "val" / "x_labelTrainIds.png", np.full((3, 4), 2, np.uint8), "L")
    spec = (
        f"mmseg:{root}?img_dir=images&ann_dir=labels&img_suffix=_leftImg8bit.png"
        "&seg_map_suffix=_labelTrainIds.png"
    )
    ds = build_dataset(spec, "val", num_classes=3)
    assert ds.pairs[0][0].name == "x_leftImg8bit.png" and ds[0][1].tolist() == [[2] * 4] * 3
    with pytest.raises(AtrousError, match=r"mmseg:.* has no split 'test': choose one of train, val"):
        build_dataset(f"mmseg:{tmp_path}", "test")


def test_ade20k_layout_reduces_zero_label_and_answers_to_train_val(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    stored = np.array([[0, 1, 150], [2, 0, 75]], dtype=np.uint8)
    for split in ("training", "validation"):
        _save(root / "images" / split / "ADE_x.jpg", _rgb(2, 3, 0))
        _save(root / "annotations" / split / "ADE_x.png", stored, "L")
    assert len(ADE_CLASSES) == 150 and ADE_CLASSES[0] == "wall" and ADE_CLASSES[149] == "flag"
    assert available_splits(f"ade20k:{tmp_path}") == ["training", "validation"]
    for split in ("val", "validation"):
        ds = build_dataset(f"ade20k:{tmp_path}", split)
        assert ds.num_classes == 150 and ds.classes[12] == "person"
        assert ds[0][1].tolist() == [[255, 0, 149], [1, 255, 74]]  # 0 -> ignore, k -> k-1
    ds = build_dataset(f"ade20k:{root}?reduce_zero_label=0", "train")
    assert ds.num_classes == 151 and ds.classes[0] == "other" and ds[0][1].tolist() == stored.tolist()
    with pytest.raises(AtrousError, match="has no split 'test'"):
        build_dataset(f"ade20k:{root}", "test")


def test_camvid_layout_ignores_void(tmp_path):
    stored = np.array([[0, 11, 10], [3, 11, 1]], dtype=np.uint8)
    for split in ("train", "val", "test"):
        _save(tmp_path / split / "0001TP_006690.png", _rgb(2, 3, 1))
        _save(tmp_path / f"{split}annot" / "0001TP_006690.png", stored, "L")
    assert available_splits(f"camvid:{tmp_path}") == ["test", "train", "val"]
    ds = build_dataset(f"camvid:{tmp_path}", "val")
    assert ds.num_classes == 11 and ds.classes[0] == "Sky" and ds.classes[10] == "Bicyclist"
    assert ds[0][1].tolist() == [[0, 255, 10], [3, 255, 1]]
    assert encode_prediction(np.array([[0, 10]]), ds.label_convention).tolist() == [[0, 10]]


@pytest.mark.parametrize(
    ("options", "stored", "expected", "classes"),
    [
        ("map=0:0,255:1", [[0, 255], [255, 0]], [[0, 1], [1, 0]], 2),  # 0/255 binary masks
        ("map=255:1", [[0, 255], [255, 0]], [[0, 1], [1, 0]], 2),  # unlisted values are kept
        ("reduce_zero_label=1", [[1, 2], [3, 0]], [[0, 1], [2, 255]], 3),  # Pet trimaps (1..3) and 0 = other
        ("ignore=11", [[0, 11], [4, 2]], [[0, 255], [4, 2]], 5),  # CamVid's void
        ("ignore=0,9&map=1:0,2:1", [[0, 9], [1, 2]], [[255, 255], [0, 1]], 2),
        (
            "map=7:0,8:1&reduce_zero_label=1",
            [[7, 8], [9, 2]],
            [[255, 0], [8, 1]],
            9,
        ),  # map first, then reduce
    ],
)
def test_label_options_with_a_folder(tmp_path, options, stored, expected, classes):
    stored = np.array(stored, dtype=np.uint8)
    _save(tmp_path / "images" / "a.png", _rgb(2, 2, 0))
    _save(tmp_path / "masks" / "a.png", stored, "L")
    ds = build_dataset(f"folder:{tmp_path}?{options}")
    assert ds[0][1].tolist() == expected and ds.num_classes == classes  # the scan counts decoded labels
    # Written back: each class becomes the value the map names for it, else the smallest that decodes to it.
    labelled = np.array(expected) != 255
    back = encode_prediction(np.where(labelled, expected, 0), ds.label_convention)
    assert np.array_equal(back[labelled], stored[labelled])
    assert json.loads(json.dumps(ds.label_convention)) == ds.label_convention


def test_bad_label_options_are_one_line(tmp_path):
    _save(tmp_path / "images" / "a.png", _rgb(2, 2, 0))
    _save(tmp_path / "masks" / "a.png", np.zeros((2, 2), np.uint8), "L")
    for options, message in (
        ("map=0-1", r"map item '0-1' must be VALUE:CLASS"),
        ("map=3:256", r"map item '3:256' must be VALUE:CLASS .* CLASS 0..255"),
        ("ignore=x", r"ignore='x' must list stored values"),
        ("reduce_zero_label=2", r"reduce_zero_label=2 must be 0 or 1"),
        ("palette=nowhere.txt", r"palette file .*nowhere.txt does not exist"),
        ("map=1:0&ignore=1", r"value 1 is in both map= and ignore="),
    ):
        with pytest.raises(AtrousError, match=message) as info:
            build_dataset(f"folder:{tmp_path}?{options}")
        assert "\n" not in str(info.value)


def _cvat_export(root, colour_masks):
    """A CVAT 'Segmentation mask 1.1' export: the VOC layout, RGB masks and labelmap.txt."""
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "labelmap.txt").write_text(
        "# label:color_rgb:parts:actions\nbackground:0,0,0::\ncat:250,50,83::\ndog:131,224,112::\n"
    )
    for stem, mask in colour_masks.items():
        _save(root / "JPEGImages" / f"{stem}.jpg", _rgb(*mask.shape[:2], 3))
        _save(root / "SegmentationClass" / f"{stem}.png", mask)
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("\n".join(colour_masks) + "\n")


def test_cvat_colour_export_and_classes_json_palette(tmp_path):
    colours = np.array([(0, 0, 0), (250, 50, 83), (131, 224, 112)], np.uint8)
    index = np.array([[0, 1, 2], [2, 1, 0]])
    _cvat_export(tmp_path / "cvat", {"frame_000": colours[index]})
    ds = build_dataset(f"voc:{tmp_path / 'cvat'}?palette=labelmap.txt", "default")
    assert ds.classes == ["background", "cat", "dog"] and ds.palette[1] == (250, 50, 83)
    assert ds[0][1].tolist() == index.tolist()
    assert np.array_equal(encode_prediction(index, ds.label_convention), colours[index])  # colours back
    # A folder with RGB masks and a classes.json palette; reduce_zero_label drops the first class.
    root = tmp_path / "f"
    _save(root / "images" / "a.png", _rgb(2, 3, 0))
    _save(root / "masks" / "a.png", colours[index])
    (root / "pal.json").write_text(json.dumps({"classes": ["bg", "x", "y"], "palette": colours.tolist()}))
    ds = build_dataset(f"folder:{root}?palette=pal.json&reduce_zero_label=1")
    assert ds.classes == ["x", "y"] and ds[0][1].tolist() == [[255, 0, 1], [1, 0, 255]]
    odd = colours[index].copy()
    odd[1, 2] = (1, 2, 3)
    _save(root / "masks" / "a.png", odd)
    with pytest.raises(AtrousError, match=r"a.png: colour \(1, 2, 3\) at \(x=2, y=1\) is not in the palette"):
        build_dataset(f"folder:{root}?palette=pal.json")[0]
    # Without a palette file a colour mask is refused, and the message names the option.
    with pytest.raises(AtrousError, match=r"single-channel class indices .*palette=labelmap.txt"):
        build_dataset(f"folder:{root}", num_classes=3)


def test_encode_prediction_inverts_cityscapes_label_ids():
    train_ids = np.arange(19).reshape(1, 19)
    label_ids = encode_prediction(train_ids, CITYSCAPES)
    assert np.array_equal(LABEL_TO_TRAIN[label_ids], train_ids)  # the table read the other way
    assert label_ids[0, 0] == 7 and label_ids[0, 13] == 26
    with pytest.raises(AtrousError, match="class 5 has no stored value"):
        encode_prediction(np.array([[5]]), LabelConvention(values={5: 1}, unlisted_ignored=True))


def test_predict_writes_masks_in_the_training_datas_convention(tmp_path):
    import torch
    from torch import nn

    class Half(nn.Module):  # class 1 where the red channel is bright, else 0
        def forward(self, x):
            return torch.cat([0.5 - x[:, :1], x[:, :1] - 0.5], dim=1)

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[:2] = 255
    _save(tmp_path / "in" / "a.png", rgb)
    for convention, want in (
        (LabelConvention(values={0: 0, 255: 1}), 255),  # 0/255 binary data
        (LabelConvention(reduce_zero_label=True), 2),  # 1-based data: class k is stored as k+1
        (None, 1),  # no convention: class indices
    ):
        model = Half()
        model.meta = ModelMeta(
            name="half", options={}, num_classes=2, classes=["a", "b"], palette=[(0, 0, 0), (9, 9, 9)],
            mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
            label_convention=None if convention is None else convention.to_dict(),
        )  # fmt: skip
        out = tmp_path / f"out{want}"
        assert [r.status for r in predict_files(model, [tmp_path / "in"], out)] == ["written"]
        written = np.asarray(Image.open(out / "masks" / "a.png"))
        low = 1 if want == 2 else 0
        assert written[:2].tolist() == [[want] * 5] * 2 and written[2:].tolist() == [[low] * 5] * 2


def test_stardist_nuclei_round_trip_in_every_layout(tmp_path):
    """The real 512x512 nuclei image with its binarised mask (0 = background, 1 = nucleus), written as each
    layout stores masks, reads back as the same pixels and classes, and encodes back to the stored file."""
    image, mask = read_stardist()
    rgb = np.stack([image] * 3, axis=2)
    colours = np.array([(0, 0, 0), (255, 0, 255)], np.uint8)
    layouts = {
        # spec, split, image path, mask path, stored mask
        "folder": ("folder:{r}?map=0:0,255:1", None, "images/n.png", "masks/n.png", mask * 255),
        "mmseg": ("mmseg:{r}", "train", "img_dir/train/n.png", "ann_dir/train/n.png", mask),
        "ade20k": ("ade20k:{r}?reduce_zero_label=1", "train", "images/training/n.png",
                   "annotations/training/n.png", mask + 1),
        "camvid": ("camvid:{r}", "train", "train/n.png", "trainannot/n.png", np.where(mask == 1, 1, 0)),
        "cvat": ("voc:{r}?palette=labelmap.txt", "default", "JPEGImages/n.jpg", "SegmentationClass/n.png",
                 colours[mask]),
    }  # fmt: skip
    for kind, (spec, split, image_rel, mask_rel, stored) in layouts.items():
        root = tmp_path / kind
        if kind == "mmseg":
            spec += "?img_suffix=.png"
        if kind == "cvat":
            (root / "ImageSets" / "Segmentation").mkdir(parents=True)
            (root / "ImageSets" / "Segmentation" / "default.txt").write_text("n\n")
            (root / "labelmap.txt").write_text("background:0,0,0::\nnucleus:255,0,255::\n")
        _save(root / image_rel, rgb)  # JPEG for CVAT, as it exports: compared with PIL's decode below
        _save(root / mask_rel, stored.astype(np.uint8), None if stored.ndim == 3 else "L")
        ds = build_dataset(spec.format(r=root), split)
        ((got_image, got_mask),) = _items(ds)
        with Image.open(root / image_rel) as im:
            assert np.array_equal(got_image, np.asarray(im.convert("RGB")))
        if kind != "cvat":
            assert np.array_equal(got_image, rgb)  # lossless: the stardist pixels themselves
        assert np.array_equal(got_mask, mask), kind
        assert np.array_equal(encode_prediction(got_mask, ds.label_convention), stored), kind


def test_train_then_predict_writes_0_255_masks_like_the_training_data(tmp_path):
    """Through the CLI: a run on 0/255 binary masks read with ?map=0:0,255:1 stores the convention in its
    checkpoint, and `atrous predict` writes 0/255 masks: 255 exactly where the model predicts class 1."""
    import torch

    from atrous.cli import main

    for i in range(4):
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4 + i : 10 + i] = 255
        _save(tmp_path / "d" / "images" / f"{i}.png", _rgb(16, 16, i))
        _save(tmp_path / "d" / "masks" / f"{i}.png", mask, "L")
    spec = f"folder:{tmp_path / 'd'}?map=0:0,255:1"
    args = ["train", "--data", spec, "--model", "dilated_net", "--opt", "channels=4", "--opt", "rates=1,2"]
    args += ["--iters", "1", "--batch-size", "2", "--crop", "16", "--out", str(tmp_path / "run")]
    assert main([*args, "--set", "log.progress=false"]) == 0
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ck["label_convention"] == LabelConvention(values={0: 0, 255: 1}).to_dict()
    _save(tmp_path / "in" / "x.png", _rgb(16, 16, 9))
    out = tmp_path / "pred"
    checkpoint = tmp_path / "run" / "last.pt"
    cmd = [
        "predict",
        "--checkpoint",
        str(checkpoint),
        str(tmp_path / "in"),
        "--out",
        str(out),
        "--no-optimize",
    ]
    assert main(cmd) == 0
    written = np.asarray(Image.open(out / "masks" / "x.png"))
    labels = atrous.predict(atrous.load(checkpoint), tmp_path / "in" / "x.png")  # class indices 0/1
    assert written.dtype == np.uint8 and np.array_equal(written, np.where(labels == 1, 255, 0))
