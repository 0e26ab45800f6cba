"""Object sizes in a data set's masks against a model's small-object limit and effective receptive field:
which classes have objects the model cannot place (narrower than the limit) or sees only in part (wider
than the ERF)."""

from __future__ import annotations

import math

import numpy as np


def object_sizes(dataset, *, num_classes: int | None = None, ignore_index: int = 255, limit=None) -> dict:
    """Per-class sizes (sqrt(area), pixels) of the 8-connected objects in a data set's masks.

    `dataset[i]` returns (image, mask); only the masks are read. Returns {class index: sorted list of
    sizes}. `limit` caps the number of items read.
    """
    from scipy import ndimage

    sizes: dict[int, list[float]] = {}
    n = len(dataset) if limit is None else min(limit, len(dataset))
    structure = np.ones((3, 3), dtype=bool)  # 8-connected, as atrous.metrics.ObjectRecall
    for i in range(n):
        mask = np.asarray(dataset[i][1]).squeeze()
        for c in np.unique(mask):
            if c == ignore_index:
                continue
            labels, k = ndimage.label(mask == c, structure=structure)
            if k:
                area = np.bincount(labels.ravel(), minlength=k + 1)[1:]
                sizes.setdefault(int(c), []).extend(np.sqrt(area).tolist())
    return {c: sorted(v) for c, v in sorted(sizes.items())}


def objects_at_risk(
    sizes: dict[int, list[float]], *, limit: float, erf_radius: float | None = None
) -> list[dict]:
    """For each class: object count, median size, share of objects narrower than the model's small-object
    `limit` (and, when given, share wider than the ERF's 95 % diameter, which the model sees only in part);
    `at_risk` when a quarter or more of its objects are below the limit."""
    from atrous.metrics import SIZE_BUCKETS

    rows = []
    for c, values in sizes.items():
        arr = np.asarray(values)
        hist = [
            int(((arr >= lo) & (arr < (hi if hi is not None else math.inf))).sum()) for lo, hi in SIZE_BUCKETS
        ]
        below = float((arr < limit).mean()) if len(arr) else 0.0
        row = {
            "class": c,
            "objects": len(arr),
            "median_size": float(np.median(arr)) if len(arr) else None,
            "histogram": hist,
            "below_limit": below,
            "at_risk": below >= 0.25,
        }
        if erf_radius is not None:
            row["wider_than_erf"] = float((arr > 2 * erf_radius + 1).mean()) if len(arr) else 0.0
        rows.append(row)
    return rows
