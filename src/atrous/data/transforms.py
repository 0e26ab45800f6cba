"""Paired image/mask transforms on torchvision's transforms v2.

The training recipe of DeepLab v3 (Chen et al., arXiv 1706.05587, section 4) and torchvision's
segmentation references: random scale (0.5 to 2.0), random crop padded with the ignore label, horizontal
flip, then normalisation. transforms v2 dispatches on the tensor type, so one call moves an
`tv_tensors.Image` and its `tv_tensors.Mask` together and always resizes masks with nearest neighbour
(a bilinear mask would invent labels between classes); crop padding fills images with 0 and masks with
the ignore index (255 unless the run chose another) so padded pixels are ignored by the loss and the
metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomScale(v2.Transform):
    """Resize by one factor drawn uniformly from `scale` (both sides, aspect ratio kept).

    Unlike `v2.RandomResize` (which draws an absolute short side) the factor is relative to each image, as
    in the DeepLab recipe. Images are resized bilinearly with antialiasing, masks with nearest neighbour
    (torchvision's mask kernel). The factor comes from torch's global generator, so seeding (and a
    restored RNG state on resume) reproduces it.
    """

    def __init__(self, scale: tuple[float, float]) -> None:
        super().__init__()
        lo, hi = scale
        if not 0 < lo <= hi:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale!r}")
        self.scale = (float(lo), float(hi))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        factor = self.scale[0] + (self.scale[1] - self.scale[0]) * float(torch.rand(()))
        return {"size": [max(1, round(h * factor)), max(1, round(w * factor))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            F.resize, inpt, size=params["size"], interpolation=v2.InterpolationMode.BILINEAR, antialias=True
        )


def _as_image(image: Any) -> tv_tensors.Image:
    if isinstance(image, tv_tensors.Image):
        return image
    if isinstance(image, PILImage.Image):
        return tv_tensors.Image(F.pil_to_tensor(image.convert("RGB")))
    if isinstance(image, np.ndarray):  # (H, W, 3) uint8, as PIL and the readers give it
        return tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))
    if isinstance(image, torch.Tensor):
        return tv_tensors.Image(image)
    raise TypeError(f"image must be a tensor, PIL image or (H, W, 3) array, got {type(image).__name__}")


def _as_mask(mask: Any) -> tv_tensors.Mask:
    if isinstance(mask, PILImage.Image):
        mask = np.asarray(mask)
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask.astype(np.int64))
    if isinstance(mask, torch.Tensor):
        # Always wrap: a plain tensor in second place would be passed through untouched by v2 and
        # silently lose its alignment with the image.
        return tv_tensors.Mask(mask.long())
    raise TypeError(f"mask must be a tensor, PIL image or (H, W) array, got {type(mask).__name__}")


class PairTransform:
    """A v2 pipeline applied to (image, mask) -> (float32 image (3, H, W), int64 mask (H, W)) as plain tensors."""

    def __init__(self, transforms: Sequence[v2.Transform]) -> None:
        self.pipeline = v2.Compose(list(transforms))

    def __call__(self, image: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.pipeline(_as_image(image), _as_mask(mask))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"PairTransform({self.pipeline!r})"


def normalize(image: torch.Tensor, *, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 `(..., 3, H, W)` -> float32 normalised: the same two torchvision ops as `eval_transform`, so
    `atrous.predict` and `atrous eval` feed a model the same numbers for the same image."""
    x = v2.functional.to_dtype(image, torch.float32, scale=True)
    return v2.functional.normalize(x, mean=list(mean), std=list(std))


def _finish(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"mean and std need 3 values each with std > 0, got mean={mean!r} std={std!r}")
    return [
        # uint8 [0, 255] -> float32 [0, 1]; masks to int64 unscaled.
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]


def train_transform(
    *,
    crop_size: int | tuple[int, int],
    scale: tuple[float, float] = (0.5, 2.0),
    hflip: bool = True,
    color_jitter: float = 0.2,
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int = 255,
) -> PairTransform:
    """Random scale, random crop of `crop_size` (padded with 0 / `ignore_index` where the scaled image is
    smaller),
    horizontal flip, colour jitter (brightness, contrast and saturation by up to +-`color_jitter`; hue is
    left alone because colour can define a class) and normalisation."""
    size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    if len(size) != 2 or any(not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"crop_size must be a positive int or (height, width), got {crop_size!r}")
    if color_jitter < 0:
        raise ValueError(f"color_jitter must be >= 0, got {color_jitter!r}")
    steps: list[v2.Transform] = []
    if tuple(scale) != (1.0, 1.0):
        steps.append(RandomScale(tuple(scale)))
    steps.append(
        v2.RandomCrop(size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index})
    )
    if hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if color_jitter > 0:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    return PairTransform(steps + _finish(mean, std))


def eval_transform(*, mean: Sequence[float], std: Sequence[float]) -> PairTransform:
    """Normalisation only: evaluation sees the whole image at its own size."""
    return PairTransform(_finish(mean, std))
