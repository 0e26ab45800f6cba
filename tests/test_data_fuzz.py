"""Hostile data for the loaders (issue 8 point 4): every bad file gives a one-line AtrousError that names
it (or, with skip_bad, a warning and a count), never another exception and never wrong pixels or labels.

Each test builds its own tiny tree in a fresh temporary folder per example; example counts stay small.
"""

import os
import shutil
import struct
import tempfile
import warnings
import zlib
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from atrous.data import build_dataset
from atrous.errors import AtrousError

FUZZ = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextmanager
def _tree():
    root = Path(tempfile.mkdtemp(prefix="atrous-fuzz-"))
    try:
        (root / "images").mkdir()
        (root / "masks").mkdir()
        yield root
    finally:
        shutil.rmtree(root)


def _png_bytes(array, mode=None):
    buf = BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(array):
    buf = BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _raw_png(width, height, idat=b""):
    """A PNG whose header claims width x height (8-bit grey) with whatever pixel data is given."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(idat))
        + chunk(b"IEND", b"")
    )


def _load_all(spec, **kwargs):
    ds = build_dataset(spec, **kwargs)
    return ds, [ds[i] for i in range(len(ds))]


def _assert_one_line_naming(error, path):
    msg = str(error)
    assert "\n" not in msg and msg.strip() == msg and len(msg) < 600
    assert str(path) in msg or Path(path).name in msg, msg


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@FUZZ
@given(
    cut=st.floats(0.0, 1.0), fmt=st.sampled_from(["png", "jpeg"]), which=st.sampled_from(["image", "mask"])
)
def test_truncated_files_are_named_or_read_exactly(cut, fmt, which):
    with _tree() as root:
        image = _rgb(12, 10)
        mask = (np.arange(120).reshape(12, 10) % 3).astype(np.uint8)
        image_bytes = _jpeg_bytes(image) if fmt == "jpeg" else _png_bytes(image)
        mask_bytes = _png_bytes(mask, "L")
        image_path = root / "images" / f"a.{'jpg' if fmt == 'jpeg' else 'png'}"
        mask_path = root / "masks" / "a.png"
        full = Image.open(BytesIO(image_bytes)).convert("RGB")
        if which == "image":
            image_bytes = image_bytes[: int(len(image_bytes) * cut)]
        else:
            mask_bytes = mask_bytes[: int(len(mask_bytes) * cut)]
        image_path.write_bytes(image_bytes)
        mask_path.write_bytes(mask_bytes)
        bad = image_path if which == "image" else mask_path
        try:
            _, items = _load_all(f"folder:{root}", num_classes=3)
        except AtrousError as e:
            _assert_one_line_naming(e, bad)
            with (
                warnings.catch_warnings(record=True) as caught,
                pytest.raises(AtrousError, match="no usable"),
            ):
                warnings.simplefilter("always")
                build_dataset(f"folder:{root}", num_classes=3, skip_bad=True)
            assert any(str(bad) in str(w.message) for w in caught)
            return
        # A cut that leaves every needed byte (e.g. only the PNG end chunk lost) must give the true pixels.
        got_image, got_mask = items[0]
        assert np.array_equal(got_image.permute(1, 2, 0).numpy(), np.asarray(full))
        assert np.array_equal(got_mask.numpy(), mask)


@FUZZ
@given(width=st.integers(0, 3), height=st.integers(0, 3), empty_file=st.booleans())
def test_zero_sized_images(width, height, empty_file):
    with _tree() as root:
        path = root / "images" / "z.png"
        path.write_bytes(b"" if empty_file else _raw_png(width, height, b"\0" * (height * (width + 1))))
        (root / "masks" / "z.png").write_bytes(_raw_png(max(width, 1), max(height, 1), b"\0" * 64))
        if not empty_file and width > 0 and height > 0:
            return  # a real (tiny) image: covered elsewhere
        with pytest.raises(AtrousError) as info:
            _load_all(f"folder:{root}", num_classes=2)
        _assert_one_line_naming(info.value, path)


@FUZZ
@given(
    labels=st.lists(st.sampled_from([0, 1, 2, 3, 7, 254, 255, 256, 300, 65535]), min_size=6, max_size=6),
    mode=st.sampled_from(["L", "P", "I;16"]),
    num_classes=st.integers(1, 4),
)
def test_mask_labels_out_of_range_raise_and_good_ones_load_exactly(labels, mode, num_classes):
    with _tree() as root:
        mask = np.array(labels, dtype=np.int64).reshape(2, 3)
        if mode != "I;16":
            mask = np.where(mask > 255, 255, mask)  # 8-bit masks cannot hold more
        Image.fromarray(_rgb(2, 3)).save(root / "images" / "m.png")
        mask_path = root / "masks" / "m.png"
        if mode == "I;16":
            Image.fromarray(mask.astype(np.uint16)).save(mask_path)
        else:
            img = Image.fromarray(mask.astype(np.uint8), mode="L")
            if mode == "P":
                img = img.convert("P")  # identity palette: index = grey value = label
                img.putdata(mask.astype(np.uint8).flatten().tolist())
            img.save(mask_path)
        valid = bool(np.all((mask < num_classes) | (mask == 255)))
        if valid:
            _, items = _load_all(f"folder:{root}", num_classes=num_classes)
            assert np.array_equal(items[0][1].numpy(), mask)
        else:
            with pytest.raises(AtrousError, match=r"label\(s\)") as info:
                _load_all(f"folder:{root}", num_classes=num_classes)
            _assert_one_line_naming(info.value, mask_path)
            assert f"{num_classes} classes" in str(info.value)


@FUZZ
@given(mode=st.sampled_from(["RGB", "RGBA", "LA", "F"]))
def test_colour_and_float_masks_are_refused(mode):
    with _tree() as root:
        Image.fromarray(_rgb(4, 4)).save(root / "images" / "c.png")
        arr = (
            np.zeros((4, 4), dtype=np.float32) if mode == "F" else np.zeros((4, 4, len(mode)), dtype=np.uint8)
        )
        path = root / "masks" / ("c.tiff" if mode == "F" else "c.png")
        Image.fromarray(arr, mode=mode).save(path, format="TIFF" if mode == "F" else "PNG")
        if mode == "F":
            path.rename(root / "masks" / "c.png")
            path = root / "masks" / "c.png"
        with pytest.raises(AtrousError, match="single-channel class indices") as info:
            build_dataset(f"folder:{root}", num_classes=2)
        _assert_one_line_naming(info.value, path)


@FUZZ
@given(
    image_size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    mask_size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
)
def test_mismatched_sizes(image_size, mask_size):
    with _tree() as root:
        Image.fromarray(_rgb(image_size[1], image_size[0])).save(root / "images" / "s.jpg")
        Image.new("L", mask_size).save(root / "masks" / "s.png")
        if image_size == mask_size:
            assert len(build_dataset(f"folder:{root}", num_classes=1)) == 1
            return
        with pytest.raises(AtrousError, match="masks must match their image") as info:
            build_dataset(f"folder:{root}", num_classes=1)
        _assert_one_line_naming(info.value, root / "masks" / "s.png")
        assert f"{mask_size[0]}x{mask_size[1]}" in str(info.value)


@FUZZ
@given(side=st.integers(9_500, 200_000), which=st.sampled_from(["image", "mask"]))
def test_huge_dimensions_are_refused_before_decoding(side, which):
    # The header claims side x side pixels (>= 90 MP, over PIL's limit) but the file is tiny: the guard
    # must fire on the header, never allocate the image.
    with _tree() as root:
        big = _raw_png(side, side)
        small = _png_bytes(np.zeros((4, 4), dtype=np.uint8), "L")
        (root / "images" / "h.png").write_bytes(big if which == "image" else small)
        (root / "masks" / "h.png").write_bytes(big if which == "mask" else small)
        with pytest.raises(AtrousError, match="too large to decode safely") as info:
            build_dataset(f"folder:{root}", num_classes=2)
        _assert_one_line_naming(info.value, root / f"{which}s" / "h.png")


@FUZZ
@given(
    image_stems=st.sets(st.sampled_from("abcdef"), max_size=6),
    mask_stems=st.sets(st.sampled_from("abcdef"), max_size=6),
)
def test_missing_pairs(image_stems, mask_stems):
    with _tree() as root:
        for s in image_stems:
            Image.fromarray(_rgb(3, 3)).save(root / "images" / f"{s}.png")
        for s in mask_stems:
            Image.new("L", (3, 3), 1).save(root / "masks" / f"{s}.png")
        both, orphans = image_stems & mask_stems, image_stems ^ mask_stems
        if not orphans and both:
            assert len(build_dataset(f"folder:{root}", num_classes=2)) == len(both)
            return
        with pytest.raises(AtrousError) as info:
            build_dataset(f"folder:{root}", num_classes=2)
        msg = str(info.value)
        if orphans:
            first = min(orphans)
            _assert_one_line_naming(info.value, f"{first}.png")
            assert "has no mask" in msg or "has no image" in msg
        else:
            assert "is empty" in msg
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ds = build_dataset(f"folder:{root}", num_classes=2, skip_bad=True)
            except AtrousError as e:
                assert not both and ("no usable" in str(e) or "is empty" in str(e))
                return
        assert len(ds) == len(both) and len(ds.skipped) == len(orphans)
        assert any(f"skipped {len(orphans)} bad file(s)" in str(w.message) for w in caught)


_NAME = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\0"),
    min_size=1,
    max_size=12,
).filter(lambda s: not s.startswith(".") and s.strip() == s and len(s.encode()) < 60)


@FUZZ
@given(folder=_NAME, stems=st.sets(_NAME, min_size=1, max_size=3))
def test_unicode_and_spaces_in_paths(folder, stems):
    import unicodedata

    stems = {unicodedata.normalize("NFC", s) for s in stems}
    with _tree() as base:
        root = base / folder
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        expected = {}
        for k, s in enumerate(sorted(stems)):
            mask = np.full((2, 3), k % 2, dtype=np.uint8)
            Image.fromarray(_rgb(2, 3, k)).save(root / "images" / f"{s}.png")
            Image.fromarray(mask, mode="L").save(root / "masks" / f"{s}.png")
            expected[s] = (_rgb(2, 3, k), mask)
        ds = build_dataset(f"folder:{root}", num_classes=2)
        assert len(ds) == len(stems)
        for i, (image_path, _) in enumerate(ds.pairs):
            image, mask = ds[i]
            want_image, want_mask = expected[image_path.stem]
            assert np.array_equal(image.permute(1, 2, 0).numpy(), want_image)
            assert np.array_equal(mask.numpy(), want_mask)


def test_symlink_loops(tmp_path):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(_rgb(3, 3)).save(root / "images" / "ok.png")
    Image.new("L", (3, 3)).save(root / "masks" / "ok.png")
    loop = root / "images" / "loop.png"
    os.symlink(loop, loop)  # points at itself
    with pytest.raises(AtrousError, match="is a symlink loop") as info:
        build_dataset(f"folder:{root}", num_classes=1)
    _assert_one_line_naming(info.value, loop)
    loop.unlink()
    os.symlink(root / "nowhere.png", loop)
    with pytest.raises(AtrousError, match="is a broken symlink"):
        build_dataset(f"folder:{root}", num_classes=1)
    loop.unlink()
    # A looping data folder, and a Cityscapes city folder that loops.
    a, b = tmp_path / "a", tmp_path / "b"
    os.symlink(b, a)
    os.symlink(a, b)
    with pytest.raises(AtrousError, match="is a symlink loop"):
        build_dataset(f"folder:{a}")
    city_root = tmp_path / "cs"
    (city_root / "leftImg8bit" / "val").mkdir(parents=True)
    (city_root / "gtFine" / "val").mkdir(parents=True)
    os.symlink(city_root / "leftImg8bit" / "val" / "x", city_root / "leftImg8bit" / "val" / "x")
    with pytest.raises(AtrousError, match="is a symlink loop"):
        build_dataset(f"cityscapes:{city_root}", "val")


def test_empty_splits(tmp_path):
    root = tmp_path / "d"
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
    Image.fromarray(_rgb(3, 3)).save(root / "train" / "images" / "a.png")
    Image.new("L", (3, 3), 1).save(root / "train" / "masks" / "a.png")
    with pytest.raises(AtrousError, match=r"split 'val' is empty") as info:
        build_dataset(f"folder:{root}", "val")
    _assert_one_line_naming(info.value, root / "val" / "images")
    voc = tmp_path / "voc"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    with pytest.raises(AtrousError, match="lists no image id"):
        build_dataset(f"voc:{voc}", "val")


def test_skip_bad_keeps_exactly_the_good_pairs(tmp_path):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    good = {}
    for k in range(4):
        mask = np.full((3, 4), k % 2, dtype=np.uint8)
        Image.fromarray(_rgb(3, 4, k)).save(root / "images" / f"g{k}.png")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"g{k}.png")
        good[f"g{k}"] = mask
    (root / "images" / "t.png").write_bytes(_png_bytes(_rgb(3, 4))[:40])  # truncated
    Image.new("L", (4, 3)).save(root / "masks" / "t.png")
    Image.fromarray(_rgb(3, 4)).save(root / "images" / "r.png")
    Image.new("L", (4, 3), 9).save(root / "masks" / "r.png")  # label 9 of 2 classes
    Image.fromarray(_rgb(3, 4)).save(root / "images" / "lonely.png")  # no mask
    with pytest.raises(AtrousError, match=r"lonely\.png has no mask"):
        build_dataset(f"folder:{root}", num_classes=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = build_dataset(f"folder:{root}", num_classes=2, skip_bad=True)
    messages = [str(w.message) for w in caught]
    assert messages[-1].endswith("skipped 3 bad file(s), kept 4 pair(s)")
    assert all("\n" not in m for m in messages) and len(messages) == 4  # one line per file, then the count
    assert sorted(p.stem for p, _ in ds.skipped) == ["lonely", "r", "t"]
    assert [p.stem for p, _ in ds.pairs] == ["g0", "g1", "g2", "g3"]
    for i, (image_path, _) in enumerate(ds.pairs):
        assert np.array_equal(ds[i][1].numpy(), good[image_path.stem])


def test_bad_file_found_in_a_dataloader_worker_is_still_one_line(tmp_path):
    import torch

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(_rgb(4, 4)).save(tmp_path / "images" / "w.png")
    Image.new("L", (4, 4), 9).save(tmp_path / "masks" / "w.png")  # label 9 of 2 classes: found at read time
    ds = build_dataset(f"folder:{tmp_path}", num_classes=2)
    batches = iter(torch.utils.data.DataLoader(ds, num_workers=1))
    with pytest.raises(AtrousError) as info:
        next(batches)
    del batches  # shuts the worker down now
    _assert_one_line_naming(info.value, tmp_path / "masks" / "w.png")
    assert str(info.value).startswith(str(tmp_path / "masks" / "w.png")) and "label(s) 9" in str(info.value)


@pytest.mark.parametrize("fault", ["label", "truncated", "size"])
def test_cli_reports_bad_data_in_one_line(tmp_path, capsys, fault):
    """Through `atrous train` (one DataLoader worker): exit 2, one stderr line naming the file, no traceback."""
    from atrous.cli import main

    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("bg\nfg\n")
    for stem in "ab":
        Image.fromarray(_rgb(16, 16)).save(root / "images" / f"{stem}.png")
        Image.new("L", (16, 16), 1).save(root / "masks" / f"{stem}.png")
    bad = root / "masks" / "b.png"
    if fault == "label":
        Image.new("L", (16, 16), 7).save(bad)  # found when the item is read, inside the worker
    elif fault == "truncated":
        bad = root / "images" / "b.png"
        bad.write_bytes(_png_bytes(_rgb(16, 16))[:-300])  # header intact, pixel data cut
    else:
        Image.new("L", (16, 12), 1).save(bad)  # found when the data set is built
    args = ["train", "--data", f"folder:{root}", "--model", "dilated_net", "--opt", "channels=4"]
    args += ["--opt", "rates=1,2", "--iters", "1", "--batch-size", "2", "--crop", "16", "--workers", "1"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and str(bad) in errors[0] and "Traceback" not in stderr
    assert not (tmp_path / "run" / "last.pt").exists()
