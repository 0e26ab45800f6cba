"""`atrous.data.check_data` and `atrous data check`: the label histogram, sizes and classes against counts
made here with numpy, each finding on a tree written to show it, and a hypothesis fuzz over the mask
conventions users have, with the expected finding of each written in the test."""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from atrous.cli import main
from atrous.data import build_dataset, check_data
from atrous.data.check import STRAY_GAP, check_dataset
from atrous.errors import AtrousError


def _pair(base, stem, mask, mode="L", size=None):
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "masks").mkdir(parents=True, exist_ok=True)
    h, w = mask.shape[:2]
    Image.fromarray(np.zeros(size or (h, w, 3), np.uint8)).save(base / "images" / f"{stem}.png")
    Image.fromarray(mask, mode=mode).save(base / "masks" / f"{stem}.png")
    return base / "masks" / f"{stem}.png"


def _counts(masks, offset=0):
    values, counts = np.unique(np.concatenate([m.ravel() for m in masks]), return_counts=True)
    return {int(v) + offset: int(c) for v, c in zip(values, counts)}


def test_histogram_sizes_and_classes(tmp_path):
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 3, (h, w)).astype(np.uint8) for h, w in ((5, 7), (9, 4), (6, 7))]
    masks[0][0, 0] = 255
    for i, m in enumerate(masks):
        _pair(tmp_path, f"m{i}", m)
    (tmp_path / "classes.txt").write_text("sky\nroad\ncar\n")
    report = check_data(f"folder:{tmp_path}")
    assert report.ok and report.findings == []
    assert report.label_histogram == _counts(masks)
    assert report.classes == ["sky", "road", "car"] and report.classes_from == "file" and report.images == 3
    # Sizes are (width, height); smallest (35 px) and largest (42 px) by area; median of short sides 5, 4, 6.
    assert report.image_sizes["min"] == [7, 5] and report.image_sizes["max"] == [7, 6]
    assert report.image_sizes["median_short_side"] == 5 and report.image_sizes["distinct"] == 3
    text = report.format()
    assert "classes: 0 sky, 1 road, 2 car" in text and "no findings" in text
    built = check_dataset(build_dataset(f"folder:{tmp_path}"))  # a data set already built: the same checks
    assert built.label_histogram == report.label_histogram and built.image_sizes == report.image_sizes


def test_stray_label_sets_the_class_count_and_is_named(tmp_path):
    # One pixel of 200 in one mask, no classes file: today a 201-class model without a word.
    for i in range(3):
        m = (np.arange(16).reshape(4, 4) % 2).astype(np.uint8)
        if i == 1:
            m[2, 3] = 200
        path = _pair(tmp_path, f"s{i}", m)
        if i == 1:
            bad = path
    report = check_data(f"folder:{tmp_path}")
    assert report.codes("error") == ["stray-label"]
    (finding,) = report.findings
    assert finding.files == [str(bad)] and "label 200 alone sets the class count to 201" in finding.message
    with pytest.raises(AtrousError, match=r"label 200 alone .* \(in .*s1\.png\)") as info:
        report.raise_for_errors()
    assert "\n" not in str(info.value)
    # Below the documented threshold (L - M < STRAY_GAP) the count stands: classes 2..L-1 absent, a warning.
    near = tmp_path / "near"
    _pair(near, "n", np.array([[0, 1, STRAY_GAP]], np.uint8))
    report = check_data(f"folder:{near}")
    assert report.ok and report.codes("warning") == ["absent-class"] and len(report.classes) == STRAY_GAP + 1
    # With a class list, 200 is simply out of range.
    (tmp_path / "classes.txt").write_text("a\nb\n")
    assert check_data(f"folder:{tmp_path}").codes("error") == ["label-out-of-range"]


