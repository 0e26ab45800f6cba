"""Fused oneDNN inference forms of the float blocks, as torchvision's `models/quantization/` does it: each
form subclasses its float block (`Bottleneck`, `ASPP`), adopts the folded block's modules (same names, same
state_dict keys) and overrides `forward`; the float model files never know about the backend.

- `FusedBottleneck`: the 1x1 convolutions as oneDNN convolutions with the ReLU fused; the last one adds its
  result to the shortcut and applies the ReLU in the same pass, writing into the shortcut's buffer (the ops
  Inductor's freezing emits, `torch.ops.mkldnn._convolution_pointwise`). Two passes over the (N, 4p, h, w)
  map and one map of that size fewer per block: at output stride 8 those are the largest maps.
- `FusedASPP`: the 1x1 projection of the concatenated branches equals the sum of per-branch projections
  (its weight split along the input channels), so each branch is projected as soon as it is computed and
  accumulated in place: no concatenated (N, 5C, h, w) map and at most one branch alive. The pooling branch
  is constant over the map, so it is projected at (N, C, 1, 1) and broadcast.

The fused operators take float32 CPU tensors whose dtype is the weights' (oneDNN's bf16 path needs AVX-512
or AVX-NE-CONVERT, which not every CPU has). Anywhere else, under `torch.autocast`, on another device, or
with weights cast to another dtype, a fused block runs its float block's own forward: the same function,
since its BatchNorms are folded into nn.Identity, and autocast then casts each convolution as in the eager
model. Inference only: the mkldnn operators have no autograd formula.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from atrous.models.backbones.resnet import Bottleneck
from atrous.models.heads import ASPP, ASPPPooling

# oneDNN convolution arguments of a 1x1 conv: padding, stride, dilation, groups
_ONE_BY_ONE = ([0, 0], [1, 1], [1, 1], 1)


def _fused_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN's fused float32 operators can run on `x` (else: the float block's forward)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


def _pointwise_conv(x: torch.Tensor, conv: nn.Conv2d, attr: str) -> torch.Tensor:
    """A 1x1 nn.Conv2d as oneDNN's convolution with the pointwise op `attr` ("relu" or "none") fused."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight, conv.bias, [0, 0], list(conv.stride), [1, 1], 1, attr, [], ""
    )


class FusedBottleneck(Bottleneck):
    """Inference form of a `Bottleneck` whose BatchNorms are folded (see `fuse_for_inference`).

    `consume_input=True` lets a block without a downsampling shortcut write the sum into its input `x`;
    only for blocks whose input nothing else reads (not a stage's first block, whose input may be a
    returned feature).
    """

    def __init__(self, block: Bottleneck, *, consume_input: bool) -> None:
        nn.Module.__init__(self)  # adopt the folded block's modules instead of building new ones
        for name, child in block.named_children():
            self.add_module(name, child)
        self.downsample = block.downsample  # None (an identity shortcut) is no child
        self.consume_input = consume_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.conv3.weight, self.conv3.bias
        if not _fused_path(x, w):
            return super().forward(x)
        out = _pointwise_conv(x, self.conv1, "relu")  # (N, p, h, w)
        out = self.conv2(out).relu_()  # atrous: keeps cropping the taps that only read padding
        conv_args = (*_ONE_BY_ONE, "add", 1.0, "relu", [], "")
        if self.downsample is None and not self.consume_input:  # relu(conv3(out) + x) in a new map
            return torch.ops.mkldnn._convolution_pointwise.binary(out, x, w, b, *conv_args)
        shortcut = x if self.downsample is None else _pointwise_conv(x, self.downsample[0], "none")
        # relu(conv3(out) + shortcut), written into shortcut: (N, 4p, h, w)
        return torch.ops.mkldnn._convolution_pointwise_.binary(shortcut, out, w, b, *conv_args)


