"""Backbones of the dilation family: VGG-16 (FCN, Yu & Koltun front-end), ResNet-18/34/50/101 with a built-in
output stride, and DRN.

Every backbone returns a dict of named feature maps and declares them in `feature_info`
(name -> `FeatureInfo(channels, stride, dilation)`), in the spirit of timm's `feature_info`; heads read
their input channels from it instead of hard-coding 2048. `backbone(x, features=names)` returns only those
(the segmenter asks for what its heads read), so that the other stages' maps are freed as soon as the next
stage has consumed them instead of staying alive through the deepest stage and the head.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import torch

from atrous.errors import AtrousError


@dataclass(frozen=True)
class FeatureInfo:
    """One backbone output: `channels`; `stride` (input pixels per feature pixel, so a map of
    `ceil(H / stride)` rows); `dilation` (the rate of the last spatial convolution that produced it)."""

    channels: int
    stride: int
    dilation: int


def wanted_features(feature_info: Mapping[str, FeatureInfo], features: Collection[str] | None) -> set[str]:
    """The feature names a backbone's `forward(x, features=...)` must return (None: all of them); an
    unknown name is a ValueError listing the valid ones."""
    if features is None:
        return set(feature_info)
    unknown = [f for f in features if f not in feature_info]
    if unknown:
        raise ValueError(f"unknown feature(s) {unknown}: this backbone returns {list(feature_info)}")
    return set(features)


def run_stages(
    backbone: torch.nn.Module,
    x: torch.Tensor,
    stem: Callable[[torch.Tensor], torch.Tensor],
    stages: Sequence[str],
    wanted: Collection[str],
) -> dict[str, torch.Tensor]:
    """`stem(x)`, then the stages `stages` of `backbone` (nn.Sequential attributes) in order, returning
    those named in `wanted`; stages after the last wanted one do not run.

    Block by block, not through a stage's own forward, whose caller would keep the stage's input alive
    until its last block (ResNet-50 OS 8 at 512x512: layer3's 16 MiB through layer4); the stem runs here,
    not in the caller, so that no caller's variable keeps the stem's output alive either.
    """
    out = {}
    x = stem(x)
    for name in stages:
        if len(out) == len(wanted):
            break
        for block in getattr(backbone, name):
            x = block(x)
        if name in wanted:
            out[name] = x
    return out


def scaled(channels: int, width: float) -> int:
    """`channels` times the width multiplier, at least 1 (tiny models for CPU training)."""
    return max(1, round(channels * width))


def check_width(width: float) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 8:
        raise ValueError(f"width must be a number in (0, 8], got {width!r}")
    return float(width)


def load_weights_file(
    module: torch.nn.Module,
    path: str | os.PathLike,
    *,
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    expected_format: str,
) -> None:
    """Load a local weights file into `module` after `convert` maps its keys; never downloads.

    Every problem (missing file, not a tensor dict, missing/unexpected keys, shape mismatch) is an
    AtrousError naming the file and saying what is wrong, raised before any weight is copied.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AtrousError(f"pretrained_backbone {path!r}: no such file (give a local {expected_format} file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise AtrousError(
            f"pretrained_backbone {path!r}: cannot be read as a {expected_format} file "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AtrousError(
            f"pretrained_backbone {path!r}: expected a state_dict (name -> tensor) in {expected_format}"
        )
    state = convert(dict(state))
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}")
        raise AtrousError(
            f"pretrained_backbone {path!r}: {'; '.join(parts)}: give a {expected_format} file "
            "for this backbone"
        )
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise AtrousError(
                f"pretrained_backbone {path!r}: {key} has shape {tuple(state[key].shape)}, the model "
                f"expects {tuple(value.shape)}: the file is for another depth or width (use width=1.0)"
            )
    module.load_state_dict(state)
