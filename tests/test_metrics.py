"""Metrics against hand-computed confusion matrices, brute-force loops and hand-made object masks."""

import math
import random

import numpy as np
import pytest
import torch

from _procs import run_in_processes
from atrous.metrics import (
    SIZE_BUCKETS,
    BoundaryIoU,
    ConfusionMatrix,
    ObjectRecall,
    all_reduce_sum,
    boundary_width,
    default_object_classes,
)


def test_confusion_matrix_by_hand():
    # gt:   0 0 1 1 2 255      pred: 0 1 1 1 0 2
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # rows = gt, columns = pred; the ignored pixel is not counted.
    assert cm.mat.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    r = cm.compute()
    # IoU: class0 tp1 / (gt2 + pred2 - 1) = 1/3; class1 2/(2+3-2) = 2/3; class2 0/(1+0-0) = 0
    assert r["per_class_iou"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert r["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert r["pixel_acc"] == pytest.approx(3 / 5)
    assert r["mean_acc"] == pytest.approx((1 / 2 + 2 / 2 + 0 / 1) / 3)
    assert r["fw_iou"] == pytest.approx(2 / 5 * 1 / 3 + 2 / 5 * 2 / 3 + 1 / 5 * 0)
    # Dice = 2 TP / (gt + pred): class0 2/(2+2); class1 4/(2+3); class2 0/(1+0).
    assert r["per_class_dice"] == pytest.approx([1 / 2, 4 / 5, 0.0])
    assert r["dice"] == pytest.approx((1 / 2 + 4 / 5 + 0) / 3)


def test_absent_class_is_none_and_left_out_of_miou():
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]))
    r = cm.compute()
    assert r["per_class_iou"][2] is None and r["per_class_iou"][3] is None
    assert r["miou"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    # A class only in the prediction counts (IoU 0) in the mean.
    cm.update(torch.tensor([3]), torch.tensor([0]))
    r = cm.compute()
    assert r["per_class_iou"][3] == 0.0
    assert r["miou"] == pytest.approx((1 / 3 + 1 / 2 + 0) / 3)


def test_empty_matrix_gives_none():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([1, 0]), torch.tensor([255, 255]))
    r = cm.compute()
    assert r["miou"] is None and r["pixel_acc"] is None and r["per_class_iou"] == [None, None]
    assert r["dice"] is None and r["per_class_dice"] == [None, None]


def _brute_force(preds, targets, k, ignore):
    mat = [[0] * k for _ in range(k)]
    for p, t in zip(preds, targets):
        for pv, tv in zip(p.flatten().tolist(), t.flatten().tolist()):
            if tv != ignore:
                mat[tv][pv] += 1
    total = sum(map(sum, mat))
    ious, accs, dices, fw = [], [], [], 0.0
    for c in range(k):
        tp = mat[c][c]
        g = sum(mat[c])
        q = sum(mat[r][c] for r in range(k))
        union = g + q - tp
        ious.append(tp / union if union else None)
        fp, fn = q - tp, g - tp
        dices.append(2 * tp / (2 * tp + fp + fn) if union else None)
        if g:
            accs.append(tp / g)
            fw += g / total * tp / union
    present = [i for i in ious if i is not None]
    return {
        "mat": mat,
        "miou": sum(present) / len(present),
        "pixel_acc": sum(mat[c][c] for c in range(k)) / total,
        "mean_acc": sum(accs) / len(accs),
        "per_class_iou": ious,
        "fw_iou": fw,
        "per_class_dice": dices,
        "dice": sum(d for d in dices if d is not None) / len(present),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_brute_force_loops(seed):
    g = torch.Generator().manual_seed(seed)
    k = 5
    cm = ConfusionMatrix(k, ignore_index=255)
    preds, targets = [], []
    for _ in range(3):
        t = torch.randint(0, k - 1, (2, 7, 9), generator=g)  # class k-1 never in gt
        t[torch.rand(t.shape, generator=g) < 0.1] = 255
        p = torch.randint(0, k, (2, 7, 9), generator=g)
        cm.update(p, t)
        preds.append(p)
        targets.append(t)
    ref = _brute_force(preds, targets, k, 255)
    assert cm.mat.tolist() == ref["mat"]
    r = cm.compute()
    for key in ("miou", "pixel_acc", "mean_acc", "fw_iou", "dice"):
        assert r[key] == pytest.approx(ref[key]), key
    assert r["per_class_iou"] == pytest.approx(ref["per_class_iou"])
    assert r["per_class_dice"] == pytest.approx(ref["per_class_dice"])


def test_out_of_range_labels_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="label 7"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="class 3"):
        cm.update(torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="same shape"):
        cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        cm.update(torch.rand(2), torch.tensor([0, 1]))
    assert cm.mat.sum() == 0  # nothing half-counted


