"""Dilated Residual Networks: Yu, Koltun, Funkhouser, "Dilated Residual Networks", CVPR 2017.

DRN-C-26, DRN-D-22, DRN-D-38: eight levels at output stride 8 with no max pooling. Levels 1-2 run at full
and half resolution (DRN-C: a 7x7 conv then residual blocks; DRN-D: a 7x7 conv then plain conv layers),
levels 3-4 stride as in ResNet, levels 5-6 dilate at rates 2 and 4 instead of striding (every block of the
level at its rate), and the degridding levels 7-8 use decreasing rates 2 then 1 with no residual
connections (DRN-C: BasicBlocks without the identity; DRN-D: conv-BN-ReLU layers).

Module names follow fyu/drn's `drn.py` (`conv1`, `bn1`, `layer1`... for C; `layer0`... for D), so its
ImageNet files load with `pretrained_backbone=PATH`; its segmentation checkpoints (`DRNSeg`, keys `base.<i>.`,
optionally under `module.`) load too.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence

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
from atrous.models.backbones.resnet import BasicBlock
from atrous.ops import AtrousConv2d

CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)
# level -> (stride of its first layer, dilation): levels 5-6 dilate instead of striding, 7-8 degrid
LEVELS = ((1, 1), (2, 1), (2, 1), (2, 1), (1, 2), (1, 4), (1, 2), (1, 1))
# name -> (arch, layers per level), from the paper's Table 1 / fyu/drn
ARCHS: dict[str, tuple[str, tuple[int, ...]]] = {
    "drn_c_26": ("C", (1, 1, 2, 2, 2, 2, 1, 1)),
    "drn_d_22": ("D", (1, 1, 2, 2, 2, 2, 1, 1)),
    "drn_d_38": ("D", (1, 1, 3, 4, 6, 3, 1, 1)),
}


def _conv_layers(cin: int, cout: int, n: int, stride: int, dilation: int) -> nn.Sequential:
    """DRN-D's plain levels: n x (3x3 conv, BN, ReLU), the first one strided."""
    modules: list[nn.Module] = []
    for i in range(n):
        modules += [
            AtrousConv2d(cin, cout, 3, stride=stride if i == 0 else 1, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
        cin = cout
    return nn.Sequential(*modules)


def _blocks(cin: int, cout: int, n: int, stride: int, dilation: int, residual: bool) -> nn.Sequential:
    return nn.Sequential(
        *[
            BasicBlock(
                inplanes=cin if i == 0 else cout,
                planes=cout,
                stride=stride if i == 0 else 1,
                dilation=dilation,
                residual=residual,
            )
            for i in range(n)
        ]
    )


class DRN(nn.Module):
    """DRN trunk returning its levels: {"layer1": (N, 16w, H, W), "layer2": (N, 32w, H/2, W/2), ...,
    "layer8": (N, 512w, H/8, W/8)} (sizes rounded up for odd inputs)."""

    def __init__(
        self,
        *,
        arch: str,
        layers: Sequence[int],
        width: float = 1.0,
        pretrained: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if arch not in ("C", "D"):
            raise ValueError(f"arch must be 'C' or 'D', got {arch!r}")
        width = check_width(width)
        channels = [scaled(c, width) for c in CHANNELS]
        self.arch = arch
        if arch == "C":
            self.conv1 = nn.Conv2d(3, channels[0], 7, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(channels[0])
            self.relu = nn.ReLU(inplace=True)
        else:
            self.layer0 = nn.Sequential(
                nn.Conv2d(3, channels[0], 7, padding=3, bias=False),
                nn.BatchNorm2d(channels[0]),
                nn.ReLU(inplace=True),
            )
        self.feature_info: dict[str, FeatureInfo] = {}
        cin, stride_so_far = channels[0], 1
        for i, (n, cout, (stride, rate)) in enumerate(zip(layers, channels, LEVELS)):
            level = i + 1
            if arch == "D" and level in (1, 2, 7, 8):
                layer = _conv_layers(cin, cout, n, stride, rate)
            else:
                layer = _blocks(cin, cout, n, stride, rate, residual=level < 7)
            self.add_module(f"layer{level}", layer)
            stride_so_far *= stride
            self.feature_info[f"layer{level}"] = FeatureInfo(cout, stride_so_far, rate)
            cin = cout
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # fyu/drn's init
        if pretrained is not None:
            load_weights_file(self, pretrained, convert=self._from_fyu, expected_format="fyu/drn state_dict")

    def _from_fyu(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """fyu/drn keys -> ours: drop the ImageNet classifier `fc`; map DRNSeg's `base.<i>.` (its trunk as a
        Sequential of DRN's children) to the child names; strip DataParallel's `module.`."""
        children = [name for name, _ in self.named_children()]
        out = {}
        for key, value in state.items():
            key = key.removeprefix("module.")
            if key.startswith(("fc.", "seg.", "up.")):
                continue
            if key.startswith("base."):
                index, _, rest = key[len("base.") :].partition(".")
                if index.isdigit() and int(index) < len(children):
                    key = f"{children[int(index)]}.{rest}"
            out[key] = value
        return out

    def forward(self, x: torch.Tensor, features: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """The levels named in `features` (default: all eight); levels after the last one named do not run."""
        wanted = wanted_features(self.feature_info, features)
        return run_stages(self, x, self._stem, list(self.feature_info), wanted)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x))) if self.arch == "C" else self.layer0(x)  # (N, 16w, H, W)
