"""`Segmenter`: backbone -> head -> upsample to the input size (torchvision `segmentation/_utils.py`,
smp `base/model.py`). The upsamplers take `(logits, size)` and return `(N, K, *size)`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from atrous.ops import BilinearUpsample


class Interpolate(nn.Module):
    """Bilinear resize to the input size (align_corners=False, as torchvision's segmentation models)."""

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class Crop(nn.Module):
    """Crops the bottom/right overhang of a map that is already at stride 1 (DUC's output is
    `factor * ceil(H / factor)` rows)."""

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return x[..., : size[0], : size[1]]


class DeconvUpsample(BilinearUpsample):
    """FCN's final deconvolution (bilinear kernel, `factor` x) then a crop of the overhang: the stride-s map
    has ceil(H/s) rows, so the upsampled map has s * ceil(H/s) >= H rows. `learnable=False` keeps the kernel
    fixed, as FCN's final upsampling layer."""

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return super().forward(x)[..., : size[0], : size[1]]


class Segmenter(nn.Module):
    """A segmentation model: `backbone(x, features=names)` -> dict of those features; `head(features)` ->
    logits at the head's stride; `upsample(logits, size)` -> logits at the input size. `aux_head`
    (optional) reads the same features for the auxiliary loss and is resized bilinearly. Each head names
    the features it reads in `in_features`: the backbone returns only those, so that the maps no head
    reads are freed during the forward (ResNet-50's layer1-3 at output stride 8: 40 MiB at 512x512).

    `output_stride` is the stride the paper names: the stride of the head's logits before the final
    upsampling (FCN-8s: 8, although its deepest feature is at 32), except DeepLab v3+, whose encoder output
    stride (16) is reported while its decoder predicts at stride 4. `build_args` ({"name", "num_classes",
    "options"}) is set by `atrous.models.build`.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: nn.Module,
        upsample: nn.Module | None = None,
        aux_head: nn.Module | None = None,
        output_stride: int,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.upsample = upsample if upsample is not None else Interpolate()
        self.output_stride = output_stride
        self.build_args: dict = {}

    def forward(self, x: torch.Tensor, aux: bool = False):
        size = x.shape[-2:]
        run_aux = aux and self.aux_head is not None
        # only the features the heads read (the aux head's only when its logits are asked for)
        wanted = set(self.head.in_features)
        if run_aux:
            wanted.update(self.aux_head.in_features)
        features = self.backbone(x, features=wanted)
        scores = self.head(features)  # (N, K, h, w)
        aux_scores = self.aux_head(features) if run_aux else None
        del features  # the deepest map need not stay alive through the upsampling of the logits
        logits = self.upsample(scores, size)  # (N, K, H, W)
        if not aux:
            return logits
        if aux_scores is None:
            return logits, None
        return logits, F.interpolate(aux_scores, size=size, mode="bilinear", align_corners=False)
