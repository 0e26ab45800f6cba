"""A pooling-free stack of 3x3 dilated convolutions at full resolution, one per rate.

The minimal model for the gridding and HDC experiments of Wang et al., "Understanding Convolution for
Semantic Segmentation" (WACV 2018): nothing else has a spatial extent, so `rates=(2, 2, 2, 2)` has exactly the
checkerboard receptive field of four rate-2 convolutions and `rates=(1, 2, 5, 1, 2, 5)` is an HDC schedule.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import nn

from atrous.models.backbones import FeatureInfo, wanted_features
from atrous.ops import AtrousConv2d, check_rates

NORMS = ("batch", "none")


class DilatedStack(nn.Sequential):
    """`len(rates)` blocks of AtrousConv2d(3x3, rate) [+ BatchNorm] + ReLU, all with `channels` outputs.

    `norm="none"` keeps no batch statistics (models whose outputs must not depend on the batch, e.g. the
    DDP equivalence test); the convolutions then carry a bias. Output: {"out": (N, channels, H, W)}.
    """

    def __init__(
        self, *, rates: Sequence[int], channels: int = 64, norm: str = "batch", in_channels: int = 3
    ):
        rates = check_rates(rates)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an integer >= 1, got {channels!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        layers: list[nn.Module] = []
        cin = in_channels
        for rate in rates:
            layers.append(AtrousConv2d(cin, channels, 3, dilation=rate, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(channels))
            layers.append(nn.ReLU(inplace=True))
            cin = channels
        super().__init__(*layers)
        self.rates = rates
        self.feature_info = {"out": FeatureInfo(channels, 1, rates[-1])}

    def forward(self, x: torch.Tensor, features: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """{"out": ...}, or {} when `features` does not name it."""
        if "out" not in wanted_features(self.feature_info, features):
            return {}
        return {"out": super().forward(x)}
