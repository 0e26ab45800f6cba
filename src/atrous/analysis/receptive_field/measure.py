"""The receptive-field answers built on the tracer: `receptive_field`, `small_object_limit` and the
warnings for rates that degenerate toward 1x1 (`degenerate_rates`)."""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from torch import nn

from atrous.analysis.receptive_field.tracer import trace


def _frac_int(v: Fraction):
    return int(v) if v.denominator == 1 else float(v)


def receptive_field(model: nn.Module, input_size=(512, 512), *, in_channels: int | None = None) -> dict:
    """The theoretical receptive field of `model`'s output, following its real graph.

    Returns a JSON-able dict: `rf` [h, w] (the whole input when `global`, else the largest local one),
    `rf_local` [h, w] (the largest receptive field through local paths only, unclipped by the image
    border), `global` (a global-pooling path reaches the output), `output_stride` (the largest jump on the
    way), `output_jump` [h, w] (the output's own spacing; 1 for logits at input size), `small_object_limit`
    (pixels, see `small_object_limit`), `input_size`, `layers` (one row per spatial layer in call order:
    name, type, kernel, stride, dilation, jump, rf) and `notes` (where the answer is approximate).
    """
    tracer = trace(model, input_size, in_channels=in_channels)
    out = tracer.output
    m = tracer.meta.get(out) if isinstance(out, torch.Tensor) else None
    if m is None:
        raise ValueError("the model's output does not depend on its input through a tracked tensor op")
    h, w = tracer.input_size
    local = [ax.size for ax in m.axes] if m.axes is not None else [0, 0]
    rf = [max(local[0], h), max(local[1], w)] if m.is_global else local
    stride = max(tracer.max_jump)
    detail = [math.ceil(d) if d < 10**9 else None for d in m.detail]
    if m.axes is None:  # a classifier-style output: report the largest local field on the way
        local = [max((row["rf"][i] for row in tracer.rows if row["rf"]), default=0) for i in range(2)]
    return {
        "input_size": [h, w],
        "rf": rf,
        "rf_local": local,
        "global": m.is_global,
        "output_stride": _frac_int(stride),
        "output_jump": [_frac_int(ax.jump) for ax in m.axes] if m.axes else None,
        "small_object_limit": max(d for d in detail if d is not None) if any(detail) else None,
        "layers": tracer.rows,
        "notes": sorted(tracer.notes),
        "warnings": degenerate_rates(tracer.rows),
    }


def degenerate_rates(rows: list[dict], threshold: float = 0.5) -> list[str]:
    """Warnings for dilated layers whose kernel degenerates toward 1x1 on their feature map: on average
    fewer than `threshold` of the taps read real features (DeepLab v3, Fig. 4)."""
    from atrous.analysis.valid_weights import valid_weights

    out = []
    for row in rows:
        d, k, size = row.get("dilation"), row.get("kernel"), row.get("in_size")
        if not d or not k or not size or max(d) <= 1 or k[0] != k[1] or d[0] != d[1] or k[0] % 2 == 0:
            continue
        v = valid_weights(tuple(size), d[0], k[0])
        if v["mean_fraction"] < threshold:
            out.append(
                f"{row['name']}: rate {d[0]} on a {size[0]}x{size[1]} map: on average "
                f"{v['mean_fraction'] * k[0] * k[0]:.1f} of {k[0] * k[0]} taps read real features "
                f"({v['only_centre']:.0%} of positions only the centre): the kernel degenerates toward 1x1 "
                "(use a larger input or a smaller rate)"
            )
    return out


def small_object_limit(model: nn.Module, input_size=(512, 512)) -> int:
    """The object width (pixels) below which `model` cannot place an object.

    Follows the path to the output: a strided layer makes the grid of independent values as coarse as its
    spacing; bilinear / nearest interpolation and per-channel (depthwise) transposed convolution add no
    detail; a skip connection from a finer map (FCN-8s, DeepLab v3+ decoder) or a learned sub-pixel
    upsampling (DUC's pixel shuffle, a channel-mixing transposed convolution) restores it. An object
    narrower than the final spacing `d` can fall between the output's independent samples; every object at
    least `d` wide contains one. Returns `d` rounded up.
    """
    limit = receptive_field(model, input_size)["small_object_limit"]
    if limit is None:
        raise ValueError("the model's output has no local path from the input: no small-object limit")
    return limit
