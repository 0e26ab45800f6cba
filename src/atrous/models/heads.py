"""Segmentation heads: they take the backbone's feature dict and return logits at the feature stride.
Each declares the features it reads in `in_features`, so the backbone returns (and keeps alive) only those.

- `ClassifierHead`: a 1x1 convolution (DRN, dilated_net).
- `FCNHead`: torchvision's "FCN" head (3x3 conv to in/4 channels, BN, ReLU, dropout 0.1, 1x1); state_dict
  keys equal torchvision's so `from_torchvision` copies weights by name.
- `FCNSkipHead`: Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR
  2015: score layers on fc7, pool4, pool3 fused by learned 2x bilinear deconvolutions (FCN-32s/16s/8s).
- `ASPP`, `DeepLabV3Head`: Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation"
  (DeepLab v3), 2017: atrous spatial pyramid pooling with image-level features.
- `DeepLabV3PlusHead`: Chen et al., "Encoder-Decoder with Atrous Separable Convolution", ECCV 2018.
- `DUCHead`: Wang et al., "Understanding Convolution for Semantic Segmentation", WACV 2018 (dense
  upsampling convolution; returns logits at the input stride).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from atrous.ops import DUC, AtrousConv2d, BilinearUpsample, check_rates


def _crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return x[..., : size[0], : size[1]]


class ClassifierHead(nn.Module):
    """A 1x1 convolution from the feature `feature` to `num_classes` logits; parameters `weight` (K, C, 1, 1)
    and `bias` (K,) as an nn.Conv2d's. Not an nn.Conv2d subclass: its input is the feature dict, and hooks
    on Conv2d modules (FLOP counters, BN folding) expect a tensor."""

    def __init__(self, *, in_channels: int, num_classes: int, feature: str) -> None:
        super().__init__()
        self.feature = feature
        self.in_features = (feature,)
        conv = nn.Conv2d(in_channels, num_classes, 1)  # for nn.Conv2d's default initialisation
        self.weight, self.bias = conv.weight, conv.bias

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.conv2d(features[self.feature], self.weight, self.bias)


class RefinedHead(nn.Sequential):
    """A head (features -> scores) followed by modules that refine the scores: Yu & Koltun's context module
    on the front-end's class scores."""

    def __init__(self, head: nn.Module, *refiners: nn.Module) -> None:
        super().__init__(head, *refiners)

    @property
    def in_features(self) -> tuple[str, ...]:
        return self[0].in_features

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self[0](features)
        for refiner in self[1:]:
            x = refiner(x)
        return x


