"""`dilated_net(block="reparam")`: the pooling-free stack with every 3x3 dilated convolution replaced by a
UniRepLKNet dilated re-parameterisation block (Ding et al., CVPR 2024) and a 1x1 convolution.

A plain layer at rate r reads 9 taps spread over (2r+1) x (2r+1) pixels; its re-parameterised counterpart
is a depthwise `DilatedReparam` with a (2r+1) x (2r+1) large kernel and UniRepLKNet's branches for that size
(`UNIREPLKNET_BRANCHES`; rate 1 has no branch: a 3x3 depthwise convolution), then a 1x1 convolution that
mixes channels. Each layer covers the same field as the plain one, densely: the same theoretical receptive
field (33 px for rates 1,2,5,1,2,5), no holes. Depthwise + pointwise costs fewer parameters per channel than
a dense 3x3, so the stack is made wider to hold as many parameters as the plain stack (`matched_channels`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import nn

from atrous.models.backbones import FeatureInfo, wanted_features
from atrous.ops import UNIREPLKNET_BRANCHES, DilatedReparam

MAX_RATE = max(UNIREPLKNET_BRANCHES) // 2  # kernel 17: the largest size UniRepLKNet gives branches for


def reparam_branches(rate: int) -> tuple[int, tuple[tuple[int, int], ...]]:
    """The large kernel (2 * rate + 1) and UniRepLKNet's branches for it; rate 1: a 3x3, no branch."""
    if isinstance(rate, bool) or not isinstance(rate, int) or not 1 <= rate <= MAX_RATE:
        raise ValueError(
            f"block='reparam' builds a (2r+1)-kernel block per rate r, and UniRepLKNet's branch sets go up to "
            f"kernel {2 * MAX_RATE + 1}: rates must be integers in 1..{MAX_RATE}, got {rate!r}"
        )
    kernel = 2 * rate + 1
    return kernel, UNIREPLKNET_BRANCHES.get(kernel, ())


def stack_parameters(rates: Sequence[int], channels: int, *, block: str, num_classes: int) -> int:
    """Parameters of `dilated_net` (batch norm, bias-free convs, 1x1 classifier with bias) by formula."""
    total, cin = 0, 3
    for rate in rates:
        if block == "plain":
            total += 9 * cin * channels + 2 * channels  # 3x3 conv + BN affine
        else:
            kernel, branches = reparam_branches(rate)
            spatial = kernel * kernel + sum(k * k for k, _ in branches)  # depthwise taps per channel
            total += cin * spatial + 2 * cin * (1 + len(branches))  # DilatedReparam (+ one BN per branch)
            total += cin * channels + 2 * channels  # 1x1 conv + BN affine
        cin = channels
    return total + channels * num_classes + num_classes


def matched_channels(rates: Sequence[int], channels: int, *, num_classes: int) -> int:
    """The width of the re-parameterised stack whose parameter count is closest to the plain stack's at
    `channels` (both with their classifiers)."""
    target = stack_parameters(rates, channels, block="plain", num_classes=num_classes)
    c = 1
    while stack_parameters(rates, c, block="reparam", num_classes=num_classes) < target:
        c += 1  # the count grows with the width: c is the first width at or past the target
    below = stack_parameters(rates, c - 1, block="reparam", num_classes=num_classes) if c > 1 else None
    above = stack_parameters(rates, c, block="reparam", num_classes=num_classes)
    return c - 1 if below is not None and target - below < above - target else c


class ReparamStack(nn.Sequential):
    """`len(rates)` layers of DilatedReparam(cin, 2r+1) + 1x1 conv (cin -> channels) + BatchNorm + ReLU.
    Output: {"out": (N, channels, H, W)}."""

    def __init__(self, *, rates: Sequence[int], channels: int, in_channels: int = 3) -> None:
        rates = tuple(rates)
        if not rates:
            raise ValueError("rates must be a non-empty list of integers >= 1, got ()")
        layers: list[nn.Module] = []
        cin = in_channels
        for rate in rates:
            kernel, branches = reparam_branches(rate)
            layers += [
                DilatedReparam(cin, kernel, branches=branches),
                nn.Conv2d(cin, channels, 1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            cin = channels
        super().__init__(*layers)
        self.rates = rates
        # dilation 1: each layer's merged kernel is dense (its dilated branches are inside it)
        self.feature_info = {"out": FeatureInfo(channels, 1, 1)}

    def forward(self, x: torch.Tensor, features: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """{"out": ...}, or {} when `features` does not name it."""
        if "out" not in wanted_features(self.feature_info, features):
            return {}
        return {"out": super().forward(x)}
