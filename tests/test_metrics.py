"""Metrics against hand-computed confusion matrices, brute-force loops and hand-made object masks."""

import math
import random

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from atrous.metrics import SIZE_BUCKETS, ConfusionMatrix, ObjectRecall


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


def _brute_force(preds, targets, k, ignore):
    mat = [[0] * k for _ in range(k)]
    for p, t in zip(preds, targets):
        for pv, tv in zip(p.flatten().tolist(), t.flatten().tolist()):
            if tv != ignore:
                mat[tv][pv] += 1
    total = sum(map(sum, mat))
    ious, accs, fw = [], [], 0.0
    for c in range(k):
        tp = mat[c][c]
        g = sum(mat[c])
        q = sum(mat[r][c] for r in range(k))
        union = g + q - tp
        ious.append(tp / union if union else None)
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
    for key in ("miou", "pixel_acc", "mean_acc", "fw_iou"):
        assert r[key] == pytest.approx(ref[key]), key
    assert r["per_class_iou"] == pytest.approx(ref["per_class_iou"])


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


def _ddp_worker(rank, world, init_file, queue):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    cm = ConfusionMatrix(3)
    orc = ObjectRecall(3)
    t = torch.tensor([[0, 1], [2, 2]]) if rank == 0 else torch.tensor([[1, 1], [0, 255]])
    p = torch.tensor([[0, 1], [2, 0]]) if rank == 0 else torch.tensor([[1, 0], [0, 0]])
    cm.update(p, t)
    orc.update(p, t)
    cm.all_reduce()
    orc.all_reduce()
    queue.put((rank, cm.mat.tolist(), orc.compute()))
    dist.destroy_process_group()


def test_all_reduce_sums_over_two_processes(tmp_path):
    ctx = mp.get_context("fork")  # no re-import of torch in the children: seconds faster
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, tmp_path / "init", queue)) for r in range(2)]
    for proc in procs:
        proc.start()
    try:
        results = sorted(queue.get(timeout=120) for _ in procs)
        for proc in procs:
            proc.join(timeout=60)
            assert proc.exitcode == 0
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
    # Single-process reference on both images.
    cm, orc = ConfusionMatrix(3), ObjectRecall(3)
    for t, p in [
        (torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0, 1], [2, 0]])),
        (torch.tensor([[1, 1], [0, 255]]), torch.tensor([[1, 0], [0, 0]])),
    ]:
        cm.update(p, t)
        orc.update(p, t)
    for _, mat, rec in results:
        assert mat == cm.mat.tolist()
        assert rec == orc.compute()
