"""`atrous eval`: its JSON against metrics computed here by brute force (numpy confusion counts, scipy
components) from the model's own predictions; sliding window and TTA plumbing; one-line user errors."""

import json
import math

import numpy as np
import pytest
import scipy.ndimage
import torch

from _inference_helpers import write_checkpoint
from atrous.api import load, predict
from atrous.cli import main
from atrous.data import build_dataset
from atrous.inference import MultiScaleFlip
from atrous.metrics import BoundaryIoU

DATA = "synthetic:shapes?n=3&size=40&seed=5"
SHAPES = ["background", "disc", "box", "diamond"]
SHAPES_PALETTE = [[0, 0, 0], [220, 50, 50], [50, 180, 60], [60, 90, 220]]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(
        tmp_path_factory.mktemp("ck") / "shapes.pt",
        name="dilated_net",
        classes=SHAPES,
        palette=SHAPES_PALETTE,
        channels=8,
        rates=(1, 2, 4),
    )


def brute_force_metrics(pairs, k, *, ignore=255, object_classes=None):
    """mIoU, pixel accuracy, per-class IoU and Dice, and object recall by size over the regions of
    `object_classes` (default: every class but 0, "background"), by plain counting."""
    object_classes = range(1, k) if object_classes is None else object_classes
    inter, union, pred_n, gt_n = (np.zeros(k) for _ in range(4))
    correct = total = 0
    buckets = [(0, 4), (4, 8), (8, 16), (16, 32), (32, None)]
    recalls = [[] for _ in buckets]
    for pred, gt in pairs:
        valid = gt != ignore
        correct += int(((pred == gt) & valid).sum())
        total += int(valid.sum())
        for c in range(k):
            inter[c] += ((pred == c) & (gt == c) & valid).sum()
            union[c] += (((pred == c) | (gt == c)) & valid).sum()
            pred_n[c] += ((pred == c) & valid).sum()
            gt_n[c] += ((gt == c) & valid).sum()
        for c in object_classes:
            components, n = scipy.ndimage.label(gt == c, structure=np.ones((3, 3)))
            for j in range(1, n + 1):
                obj = components == j
                size = math.sqrt(obj.sum())
                b = next(i for i, (lo, hi) in enumerate(buckets) if size >= lo and (hi is None or size < hi))
                recalls[b].append((pred[obj] == c).mean())
    per_class = [inter[c] / union[c] if union[c] else None for c in range(k)]
    present = [v for v in per_class if v is not None]
    dice = [2 * inter[c] / (pred_n[c] + gt_n[c]) if pred_n[c] + gt_n[c] else None for c in range(k)]
    by_size = [
        {"min": lo, "max": hi, "objects": len(r), "recall": float(np.mean(r)) if r else None}
        for (lo, hi), r in zip(buckets, recalls)
    ]
    return {
        "miou": sum(present) / len(present),
        "pixel_acc": correct / total,
        "per_class_iou": per_class,
        "per_class_dice": dice,
    }, by_size


def run_eval(checkpoint, tmp_path, *extra):
    out = tmp_path / "metrics.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", DATA, "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def check_against_brute_force(result, checkpoint, infer=None, ignore=255):
    model = load(checkpoint)
    dataset = build_dataset(DATA, "val")
    pairs = []
    for image, mask in dataset:
        rgb = image.permute(1, 2, 0).numpy()
        labels = predict(model, rgb) if infer is None else predict(model, rgb, infer=infer)
        pairs.append((labels, mask.numpy()))
    objects = [c for c in range(1, len(SHAPES)) if c != ignore]  # neither background nor the ignore index
    expected, by_size = brute_force_metrics(pairs, len(SHAPES), ignore=ignore, object_classes=objects)
    boundary = BoundaryIoU(len(SHAPES), ignore_index=ignore)  # T6's metric, tested by brute force there
    for labels, mask in pairs:
        boundary.update(torch.from_numpy(labels)[None], torch.from_numpy(mask)[None])
    want = boundary.compute()
    assert result["boundary_iou"] == pytest.approx(want["boundary_iou"], abs=1e-6)
    assert result["per_class_boundary_iou"] == pytest.approx(want["per_class_boundary_iou"], abs=1e-6)
    assert result["miou"] == pytest.approx(expected["miou"], abs=1e-6)
    assert result["pixel_acc"] == pytest.approx(expected["pixel_acc"], abs=1e-6)
    assert result["per_class_iou"] == pytest.approx(expected["per_class_iou"], abs=1e-6)
    assert result["per_class_dice"] == pytest.approx(expected["per_class_dice"], abs=1e-6)
    present = [d for d in expected["per_class_dice"] if d is not None]
    assert result["dice"] == pytest.approx(sum(present) / len(present), abs=1e-6)
    assert len(result["object_recall_by_size"]) == len(by_size)
    for got, want in zip(result["object_recall_by_size"], by_size):
        assert (got["min"], got["max"], got["objects"]) == (want["min"], want["max"], want["objects"])
        assert got["recall"] == pytest.approx(want["recall"], abs=1e-6)


