"""Pieces the model builders share (the zoo and the one-paper model files): the dilated ResNet backbone by
name and the check of a choice option. Here rather than in zoo.py so that model files need not import the
registry that imports them."""

from __future__ import annotations

import os
from collections.abc import Sequence

from atrous.models.backbones.resnet import ResNet

RESNETS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}


def resnet_backbone(
    backbone: str,
    *,
    output_stride: int,
    width: float,
    pretrained_backbone: str | os.PathLike | None,
    multi_grid: Sequence[int] | None = None,
    block_rates: dict[str, Sequence[int]] | None = None,
) -> ResNet:
    """ResNet-18/34/50/101 by name with a built-in output stride."""
    if backbone not in RESNETS:
        raise ValueError(f"backbone must be one of {tuple(RESNETS)}, got {backbone!r}")
    return ResNet(
        depth=RESNETS[backbone],
        output_stride=output_stride,
        multi_grid=multi_grid,
        block_rates=block_rates,
        width=width,
        pretrained=pretrained_backbone,
    )


def check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