class FCNHead(nn.Sequential):
    """torchvision's FCNHead: 3x3 conv (in -> in/4), BN, ReLU, Dropout(0.1), 1x1 conv to classes."""

    def __init__(self, *, in_channels: int, num_classes: int, feature: str) -> None:
        inter = max(1, in_channels // 4)
        super().__init__(
            AtrousConv2d(in_channels, inter, 3, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(inter, num_classes, 1),
        )
        self.feature = feature
        self.in_features = (feature,)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return super().forward(features[self.feature])


# ----------------------------------------------------------------------------------------------------------
# DeepLab v3 / v3+
# ----------------------------------------------------------------------------------------------------------
def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """DeepLab v3's ASPP rates: (6, 12, 18) at output stride 16, doubled at 8 (the same field of view in
    input pixels), halved at 32."""
    return {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}[output_stride]


def _conv_bn_relu(cin: int, cout: int, kernel_size: int, dilation: int = 1) -> list[nn.Module]:
    conv = (
        nn.Conv2d(cin, cout, 1, bias=False)
        if kernel_size == 1
        else AtrousConv2d(cin, cout, kernel_size, dilation=dilation, bias=False)
    )
    # in-place ReLU: one map less at a time; autograd allows it (BatchNorm's backward reads its input)
    return [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ASPPPooling(nn.Sequential):
    """Image-level features: global average pool, 1x1 conv + BN + ReLU, broadcast back to the map size."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return F.interpolate(super().forward(x), size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, one 3x3 branch per rate, image pooling; concatenated,
    projected by 1x1 conv + BN + ReLU, then dropout. Module names equal torchvision's ASPP."""

    def __init__(
        self, *, in_channels: int, out_channels: int = 256, rates: Sequence[int], dropout: float
    ) -> None:
        super().__init__()
        rates = check_rates(rates, "ASPP rates")
        self.rates = rates
        branches = [nn.Sequential(*_conv_bn_relu(in_channels, out_channels, 1))]
        branches += [nn.Sequential(*_conv_bn_relu(in_channels, out_channels, 3, r)) for r in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            *_conv_bn_relu(len(branches) * out_channels, out_channels, 1), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, h, w) -> (N, (2 + len(rates)) * out, h, w) -> (N, out, h, w)
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


DEEPLAB_HEADS = ("paper", "torchvision")


class DeepLabV3Head(nn.Sequential):
    """ASPP then logits. `head="paper"`: ASPP (dropout 0.1, the keep-probability 0.9 of the authors'
    TensorFlow code) and a 1x1 classifier, as in the paper's section 3.3. `head="torchvision"`: ASPP (dropout
    0.5) then the extra 3x3 conv + BN + ReLU torchvision adds before the classifier (same keys as its
    `DeepLabHead`)."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        feature: str,
        rates: Sequence[int],
        aspp_channels: int = 256,
        head: str = "paper",
    ) -> None:
        if head not in DEEPLAB_HEADS:
            raise ValueError(f"head must be one of {DEEPLAB_HEADS}, got {head!r}")
        c = aspp_channels
        if head == "paper":
            layers = [ASPP(in_channels=in_channels, out_channels=c, rates=rates, dropout=0.1)]
        else:
            layers = [ASPP(in_channels=in_channels, out_channels=c, rates=rates, dropout=0.5)]
            layers += _conv_bn_relu(c, c, 3)
        super().__init__(*layers, nn.Conv2d(c, num_classes, 1))
        self.feature = feature
        self.in_features = (feature,)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return super().forward(features[self.feature])


class DeepLabV3PlusHead(nn.Module):
    """DeepLab v3+ decoder: ASPP on the deep feature, bilinearly upsampled to the low-level feature (stride 4)
    and concatenated with its 1x1 projection to 48 channels (few, so the encoder's features dominate), then
    two 3x3 convs (256) and a 1x1 classifier. Returns logits at the low-level stride."""

    def __init__(
        self,
        *,
        in_channels: int,
        low_level_channels: int,
        num_classes: int,
        feature: str,
        low_level_feature: str,
        rates: Sequence[int],
        aspp_channels: int = 256,
        low_level_projection: int = 48,
    ) -> None:
        super().__init__()
        self.feature, self.low_level_feature = feature, low_level_feature
        self.in_features = (feature, low_level_feature)
        c = aspp_channels
        self.aspp = ASPP(in_channels=in_channels, out_channels=c, rates=rates, dropout=0.1)
        self.project = nn.Sequential(*_conv_bn_relu(low_level_channels, low_level_projection, 1))
        self.fuse = nn.Sequential(*_conv_bn_relu(c + low_level_projection, c, 3), *_conv_bn_relu(c, c, 3))
        self.classifier = nn.Conv2d(c, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        low = self.project(features[self.low_level_feature])  # (N, 48, H/4, W/4)
        high = self.aspp(features[self.feature])  # (N, 256, H/16, W/16)
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([high, low], dim=1)))  # (N, K, H/4, W/4)


class DUCHead(nn.Module):
    """Dense upsampling convolution on the feature `feature` (stride `factor`): logits at stride 1, of size
    `factor * ceil(H / factor)`; the segmenter crops the overhang."""

    def __init__(self, *, in_channels: int, num_classes: int, feature: str, factor: int) -> None:
        super().__init__()
        self.feature = feature
        self.in_features = (feature,)
        self.duc = DUC(in_channels, num_classes, factor)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.duc(features[self.feature])


# ----------------------------------------------------------------------------------------------------------
# FCN-32s / 16s / 8s
# ----------------------------------------------------------------------------------------------------------
class FCNSkipHead(nn.Module):
    """FCN's score layers and skip fusion (Long et al. 2015, section 4.2).

    `skips=()` is FCN-32s, `("pool4",)` FCN-16s, `("pool4", "pool3")` FCN-8s. Each step upsamples the
    running score map by a learned 2x deconvolution initialised to bilinear (`BilinearUpsample`), crops it
    to the skip's size and adds the skip's 1x1 score. Score layers start at zero as in the paper, so the net
    starts from the coarser prediction. Returns logits at the stride of the last skip (32, 16 or 8).
    """

    def __init__(
        self,
        *,
        feature_channels: dict[str, int],
        num_classes: int,
        feature: str,
        skips: Sequence[str],
    ) -> None:
        super().__init__()
        self.feature, self.skips = feature, tuple(skips)
        self.in_features = (feature, *self.skips)
        self.score = nn.Conv2d(feature_channels[feature], num_classes, 1)
        self.skip_scores = nn.ModuleDict({s: nn.Conv2d(feature_channels[s], num_classes, 1) for s in skips})
        self.upscores = nn.ModuleDict({s: BilinearUpsample(num_classes, 2) for s in skips})
        for conv in [self.score, *self.skip_scores.values()]:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        score = self.score(features[self.feature])  # (N, K, ceil(H/32), ceil(W/32))
        for name in self.skips:
            skip = self.skip_scores[name](features[name])  # (N, K, ceil(H/s), ceil(W/s))
            score = _crop(self.upscores[name](score), skip.shape[-2:]) + skip
        return score
