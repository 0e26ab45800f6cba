"""A few validation predictions as TensorBoard images: input | ground truth | prediction, side by side."""

from __future__ import annotations

import itertools

import torch
from torch import nn

PREVIEW_IMAGES = 4


def colourise(labels: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """(H, W) class ids -> (3, H, W) uint8 colours; ids outside the palette (the ignore label) are black."""
    known = (labels >= 0) & (labels < len(palette))
    rgb = palette[labels.clamp(0, len(palette) - 1)] * known[..., None]  # (H, W, 3)
    return rgb.permute(2, 0, 1).to(torch.uint8)


def previews(
    model: nn.Module,
    loader,
    *,
    palette: list[list[int]],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    count: int = PREVIEW_IMAGES,
) -> list[torch.Tensor]:
    """The first `count` validation images as (3, H, 3 W) uint8 panels: the image (normalisation undone),
    its ground truth and the model's prediction in the data's palette."""
    colours = torch.tensor(palette, dtype=torch.int64)
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    was_training = model.training
    model.eval()
    panels = []
    with torch.inference_mode():
        items = ((image, mask) for images, masks in loader for image, mask in zip(images, masks))
        for image, mask in itertools.islice(items, count):
            pred = model(image[None].to(device)).argmax(1)[0].cpu()  # (H, W)
            rgb = ((image.cpu() * s + m).clamp(0, 1) * 255).round().to(torch.uint8)
            panels.append(torch.cat([rgb, colourise(mask, colours), colourise(pred, colours)], dim=2))
    model.train(was_training)
    return panels
