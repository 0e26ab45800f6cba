"""The context module of Yu & Koltun, "Multi-Scale Context Aggregation by Dilated Convolutions" (ICLR 2016),
section 3 and Table 1: seven 3x3 layers at rates 1, 1, 2, 4, 8, 16, 1, each truncated by max(., 0), then a
1x1 layer (no truncation); receptive field 67x67 on the front-end's stride-8 map.

`kind="basic"`: C channels everywhere (C = number of classes). `kind="large"`: 2C, 2C, 4C, 8C, 16C, 32C, 32C, C.
Identity initialisation (the paper's, because random init failed to train): layer i maps input channel a to
output channel b with weight C / c_out at the centre tap when floor(a C / c_in) == floor(b C / c_out), and 0
elsewhere; the large module adds Gaussian noise to the other taps (sigma << C / c_out) to break symmetry.
So at initialisation the basic module returns non-negative inputs unchanged, and the large one does up to
the noise.
"""

from __future__ import annotations

import torch
from torch import nn

from atrous.ops import AtrousConv2d

CONTEXT_RATES = (1, 1, 2, 4, 8, 16, 1)
LARGE_MULTIPLIERS = (2, 2, 4, 8, 16, 32, 32)  # output channels of layers 1..7 in units of C
KINDS = ("basic", "large")


def identity_init_(conv: nn.Conv2d, classes: int, noise: float) -> None:
    """Yu & Koltun's identity initialisation of one layer (see the module docstring); `noise` is the noise's
    standard deviation relative to C / c_out."""
    c_out, c_in, kh, kw = conv.weight.shape
    a = torch.arange(c_in)[None, :]
    b = torch.arange(c_out)[:, None]
    match = (a * classes // c_in) == (b * classes // c_out)  # (c_out, c_in)
    value = classes / c_out
    with torch.no_grad():
        if noise > 0:
            conv.weight.normal_(0.0, noise * value)
        else:
            conv.weight.zero_()
        conv.weight[:, :, kh // 2, kw // 2] = torch.where(match, value, conv.weight[:, :, kh // 2, kw // 2])
        conv.bias.zero_()


class ContextModule(nn.Sequential):
    """(N, C, h, w) -> (N, C, h, w): the basic or large context module with identity initialisation.

    `noise` (default 1e-3 for "large", 0 for "basic") is the relative standard deviation of the
    symmetry-breaking noise; pass 0 for an exact identity at initialisation.
    """

    def __init__(self, *, classes: int, kind: str = "basic", noise: float | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"context must be one of {KINDS}, got {kind!r}")
        if noise is None:
            noise = 1e-3 if kind == "large" else 0.0
        widths = [classes] * 7 if kind == "basic" else [m * classes for m in LARGE_MULTIPLIERS]
        layers: list[nn.Module] = []
        cin = classes
        for rate, cout in zip(CONTEXT_RATES, widths):
            conv = AtrousConv2d(cin, cout, 3, dilation=rate)
            identity_init_(conv, classes, noise)
            layers += [conv, nn.ReLU(inplace=True)]
            cin = cout
        final = nn.Conv2d(cin, classes, 1)  # layer 8: 1x1, no truncation
        identity_init_(final, classes, noise)
        layers.append(final)
        super().__init__(*layers)
        self.kind = kind
