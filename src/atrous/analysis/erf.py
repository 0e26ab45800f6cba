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