def test_eval_json_matches_brute_force(checkpoint, tmp_path, capsys):
    result = run_eval(checkpoint, tmp_path, "--no-optimize")
    assert result["class_names"] == SHAPES and result["split"] == "val" and result["images"] == 3
    assert "mIoU" in capsys.readouterr().out
    check_against_brute_force(result, checkpoint)
    assert sum(b["objects"] for b in result["object_recall_by_size"]) > 3  # several objects were scored
    assert result["ignore_index"] == 255


def test_object_recall_leaves_out_the_background(checkpoint, tmp_path):
    """Changed on purpose: object recall counts the regions of every class but "background" (the ignore
    index is never a class); it counted background regions as objects before."""
    result = run_eval(checkpoint, tmp_path, "--no-optimize")
    pairs = [(mask.numpy(), mask.numpy()) for _, mask in build_dataset(DATA, "val")]
    _, with_background = brute_force_metrics(pairs, len(SHAPES), object_classes=range(len(SHAPES)))
    _, without = brute_force_metrics(pairs, len(SHAPES))
    objects = [b["objects"] for b in result["object_recall_by_size"]]
    assert objects == [b["objects"] for b in without]
    assert sum(objects) < sum(b["objects"] for b in with_background)  # the background regions are gone


def test_ignore_index_defaults_to_the_checkpoints_and_the_flag_overrides_it(tmp_path, capsys):
    """A run trained with loss.ignore_index=1 is evaluated with mask value 1 (the discs here) unscored, as
    its validation was; `--ignore-index 255` scores it again."""
    ck = write_checkpoint(
        tmp_path / "ignore0.pt",
        name="dilated_net",
        classes=SHAPES,
        palette=SHAPES_PALETTE,
        channels=8,
        rates=(1, 2, 4),
        config={"loss": {"ignore_index": 1}},
    )
    result = run_eval(ck, tmp_path, "--no-optimize")
    assert result["ignore_index"] == 1
    check_against_brute_force(result, ck, ignore=1)
    result = run_eval(ck, tmp_path, "--no-optimize", "--ignore-index", "255")
    assert result["ignore_index"] == 255
    check_against_brute_force(result, ck, ignore=255)


@pytest.mark.parametrize("where", ["under_a_file", "read_only"])
def test_unwritable_json_stops_before_the_evaluation(checkpoint, tmp_path, capsys, where):
    (tmp_path / "a_file").write_text("x")
    target = tmp_path / "a_file" / "m.json" if where == "under_a_file" else "/sys/atrous-test/m.json"
    args = ["eval", "--checkpoint", str(checkpoint), "--data", DATA, "--json", str(target)]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert f"--json {target}: cannot write there" in err and len(err.strip().splitlines()) == 1
    assert "mIoU" not in out  # nothing was evaluated


def test_eval_optimized_model_by_default(checkpoint, tmp_path):
    # the optimised copy gives the same outputs to 1e-4: the same metrics (up to a rare argmax tie)
    plain = run_eval(checkpoint, tmp_path, "--no-optimize")
    optimized = run_eval(checkpoint, tmp_path)
    assert optimized["pixel_acc"] == pytest.approx(plain["pixel_acc"], abs=1e-3)


def test_eval_in_bf16_gives_the_fp32_metrics(checkpoint, tmp_path):
    """`--precision bf16` changes the labels of at most a few near-tie pixels: pixel accuracy within 2 %."""
    plain = run_eval(checkpoint, tmp_path)
    bf16 = run_eval(checkpoint, tmp_path, "--precision", "bf16")
    assert bf16["precision"] == "bf16" and plain["precision"] == "fp32"
    assert bf16["pixel_acc"] == pytest.approx(plain["pixel_acc"], abs=0.02)


def test_sliding_window_covering_the_image_equals_whole_image(checkpoint, tmp_path):
    whole = run_eval(checkpoint, tmp_path, "--no-optimize")
    sliding = run_eval(checkpoint, tmp_path, "--no-optimize", "--sliding", "64")
    assert sliding["inference"].startswith("SlidingWindow")
    for key in ("miou", "pixel_acc", "per_class_iou", "object_recall_by_size"):
        assert sliding[key] == whole[key]
    tiled = run_eval(checkpoint, tmp_path, "--no-optimize", "--sliding", "24", "--stride", "16")
    assert tiled["inference"] == "SlidingWindow(size=(24, 24), stride=(16, 16))"


