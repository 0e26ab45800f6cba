"""Inference strategies: whole-image, sliding-window, and multi-scale + flip.

Each strategy is an `infer(model, images) -> logits` callable on normalised `(N, 3, H, W)` float images
returning `(N, K, H, W)` logits at the input size; `atrous.evaluate.evaluate(..., infer=...)` and
`atrous.predict(..., infer=...)` take one.

- `whole_image`: one forward pass over the full image (what the models are built for: any H, W).
- `SlidingWindow`: overlapping tiles, logits averaged where tiles overlap (the "slide" inference of
  PSPNet, Zhao et al., CVPR 2017, and mmsegmentation), for images too large for one pass or for models
  trained on crops.
- `MultiScaleFlip`: the multi-scale inputs + left-right flip evaluation of DeepLab (Chen et al., "Rethinking
  Atrous Convolution for Semantic Image Segmentation", 2017, sec. 4.3 "Inference strategy"): the image is
  resized by each scale, passed (and its mirror image) through the base strategy, the outputs resized back
  to the input size, and the softmax probabilities averaged, as DeepLab's reference implementation does.
  The returned "logits" are the log of the averaged probabilities, so `softmax(logits)` gives exactly
  the average and `argmax` the averaged decision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from atrous.errors import AtrousError

Infer = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def whole_image(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """One forward pass: `(N, 3, H, W)` -> `(N, K, H, W)` logits."""
    return model(images)


def _pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive integer or a pair of them, got {value!r}")
    return pair


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of length `window` every `stride` covering `[0, size)`.

    The last window is shifted back to end at `size` (so windows never run past the image and every pixel
    is covered); an image no larger than the window gets a single window at 0 (clipped to the image).
    """
    if size <= window:
        return [0]
    count = math.ceil((size - window) / stride) + 1
    return [min(i * stride, size - window) for i in range(count)]


class SlidingWindow:
    """Tile the image with `size` windows every `stride` pixels; average the logits where tiles overlap.

    `stride` defaults to two thirds of the window (one third overlap, as PSPNet and mmsegmentation), so
    every pixel away from the border is seen with context from both sides. Windows are clipped to the
    image, so an image smaller than the window is one whole-image pass.
    """

    def __init__(
        self,
        *,
        size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        base: Infer = whole_image,
    ) -> None:
        self.size = _pair("size", size)
        self.stride = (
            _pair("stride", stride) if stride is not None else tuple(max(1, 2 * s // 3) for s in self.size)
        )
        if any(s > z for s, z in zip(self.stride, self.size)):
            raise ValueError(
                f"stride {self.stride} must not exceed the window size {self.size}: pixels between windows "
                "would get no prediction"
            )
        self.base = base

    def __call__(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        (wh, ww), (sh, sw) = self.size, self.stride
        total = None  # (N, K, H, W) sum of window logits
        count = images.new_zeros((1, 1, h, w))  # how many windows covered each pixel
        for y in window_starts(h, wh, sh):
            for x in window_starts(w, ww, sw):
                tile = images[:, :, y : y + wh, x : x + ww]
                logits = self.base(model, tile)  # (N, K, th, tw)
                if total is None:
                    total = images.new_zeros((n, logits.shape[1], h, w))
                total[:, :, y : y + wh, x : x + ww] += logits
                count[:, :, y : y + wh, x : x + ww] += 1
        return total / count

    def __repr__(self) -> str:
        return f"SlidingWindow(size={self.size}, stride={self.stride})"


def scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """The input size at `scale`: rounded to the nearest pixel, at least 1."""
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


class MultiScaleFlip:
    """DeepLab's multi-scale + flip inference: average of softmax probabilities over scales and mirrors.

    Each scaled image is bilinearly resized (align_corners=False), passed through `base` (whole-image or a
    `SlidingWindow`), its logits resized back to the input size; with `flip` the mirrored image is passed
    too and its output mirrored back. Returns `log(mean of probabilities)`: `(N, K, H, W)`.
    """

    def __init__(self, *, scales: Sequence[float] = (1.0,), flip: bool = True, base: Infer = whole_image):
        scales = tuple(float(s) for s in scales)
        if not scales or any(not math.isfinite(s) or s <= 0 for s in scales):
            raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales!r}")
        self.scales = scales
        self.flip = bool(flip)
        self.base = base

    def __call__(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        total = None  # (N, K, H, W) sum of probabilities
        passes = 0
        for scale in self.scales:
            size = scaled_size(h, w, scale)
            x = (
                images
                if size == (h, w)
                else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            )
            variants = [(x, False), (x.flip(-1), True)] if self.flip else [(x, False)]
            for inp, mirrored in variants:
                logits = self.base(model, inp)
                if mirrored:
                    logits = logits.flip(-1)
                if size != (h, w):
                    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
                probs = logits.softmax(dim=1)
                total = probs if total is None else total + probs
                passes += 1
        # log of the mean probability; the clamp keeps a class with probability 0 finite
        return torch.log((total / passes).clamp_min(torch.finfo(total.dtype).tiny))

    def __repr__(self) -> str:
        return f"MultiScaleFlip(scales={self.scales}, flip={self.flip}, base={describe(self.base)})"


def describe(infer: Infer) -> str:
    """A readable name for a strategy: "whole image", "SlidingWindow(size=..., stride=...)", ..."""
    return "whole image" if infer is whole_image else repr(infer)


def parse_tta(text: str) -> tuple[tuple[float, ...], bool]:
    """Parse `--tta flip,0.75,1.0,1.25` into (scales, flip); scales default to (1.0,)."""
    scales: list[float] = []
    flip = False
    for token in (t.strip() for t in text.split(",")):
        if token.lower() == "flip":
            flip = True
            continue
        try:
            scale = float(token)
        except ValueError:
            scale = float("nan")
        if not math.isfinite(scale) or scale <= 0:
            raise AtrousError(
                f"--tta {text!r}: {token!r} is neither 'flip' nor a positive scale; "
                "write e.g. --tta flip,0.75,1.0,1.25"
            )
        scales.append(scale)
    return tuple(scales) or (1.0,), flip


def build_infer(
    *,
    sliding: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> Infer:
    """The inference strategy for these settings: whole image, sliding window, multi-scale + flip, or
    multi-scale + flip over sliding windows."""
    if stride is not None and sliding is None:
        raise ValueError("stride needs a sliding window size")
    base: Infer = whole_image if sliding is None else SlidingWindow(size=sliding, stride=stride)
    if tuple(scales) == (1.0,) and not flip:
        return base
    return MultiScaleFlip(scales=scales, flip=flip, base=base)
