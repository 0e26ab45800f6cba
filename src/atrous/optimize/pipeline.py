"""`atrous.optimize`: an inference-ready copy of a segmentation model.

Measured wins on the CPU (see docs/performance.md):
- every `atrous.ops.DilatedReparam` (UniRepLKNet's training form: a large depthwise kernel beside dilated
  ones, each with its BatchNorm) merged into its one equivalent depthwise convolution (`reparameterize`);
- BatchNorm folded into the preceding convolution (`fold.py`): one pass over each activation less;
- channels_last (NHWC) weights and activations (`layout.py`): oneDNN's convolutions run several times
  faster than in NCHW on the CPU; the input is converted once at the model's entry;
- ResNet bottlenecks and ASPP in their fused oneDNN inference forms (`fused.py`, eager float32 on the CPU;
  under `torch.autocast` or in another dtype they run their float forward): fewer passes over the largest
  maps and about half the activation memory at output stride 8;
- optionally bfloat16/float16 (`precision.py`, `dtype=`), and `torch.compile` with Inductor's freezing
  (weights become constants, conv+activation fused): about 1.1x more after a compile of tens of seconds.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from atrous.ops.reparam import reparameterize
from atrous.optimize.fold import fold_batchnorm
from atrous.optimize.fused import fuse_aspp_for_inference, fuse_for_inference
from atrous.optimize.layout import to_channels_last
from atrous.optimize.precision import resolve_dtype, with_precision


def random_example(model: nn.Module) -> torch.Tensor:
    """A random (1, C, 65, 63) image on the model's device, C from its first convolution."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ValueError("optimize needs a model with at least one Conv2d, or pass example_input=")
    return torch.randn(1, first.in_channels, 65, 63, dtype=first.weight.dtype, device=first.weight.device)


def _max_abs_diff(a, b) -> float:
    if isinstance(a, dict):
        return max(_max_abs_diff(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return max((_max_abs_diff(x, y) for x, y in zip(a, b, strict=True) if x is not None), default=0.0)
    return float((a.float() - b.float()).abs().max())


def _zeros_like(out):
    if isinstance(out, dict):
        return {k: _zeros_like(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(None if o is None else torch.zeros_like(o) for o in out)
    return torch.zeros_like(out)


def _eval_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` in eval mode without gradients; `model` keeps its mode."""
    was_training = model.training
    model.eval()
    try:
        opt = copy.deepcopy(model)
    finally:
        model.train(was_training)
    return opt.eval().requires_grad_(False)


def _check_same_outputs(model: nn.Module, opt: nn.Module, x: torch.Tensor, atol: float) -> None:
    """ValueError unless `opt(x)` equals `model(x)` in eval mode to `atol` x the output's scale."""
    was_training = model.training
    with torch.no_grad():
        model.eval()
        try:
            expected = model(x)
        finally:
            model.train(was_training)
        got = opt(x)
    scale = max(1.0, _max_abs_diff(expected, _zeros_like(expected)))
    diff = _max_abs_diff(got, expected)
    if diff > atol * scale:
        raise ValueError(
            f"optimize: the optimised copy differs from the model by {diff:.3g} (> {atol} x {scale:.3g})"
        )


def optimize(
    model: nn.Module,
    *,
    dtype: str | torch.dtype | None = None,
    channels_last: bool = True,
    fold_bn: bool = True,
    compile: bool = False,
    example_input: torch.Tensor | None = None,
    atol: float = 1e-4,
) -> nn.Module:
    """An inference-ready copy of `model` (the original is not changed): eval mode, no gradients,
    BatchNorm folded (`fold_bn`), channels_last weights and input (`channels_last`; the logits come back
    channels_last too, because converting them to NCHW would add a full copy at the memory peak: call
    `.contiguous()` where a consumer needs NCHW strides), run in `dtype` ("fp32", "bf16", "fp16" or a
    torch dtype; default float32), and `torch.compile` with freezing (`compile`; slow to start).

    `example_input` (default: a random (1, C, 65, 63) image, C from the first convolution) runs once to
    pair convolutions with their BatchNorms and to check the float32 copy: its output must equal the
    original's to `atol` (relative to the output's scale), else ValueError. With a 16-bit `dtype` the copy
    is a `Precision` wrapper in whichever of autocast and cast weights measured faster on `example_input`
    (its `precision_timings` say how fast and how many labels equal float32's); fp16 needs CUDA. The copy
    keeps the model's class and attributes (`build_args`, `output_stride`, `meta`) with every
    `DilatedReparam` merged into its one convolution (the checkpoint keeps the training form); a `Precision` or
    `torch.compile` wrapper passes attribute lookups on to the model. On the CPU, ResNet bottlenecks and
    ASPP become their fused oneDNN forms (`atrous.optimize.fused`); elsewhere they run as the float blocks.
    """
    dtype = resolve_dtype(dtype)
    opt = _eval_copy(model)
    x = example_input if example_input is not None else random_example(opt)
    reparameterize(opt)  # before folding: each merge folds its branches' own BatchNorms
    if fold_bn:
        fold_batchnorm(opt, x)
        if not compile:  # Inductor's freezing fuses these itself
            fuse_for_inference(opt)
            fuse_aspp_for_inference(opt)
    if channels_last:
        to_channels_last(opt)
    _check_same_outputs(model, opt, x, atol)
    opt = with_precision(opt, dtype, example_input=x)
    if compile:
        opt = torch.compile(opt, options={"freezing": True})
    return opt
