"""Effective receptive field (W. Luo, Y. Li, R. Urtasun, R. Zemel, "Understanding the Effective Receptive
Field in Deep Convolutional Neural Networks", NeurIPS 2016).

The ERF is the input-gradient magnitude of the centre output pixel: set the output gradient to 1 at the
centre (every channel) and 0 elsewhere, back-propagate, take |dy/dx| summed over input channels, and
average over random inputs (Gaussian, as in the paper) or over real images. It is roughly Gaussian and
occupies a small part of the theoretical receptive field; training grows it. The summary radii are
Euclidean distances from the centre that hold 50 % and 95 % of the gradient mass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from atrous.analysis.receptive_field import receptive_field


def _logits(y):
    if isinstance(y, dict):
        return y["out"]
    if isinstance(y, (tuple, list)):
        return y[0]
    return y


def _radius(heat: np.ndarray, centre: tuple[float, float], fraction: float) -> float:
    ys, xs = np.indices(heat.shape)
    dist = np.hypot(ys - centre[0], xs - centre[1]).ravel()
    order = np.argsort(dist, kind="stable")
    mass = np.cumsum(heat.ravel()[order])
    i = int(np.searchsorted(mass, fraction * mass[-1]))
    return float(dist[order][min(i, len(order) - 1)])


def erf(
    model: nn.Module,
    input_size=(257, 257),
    *,
    samples: int = 8,
    images: Iterable[torch.Tensor] | None = None,
    in_channels: int | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Effective receptive field of the centre output pixel of `model` (in eval mode).

    `images` (optional): an iterable of (C, H, W) or (N, C, H, W) float tensors, or of (images, masks)
    pairs as a `DataLoader` over a data set with `eval_transform` yields, used instead of `samples` Gaussian inputs; they are resized to `input_size`. Returns
    `heatmap` (an (H, W) float64 numpy array, max 1), `radius50` / `radius95` (pixels), `rf` (the
    theoretical local receptive field [h, w]), `ratio` (radius95 over the radius that holds 95 % of a
    flat weighting of the theoretical RF box clipped to the input: about 1 when the ERF fills the RF, well
    below 1 for the Gaussian-like ERF of a deep net), `samples` (inputs averaged) and `input_size`.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(int(v) for v in input_size)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    theory = receptive_field(model, (h, w), in_channels=in_channels)
    if in_channels is None:
        in_channels = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    if images is None:
        source = (torch.randn(1, in_channels, h, w, generator=gen) for _ in range(samples))
        total = samples
    else:
        source, total = images, None
    try:
        from tqdm import tqdm

        bar = tqdm(source, total=total, desc="erf", unit="input", disable=not progress, leave=False)
        acc = torch.zeros(h, w, dtype=torch.float64)
        count = 0
        for x in bar:
            if isinstance(x, (tuple, list)):  # a data loader's (images, masks) batch
                x = x[0]
            x = x.unsqueeze(0) if x.dim() == 3 else x
            if tuple(x.shape[-2:]) != (h, w):
                x = F.interpolate(x.float(), size=(h, w), mode="bilinear", align_corners=False)
            x = x.to(device=device, dtype=torch.float32).requires_grad_(True)
            y = _logits(model(x))  # (N, K, Ho, Wo)
            grad = torch.zeros_like(y)
            grad[:, :, y.shape[-2] // 2, y.shape[-1] // 2] = 1.0
            y.backward(grad)
            acc += x.grad.detach().abs().sum(1).sum(0).double().cpu()  # per-image gradients, summed
            count += x.shape[0]
        if count == 0:
            raise ValueError("no input to average: the image iterable was empty")
    finally:
        model.train(was_training)
    heat = (acc / count).numpy()
    peak = heat.max()
    heat = heat / peak if peak > 0 else heat
    # the output centre, in input coordinates (outputs at input size: the same pixel)
    oh, ow = y.shape[-2:]
    centre = ((oh // 2 + 0.5) * h / oh - 0.5, (ow // 2 + 0.5) * w / ow - 0.5)
    r95 = _radius(heat, centre, 0.95)
    # the same statistic for a flat weighting of the theoretical RF box (clipped to the input)
    flat = np.zeros_like(heat)
    rh, rw = theory["rf_local"] if theory["rf_local"][0] else (h, w)
    top, left = max(0, math.ceil(centre[0] - rh / 2)), max(0, math.ceil(centre[1] - rw / 2))
    flat[top : math.floor(centre[0] + rh / 2) + 1, left : math.floor(centre[1] + rw / 2) + 1] = 1.0
    return {
        "input_size": [h, w],
        "samples": count,
        "radius50": _radius(heat, centre, 0.5),
        "radius95": r95,
        "rf": theory["rf_local"],
        "global": theory["global"],
        "ratio": r95 / max(_radius(flat, centre, 0.95), 0.5),
        "centre": [float(c) for c in centre],
        "heatmap": heat,
    }


def plot_erf(result: dict, path, *, title: str = "effective receptive field") -> None:
    """The heat-map with the 50 % / 95 % circles and the theoretical RF box (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, Rectangle

    from atrous._io import atomic_path

    heat = result["heatmap"]
    cy, cx = result["centre"]
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    im = ax.imshow(heat, cmap="magma", interpolation="nearest")
    for r, style in ((result["radius50"], "--"), (result["radius95"], "-")):
        ax.add_patch(Circle((cx, cy), r, fill=False, color="cyan", ls=style, lw=1))
    rh, rw = result["rf"]
    ax.add_patch(Rectangle((cx - rw / 2, cy - rh / 2), rw, rh, fill=False, color="white", lw=0.8, ls=":"))
    ax.set_xlim(-0.5, heat.shape[1] - 0.5)
    ax.set_ylim(heat.shape[0] - 0.5, -0.5)
    ax.set_title(f"{title}\nr50={result['radius50']:.1f}px r95={result['radius95']:.1f}px", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


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