def test_tta_against_brute_force(checkpoint, tmp_path):
    result = run_eval(checkpoint, tmp_path, "--no-optimize", "--tta", "flip,0.75,1.25")
    assert result["inference"].startswith("MultiScaleFlip(scales=(0.75, 1.25), flip=True")
    check_against_brute_force(result, checkpoint, infer=MultiScaleFlip(scales=(0.75, 1.25), flip=True))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "synthetic:texture?n=2&size=32"], "predicts 4 classes but data"),
        (["--data", DATA, "--split", "nope"], "nope"),
        (["--data", "synthetic:nosuchtask"], "nosuchtask"),
        (["--data", DATA, "--tta", "flip,zero"], "--tta"),
        (["--data", DATA, "--stride", "8"], "--stride needs --sliding"),
        (["--data", DATA, "--device", "foo"], "not a torch device"),
        # the one device rule (atrous.device), as training's: a device type atrous does not run on
        (["--data", DATA, "--device", "mps"], "--device 'mps' is not supported: use auto, cpu, cuda"),
        (["--data", DATA, "--sliding", "8", "--stride", "12"], "must not exceed the window"),
        (["--data", DATA, "--precision", "fp16"], "--precision fp16: fp16 runs on CUDA GPUs only"),
    ],
)
def test_user_errors_are_one_line(checkpoint, tmp_path, capsys, args, message):
    out = tmp_path / "m.json"
    assert main(["eval", "--checkpoint", str(checkpoint), *args, "--json", str(out), "--no-optimize"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_empty_split_and_foreign_checkpoint(checkpoint, tmp_path, capsys):
    root = tmp_path / "data"
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "masks").mkdir(parents=True)
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", f"folder:{root}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(root) in err
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")  # not an atrous checkpoint
    assert main(["eval", "--checkpoint", str(tmp_path / "foreign.pt"), "--data", DATA]) == 2
    err = capsys.readouterr().err.strip()
    assert "foreign.pt" in err and len(err.splitlines()) == 1


def write_folder(root, split_dir):
    """The validation images of DATA as a folder data set: `split_dir`/{images,masks}/i.png and
    root/classes.txt."""
    from PIL import Image

    for sub in ("images", "masks"):
        (split_dir / sub).mkdir(parents=True)
    for i, (image, mask) in enumerate(build_dataset(DATA, "val")):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(split_dir / "images" / f"{i}.png")
        Image.fromarray(mask.numpy().astype(np.uint8)).save(split_dir / "masks" / f"{i}.png")
    (root / "classes.txt").write_text("\n".join(SHAPES) + "\n")


def eval_args(checkpoint, root, out):
    return [
        "eval",
        "--checkpoint",
        str(checkpoint),
        "--data",
        f"folder:{root}",
        "--json",
        str(out),
        "--no-optimize",
    ]


def test_folder_without_splits_is_evaluated_whole(checkpoint, tmp_path):
    root, out = tmp_path / "flat", tmp_path / "flat.json"
    write_folder(root, root)
    args = eval_args(checkpoint, root, out)
    assert main(args) == 0
    flat = json.loads(out.read_text())
    assert flat["split"] is None and flat["images"] == 3
    same = run_eval(checkpoint, tmp_path, "--no-optimize")  # the same images from the synthetic source
    for key in ("miou", "pixel_acc", "per_class_iou", "object_recall_by_size"):
        assert flat[key] == same[key]


def test_skip_bad_leaves_out_and_counts_unreadable_pairs(checkpoint, tmp_path, capsys):
    root, out = tmp_path / "data", tmp_path / "m.json"
    write_folder(root, root / "val")
    args = eval_args(checkpoint, root, out)
    bad = root / "val" / "images" / "1.png"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "1.png" in err and "--skip-bad" in err and len(err.splitlines()) == 1 and not out.exists()
    with pytest.warns(UserWarning, match="skipp") as record:  # "skipping 1.png: ...", "skipped 1 bad file(s)"
        assert main([*args, "--skip-bad"]) == 0
    assert any("1.png" in str(w.message) for w in record) and any(
        "skipped 1 bad" in str(w.message) for w in record
    )
    assert not any("--skip-bad" in str(w.message) for w in record)  # not asked for once it is given
    result = json.loads(out.read_text())
    assert (result["images"], result["skipped"]) == (2, 1)
