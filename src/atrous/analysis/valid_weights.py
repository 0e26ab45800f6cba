"""Valid weights of a dilated kernel on a finite feature map (Chen, Papandreou, Schroff, Adam, "Rethinking
Atrous Convolution for Semantic Image Segmentation" (DeepLab v3), 2017, section 3.3 and Fig. 4).

With "same" zero padding, tap `t` of a k x k kernel at rate r reads a real feature at position (y, x) only
when `(y + (t_y - c) r, x + (t_x - c) r)` lies inside the map. As r approaches the map size, fewer taps
land inside: at r >= size only the centre tap does, and the 3x3 filter degenerates to a 1x1 filter (the
reason DeepLab v3 adds image-level features). Fig. 4 plots, for a 65x65 map and a 3x3 kernel, the share of
positions with 1, 4 and 9 valid weights against the rate.
"""

from __future__ import annotations

from collections import Counter


def _axis_counts(n: int, kernel_size: int, rate: int) -> list[int]:
    """Valid taps along one axis at each of the n positions."""
    c = (kernel_size - 1) // 2
    return [sum(0 <= i + (t - c) * rate < n for t in range(kernel_size)) for i in range(n)]


def _check(size, rate, kernel_size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    for name, v in (("size", h), ("size", w), ("rate", rate), ("kernel_size", kernel_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd (centred taps), got {kernel_size}")
    return h, w


def valid_weights(size, rate: int, kernel_size: int = 3) -> dict:
    """Distribution over positions of how many of the k x k taps read real features (not padding).

    `size` is the feature map's side or (h, w). Returns `histogram` {valid taps: fraction of positions},
    `mean_fraction` (mean valid taps / k^2), `only_centre` (fraction of positions where only the centre tap
    is valid) and `all_valid` (fraction where every tap is).
    """
    h, w = _check(size, rate, kernel_size)
    rows, cols = _axis_counts(h, kernel_size, rate), _axis_counts(w, kernel_size, rate)
    # separable: the valid taps at (y, x) are rows[y] * cols[x]
    hist = Counter(a * b for a in rows for b in cols)
    total = h * w
    k2 = kernel_size * kernel_size
    mean = sum(a for a in rows) * sum(b for b in cols) / total / k2
    return {
        "size": [h, w],
        "rate": rate,
        "kernel_size": kernel_size,
        "histogram": {int(k): v / total for k, v in sorted(hist.items())},
        "mean_fraction": mean,
        "only_centre": hist.get(1, 0) / total,
        "all_valid": hist.get(k2, 0) / total,
    }


def valid_weight_curve(size=65, rates=range(1, 72), kernel_size: int = 3) -> list[dict]:
    """`valid_weights` for each rate (the data of DeepLab v3's Fig. 4 with the defaults)."""
    return [valid_weights(size, r, kernel_size) for r in rates]
