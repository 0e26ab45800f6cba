"""Helpers for the inference, predict, eval and export tests: checkpoints of tiny untrained models written
with `atrous.checkpoint.save_checkpoint` (for tests that need a model, not a trained one) and image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from atrous import models
from atrous.checkpoint import save_checkpoint

CLASSES = ["background", "disc", "box"]
PALETTE = [[0, 0, 0], [220, 50, 50], [50, 180, 60]]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def calibrate_batchnorm(model: nn.Module, size: int = 48) -> None:
    """Set every BatchNorm's running statistics to those of one random batch, so that the untrained
    model's eval-mode logits have a sensible scale (fresh statistics let them reach ~1e3)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch gives exactly its statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, size, size))
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def write_checkpoint(
    path: Path,
    name: str = "deeplabv3",
    seed: int = 0,
    classes: list[str] = CLASSES,
    palette: list[list[int]] = PALETTE,
    config: dict | None = None,
    **options,
) -> Path:
    """A checkpoint of an untrained model (tiny by default), 3 classes unless `classes` says otherwise;
    `config` is the training config it records (e.g. {"loss": {"ignore_index": 0}})."""
    if name != "dilated_net":
        options = {"backbone": "resnet18", "width": 0.125, **options}
    torch.manual_seed(seed)
    model = models.build(name, len(classes), **options)
    calibrate_batchnorm(model)
    save_checkpoint(
        path,
        {
            "model": model.build_args,
            "state_dict": model.state_dict(),
            "classes": classes,
            "palette": palette,
            "normalize": {"mean": MEAN, "std": STD},
            "config": config or {},
        },
    )
    return path


def write_images(folder: Path, count: int, size: tuple[int, int] = (24, 32), seed: int = 0) -> list[Path]:
    """`count` random RGB PNGs (uncompressed, so writing 1,000 is quick) named 0000.png, 0001.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, compress_level=0)
        paths.append(path)
    return paths
