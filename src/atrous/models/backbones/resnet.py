"""ResNet-18/34/50/101 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016) with the
output stride built in, as the dilated backbones of DeepLab v3 (Chen et al. 2017) and HDC (Wang et al. 2018).

state_dict keys equal torchvision's `resnet*` (without `fc`), so torchvision ImageNet files load with
`pretrained_backbone=PATH`. Differences from torchvision, all opt-in by construction arguments:
- `output_stride` in {8, 16, 32}: a stage that would stride past it dilates instead; the first block of a
  newly dilated stage keeps the previous rate (torchvision's `_make_layer`, fyu/drn).
- BasicBlock supports dilation (torchvision's raises), so ResNet-18/34 can be dilated too.
- `multi_grid=(1, 2, 4)`: layer4's block rates are the unit rates times the stage rate, first block included
  (DeepLab v3, section 3.2).
- `block_rates={"layer3": (1, 2, 5, 9), "layer4": (5, 9, 17)}`: absolute per-block rates cycled over a dilated
  stage (HDC, "res4"/"res5" of TuSimple-DUC).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Collection, Mapping, Sequence

import torch
from torch import nn

from atrous.models.backbones import (
    FeatureInfo,
    check_width,
    load_weights_file,
    run_stages,
    scaled,
    wanted_features,
)
from atrous.ops import AtrousConv2d, check_rates

STAGES = ("layer1", "layer2", "layer3", "layer4")
OUTPUT_STRIDES = (8, 16, 32)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34), both at `dilation`; the first one may stride.
    `residual=False` drops the identity connection (DRN-C's degridding layers 7-8)."""

    expansion = 1

    def __init__(
        self, *, inplanes: int, planes: int, stride: int, dilation: int, residual: bool = True
    ) -> None:
        super().__init__()
        self.residual = residual
        self.conv1 = AtrousConv2d(inplanes, planes, 3, stride=stride, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = AtrousConv2d(planes, planes, 3, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(inplanes, planes, stride) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out += x if self.downsample is None else self.downsample(x)  # in place: see Bottleneck
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride and dilation here, "ResNet v1.5" as torchvision), 1x1 expand x4."""

    expansion = 4

    def __init__(self, *, inplanes: int, planes: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = AtrousConv2d(planes, planes, 3, stride=stride, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))  # (N, 4p, h, w)
        # The shortcut is computed last, so its (N, 4p, h, w) map is not alive during conv1-3, and added in
        # place (as torchvision's Bottleneck): no third map of that size. Autograd allows it: neither
        # BatchNorm's nor a convolution's backward reads its own output.
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


def _shortcut(inplanes: int, outplanes: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(
        nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False), nn.BatchNorm2d(outplanes)
    )


# depth -> (block, blocks per stage)
DEPTHS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


def stage_schedule(
    *,
    blocks: Sequence[int],
    output_stride: int,
    multi_grid: Sequence[int] | None = None,
    block_rates: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Per stage: (stride of its first block, rate of each block), written as data.

    The stem brings the stride to 4; layer2..4 each stride by 2 unless that would pass `output_stride`,
    in which case the stage keeps stride 1 and doubles the rate; its first block keeps the previous rate.
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    block_rates = dict(block_rates or {})
    for name, rates in block_rates.items():
        if name not in STAGES:
            raise ValueError(f"block_rates: unknown stage {name!r}, valid stages are {STAGES}")
        check_rates(rates, f"block_rates[{name!r}]")
    if multi_grid is not None:
        check_rates(multi_grid, "multi_grid")
    schedule = {}
    current_stride, rate = 4, 1
    for i, (name, n) in enumerate(zip(STAGES, blocks)):
        previous_rate, stride = rate, (1 if i == 0 else 2)
        if stride == 2 and current_stride >= output_stride:
            stride, rate = 1, rate * 2  # dilate instead of striding
        current_stride *= stride
        rates = [previous_rate] + [rate] * (n - 1)
        if name == "layer4" and multi_grid is not None:
            rates = [rate * m for m in itertools.islice(itertools.cycle(multi_grid), n)]
        if name in block_rates:
            if stride != 1 or i == 0:
                raise ValueError(
                    f"block_rates[{name!r}]: {name} is not dilated at output_stride {output_stride}; "
                    f"give rates only for the dilated stages (use a smaller output_stride)"
                )
            rates = list(itertools.islice(itertools.cycle(block_rates[name]), n))
        schedule[name] = (stride, tuple(rates))
    return schedule


class ResNet(nn.Module):
    """ResNet trunk (stem + layer1..4, no pooling head) returning the stages' outputs.

    Output for an (N, 3, H, W) input: {"layer1": (N, 64e, H/4, W/4), "layer2": (N, 128e, H/8, ...),
    "layer3": (N, 256e, H/16 or H/8), "layer4": (N, 512e, H/output_stride)} with e = block expansion times
    `width`, sizes rounded up (ceil) for odd inputs.
    """

    def __init__(
        self,
        *,
        depth: int = 50,
        output_stride: int = 32,
        multi_grid: Sequence[int] | None = None,
        block_rates: Mapping[str, Sequence[int]] | None = None,
        width: float = 1.0,
        pretrained: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {tuple(DEPTHS)}, got {depth!r}")
        width = check_width(width)
        block, blocks = DEPTHS[depth]
        self.depth, self.output_stride = depth, output_stride
        self.schedule = stage_schedule(
            blocks=blocks, output_stride=output_stride, multi_grid=multi_grid, block_rates=block_rates
        )
        self.inplanes = scaled(64, width)
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.feature_info: dict[str, FeatureInfo] = {}
        stride_so_far = 4
        for i, name in enumerate(STAGES):
            stride, rates = self.schedule[name]
            planes = scaled(64 * 2**i, width)
            layers = []
            for j, rate in enumerate(rates):
                layers.append(
                    block(
                        inplanes=self.inplanes, planes=planes, stride=stride if j == 0 else 1, dilation=rate
                    )
                )
                self.inplanes = planes * block.expansion
            self.add_module(name, nn.Sequential(*layers))
            stride_so_far *= stride
            self.feature_info[name] = FeatureInfo(self.inplanes, stride_so_far, rates[-1])
        del self.inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if pretrained is not None:
            load_weights_file(
                self,
                pretrained,
                convert=lambda sd: {k: v for k, v in sd.items() if not k.startswith("fc.")},
                expected_format=f"torchvision resnet{depth} state_dict",
            )

    def forward(self, x: torch.Tensor, features: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """The stages named in `features` (default: all four); stages after the last one named do not run."""
        wanted = wanted_features(self.feature_info, features)
        return run_stages(self, x, self._stem, STAGES, wanted)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64w, H/4, W/4)
