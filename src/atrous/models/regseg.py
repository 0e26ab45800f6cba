"""RegSeg: Gao, "Rethinking Dilated Convolution for Real-time Semantic Segmentation", 2021 (arXiv
2111.09957; code: RolandGao/RegSeg). The paper's Cityscapes model, exp48_decoder26.

The dilated block (D block) is an SE-ResNeXt bottleneck whose grouped 3x3 convolution is split along the
channels into parallel convolutions at different rates, e.g. half the channels at rate 1 and half at 14:
the rate-1 half keeps local detail while the other half reaches far, in one block and for the cost of one
grouped convolution. The backbone never strides past 16; from there on the field grows only by dilation,
following a schedule written as data (`EXP48`: 1; 1,2; 4 x 1,4; 7 x 1,14).

The paper bounds the rate so that a dilated convolution leaves no gaps between its taps: a tap at offset
`d` feature pixels (`d * stride` input pixels) reads a window as wide as the receptive field `f` of the
block's input, so the taps' windows touch only while `d * stride <= f`. `check_rate_bound` applies it
block by block; the exp48 schedule meets it (its rate-14 blocks start where f / stride is 39.9).

Decoder 26: 1x1 projections of the stride-16 (320 -> 128), stride-8 (128 -> 128) and stride-4 (48 -> 8)
features; 16 upsampled and added to 8, a 3x3 conv (64), upsampled and concatenated with the 8-channel
stride-4 projection, a 3x3 conv (64), a 1x1 classifier: logits at stride 4, then bilinear to the input.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from atrous.models.backbones import FeatureInfo, check_width, run_stages, scaled, wanted_features
from atrous.models.segmenter import Segmenter
from atrous.ops import AtrousConv2d

# stage16's blocks after its strided first block (RegSeg's `ds` for exp48): the paper's main model
EXP48: tuple[tuple[int, ...], ...] = ((1,), (1, 2), *[(1, 4)] * 4, *[(1, 14)] * 7)
GROUP_WIDTH = 16  # channels per group of the grouped 3x3 convolutions


def _conv_bn(
    cin: int, cout: int, kernel_size: int = 1, *, stride: int = 1, act: bool = True
) -> list[nn.Module]:
    pad = kernel_size // 2
    layers = [nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=pad, bias=False), nn.BatchNorm2d(cout)]
    return [*layers, nn.ReLU(inplace=True)] if act else layers


class SplitDilatedConv(nn.Module):
    """Grouped 3x3 convolutions at several rates on equal channel slices, each followed by its BatchNorm,
    concatenated: (N, C, H, W) -> (N, C, H/s, W/s); slice i (C / len(rates) channels) at `rates[i]`.

    The official block normalises the concatenation with one BatchNorm; BatchNorm is per channel (in
    training too), so one BatchNorm per slice is the same function, and each can fold into its convolution.
    """

    def __init__(self, channels: int, rates: Sequence[int], *, group_width: int, stride: int) -> None:
        super().__init__()
        part = channels // len(rates)
        if part * len(rates) != channels or part % group_width:
            raise ValueError(
                f"a D block with rates {tuple(rates)} splits {channels} channels into {len(rates)} slices of "
                f"groups of {group_width}: use channels divisible by {len(rates) * group_width}"
            )
        self.rates = tuple(rates)
        self.convs = nn.ModuleList(
            AtrousConv2d(part, part, 3, dilation=r, stride=stride, groups=part // group_width, bias=False)
            for r in rates
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(part) for _ in rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.convs) == 1:  # one rate: no split, no copy
            return self.bns[0](self.convs[0](x))
        parts = x.chunk(len(self.convs), dim=1)
        return torch.cat([bn(conv(p)) for conv, bn, p in zip(self.convs, self.bns, parts)], dim=1)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(fc(relu(fc(mean(x))))), fc as 1x1 convs with bias."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)  # (N, C, 1, 1)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))


class DBlock(nn.Module):
    """RegSeg's dilated block: 1x1 (in -> out) BN ReLU, `SplitDilatedConv` at `rates` (stride `stride`,
    BN per slice) ReLU, SE (squeezed to in/4), 1x1 BN, plus the shortcut (2x2 average pooling when strided, then 1x1 +
    BN, when the shape changes), ReLU."""

    def __init__(
        self, cin: int, cout: int, rates: Sequence[int], *, stride: int = 1, group_width: int = GROUP_WIDTH
    ) -> None:
        super().__init__()
        self.rates = tuple(rates)
        self.conv1 = nn.Sequential(*_conv_bn(cin, cout))
        self.conv2 = SplitDilatedConv(cout, rates, group_width=group_width, stride=stride)  # with its BNs
        self.se = SqueezeExcite(cout, max(1, cin // 4))
        self.conv3 = nn.Sequential(*_conv_bn(cout, cout, act=False))
        self.shortcut = None
        if stride != 1 or cin != cout:
            pool = [nn.AvgPool2d(2, 2, ceil_mode=True)] if stride != 1 else []
            self.shortcut = nn.Sequential(*pool, *_conv_bn(cin, cout, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv2(self.conv1(x)))
        y = self.conv3(self.se(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


def check_rate_bound(schedule: Sequence[Sequence[int]], *, field: int, stride: int) -> list[float]:
    """RegSeg's bound, block by block over `schedule` (rates of stride-`stride` blocks whose first input
    has a receptive field of `field` input pixels): the largest rate `d` of a block must satisfy
    `d * stride <= f` for the field `f` of its input, which then grows by `2 * d * stride`. Returns each
    block's bound `f / stride` (feature pixels); a ValueError names the first block that breaks it."""
    bounds = []
    for i, rates in enumerate(schedule):
        d = max(rates)
        bounds.append(field / stride)
        if d * stride > field:
            raise ValueError(
                f"RegSeg's rate bound: block {i} of the dilated stage has rate {d}, but its input's receptive "
                f"field is {field} px = {field / stride:.1f} feature pixels, so its taps would leave gaps: "
                f"use rates <= {field // stride} there (grow the rates block by block)"
            )
        field += 2 * d * stride
    return bounds


