"""Helpers for the atrous.optimize tests: tiny registered models with non-trivial BatchNorm statistics."""

from __future__ import annotations

import torch
from torch import nn

from atrous import models


def randomise_bn(model: nn.Module, seed: int = 1) -> None:
    """Non-trivial BN statistics and affine parameters, so that folding has something to get wrong."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.2)


def tiny(name: str, num_classes: int = 3) -> nn.Module:
    """Registered model `name` at width 1/16, or 8 channels where it takes channels instead of a width
    (ResNet-18 where it has a backbone option)."""
    valid = models.options(name)
    opts = {"width": 0.0625} if "width" in valid else {"channels": 8}
    if name != "dilated_net" and "backbone" in valid:
        opts["backbone"] = "resnet18"
    return models.build(name, num_classes, **opts)
