"""Dilated re-parameterisation: Ding et al., "UniRepLKNet: A Universal Perception Large-Kernel ConvNet for
Audio, Video, Point Cloud, Time-Series and Image Recognition", CVPR 2024 (code: AILab-CVC/UniRepLKNet,
`DilatedReparamBlock`).

During training a large depthwise kernel runs beside small depthwise kernels at several dilation rates,
each followed by its own BatchNorm, and the outputs are summed. All branches are linear in eval mode, so
for inference each BatchNorm folds into its convolution, each dilated kernel is written as a dense kernel
with zeros between its taps (a k-tap kernel at rate r becomes r(k-1)+1 taps wide), padded to the large
kernel's size, and the kernels and biases summed: one depthwise convolution computes the whole block.
The dilated branches add no inference cost; they shape what the large kernel learns (sparse, far taps
trained with their own normalisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from atrous.ops.conv import AtrousConv2d, _check_int, _check_odd_kernel

# (kernel, rate) of the dilated branches for each large kernel size, as UniRepLKNet's DilatedReparamBlock
UNIREPLKNET_BRANCHES: dict[int, tuple[tuple[int, int], ...]] = {
    5: ((3, 1), (3, 2)),
    7: ((5, 1), (3, 2), (3, 3)),
    9: ((5, 1), (5, 2), (3, 3), (3, 4)),
    11: ((5, 1), (5, 2), (3, 3), (3, 4), (3, 5)),
    13: ((5, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
    15: ((5, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
    17: ((5, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
}


def fold_batchnorm(
    weight: torch.Tensor, bn: nn.BatchNorm2d, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (weight, bias) of a convolution (`bias` None: bias-free) followed by `bn` in eval mode:
    `w * g / sqrt(var + eps)` per output channel and `(b - mean) * g / sqrt(var + eps) + beta` (g = 1,
    beta = 0 for a BatchNorm without affine parameters). The one folding formula: DilatedReparam's merge
    and `atrous.optimize.fold_batchnorm` (the model pass) both use it."""
    gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    scale = gamma / torch.sqrt(bn.running_var + bn.eps)  # (C,)
    shifted = -bn.running_mean if bias is None else bias - bn.running_mean  # (C,)
    return weight * scale.reshape(-1, 1, 1, 1).to(weight.dtype), shifted * scale + beta


def dilated_to_dense(weight: torch.Tensor, rate: int) -> torch.Tensor:
    """A (C, c, k, k) kernel at dilation `rate` as the equivalent dense (C, c, r(k-1)+1, r(k-1)+1) kernel:
    tap (i, j) moves to (r*i, r*j), zeros in between."""
    c_out, c_in, k_h, k_w = weight.shape
    dense = weight.new_zeros(c_out, c_in, rate * (k_h - 1) + 1, rate * (k_w - 1) + 1)
    dense[..., ::rate, ::rate] = weight
    return dense


class DilatedReparam(nn.Module):
    """Depthwise `kernel_size` x `kernel_size` convolution + BatchNorm, plus one depthwise
    (kernel, rate) convolution + BatchNorm per entry of `branches`, summed: (N, C, H, W) -> (N, C, H, W).

    `branches` defaults to the paper's k=13 block (kernels 5, 7, 3, 3, 3 at rates 1, 2, 3, 4, 5; see
    `UNIREPLKNET_BRANCHES` for the other sizes). Every branch must fit in the large kernel
    (`rate * (kernel - 1) + 1 <= kernel_size`), which is what lets it merge. No activation: the block is
    the spatial (token-mixing) part of a layer. `reparameterize()` returns the merged `nn.Conv2d`.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 13,
        *,
        branches: Sequence[Sequence[int]] = UNIREPLKNET_BRANCHES[13],
    ) -> None:
        super().__init__()
        _check_int("channels", channels, 1)
        _check_odd_kernel(kernel_size)
        pairs = []
        for pair in branches:
            if len(pair) != 2:
                raise ValueError(f"branches must be (kernel, rate) pairs, got {pair!r}")
            k, r = _check_odd_kernel(pair[0]), _check_int("branch rate", pair[1], 1)
            if r * (k - 1) + 1 > kernel_size:
                raise ValueError(
                    f"branch (kernel {k}, rate {r}) spans {r * (k - 1) + 1} pixels, more than kernel_size "
                    f"{kernel_size}: use a smaller rate or kernel, or a larger kernel_size"
                )
            pairs.append((k, r))
        self.channels, self.kernel_size, self.branches = channels, kernel_size, tuple(pairs)
        self.large = nn.Conv2d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False
        )
        self.large_bn = nn.BatchNorm2d(channels)
        # depthwise dilated convs; "same" padding r(k-1)/2, so every branch is centred on the large kernel
        self.dilated = nn.ModuleList(
            AtrousConv2d(channels, channels, k, dilation=r, groups=channels, bias=False) for k, r in pairs
        )
        self.dilated_bns = nn.ModuleList(nn.BatchNorm2d(channels) for _ in pairs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.large_bn(self.large(x))  # (N, C, H, W)
        for conv, bn in zip(self.dilated, self.dilated_bns):
            out = out + bn(conv(x))
        return out

    @torch.no_grad()
    def merged_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (C, 1, K, K) kernel and (C,) bias of the block in eval mode (running BatchNorm statistics)."""
        weight, bias = fold_batchnorm(self.large.weight, self.large_bn)
        for (_, r), conv, bn in zip(self.branches, self.dilated, self.dilated_bns):
            w, b = fold_batchnorm(conv.weight, bn)
            dense = dilated_to_dense(w, r)  # (C, 1, r(k-1)+1, r(k-1)+1)
            pad = (self.kernel_size - dense.shape[-1]) // 2  # centred in the large kernel
            weight = weight + F.pad(dense, [pad] * 4)
            bias = bias + b
        return weight, bias

    def reparameterize(self) -> nn.Conv2d:
        """One depthwise `nn.Conv2d` (with bias) equal to this block in eval mode; same device and dtype.
        The block itself is left unchanged (checkpoints keep the training form)."""
        weight, bias = self.merged_kernel()
        conv = nn.Conv2d(
            self.channels,
            self.channels,
            self.kernel_size,
            padding=self.kernel_size // 2,
            groups=self.channels,
            bias=True,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
        return conv

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, branches={self.branches}"


def reparameterize(model: nn.Module) -> int:
    """Replace, in place, every `DilatedReparam` inside `model` by its merged `nn.Conv2d` (from the running
    statistics: call it on an eval-mode copy) and return how many; a `DilatedReparam` given as `model`
    itself cannot replace itself: use its `reparameterize()`. The one call for the inference form."""
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, DilatedReparam) and name]
    for name, block in targets:
        model.set_submodule(name, block.reparameterize())
    return len(targets)