def test_absent_class_zero_and_rare_labels_are_warnings(tmp_path):
    m = np.ones((120, 100), np.uint8)  # 12000 labelled pixels, class 0 absent
    m[0, 0] = 2  # 1 / 12000 < 0.01 %: rare
    _pair(tmp_path, "r", m)
    report = check_data(f"folder:{tmp_path}")
    assert report.ok and report.codes("warning") == ["absent-class", "rare-label"]
    assert "0 (class0)" in report.findings[0].message and report.findings[1].files == [
        str(tmp_path / "masks" / "r.png")
    ]


def test_split_findings(tmp_path):
    for split in ("train", "validation"):
        _pair(tmp_path / split, "a", np.array([[0, 1]], np.uint8))
    report = check_data(f"folder:{tmp_path}", "val")
    assert report.codes() == ["no-such-split"] and "'validation'" in report.findings[0].message
    (tmp_path / "test" / "images").mkdir(parents=True)
    (tmp_path / "test" / "masks").mkdir()
    report = check_data(f"folder:{tmp_path}", "test")
    assert report.codes() == ["empty-split"]
    assert "split 'test' is empty" in report.findings[0].message and "label other than" not in str(
        report.findings
    )
    # Every mask pixel 255 (ignore): said as such, with the value-map option that fixes it.
    all_ignore = tmp_path / "ign"
    _pair(all_ignore, "x", np.full((2, 2), 255, np.uint8))
    report = check_data(f"folder:{all_ignore}")
    assert report.codes() == ["ignore-only-foreground"] and "?map=0:0,255:1" in report.findings[0].message


