"""Data sets on small trees the tests write themselves, the real stardist image, and the dataset spec."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from _realdata import QUADRANTS, read_stardist, write_stardist_folder
from atrous.data import available_splits, build_dataset, parse_spec
from atrous.data.cityscapes import LABEL_TO_TRAIN
from atrous.errors import AtrousError


def _rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_pair(base, stem, image, mask, image_ext=".png"):
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(base / "images" / f"{stem}{image_ext}")
    Image.fromarray(mask.astype(np.uint8), mode="L").save(base / "masks" / f"{stem}.png")


def _pil_rgb(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


@pytest.fixture
def split_tree(tmp_path):
    root = tmp_path / "data"
    masks = {}
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            h, w = 7 + i, 9 + 2 * i
            mask = np.random.default_rng(i).integers(0, 3, (h, w))
            mask[0, 0] = 255
            ext = ".jpg" if i == 1 else ".png"
            _write_pair(root / split, f"im{i}", _rgb(h, w, i), mask, ext)
            masks[(split, f"im{i}")] = mask
    return root, masks


def test_folder_split_layout_returns_exact_pixels(split_tree):
    root, masks = split_tree
    assert available_splits(f"folder:{root}") == ["train", "val"]
    ds = build_dataset(f"folder:{root}", "train", num_classes=3)
    assert len(ds) == 3 and ds.num_classes == 3 and ds.classes == ["class0", "class1", "class2"]
    assert len(ds.palette) == 3
    for i, (image_path, _) in enumerate(ds.pairs):
        image, mask = ds[i]
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
        assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64
        # Exactly what PIL decodes (JPEG too: the same decoder), channels first.
        assert np.array_equal(image.permute(1, 2, 0).numpy(), _pil_rgb(image_path))
        assert np.array_equal(mask.numpy(), masks[("train", image_path.stem)])


def test_folder_class_count_is_scanned_over_all_splits(split_tree):
    root, masks = split_tree
    largest = max(int(m[m != 255].max()) for m in masks.values())
    ds = build_dataset(f"folder:{root}", "val")
    assert ds.num_classes == largest + 1 == 3


def test_folder_classes_txt_and_json(split_tree):
    root, _ = split_tree
    (root / "classes.txt").write_text("# my classes\nsky\n\nroad\ncar\n")
    ds = build_dataset(f"folder:{root}", "train")
    assert ds.classes == ["sky", "road", "car"] and ds.palette[1] == (128, 0, 0)
    with pytest.raises(AtrousError, match="lists 3 classes but num_classes=4"):
        build_dataset(f"folder:{root}", "train", num_classes=4)
    (root / "classes.txt").unlink()
    (root / "classes.json").write_text(json.dumps({"classes": ["a", "b", "c"], "palette": [[1, 2, 3]] * 3}))
    ds = build_dataset(f"folder:{root}", "train")
    assert ds.classes == ["a", "b", "c"] and ds.palette == [(1, 2, 3)] * 3
    (root / "classes.json").write_text('["a", "b"]')  # too few: label 2 is out of range
    ds = build_dataset(f"folder:{root}", "train")
    with pytest.raises(AtrousError, match=r"label\(s\) 2 .* has 2 classes"):
        for i in range(len(ds)):
            ds[i]
    (root / "classes.json").write_text("{not json")
    with pytest.raises(AtrousError, match=r"classes.json: not valid JSON"):
        build_dataset(f"folder:{root}", "train")


def test_folder_without_splits(tmp_path):
    mask = np.array([[0, 1], [1, 255]])
    _write_pair(tmp_path, "a b ü", _rgb(2, 2, 0), mask)
    assert available_splits(f"folder:{tmp_path}") == []
    ds = build_dataset(f"folder:{tmp_path}")
    assert ds.num_classes == 2
    assert np.array_equal(ds[0][1].numpy(), mask)
    with pytest.raises(AtrousError, match="has no split folders"):
        build_dataset(f"folder:{tmp_path}", "train")


def test_folder_split_errors(split_tree):
    root, _ = split_tree
    with pytest.raises(AtrousError, match="has splits train, val: choose one"):
        build_dataset(f"folder:{root}")
    with pytest.raises(AtrousError, match="has no split 'test': choose one of train, val"):
        build_dataset(f"folder:{root}", "test")
    with pytest.raises(AtrousError, match=r"has neither images/ nor <split>/images/"):
        build_dataset(f"folder:{root / 'train' / 'masks'}")


def _voc_tree(root, ids, sizes):
    from atrous.data.voc import PALETTE

    flat = [v for c in PALETTE for v in c] + [224, 224, 192] * (256 - len(PALETTE))
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "SegmentationClass").mkdir()
    masks = {}
    for k, (i, (h, w)) in enumerate(zip(ids, sizes)):
        Image.fromarray(_rgb(h, w, k)).save(root / "JPEGImages" / f"{i}.jpg")
        mask = np.random.default_rng(k).integers(0, 21, (h, w)).astype(np.uint8)
        mask[:, 0] = 255  # VOC's object borders
        png = Image.fromarray(mask, mode="P")
        png.putpalette(flat)
        png.save(root / "SegmentationClass" / f"{i}.png")
        masks[i] = mask
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids[:-1]) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text(ids[-1] + "\n")
    return masks


def test_voc_layout(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    masks = _voc_tree(voc, ["2007_000032", "2007_000039", "2008_000001"], [(5, 6), (8, 4), (3, 3)])
    for root in (voc, tmp_path):  # the VOC2012 folder or a folder above VOCdevkit
        assert available_splits(f"voc:{root}") == ["train", "val"]
        ds = build_dataset(f"voc:{root}", "train")
        assert len(ds) == 2 and ds.num_classes == 21
        assert ds.classes[0] == "background" and ds.classes[15] == "person" and ds.classes[20] == "tvmonitor"
        # The standard VOC colour map, spot-checked against the published values.
        assert (
            ds.palette[1] == (128, 0, 0)
            and ds.palette[15] == (192, 128, 128)
            and ds.palette[20] == (0, 64, 128)
        )
        image, mask = ds[1]
        assert np.array_equal(mask.numpy(), masks["2007_000039"])  # palette index = label, 255 kept
        assert np.array_equal(
            image.permute(1, 2, 0).numpy(), _pil_rgb(voc / "JPEGImages" / "2007_000039.jpg")
        )
    with pytest.raises(AtrousError, match="needs a split: choose one of train, val"):
        build_dataset(f"voc:{voc}")
    with pytest.raises(AtrousError, match="has 21 classes but num_classes=3"):
        build_dataset(f"voc:{voc}", "val", num_classes=3)


def test_voc_missing_file_named(tmp_path):
    masks = _voc_tree(tmp_path, ["a", "b"], [(4, 4), (4, 4)])
    assert masks
    (tmp_path / "SegmentationClass" / "a.png").unlink()
    with pytest.raises(AtrousError, match=r"a\.jpg has no mask .*SegmentationClass/a\.png"):
        build_dataset(f"voc:{tmp_path}", "train")


def test_cityscapes_layout_maps_label_ids(tmp_path):
    ids = np.array([[7, 8, 26, 33], [0, 4, 255, 31], [24, 23, 1, 11]], dtype=np.uint8)
    for split, city in (("train", "aachen"), ("val", "lindau")):
        img_dir = tmp_path / "leftImg8bit" / split / city
        gt_dir = tmp_path / "gtFine" / split / city
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        frame = f"{city}_000000_000019"
        Image.fromarray(_rgb(3, 4, 1)).save(img_dir / f"{frame}_leftImg8bit.png")
        Image.fromarray(ids, mode="L").save(gt_dir / f"{frame}_gtFine_labelIds.png")
        # Other gtFine products beside the label ids are not masks.
        Image.fromarray(_rgb(3, 4, 2)).save(gt_dir / f"{frame}_gtFine_color.png")
    assert available_splits(f"cityscapes:{tmp_path}") == ["train", "val"]
    ds = build_dataset(f"cityscapes:{tmp_path}", "val")
    assert (
        len(ds) == 1 and ds.num_classes == 19 and ds.classes[13] == "car" and ds.palette[0] == (128, 64, 128)
    )
    _, mask = ds[0]
    # labelIds -> trainIds by cityscapesScripts' table: road 7->0, sidewalk 8->1, car 26->13, bicycle 33->18,
    # unlabeled 0, ground 4 and ego vehicle 1 -> 255, train 31->16, person 24->11, sky 23->10, building 11->2.
    assert mask.tolist() == [[0, 1, 13, 18], [255, 255, 255, 16], [11, 10, 255, 2]]
    assert int((LABEL_TO_TRAIN != 255).sum()) == 19


def test_synthetic_dispatch_passes_options_and_transform():
    def transform(image, mask):
        return image.float(), mask + 1

    ds = build_dataset("synthetic:shapes?n=3&size=24&seed=5", "val", transform=transform)
    assert len(ds) == 3 and ds.num_classes == 4
    image, mask = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 24, 24) and int(mask.min()) >= 1
    assert available_splits("synthetic:shapes") == ["train", "val", "test"]
    with pytest.raises(AtrousError, match="has 4 classes but num_classes=2"):
        build_dataset("synthetic:shapes?n=2&size=16", "train", num_classes=2)


def test_spec_errors():
    assert parse_spec("synthetic:shapes?n=64&size=96&seed=3") == (
        "synthetic",
        "shapes",
        {"n": 64, "size": 96, "seed": 3},
    )
    assert parse_spec("folder:some/where?odd") == ("folder", "some/where?odd", {})
    with pytest.raises(
        AtrousError, match="unknown kind 'coco': valid kinds are folder, voc, cityscapes, synthetic"
    ):
        build_dataset("coco:/data")
    with pytest.raises(AtrousError, match="has no kind"):
        build_dataset("just-a-name")
    with pytest.raises(AtrousError, match="names no path"):
        build_dataset("voc:")
    with pytest.raises(AtrousError, match="does not exist"):
        build_dataset("cityscapes:/no/such/folder", "val")


def test_stardist_real_image_through_folder_loader(tmp_path):
    image, mask = read_stardist()
    assert image.shape == (512, 512) and set(np.unique(mask).tolist()) == {0, 1}
    assert 0.05 < mask.mean() < 0.95  # a real nuclei mask, both classes well represented
    root = write_stardist_folder(tmp_path / "nuclei")
    ds = build_dataset(f"folder:{root}", "train")
    assert ds.classes == ["background", "nucleus"] and len(ds) == len(QUADRANTS["train"])
    stems = []
    for i, (image_path, mask_path) in enumerate(ds.pairs):
        got_image, got_mask = ds[i]
        with Image.open(image_path) as im:
            grey = np.asarray(im)
        with Image.open(mask_path) as m:
            expected_mask = np.asarray(m).astype(np.int64)
        assert np.array_equal(got_image.numpy(), np.stack([grey] * 3))  # grey -> RGB, values unchanged
        assert np.array_equal(got_mask.numpy(), expected_mask)
        stems.append(image_path.stem)
    # The tiles hold the original pixels: the top-left tile is the original's top-left quadrant.
    top_left = ds[stems.index("nuclei_tl")]
    assert np.array_equal(top_left[0][0].numpy(), image[:256, :256])
    assert np.array_equal(top_left[1].numpy(), mask[:256, :256])
    val = build_dataset(f"folder:{root}", "val")
    assert np.array_equal(val[0][1].numpy(), mask[256:, 256:])


def test_stems_match_across_unicode_normalisation_and_duplicates_are_named(tmp_path):
    import unicodedata

    name = "café"
    _write_pair(tmp_path, unicodedata.normalize("NFD", name), _rgb(2, 2, 0), np.zeros((2, 2)))
    (tmp_path / "masks" / f"{unicodedata.normalize('NFD', name)}.png").rename(
        tmp_path / "masks" / f"{unicodedata.normalize('NFC', name)}.png"
    )
    assert len(build_dataset(f"folder:{tmp_path}", num_classes=1)) == 1  # NFD image, NFC mask: one pair
    Image.fromarray(_rgb(2, 2, 1)).save(tmp_path / "images" / f"{name}.jpg")
    with pytest.raises(AtrousError, match="have the same name stem"):
        build_dataset(f"folder:{tmp_path}", num_classes=1)