class FusedASPP(ASPP):
    """Inference form of an `ASPP` whose projection BatchNorm is folded (see `fuse_aspp_for_inference`)."""

    def __init__(self, aspp: ASPP) -> None:
        nn.Module.__init__(self)  # adopt the folded ASPP's modules instead of building new ones
        for name, child in aspp.named_children():
            self.add_module(name, child)
        self.rates = aspp.rates
        project = aspp.project[0]
        parts = project.weight.detach().split(project.in_channels // len(aspp.convs), dim=1)
        for i, part in enumerate(parts):  # (K, C, 1, 1) each; buffers, so that Module.to moves them
            self.register_buffer(f"project_weight{i}", part.contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.project[0].bias
        if not _fused_path(x, bias):
            return super().forward(x)
        out = None  # (N, K, h, w): running sum of the branches' projections
        for i, branch in enumerate(self.convs[:-1]):
            y = branch(x)  # (N, C, h, w)
            w = getattr(self, f"project_weight{i}")
            if out is None:
                out = F.conv2d(y, w, bias)
            else:
                out = torch.ops.mkldnn._convolution_pointwise_.binary(
                    out, y, w, None, *_ONE_BY_ONE, "add", 1.0, None, [], None
                )
        pooled = nn.Sequential.forward(self.convs[-1], x)  # (N, C, 1, 1): ASPPPooling without its broadcast
        out += F.conv2d(pooled, getattr(self, f"project_weight{len(self.convs) - 1}"))  # broadcast
        return self.project[1:](out)  # folded BN (Identity), ReLU, dropout


def _is_plain_1x1(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (1, 1)
        and conv.padding == (0, 0)
        and conv.groups == 1
        and conv.bias is not None
        and conv.weight.device.type == "cpu"
        and conv.weight.dtype == torch.float32
    )


def _fusable(block: nn.Module) -> bool:
    """A float `Bottleneck` (not yet fused) with every BatchNorm folded away and plain 1x1 convolutions."""
    if not isinstance(block, Bottleneck) or isinstance(block, FusedBottleneck):
        return False
    if not all(isinstance(bn, nn.Identity) for bn in (block.bn1, block.bn2, block.bn3)):
        return False
    if not (_is_plain_1x1(block.conv1) and _is_plain_1x1(block.conv3)):
        return False
    if block.downsample is None:
        return True
    return (
        len(block.downsample) == 2
        and _is_plain_1x1(block.downsample[0])
        and isinstance(block.downsample[1], nn.Identity)
    )


def fuse_for_inference(model: nn.Module) -> int:
    """Replace, in place, every `Bottleneck` of `model` whose BatchNorms are folded (`fold_batchnorm`) by
    its `FusedBottleneck`; return how many. CPU float32 weights only.

    A block may write its sum into its input only when that input is the previous block's output inside
    the same nn.Sequential (a stage): the first block's input may be a feature another module reads.
    """
    count = 0
    for stage in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for j, block in enumerate(stage):
            if _fusable(block):
                previous_is_block = j > 0 and isinstance(stage[j - 1], Bottleneck)
                stage[j] = FusedBottleneck(block, consume_input=previous_is_block)
                count += 1
    return count


def _fusable_aspp(aspp: nn.Module) -> bool:
    """A float `ASPP` (not yet fused) whose projection BatchNorm is folded, on the CPU in float32."""
    if not isinstance(aspp, ASPP) or isinstance(aspp, FusedASPP):
        return False
    project = aspp.project[0]
    return (
        type(project) is nn.Conv2d
        and project.kernel_size == (1, 1)
        and project.bias is not None
        and isinstance(aspp.project[1], nn.Identity)
        and project.weight.device.type == "cpu"
        and project.weight.dtype == torch.float32
        and isinstance(aspp.convs[-1], ASPPPooling)
    )


def fuse_aspp_for_inference(model: nn.Module) -> int:
    """Replace, in place, every `ASPP` of `model` whose projection BatchNorm is folded (`fold_batchnorm`)
    by its `FusedASPP`; return how many. CPU float32 weights only."""
    # (name "" is `model` itself, which cannot be replaced in place)
    targets = [(name, m) for name, m in model.named_modules() if name and _fusable_aspp(m)]
    for name, aspp in targets:
        model.set_submodule(name, FusedASPP(aspp))
    return len(targets)
