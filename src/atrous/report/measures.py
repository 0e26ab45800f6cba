"""Numbers the demo reads from a trained model's validation predictions beyond `atrous.evaluate`'s: object
recall in octave buckets of sqrt(area) (the 2^k claim needs [1,2) ... [64,128)), its small-object summary,
and the gridding artifact rate. Object recall is the one `atrous eval` reports (an object is an
8-connected region of one object class; its recall is the fraction of its pixels predicted as its class; a
bucket's recall is the mean over its objects), bucketed by octaves."""

from __future__ import annotations

import numpy as np
import torch

from atrous.metrics import ObjectRecall

OCTAVES: tuple[tuple[int, int], ...] = tuple((2**j, 2 ** (j + 1)) for j in range(7))  # [1,2) ... [64,128)
SMALL_PX = 8  # "small" objects: sqrt(area) below this (buckets [1,2), [2,4), [4,8))
IGNORE = 255  # the demo's data keep the default ignore index


def octave_recall(
    preds: list[torch.Tensor], targets: list[torch.Tensor], object_classes: list[int]
) -> list[dict]:
    """[{"min", "max", "objects", "recall"}] per octave bucket over pairs of (H, W) class maps; recall None
    for an empty bucket. `atrous.metrics.ObjectRecall` (the metric `atrous eval` reports) with octave
    buckets; objects of sqrt(area) >= 128 px are not counted (the demo has none)."""
    labels = [int(t[t != IGNORE].max()) for t in targets if bool((t != IGNORE).any())]
    recall = ObjectRecall(
        1 + max([0, *object_classes, *labels]),  # every label present is a class id
        ignore_index=IGNORE,
        object_classes=object_classes,
        buckets=(*OCTAVES, (OCTAVES[-1][1], None)),
    )
    for pred, target in zip(preds, targets):
        recall.update(torch.as_tensor(pred), torch.as_tensor(target))
    return recall.compute()[:-1]


def small_recall(buckets: list[dict]) -> float | None:
    """Object-weighted mean recall over the buckets below SMALL_PX (None when there is no such object)."""
    small = [b for b in buckets if b["max"] is not None and b["max"] <= SMALL_PX and b["objects"]]
    n = sum(b["objects"] for b in small)
    return sum(b["recall"] * b["objects"] for b in small) / n if n else None


def overall_recall(buckets: list[dict]) -> float | None:
    """Object-weighted mean recall over every object (None when there is none)."""
    n = sum(b["objects"] for b in buckets)
    return sum(b["recall"] * b["objects"] for b in buckets if b["objects"]) / n if n else None


def artifact_rate(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Gridding artifact: among horizontally or vertically adjacent pixel pairs with the same ground-truth
    class, the fraction whose predictions differ (0 for a prediction constant inside uniform regions)."""
    same_h = target[..., :, 1:] == target[..., :, :-1]
    same_v = target[..., 1:, :] == target[..., :-1, :]
    diff_h = (pred[..., :, 1:] != pred[..., :, :-1]) & same_h
    diff_v = (pred[..., 1:, :] != pred[..., :-1, :]) & same_v
    return float((diff_h.sum() + diff_v.sum()) / (same_h.sum() + same_v.sum()))


def seed_stats(runs: list):
    """(mean, std) of the per-seed metrics, element-wise: numbers are averaged (None if any seed has None;
    std is the sample standard deviation, 0 for one seed), dicts and lists recursively; an integer equal in
    every seed (a bucket's object count) stays itself in the mean and 0 in the std."""
    first = runs[0]
    if isinstance(first, dict):
        pairs = {k: seed_stats([r[k] for r in runs]) for k in first}
        return {k: m for k, (m, _) in pairs.items()}, {k: s for k, (_, s) in pairs.items()}
    if isinstance(first, list):
        pairs = [seed_stats(list(parts)) for parts in zip(*runs)]
        return [m for m, _ in pairs], [s for _, s in pairs]
    if isinstance(first, (str, bool)) or first is None or any(r is None for r in runs):
        return (first if all(r == first for r in runs) else None), None
    if isinstance(first, int) and all(r == first for r in runs):
        return first, 0
    values = np.asarray(runs, dtype=np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), std
