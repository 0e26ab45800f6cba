"""VGG-16 (Simonyan & Zisserman, ICLR 2015) as the pooling backbone of FCN (Long, Shelhamer, Darrell, CVPR
2015) and as the dilated front-end of Yu & Koltun, "Multi-Scale Context Aggregation by Dilated Convolutions"
(ICLR 2016).

Both variants keep torchvision's `features.<i>` indices (removed pooling layers become `nn.Identity`, which
has no parameters), and turn torchvision's first two classifier layers into convolutions `fc6` (7x7) and
`fc7` (1x1) ("convolutionalization", FCN section 3.1), so a torchvision `vgg16` state_dict loads.

- `dilated=False` (FCN): five 2x2 max-pools, fc6 7x7; outputs pool3 (stride 8), pool4 (16), fc7 (32).
- `dilated=True` (front-end): pool4 and pool5 removed, conv5 at rate 2, fc6 7x7 at rate 4; output stride 8.

Pooling uses `ceil_mode=True` (Caffe's pooling rounds up), so a stride-s map has ceil(H/s) rows for any H
and no input row is dropped; every convolution is "same"-padded instead of FCN's 100-pixel input padding.
"""

from __future__ import annotations

import os
from collections.abc import Collection

import torch
from torch import nn

from atrous.models.backbones import (
    FeatureInfo,
    check_width,
    load_weights_file,
    scaled,
    wanted_features,
)
from atrous.ops import AtrousConv2d

# torchvision's cfgs["D"]; "M" is a 2x2 max-pool
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
POOL3, POOL4 = 16, 23  # indices of pool3 and pool4 in `features`


def _torchvision_to_fc_convs(state: dict[str, torch.Tensor], fc6: nn.Conv2d, fc7: nn.Conv2d) -> dict:
    """torchvision vgg16 keys -> ours: classifier.0 (4096, 512*7*7) -> fc6 (4096, 512, 7, 7), classifier.3
    (4096, 4096) -> fc7 (4096, 4096, 1, 1); classifier.6 (the ImageNet scores) is dropped. A tensor whose
    size does not match is passed on unreshaped, so the loader reports the shape mismatch."""
    out = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    for src, dst, conv in (("classifier.0", "fc6", fc6), ("classifier.3", "fc7", fc7)):
        for kind, shape in (("weight", conv.weight.shape), ("bias", conv.bias.shape)):
            name = f"{dst}.{kind}"
            if f"{src}.{kind}" in state:
                value = state[f"{src}.{kind}"]
                out[name] = value.reshape(shape) if value.numel() == shape.numel() else value
    return out


class VGG16(nn.Module):
    """VGG-16 trunk with fc6/fc7 as convolutions (see the module docstring). Each fc layer is followed by
    ReLU and dropout (`dropout`, 0.5 as in VGG, FCN and the front-end)."""

    def __init__(
        self,
        *,
        dilated: bool = False,
        width: float = 1.0,
        dropout: float = 0.5,
        pretrained: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        width = check_width(width)
        layers: list[nn.Module] = []
        cin, n_pools, rate = 3, 0, 1
        for v in VGG16_CFG:
            if v == "M":
                n_pools += 1
                if dilated and n_pools >= 4:
                    layers.append(nn.Identity())  # pool4 / pool5 removed; later layers dilate instead
                    rate = 2
                else:
                    layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
            else:
                cout = scaled(v, width)
                layers += [AtrousConv2d(cin, cout, 3, dilation=rate), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        fc = scaled(4096, width)
        self.fc6 = AtrousConv2d(cin, fc, 7, dilation=4 if dilated else 1)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.relu = nn.ReLU(inplace=True)
        self.drop6, self.drop7 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.dilated = dilated
        c3, c4 = scaled(256, width), scaled(512, width)
        if dilated:
            self.feature_info = {
                "pool3": FeatureInfo(c3, 8, 1),
                "conv5": FeatureInfo(c4, 8, 2),
                "fc7": FeatureInfo(fc, 8, 4),
            }
        else:
            self.feature_info = {
                "pool3": FeatureInfo(c3, 8, 1),
                "pool4": FeatureInfo(c4, 16, 1),
                "fc7": FeatureInfo(fc, 32, 1),
            }
        if pretrained is not None:
            load_weights_file(
                self,
                pretrained,
                convert=lambda sd: _torchvision_to_fc_convs(sd, self.fc6, self.fc7),
                expected_format="torchvision vgg16 state_dict",
            )

    def forward(self, x: torch.Tensor, features: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """The maps named in `features` (default: all three); layers after the last one named do not run."""
        wanted = wanted_features(self.feature_info, features)
        out = {}
        x = self.features[: POOL3 + 1](x)  # (N, 256w, H/8, W/8)
        if "pool3" in wanted:
            out["pool3"] = x
        if len(out) == len(wanted):
            return out
        x = self.features[POOL3 + 1 : POOL4 + 1](x)  # FCN: (N, 512w, H/16, W/16); front-end: stride 8
        if "pool4" in wanted:
            out["pool4"] = x
        if len(out) == len(wanted):
            return out
        x = self.features[POOL4 + 1 :](x)  # FCN: pool5 (N, 512w, H/32, W/32); front-end: conv5 at stride 8
        if "conv5" in wanted:
            out["conv5"] = x
        if len(out) == len(wanted):
            return out
        x = self.drop6(self.relu(self.fc6(x)))
        out["fc7"] = self.drop7(self.relu(self.fc7(x)))  # (N, 4096w, H/32 or H/8, ...)
        return out