def test_object_recall_hand_made_masks():
    target = torch.full((40, 40), 0, dtype=torch.long)
    # class 1: a 2x2 square (area 4, side 2 -> bucket 0) and, touching it only diagonally, one pixel:
    # 8-connected, so both form ONE object of area 5 (sqrt 2.24 -> bucket 0).
    target[1:3, 1:3] = 1
    target[3, 3] = 1
    # class 2: a 5x5 square (area 25 -> sqrt 5 -> bucket [4,8)), separate from class 1.
    target[10:15, 10:15] = 2
    # class 1 again: an 8x8 square (area 64 -> sqrt 8 -> bucket [8,16)), far away.
    target[20:28, 20:28] = 1
    # The background (class 0) is one object: 1600 - 5 - 25 - 64 = 1506 px, sqrt ~ 38.8 -> [32, inf).
    pred = torch.zeros_like(target)
    pred[1:3, 1:3] = 1  # 4 of 5 pixels of the first class-1 object
    pred[10:15, 10:12] = 2  # 10 of 25 pixels of the class-2 object
    pred[20:28, 20:28] = 1  # the whole 8x8 object
    pred[30, 30] = 2  # one background pixel wrong
    orc = ObjectRecall(3)
    orc.update(pred, target)
    out = orc.compute()
    assert [(b["min"], b["max"]) for b in out] == list(SIZE_BUCKETS)
    assert [b["objects"] for b in out] == [1, 1, 1, 0, 1]
    assert out[0]["recall"] == pytest.approx(4 / 5)
    assert out[1]["recall"] == pytest.approx(10 / 25)
    assert out[2]["recall"] == pytest.approx(1.0)
    assert out[3]["recall"] is None
    assert out[4]["recall"] == pytest.approx(1505 / 1506)


def test_object_recall_ignore_and_batch_and_mean_over_objects():
    # Two images in one batch: components never join across images; ignore pixels are no object.
    target = torch.full((2, 6, 6), 255, dtype=torch.long)
    target[0, 0:2, 0:2] = 1  # area 4 -> sqrt 2
    target[1, 0:1, 0:3] = 1  # area 3
    target[1, 5, 5] = 0  # area 1
    pred = torch.zeros_like(target)
    pred[0, 0, 0] = 1  # 1/4
    pred[1, 0, 0:3] = 1  # 3/3
    orc = ObjectRecall(2)
    orc.update(pred, target)
    out = orc.compute()
    assert out[0]["objects"] == 3
    assert out[0]["recall"] == pytest.approx((1 / 4 + 1 + 1) / 3)  # mean over objects, not pixels
    assert all(b["objects"] == 0 and b["recall"] is None for b in out[1:])


