"""WASP: Artacho & Savakis, "Waterfall Atrous Spatial Pooling Architecture for Efficient Semantic
Segmentation", Sensors 19(24):5361, 2019 (code: bmartacho/WASP). The head alone, on atrous's backbones
(WASPnet's decoder is not part of it).

The "waterfall": atrous 3x3 convolutions at rates 6, 12, 18, 24 (output stride 16) in a cascade, each
reading the previous one's output (the fields grow as in a cascade: 13, 37, 73, 121 feature pixels), and
each output also leaving the cascade as a branch, as ASPP's parallel branches do, through two 1x1
convolutions. With the image-pooling branch the five branches are concatenated and projected by 1x1 conv +
BN + ReLU + dropout 0.5, as ASPP's projection. A waterfall layer reads 256 channels instead of ASPP's 2048,
hence the parameter saving the paper reports.

Where the authors' code and the paper differ, this follows the paper's drawing of the module: every
branch has its own pair of 1x1 convolutions (the code shares one 1x1 weight over all branches and applies
it twice), and the first waterfall layer is a 3x3 at rate 6 (the code's first layer is a 1x1). The branches' 1x1
convolutions are linear (no BatchNorm or ReLU between them), as in the code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from atrous.models._build import check_choice, resnet_backbone
from atrous.models.backbones import scaled
from atrous.models.heads import ASPPPooling
from atrous.models.segmenter import Segmenter
from atrous.ops import AtrousConv2d, check_rates

PAPER_RATES = (6, 12, 18, 24)  # at output stride 16


def wasp_rates(output_stride: int) -> tuple[int, ...]:
    """(6, 12, 18, 24) at output stride 16, doubled at 8 (the same field in input pixels; the authors' code
    uses 12, 24, 36, 48 at 8)."""
    check_choice("output_stride", output_stride, (8, 16))
    return tuple(r * 16 // output_stride for r in PAPER_RATES)


class WASP(nn.Module):
    """Waterfall atrous spatial pooling: (N, C, h, w) -> (N, out_channels, h, w)."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int = 256,
        rates: Sequence[int] = PAPER_RATES,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        rates = check_rates(rates, "WASP rates")
        self.rates = rates
        c = out_channels
        # the waterfall: layer i reads layer i-1's output (layer 0 the input)
        self.waterfall = nn.ModuleList(
            nn.Sequential(
                AtrousConv2d(in_channels if i == 0 else c, c, 3, dilation=r, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            )
            for i, r in enumerate(rates)
        )
        # each waterfall output leaves as a branch through two (linear) 1x1 convolutions
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.Conv2d(c, c, 1, bias=False)) for _ in rates
        )
        self.pool = ASPPPooling(in_channels, c)
        self.project = nn.Sequential(
            nn.Conv2d((len(rates) + 1) * c, c, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs, y = [], x
        for layer, branch in zip(self.waterfall, self.branches):
            y = layer(y)  # (N, c, h, w): the next layer's input
            outs.append(branch(y))
        outs.append(self.pool(x))  # (N, c, h, w) broadcast from (N, c, 1, 1)
        return self.project(torch.cat(outs, dim=1))  # (N, (len(rates) + 1) * c, h, w) -> (N, c, h, w)


class WASPHead(nn.Sequential):
    """WASP on the feature `feature`, then a 1x1 classifier: logits at the feature stride."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        feature: str,
        rates: Sequence[int],
        wasp_channels: int = 256,
    ) -> None:
        super().__init__(
            WASP(in_channels=in_channels, out_channels=wasp_channels, rates=rates),
            nn.Conv2d(wasp_channels, num_classes, 1),
        )
        self.feature = feature
        self.in_features = (feature,)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return super().forward(features[self.feature])


def wasp(
    *,
    num_classes: int,
    backbone: str = "resnet101",
    output_stride: int = 16,
    rates: Sequence[int] | None = None,
    wasp_channels: int | None = None,
    width: float = 1.0,
    pretrained_backbone: str | None = None,
) -> Segmenter:
    """WASP head on a dilated ResNet (output stride 16 as the paper, or 8); `rates` default to
    `wasp_rates(output_stride)`, `wasp_channels` to 256 times `width`."""
    net = resnet_backbone(
        backbone, output_stride=output_stride, width=width, pretrained_backbone=pretrained_backbone
    )
    head = WASPHead(
        in_channels=net.feature_info["layer4"].channels,
        num_classes=num_classes,
        feature="layer4",
        rates=wasp_rates(output_stride) if rates is None else tuple(rates),
        wasp_channels=scaled(256, width) if wasp_channels is None else wasp_channels,
    )
    return Segmenter(backbone=net, head=head, output_stride=output_stride)
