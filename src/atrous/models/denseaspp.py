"""DenseASPP: Yang, Yu, Zhang, Li, Yang, "DenseASPP for Semantic Segmentation in Street Scenes", CVPR 2018
(code: DeepMotionAIResearch/DenseASPP).

Atrous layers at rates 3, 6, 12, 18, 24 (output stride 8) connected densely: each layer reads the
backbone's feature and the outputs of every earlier layer, so the rates combine in sequence as well as in
parallel. A chain through all five reaches 1 + 2 * (3 + 6 + 12 + 18 + 24) = 127 feature pixels (the paper's
"128"), against ASPP's widest branch alone (1 + 2 * 24 = 49), and the many paths between them cover the
scales densely. Each layer is BN-ReLU-1x1 conv (to `inter_channels`)-BN-ReLU-3x3 atrous conv (to
`growth_channels`), then dropout 0.1; the first layer skips the leading BatchNorm (the backbone's feature
is already normalised). The classifier reads `in_channels + len(rates) * growth_channels` channels through
dropout 0.1 and a 1x1 convolution.

Channel counts as the official configurations (the input is DenseNet's last feature after its halving
transition): DenseASPP-121 reads 512 channels, reduces to 128, grows by 64 (512 + 5 * 64 = 832 into the
classifier); DenseASPP-161 reads 1104, reduces to 512, grows by 128 (1744). On atrous's ResNets (2048
channels) the defaults are DenseASPP-161's 512 and 128.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from atrous.models._build import resnet_backbone
from atrous.models.backbones import scaled
from atrous.models.segmenter import Segmenter
from atrous.ops import AtrousConv2d, check_rates

PAPER_RATES = (3, 6, 12, 18, 24)  # at output stride 8


def dense_aspp_rates(output_stride: int) -> tuple[int, ...]:
    """The paper's rates at output stride 8; at 16 halved (the same field in input pixels, as ASPP's rates
    are derived), rounded up where halving leaves a fraction: (2, 3, 6, 9, 12)."""
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16 for DenseASPP, got {output_stride!r}")
    return tuple(math.ceil(r * 8 / output_stride) for r in PAPER_RATES)


class DenseASPPLayer(nn.Sequential):
    """[BN-] ReLU - 1x1 conv - BN - ReLU - 3x3 conv at `rate` - dropout: (N, cin, h, w) -> (N, growth, h, w).
    Convolutions with bias, as the official code."""

    def __init__(
        self,
        *,
        in_channels: int,
        inter_channels: int,
        growth_channels: int,
        rate: int,
        dropout: float,
        bn_start: bool,
    ) -> None:
        layers: list[nn.Module] = [nn.BatchNorm2d(in_channels)] if bn_start else []
        layers += [
            nn.ReLU(),
            nn.Conv2d(in_channels, inter_channels, 1),
            nn.BatchNorm2d(inter_channels),
            nn.ReLU(inplace=True),
            AtrousConv2d(inter_channels, growth_channels, 3, dilation=rate),
            nn.Dropout2d(dropout),
        ]
        super().__init__(*layers)


class DenseASPP(nn.Module):
    """The densely connected atrous layers: (N, C0, h, w) -> (N, C0 + len(rates) * growth, h, w), each
    layer's output concatenated in front of its input (the official order: newest first)."""

    def __init__(
        self,
        *,
        in_channels: int,
        rates: Sequence[int] = PAPER_RATES,
        inter_channels: int = 512,
        growth_channels: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        rates = check_rates(rates, "DenseASPP rates")
        self.rates = rates
        self.layers = nn.ModuleList(
            DenseASPPLayer(
                in_channels=in_channels + i * growth_channels,
                inter_channels=inter_channels,
                growth_channels=growth_channels,
                rate=rate,
                dropout=dropout,
                bn_start=i > 0,
            )
            for i, rate in enumerate(rates)
        )
        self.out_channels = in_channels + len(rates) * growth_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([layer(x), x], dim=1)  # (N, C0 + (i+1) * growth, h, w)
        return x


class DenseASPPHead(nn.Module):
    """DenseASPP on the feature `feature`, then dropout and a 1x1 classifier: logits at the feature stride."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        feature: str,
        rates: Sequence[int] = PAPER_RATES,
        inter_channels: int = 512,
        growth_channels: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.feature = feature
        self.in_features = (feature,)
        self.dense_aspp = DenseASPP(
            in_channels=in_channels,
            rates=rates,
            inter_channels=inter_channels,
            growth_channels=growth_channels,
            dropout=dropout,
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(self.dense_aspp.out_channels, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.dense_aspp(features[self.feature])  # (N, C0 + 5 * growth, H/8, W/8)
        return self.classifier(self.dropout(x))


def denseaspp(
    *,
    num_classes: int,
    backbone: str = "resnet101",
    output_stride: int = 8,
    rates: Sequence[int] | None = None,
    inter_channels: int | None = None,
    growth_channels: int | None = None,
    width: float = 1.0,
    pretrained_backbone: str | None = None,
) -> Segmenter:
    """DenseASPP head on a dilated ResNet (output stride 8 as the paper, or 16); `rates` default to
    `dense_aspp_rates(output_stride)`, `inter_channels` / `growth_channels` to 512 / 128 times `width`."""
    net = resnet_backbone(
        backbone, output_stride=output_stride, width=width, pretrained_backbone=pretrained_backbone
    )
    head = DenseASPPHead(
        in_channels=net.feature_info["layer4"].channels,
        num_classes=num_classes,
        feature="layer4",
        rates=dense_aspp_rates(output_stride) if rates is None else tuple(rates),
        inter_channels=scaled(512, width) if inter_channels is None else inter_channels,
        growth_channels=scaled(128, width) if growth_channels is None else growth_channels,
    )
    return Segmenter(backbone=net, head=head, output_stride=output_stride)