def _brute_components(mask):
    """Flood fill with 8-connectivity: list of pixel lists."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    comps = []
    for y in range(h):
        for x in range(w):
            if mask[y, x] and not seen[y, x]:
                stack, comp = [(y, x)], []
                seen[y, x] = True
                while stack:
                    cy, cx = stack.pop()
                    comp.append((cy, cx))
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            ny, nx = cy + dy, cx + dx
                            if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                                seen[ny, nx] = True
                                stack.append((ny, nx))
                comps.append(comp)
    return comps


def test_object_recall_against_brute_force_flood_fill():
    rng = random.Random(3)
    k = 3
    t = np.array([[rng.choice([0, 1, 2, 255]) for _ in range(23)] for _ in range(19)])
    p = np.array([[rng.randrange(k) for _ in range(23)] for _ in range(19)])
    sums, counts = [0.0] * 5, [0] * 5
    for c in range(k):
        for comp in _brute_components(t == c):
            side = math.sqrt(len(comp))
            b = next(i for i, (lo, hi) in enumerate(SIZE_BUCKETS) if side >= lo and (hi is None or side < hi))
            sums[b] += sum(p[y, x] == c for y, x in comp) / len(comp)
            counts[b] += 1
    orc = ObjectRecall(k)
    orc.update(torch.from_numpy(p), torch.from_numpy(t))
    out = orc.compute()
    assert [b["objects"] for b in out] == counts
    for b, s, n in zip(out, sums, counts):
        assert b["recall"] == (pytest.approx(s / n) if n else None)


def test_object_recall_bad_label_raises():
    with pytest.raises(ValueError, match="label 5"):
        ObjectRecall(3).update(torch.zeros(4, 4, dtype=torch.long), torch.full((4, 4), 5))


def test_default_object_classes():
    # The background (by name, any case or padding) and the ignore index are no objects.
    assert default_object_classes(["background", "cat", "dog"], 3, 255) == (1, 2)
    assert default_object_classes([" Background", "cat"], 2, 255) == (1,)
    # Cityscapes-like names without a background: every class.
    assert default_object_classes(["road", "car"], 2, 255) == (0, 1)
    # No names: every class except the ignore index (here an ordinary class id).
    assert default_object_classes(None, 4, 255) == (0, 1, 2, 3)
    assert default_object_classes(None, 4, 0) == (1, 2, 3)
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        default_object_classes(["a", "b"], 3, 255)


def test_object_recall_object_classes_leave_out_the_background():
    # The hand-made masks of test_object_recall_hand_made_masks: with objects of classes 1 and 2 only,
    # the background's one object (1506 px, the [32, inf) bucket) is no longer counted.
    target = torch.zeros((40, 40), dtype=torch.long)
    target[1:3, 1:3] = 1
    target[3, 3] = 1
    target[10:15, 10:15] = 2
    target[20:28, 20:28] = 1
    pred = torch.zeros_like(target)
    pred[1:3, 1:3] = 1
    pred[10:15, 10:12] = 2
    names = ["Background", "disc", "square"]
    orc = ObjectRecall(3, object_classes=default_object_classes(names, 3, 255))
    orc.update(pred, target)
    out = orc.compute()
    assert [b["objects"] for b in out] == [1, 1, 1, 0, 0]
    assert [b["recall"] for b in out] == pytest.approx([4 / 5, 10 / 25, 0.0, None, None])
    # Explicit "every class" is the earlier behaviour, and is what None means.
    every = ObjectRecall(3, object_classes=range(3))
    every.update(pred, target)
    default = ObjectRecall(3)
    default.update(pred, target)
    assert every.compute() == default.compute()
    assert [b["objects"] for b in every.compute()] == [1, 1, 1, 0, 1]
    # Only class 2: one object.
    only = ObjectRecall(3, object_classes=[2])
    only.update(pred, target)
    assert [b["objects"] for b in only.compute()] == [0, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="object_classes holds 3"):
        ObjectRecall(3, object_classes=[1, 3])


# ------------------------------------------------------------------------------------------ Boundary IoU


def _brute_boundary(mask, d):
    """Pixels of `mask` with a non-mask pixel, or a position outside the image, within chessboard
    distance d (the paper's G_d & G, written as a loop over every pixel and its window)."""
    h, w = len(mask), len(mask[0])
    out = set()
    for y in range(h):
        for x in range(w):
            if not mask[y][x]:
                continue
            near = any(
                not (0 <= y + dy < h and 0 <= x + dx < w) or not mask[y + dy][x + dx]
                for dy in range(-d, d + 1)
                for dx in range(-d, d + 1)
            )
            if near:
                out.add((y, x))
    return out


def _brute_boundary_iou(preds, targets, k, ignore, ratio):
    inter, union = [0] * k, [0] * k
    for p, t in zip(preds, targets):
        p, t = p.tolist(), t.tolist()
        h, w = len(t), len(t[0])
        d = max(1, round(ratio * math.sqrt(h * h + w * w)))
        valid = {(y, x) for y in range(h) for x in range(w) if t[y][x] != ignore}
        for c in range(k):
            gb = _brute_boundary([[v == c for v in row] for row in t], d) & valid
            pb = _brute_boundary([[v == c for v in row] for row in p], d) & valid
            inter[c] += len(gb & pb)
            union[c] += len(gb | pb)
    return [i / u if u else None for i, u in zip(inter, union)]


def test_boundary_iou_by_hand():
    # 5x5 image: d = max(1, round(0.02 * 7.07)) = 1.
    # gt:   class 1 is the 3x3 square rows 1-3, cols 1-3; its boundary is the ring of 8 (the centre (2, 2)
    #       has all 8 neighbours in the mask). pred: the square shifted right to cols 2-4: ring of 8
    #       without (2, 3). Common ring pixels: (1,2) (1,3) (3,2) (3,3) -> class 1: 4 / (8 + 8 - 4) = 1/3.
    # class 0: every background pixel touches the border or the square, so the boundaries are the whole
    #       backgrounds: gt's 16-pixel frame, pred's cols 0-1 and rows 0, 4 (16 px); common: rows 0, 4 and
    #       (1..3, 0) = 13 -> 13 / (16 + 16 - 13) = 13/19.
    target = torch.zeros((5, 5), dtype=torch.long)
    target[1:4, 1:4] = 1
    pred = torch.zeros_like(target)
    pred[1:4, 2:5] = 1
    assert boundary_width(5, 5, 0.02) == 1
    b = BoundaryIoU(2)
    b.update(pred, target)
    r = b.compute()
    assert r["per_class_boundary_iou"] == pytest.approx([13 / 19, 1 / 3])
    assert r["boundary_iou"] == pytest.approx((13 / 19 + 1 / 3) / 2)
    # An ignored pixel, (0, 0), leaves both the intersection and the union of class 0: 12 / 18.
    target[0, 0] = 255
    b = BoundaryIoU(2)
    b.update(pred, target)
    assert b.compute()["per_class_boundary_iou"] == pytest.approx([12 / 18, 1 / 3])


def test_boundary_width_follows_the_diagonal():
    assert boundary_width(60, 80, 0.02) == 2  # diagonal 100
    assert boundary_width(300, 400, 0.02) == 10  # diagonal 500
    assert boundary_width(8, 6, 0.02) == 1  # round(0.2) = 0, at least 1
    assert boundary_width(30, 40, 0.05) == 2  # round(2.5) is 2, as Python's round in the reference


def _blobs(g, n, h, w, k):
    # Piecewise-constant label maps (nearest-upsampled random grids): regions with contours, not noise.
    coarse = torch.randint(0, k, (n, 1, h // 4 + 1, w // 4 + 1), generator=g).float()
    up = torch.nn.functional.interpolate(coarse, scale_factor=4, mode="nearest")[:, 0, :h, :w]
    return up.long()


@pytest.mark.parametrize(("h", "w", "ratio"), [(9, 11, 0.02), (30, 40, 0.1), (17, 23, 0.2), (6, 7, 0.5)])
def test_boundary_iou_against_brute_force(h, w, ratio):
    g = torch.Generator().manual_seed(h)
    k = 3
    targets = _blobs(g, 3, h, w, k)
    targets[torch.rand(targets.shape, generator=g) < 0.05] = 255
    preds = _blobs(g, 3, h, w, k)
    assert boundary_width(h, w, ratio) == max(1, round(ratio * math.hypot(h, w)))
    b = BoundaryIoU(k, dilation_ratio=ratio)
    b.update(preds[:2], targets[:2])  # a batch, then one image: the counts add up over the data set
    b.update(preds[2], targets[2])
    ref = _brute_boundary_iou(preds, targets, k, 255, ratio)
    r = b.compute()
    assert r["per_class_boundary_iou"] == pytest.approx(ref)
    present = [v for v in ref if v is not None]
    assert r["boundary_iou"] == pytest.approx(sum(present) / len(present))


def test_boundary_iou_empty_and_bad_input():
    b = BoundaryIoU(3)
    b.update(torch.zeros((4, 4), dtype=torch.long), torch.zeros((4, 4), dtype=torch.long))
    r = b.compute()
    # Only class 0 is anywhere; its boundary (the frame) matches exactly.
    assert r == {"boundary_iou": 1.0, "per_class_boundary_iou": [1.0, None, None]}
    assert BoundaryIoU(2).compute() == {"boundary_iou": None, "per_class_boundary_iou": [None, None]}
    with pytest.raises(ValueError, match="label 5"):
        BoundaryIoU(3).update(torch.zeros((4, 4), dtype=torch.long), torch.full((4, 4), 5))
    with pytest.raises(ValueError, match="class 3"):
        BoundaryIoU(3).update(torch.full((4, 4), 3), torch.zeros((4, 4), dtype=torch.long))
    with pytest.raises(ValueError, match="dilation_ratio"):
        BoundaryIoU(3, dilation_ratio=0)


OCTAVES_OPEN = ((1, 2), (2, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 128), (128, None))


def _brute_octave_recall(preds, targets, object_classes):
    """Per object (8-connected component of an object class), by loops: its recall and its octave."""
    from scipy import ndimage

    sums, counts = [0.0] * len(OCTAVES_OPEN), [0] * len(OCTAVES_OPEN)
    for p, t in zip(preds, targets):
        for c in object_classes:
            labels, n = ndimage.label(t == c, structure=np.ones((3, 3)))
            for j in range(1, n + 1):
                inside = labels == j
                area = int(inside.sum())
                recall = float((p[inside] == c).sum()) / area
                b = 0
                while b + 1 < len(OCTAVES_OPEN) and area >= OCTAVES_OPEN[b + 1][0] ** 2:
                    b += 1  # sqrt(area) >= the next bucket's min <=> area >= min^2
                sums[b] += recall
                counts[b] += 1
    return [s / n if n else None for s, n in zip(sums, counts)], counts


def test_object_recall_with_other_buckets_equals_a_brute_force_and_the_demo_octaves():
    # Same metric, other size groups: the demo's octave buckets through ObjectRecall(buckets=...), against a
    # per-object loop; report/measures.octave_recall (once its own copy of the metric) must agree.
    from atrous.report.measures import octave_recall

    rng = np.random.default_rng(4)
    targets = [rng.integers(0, 4, (23, 31)) for _ in range(3)]
    for t in targets:
        t[rng.random(t.shape) < 0.05] = 255
        t[2:14, 3:15] = 2  # a 12x12 object: sqrt(area) 12 -> [8, 16)
    preds = [
        np.where(rng.random(t.shape) < 0.7, np.where(t == 255, 0, t), rng.integers(0, 4, t.shape))
        for t in targets
    ]
    m = ObjectRecall(4, object_classes=[1, 2, 3], buckets=OCTAVES_OPEN)
    for p, t in zip(preds, targets):
        m.update(torch.from_numpy(p), torch.from_numpy(t))
    got = m.compute()
    want_recall, want_counts = _brute_octave_recall(preds, targets, [1, 2, 3])
    assert [(b["min"], b["max"]) for b in got] == list(OCTAVES_OPEN)
    assert [b["objects"] for b in got] == want_counts and sum(want_counts) > 20
    assert [b["recall"] for b in got] == pytest.approx(want_recall)
    demo = octave_recall(
        [torch.from_numpy(p) for p in preds], [torch.from_numpy(t) for t in targets], [1, 2, 3]
    )
    assert [b["objects"] for b in demo] == want_counts[:-1]
    assert [b["recall"] for b in demo] == pytest.approx(want_recall[:-1])


@pytest.mark.parametrize(
    "buckets", [(), ((0, 4), (4, 8)), ((0, 4), (5, None)), ((2, 4), (4, None)), ((0, 4), (4, 4), (4, None))]
)
def test_object_recall_refuses_buckets_that_miss_or_overlap_sizes(buckets):
    with pytest.raises(ValueError, match=r"buckets must be contiguous \[min, max\) pairs"):
        ObjectRecall(3, buckets=buckets)


def test_all_reduce_sum_without_a_process_group_is_the_identity():
    values = torch.tensor([1.5, 2.0])
    assert all_reduce_sum(values) is values


def _ddp_worker(rank, world, init_file, queue):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    cm = ConfusionMatrix(3)
    orc = ObjectRecall(3)
    biou = BoundaryIoU(3)
    t = torch.tensor([[0, 1], [2, 2]]) if rank == 0 else torch.tensor([[1, 1], [0, 255]])
    p = torch.tensor([[0, 1], [2, 0]]) if rank == 0 else torch.tensor([[1, 0], [0, 0]])
    cm.update(p, t)
    orc.update(p, t)
    biou.update(p, t)
    cm.all_reduce()
    orc.all_reduce()
    biou.all_reduce()
    # The one reduction (also atrous.evaluate's loss sum): a sum over processes, the input left as it was.
    mine = torch.tensor([rank + 1.0, 10.0 * rank], dtype=torch.float64)
    total = all_reduce_sum(mine)
    assert total.tolist() == [3.0, 10.0] and mine.tolist() == [rank + 1.0, 10.0 * rank]
    queue.put((rank, cm.mat.tolist(), orc.compute(), biou.compute()))
    dist.destroy_process_group()


def test_all_reduce_sums_over_two_processes(tmp_path):
    results = sorted(run_in_processes(_ddp_worker, 2, 2, tmp_path / "init"))
    # Single-process reference on both images.
    cm, orc, biou = ConfusionMatrix(3), ObjectRecall(3), BoundaryIoU(3)
    for t, p in [
        (torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0, 1], [2, 0]])),
        (torch.tensor([[1, 1], [0, 255]]), torch.tensor([[1, 0], [0, 0]])),
    ]:
        cm.update(p, t)
        orc.update(p, t)
        biou.update(p, t)
    for _, mat, rec, boundary in results:
        assert mat == cm.mat.tolist()
        assert rec == orc.compute()
        assert boundary == biou.compute()