def _scaled(channels: int, width: float, multiple: int) -> int:
    """`channels * width` rounded to a multiple of `multiple` (the grouped convolutions' constraint)."""
    return max(multiple, round(channels * width / multiple) * multiple)


class RegSegBody(nn.Module):
    """Stem (3x3 stride 2, 32) and RegSeg's three stages: stage4 (one strided D block, 48), stage8 (three,
    128), stage16 (a strided block, then one block per entry of `dilations`, 256, the last one 320).
    Features {"stage4", "stage8", "stage16"} at strides 4, 8, 16."""

    def __init__(self, *, dilations: Sequence[Sequence[int]] = EXP48, width: float = 1.0) -> None:
        super().__init__()
        dilations = tuple(tuple(d) for d in dilations)
        if not dilations or not all(d and all(isinstance(r, int) and r >= 1 for r in d) for d in dilations):
            raise ValueError(
                f"dilations must be a non-empty list of non-empty lists of rates >= 1, got {dilations!r}"
            )
        # fields: stem 3 px; stage4's strided 3x3 +4; stage8's +8, +16, +16; stage16's strided +16 = 63 px
        self.rate_bounds = check_rate_bound(dilations, field=63, stride=16)
        width = check_width(width)
        gw = scaled(GROUP_WIDTH, width)
        splits = max(len(d) for d in dilations)
        c4, c8 = _scaled(48, width, gw), _scaled(128, width, gw)
        c16, c_out = _scaled(256, width, gw * splits), _scaled(320, width, gw * splits)
        stem = scaled(32, width)
        self.stem = nn.Sequential(*_conv_bn(3, stem, 3, stride=2))
        self.stage4 = nn.Sequential(DBlock(stem, c4, (1,), stride=2, group_width=gw))
        self.stage8 = nn.Sequential(
            DBlock(c4, c8, (1,), stride=2, group_width=gw),
            *[DBlock(c8, c8, (1,), group_width=gw) for _ in range(2)],
        )
        blocks = [DBlock(c8, c16, (1,), stride=2, group_width=gw)]
        for i, rates in enumerate(dilations):
            blocks.append(DBlock(c16, c_out if i == len(dilations) - 1 else c16, rates, group_width=gw))
        self.stage16 = nn.Sequential(*blocks)
        self.dilations = dilations
        self.feature_info = {
            "stage4": FeatureInfo(c4, 4, 1),
            "stage8": FeatureInfo(c8, 8, 1),
            "stage16": FeatureInfo(c_out, 16, max(dilations[-1])),
        }

    def forward(self, x: torch.Tensor, features: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        wanted = wanted_features(self.feature_info, features)
        return run_stages(self, x, self.stem, ("stage4", "stage8", "stage16"), wanted)


class RegSegDecoder(nn.Module):
    """RegSeg's decoder 26 (see the module docstring): logits at stride 4."""

    def __init__(self, *, channels: dict[str, int], num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        self.in_features = ("stage4", "stage8", "stage16")
        c128, c64, c8 = (scaled(c, width) for c in (128, 64, 8))
        self.head16 = nn.Sequential(*_conv_bn(channels["stage16"], c128))
        self.head8 = nn.Sequential(*_conv_bn(channels["stage8"], c128))
        self.head4 = nn.Sequential(*_conv_bn(channels["stage4"], c8))
        self.conv8 = nn.Sequential(*_conv_bn(c128, c64, 3))
        self.conv4 = nn.Sequential(*_conv_bn(c64 + c8, c64, 3))
        self.classifier = nn.Conv2d(c64, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x8 = self.head8(features["stage8"])  # (N, 128, H/8, W/8)
        x16 = F.interpolate(
            self.head16(features["stage16"]), size=x8.shape[-2:], mode="bilinear", align_corners=False
        )
        x8 = self.conv8(x8 + x16)  # (N, 64, H/8, W/8)
        x4 = self.head4(features["stage4"])  # (N, 8, H/4, W/4)
        x8 = F.interpolate(x8, size=x4.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.conv4(torch.cat([x8, x4], dim=1)))  # (N, K, H/4, W/4)


def regseg(*, num_classes: int, dilations: Sequence[Sequence[int]] = EXP48, width: float = 1.0) -> Segmenter:
    """RegSeg exp48_decoder26 (the paper's Cityscapes model): D-block backbone with the dilation schedule
    `dilations` (checked against the paper's rate bound), decoder 26, bilinear upsampling from stride 4.
    `width` scales every channel count (group width with it), for tiny CPU models."""
    body = RegSegBody(dilations=dilations, width=width)
    head = RegSegDecoder(
        channels={k: v.channels for k, v in body.feature_info.items()}, num_classes=num_classes, width=width
    )
    # output_stride 16: the backbone's (the decoder predicts at 4), as DeepLab v3+ reports its encoder's
    return Segmenter(backbone=body, head=head, output_stride=16)
