"""Pooling network: the conv stack of `dilated_net` with a 2x2 max pooling after each of its first k layers.

FCN's pool-then-upsample design (Long et al., "Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015) reduced to the factors it varies, so that each can be changed alone against a pooling-free
`dilated_net` of exactly the same parameters:

- `poolings=k`: 2x2 max pooling (stride 2, ceil mode) after each of the first k convolutions, so the last map
  is at output stride 2^k. FCN's claim: an object much smaller than 2^k px cannot be reconstructed.
- `upsample`: how the stride-2^k logits return to the input size. `bilinear`: fixed interpolation (FCN's
  final layer, DeepLab); `deconv`: a transposed convolution initialised to the bilinear kernel and learned
  (FCN's 2x fusion layers); `duc`: dense upsampling convolution (Wang et al., WACV 2018), a 1x1
  convolution to K * 4^k channels rearranged to stride 1.
- `context`: a head on the last map. `none`: a 1x1 classifier; `aspp`: DeepLab v3's ASPP (1x1, one 3x3 per
  rate, image pooling; Chen et al. 2017) with `context_channels` channels; `denseaspp`: DenseASPP's densely
  connected atrous layers (Yang et al., CVPR 2018) with growth `context_channels` and 1x1 bottlenecks of
  twice that; `stack`: a `DilatedStack` of
  `context_rates` (a large-rate or an HDC schedule; Yu & Koltun 2016, Wang et al. 2018) then a 1x1
  classifier. The context heads let the demo compare ASPP, DenseASPP, large rates and HDC on one output-stride-8
  backbone at stated parameter counts.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import nn

from atrous.models.backbones import FeatureInfo, wanted_features
from atrous.models.backbones.dilated_stack import DilatedStack
from atrous.models.denseaspp import DenseASPPHead
from atrous.models.heads import ClassifierHead, DeepLabV3Head, DUCHead
from atrous.models.segmenter import Crop, DeconvUpsample, Segmenter
from atrous.ops import AtrousConv2d, check_rates

UPSAMPLING = ("bilinear", "deconv", "duc")
CONTEXTS = ("none", "aspp", "denseaspp", "stack")


class PoolStack(nn.Module):
    """`len(rates)` blocks of AtrousConv2d(3x3, rate) + BatchNorm + ReLU, `channels` wide, each of the first
    `poolings` followed by MaxPool2d(2, ceil_mode=True). Output {"out": (N, C, ceil(H / 2^k), ceil(W / 2^k))}.

    With `poolings=0` it is exactly `DilatedStack(rates, channels)` (same modules, same state_dict keys
    under `layers`), so a pooling network and a dilated network of the same rates have equal parameters.
    """

    def __init__(self, *, rates: Sequence[int], channels: int, poolings: int, in_channels: int = 3) -> None:
        super().__init__()
        rates = check_rates(rates)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an integer >= 1, got {channels!r}")
        if isinstance(poolings, bool) or not isinstance(poolings, int) or not 0 <= poolings <= len(rates):
            raise ValueError(
                f"poolings must be an integer in [0, {len(rates)}] (one per layer at most), got {poolings!r}"
            )
        layers: list[nn.Module] = []
        cin = in_channels
        for i, rate in enumerate(rates):
            layers += [AtrousConv2d(cin, channels, 3, dilation=rate, bias=False), nn.BatchNorm2d(channels)]
            layers.append(nn.ReLU(inplace=True))
            if i < poolings:  # (N, C, h, w) -> (N, C, ceil(h / 2), ceil(w / 2))
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            cin = channels
        self.layers = nn.Sequential(*layers)
        self.rates = rates
        self.poolings = poolings
        self.feature_info = {"out": FeatureInfo(channels, 2**poolings, rates[-1])}

    def forward(self, x: torch.Tensor, features: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        if "out" not in wanted_features(self.feature_info, features):
            return {}
        return {"out": self.layers(x)}


class StackHead(nn.Module):
    """A dilated stack on the feature `feature` (same width) then a 1x1 classifier: a context module."""

    def __init__(self, *, in_channels: int, num_classes: int, feature: str, rates: Sequence[int]) -> None:
        super().__init__()
        self.feature = feature
        self.in_features = (feature,)
        self.stack = DilatedStack(rates=rates, channels=in_channels, in_channels=in_channels)
        self.classifier = ClassifierHead(in_channels=in_channels, num_classes=num_classes, feature="out")

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.stack(features[self.feature]))


def _head(
    context: str, *, channels: int, num_classes: int, context_rates, context_channels: int | None
) -> nn.Module:
    if context == "none":
        if context_rates is not None or context_channels is not None:
            raise ValueError("context_rates and context_channels need context=aspp or context=stack")
        return ClassifierHead(in_channels=channels, num_classes=num_classes, feature="out")
    if context_rates is None:
        raise ValueError(
            f"context={context} needs context_rates (e.g. 3,6,9 for aspp, 1,2,3,1,2,3 for stack)"
        )
    if context == "aspp":
        return DeepLabV3Head(
            in_channels=channels,
            num_classes=num_classes,
            feature="out",
            rates=tuple(context_rates),
            aspp_channels=channels if context_channels is None else context_channels,
        )
    if context == "denseaspp":  # growth `context_channels`, each layer's 1x1 bottleneck twice that
        growth = channels if context_channels is None else context_channels
        return DenseASPPHead(
            in_channels=channels,
            num_classes=num_classes,
            feature="out",
            rates=tuple(context_rates),
            inter_channels=2 * growth,
            growth_channels=growth,
        )
    if context_channels is not None:
        raise ValueError(
            "context_channels applies to aspp and denseaspp (a stack keeps the backbone's width)"
        )
    return StackHead(in_channels=channels, num_classes=num_classes, feature="out", rates=context_rates)


def poolnet(
    *,
    num_classes: int,
    rates: Sequence[int] = (1, 1, 1, 1, 1, 1),
    channels: int = 16,
    poolings: int = 3,
    upsample: str = "bilinear",
    context: str = "none",
    context_rates: Sequence[int] | None = None,
    context_channels: int | None = None,
) -> Segmenter:
    """The pooling network (see the module docstring): output stride 2^poolings."""
    if upsample not in UPSAMPLING:
        raise ValueError(f"upsample must be one of {UPSAMPLING}, got {upsample!r}")
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
    backbone = PoolStack(rates=rates, channels=channels, poolings=poolings)
    stride = 2**poolings
    if upsample != "bilinear" and (poolings == 0 or context != "none"):
        raise ValueError(
            f"upsample={upsample} needs poolings >= 1 and context=none (it replaces the classifier's upsampling)"
        )
    if upsample == "duc":  # (N, C, h, w) -> (N, K * s^2, h, w) -> (N, K, s * h, s * w), overhang cropped
        head = DUCHead(in_channels=channels, num_classes=num_classes, feature="out", factor=stride)
        return Segmenter(backbone=backbone, head=head, upsample=Crop(), output_stride=stride)
    head = _head(
        context,
        channels=channels,
        num_classes=num_classes,
        context_rates=context_rates,
        context_channels=context_channels,
    )
    # deconv: bilinear-initialised, learned; bilinear: the segmenter's fixed interpolation
    up = DeconvUpsample(num_classes, stride, learnable=True) if upsample == "deconv" else None
    return Segmenter(backbone=backbone, head=head, upsample=up, output_stride=stride)