def test_cli_prints_exits_and_writes_json(tmp_path, capsys):
    _pair(tmp_path / "d", "a", np.array([[0, 255], [255, 0]], np.uint8))
    assert main(["data", "check", f"folder:{tmp_path / 'd'}", "--json", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr().out
    assert "error: ignore-only-foreground" in out and "255 is the ignore value" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["ok"] is False and data["splits"][0]["label_histogram"] == {"0": 2, "255": 2}
    assert main(["data", "check", f"folder:{tmp_path / 'd'}?map=0:0,255:1"]) == 0
    assert "class1" in capsys.readouterr().out
    assert main(["data", "check", "folder:/x", "--json", str(tmp_path)]) == 2  # a folder, before any reading
    assert "--json" in capsys.readouterr().err


# ---- fuzz over mask conventions -------------------------------------------------------------------------
PALETTE = [(0, 0, 0), (200, 30, 30), (30, 200, 30), (30, 30, 200)]


def _convention_tree(root: Path, convention: str, masks: list[np.ndarray]) -> str:
    """Write `masks` as `convention` stores them; return the spec a user would (first) write."""
    if convention.startswith("palette"):
        (root / "pal.json").write_text(json.dumps({"classes": ["a", "b", "c", "d"], "palette": PALETTE}))
    for i, m in enumerate(masks):
        if convention.startswith("palette"):
            _pair(root, f"f{i}", np.asarray(PALETTE, np.uint8)[m], mode="RGB")
        elif convention.startswith("deep16"):
            _pair(root, f"f{i}", m.astype(np.uint16), mode=None)
        else:
            _pair(root, f"f{i}", m.astype(np.uint8))
    return {
        "binary_0_255": "folder:{r}",
        "binary_mapped": "folder:{r}?map=0:0,255:1",
        "one_based": "folder:{r}",
        "one_based_reduced": "folder:{r}?reduce_zero_label=1",
        "stray": "folder:{r}",
        "palette": "folder:{r}?palette=pal.json",
        "palette_missing": "folder:{r}",
        "deep16": "folder:{r}",
        "deep16_instances": "folder:{r}",
    }[convention].format(r=root)


# convention -> (error codes, warning codes, histogram from the stored values or None)
EXPECTED = {
    "binary_0_255": (["ignore-only-foreground"], [], lambda c: c),
    "binary_mapped": ([], [], lambda c: {0: c[0], 1: c[255]}),
    "one_based": ([], ["absent-class"], lambda c: c),  # class 0 is in no mask
    "one_based_reduced": ([], [], lambda c: {k - 1: v for k, v in c.items()}),
    "stray": (["stray-label"], [], lambda c: c),
    "palette": ([], [], lambda c: c),
    "palette_missing": (["bad-file"], [], None),  # RGB masks without a palette file are refused
    "deep16": ([], [], lambda c: c),
    "deep16_instances": (["too-many-labels"], [], None),  # instance ids, not classes
}


def _masks(convention: str, shapes, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    k = 3 if convention.startswith("palette") else 1 + seed % 3  # labels 0..k (or 1..k), all present
    lo = 1 if convention.startswith("one_based") else 0
    if convention.startswith("binary"):
        values = [0, 255]
    elif convention == "deep16_instances":
        values = [0, 1500 + seed % 7]
    else:
        values = list(range(lo, k + 1))
    masks = [rng.choice(values, size=shape) for shape in shapes]
    flat = np.concatenate([m.ravel() for m in masks])
    flat[: len(values)] = values  # every value present at least once (written back below)
    start = 0
    for m in masks:
        m.ravel()[:] = flat[start : start + m.size]
        start += m.size
    if convention == "stray":
        masks[-1][0, 0] = 200
    return masks


def _every_convention(test):
    """Each convention once for certain (a 2x3 and a 4x2 mask), then hypothesis's draws."""
    for convention in sorted(EXPECTED):
        test = example(convention=convention, shapes=[(2, 3), (4, 2)], seed=1)(test)
    return test


@settings(max_examples=27, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@_every_convention
@given(
    convention=st.sampled_from(sorted(EXPECTED)),
    shapes=st.lists(st.tuples(st.integers(2, 7), st.integers(2, 7)), min_size=1, max_size=3),  # >= 4 px
    seed=st.integers(0, 1000),
)
def test_fuzz_data_check_over_mask_conventions(convention, shapes, seed):
    masks = _masks(convention, shapes, seed)
    root = Path(tempfile.mkdtemp(prefix="atrous-check-"))
    try:
        spec = _convention_tree(root, convention, masks)
        json_path = root / "report.json"
        code = main(["data", "check", spec, "--json", str(json_path)])
        report = json.loads(json_path.read_text())["splits"][0]
        errors = [f["code"] for f in report["findings"] if f["level"] == "error"]
        warnings = [f["code"] for f in report["findings"] if f["level"] == "warning"]
        want_errors, want_warnings, histogram = EXPECTED[convention]
        assert (errors, warnings) == (want_errors, want_warnings), report["findings"]
        assert code == (1 if want_errors else 0)
        if histogram is not None:
            stored = _counts(masks)
            assert {int(k): v for k, v in report["label_histogram"].items()} == histogram(stored)
        if convention == "stray":
            assert report["findings"][0]["files"] == [str(root / "masks" / f"f{len(masks) - 1}.png")]
    finally:
        shutil.rmtree(root)


def test_another_ignore_index_makes_255_an_ordinary_label(tmp_path, capsys):
    mask = np.array([[0, 1, 2], [2, 255, 1]], np.uint8)
    path = _pair(tmp_path, "a", mask)
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    assert build_dataset(f"folder:{tmp_path}")[0][1].tolist() == mask.tolist()  # 255 = ignore by default
    ds = build_dataset(f"folder:{tmp_path}", ignore_index=0)  # 0 is not scored: 255 must be a class
    with pytest.raises(AtrousError, match=r"a.png: mask holds label\(s\) 255 .* \(0..2, 0 = ignore\)"):
        ds[0]
    report = check_data(f"folder:{tmp_path}", ignore_index=0)
    assert report.codes() == ["label-out-of-range"] and report.findings[0].files == [str(path)]
    assert report.label_histogram == {0: 1, 1: 2, 2: 2, 255: 1}
    assert main(["data", "check", f"folder:{tmp_path}", "--ignore-index", "0"]) == 1
    out = capsys.readouterr().out
    assert "label 255 is outside 0..2 (3 classes, 0 = ignore)" in out and "    0 ignore" in out
