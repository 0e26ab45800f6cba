"""`atrous.optimize`: an inference-ready copy of a segmentation model.

Measured wins on the CPU (see the README's "Performance" section):
- BatchNorm folded into the preceding convolution (Ioffe & Szegedy 2015, inference form): one pass over
  each activation less, and BN's own memory traffic gone;
- channels_last (NHWC) weights and activations: oneDNN's convolutions run several times faster than in
  NCHW on this CPU, and the input is converted once at the model's entry;
- ResNet bottlenecks and ASPP in a fused inference form (eager only; `atrous.models.backbones.resnet.
  FusedBottleneck`, `atrous.models.heads.FusedASPP`): oneDNN convolutions with the ReLU and the residual
  sum fused, the sum written into the shortcut's buffer, ASPP projected branch by branch instead of
  concatenated: fewer passes over the largest maps and about half the activation memory at output stride 8;
- optionally `torch.compile` with Inductor's freezing (weights become constants, conv+activation fused):
  about 1.1x more after a compile of tens of seconds, worth it for many images.

The conv -> BN pairs are found by running one forward with hooks (atrous models are not torch.fx-traceable:
`atrous_conv2d` reads Python ints from shapes): a BatchNorm whose input tensor IS the output tensor of a
Conv2d, with no other operator consuming that tensor, is folded into it. The folded copy is then checked
against the original on the same input.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from atrous.models.backbones.resnet import fuse_for_inference
from atrous.models.heads import fuse_aspp_for_inference

# operators that read a tensor's metadata only: not a use of its values
_METADATA = {"size", "dim", "stride", "numel", "is_contiguous", "__get__", "data_ptr", "storage_offset"}


class _UseCounter(TorchFunctionMode):
    """Counts, for tensors registered in `watch` (id -> tensor), the operators that read their values."""

    def __init__(self) -> None:
        super().__init__()
        self.watch: dict[int, torch.Tensor] = {}
        self.uses: dict[int, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") not in _METADATA:
            for a in _flat(args) + _flat(list(kwargs.values())):
                if isinstance(a, torch.Tensor) and self.watch.get(id(a)) is a:
                    self.uses[id(a)] = self.uses.get(id(a), 0) + 1
        return func(*args, **kwargs)


def _flat(items) -> list:
    out = []
    for a in items:
        if isinstance(a, (list, tuple)):
            out += _flat(a)
        else:
            out.append(a)
    return out


def _find_conv_bn_pairs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, bn name) for each BatchNorm2d whose only input is a Conv2d's output used by it alone.

    Each module must run exactly once in the forward (a shared conv or BN is left alone).
    """
    names = {m: n for n, m in model.named_modules()}
    calls: dict[str, int] = {}
    conv_out: dict[int, str] = {}  # id(output tensor) -> conv name
    bn_in: dict[str, int] = {}  # bn name -> id(input tensor)
    counter = _UseCounter()

    def conv_hook(module, args, output):
        calls[names[module]] = calls.get(names[module], 0) + 1
        if isinstance(output, torch.Tensor):
            conv_out[id(output)] = names[module]
            counter.watch[id(output)] = output

    def bn_pre_hook(module, args):
        calls[names[module]] = calls.get(names[module], 0) + 1
        bn_in[names[module]] = id(args[0])

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            handles.append(m.register_forward_pre_hook(bn_pre_hook))
        elif isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
    pairs = []
    for bn_name, tensor_id in bn_in.items():
        conv_name = conv_out.get(tensor_id)
        if conv_name is None or calls[conv_name] != 1 or calls[bn_name] != 1:
            continue
        if counter.uses.get(tensor_id, 0) != 1:  # the conv output also feeds another operator
            continue
        pairs.append((conv_name, bn_name))
    return pairs


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv(x) -> bn: w' = w * g / sqrt(var + eps) per output channel, b' = (b - mean) * scale + beta."""
    scale = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    scale = scale / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    with torch.no_grad():
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * scale + shift
    conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=False)


def fold_batchnorm(model: nn.Module, example_input: torch.Tensor) -> int:
    """Fold every eligible eval-mode BatchNorm2d of `model` (in place) into its conv; return how many."""
    pairs = [
        (c, b)
        for c, b in _find_conv_bn_pairs(model, example_input)
        if model.get_submodule(b).track_running_stats and model.get_submodule(b).running_mean is not None
    ]
    for conv_name, bn_name in pairs:
        _fold(model.get_submodule(conv_name), model.get_submodule(bn_name))
        model.set_submodule(bn_name, nn.Identity())
    return len(pairs)


def _example_input(model: nn.Module) -> torch.Tensor:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ValueError("optimize needs a model with at least one Conv2d, or pass example_input=")
    return torch.randn(1, first.in_channels, 65, 63, dtype=first.weight.dtype, device=first.weight.device)


def _to_channels_last(module, args, kwargs):
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
        args = (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return args, kwargs


def _max_abs_diff(a, b) -> float:
    if isinstance(a, dict):
        return max(_max_abs_diff(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return max((_max_abs_diff(x, y) for x, y in zip(a, b, strict=True) if x is not None), default=0.0)
    return float((a.float() - b.float()).abs().max())


def optimize(
    model: nn.Module,
    *,
    channels_last: bool = True,
    fold_bn: bool = True,
    compile: bool = False,
    example_input: torch.Tensor | None = None,
    atol: float = 1e-4,
) -> nn.Module:
    """An inference-ready copy of `model` (the original is not changed): eval mode, no gradients,
    BatchNorm folded (`fold_bn`), channels_last weights and input (`channels_last`; the logits come back
    channels_last too, because converting them to NCHW would add a full copy at the memory peak: call
    `.contiguous()` where a consumer needs NCHW strides), and `torch.compile` with freezing (`compile`;
    slow to start).

    `example_input` (default: a random (1, C, 65, 63) image, C from the first convolution) runs once to
    pair convolutions with their BatchNorms and to check the copy: its output must equal the original's
    to `atol` (relative to the output's scale), else ValueError. The copy keeps the model's class and
    attributes (`build_args`, `output_stride`, `meta`), except with `compile=True` where it is wrapped
    by `torch.compile` (attributes still reach the model). On the CPU without `compile`, ResNet
    bottlenecks and ASPP become their fused oneDNN forms (see the module docstring), which run on the CPU
    only: optimise on the device you infer on.
    """
    was_training = model.training
    model.eval()
    try:
        ref_model = model
        opt = copy.deepcopy(model)
    finally:
        model.train(was_training)
    opt.eval()
    opt.requires_grad_(False)
    x = example_input if example_input is not None else _example_input(opt)
    if fold_bn:
        fold_batchnorm(opt, x)
        if not compile:  # Inductor's freezing fuses these itself
            fuse_for_inference(opt)
            fuse_aspp_for_inference(opt)
    if channels_last:
        opt.to(memory_format=torch.channels_last)
        opt.register_forward_pre_hook(_to_channels_last, with_kwargs=True)
    with torch.no_grad():
        ref_model.eval()
        try:
            expected = ref_model(x)
        finally:
            ref_model.train(was_training)
        got = opt(x)
    scale = max(1.0, _max_abs_diff(expected, _zeros_like(expected)))
    diff = _max_abs_diff(got, expected)
    if diff > atol * scale:
        raise ValueError(
            f"optimize: the optimised copy differs from the model by {diff:.3g} (> {atol} x {scale:.3g})"
        )
    if compile:
        opt = torch.compile(opt, options={"freezing": True})
    return opt


def _zeros_like(out):
    if isinstance(out, dict):
        return {k: _zeros_like(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(None if o is None else torch.zeros_like(o) for o in out)
    return torch.zeros_like(out)


# torch 2.14.1's CPU backward of a 1x1 convolution with stride > 1 and few input channels per group
# corrupts the heap in channels_last ("corrupted double-linked list", or a segfault), whatever the output
# channels or the batch; measured in one subprocess per case (PyTorch's oneDNN path, 12x12 input, batch 8):
# these input channels crash, 1 and >= 8 do not. 3x3 strided and 1x1 stride-1 convolutions are fine.
_CL_BACKWARD_CRASH_CHANNELS = range(2, 8)


def _crashes_in_channels_last(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (1, 1)
        and max(conv.stride) > 1
        and conv.in_channels // conv.groups in _CL_BACKWARD_CRASH_CHANNELS
    )


def _to_contiguous(module, args, kwargs):
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
        args = (args[0].contiguous(), *args[1:])
    return args, kwargs


def _output_to_channels_last(module, args, output):
    return output.contiguous(memory_format=torch.channels_last)


def prepare_training(model: nn.Module, *, channels_last: bool = True) -> nn.Module:
    """Set `model` up for fast training, in place, and return it: channels_last parameters and an input
    hook that converts each (N, C, H, W) batch to channels_last (benchmarks/models.py measures the win on
    the CPU). Parameters keep their identity, so an optimizer may be built before or after the call.
    Call it once after building (or loading) the model; the logits come back channels_last.

    Safe on every model: each `nn.Conv2d` whose channels_last backward crashes torch 2.14.1 on the CPU
    (1x1, stride > 1, 2-7 input channels per group: tiny-width ResNets' downsampling shortcuts) keeps NCHW
    weights and runs on an NCHW copy of its input, its output converted back to channels_last; these
    layers are so narrow that the two conversions cost next to nothing. Same values either way.
    """
    if channels_last:
        model.to(memory_format=torch.channels_last)
        model.register_forward_pre_hook(_to_channels_last, with_kwargs=True)
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and _crashes_in_channels_last(m):
                m.weight.data = m.weight.data.clone(memory_format=torch.contiguous_format)  # NCHW strides
                m.register_forward_pre_hook(_to_contiguous, with_kwargs=True)
                m.register_forward_hook(_output_to_channels_last)
    return model
