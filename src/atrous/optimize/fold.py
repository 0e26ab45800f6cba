"""BatchNorm folding (Ioffe & Szegedy 2015, inference form): `w' = w * g / sqrt(var + eps)` per output
channel, `b' = (b - mean) * g / sqrt(var + eps) + beta`, so each folded BatchNorm costs nothing at inference.

The conv -> BN pairs are found by running one forward with hooks (atrous models are not torch.fx-traceable:
`atrous_conv2d` reads Python ints from shapes): a BatchNorm whose input tensor IS the output tensor of a
Conv2d, with no other operator consuming that tensor, is folded into it. Keyed on the module types
(`nn.Conv2d` and its subclasses, `nn.BatchNorm2d`, `nn.SyncBatchNorm`), never on attribute names.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from atrous.ops import fold_batchnorm as fold_conv_bn

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
    alive: list[torch.Tensor] = []  # BN inputs held until the end, so that no later tensor reuses their id
    counter = _UseCounter()

    def conv_hook(module, args, output):
        calls[names[module]] = calls.get(names[module], 0) + 1
        if isinstance(output, torch.Tensor):
            conv_out[id(output)] = names[module]
            counter.watch[id(output)] = output

    def bn_pre_hook(module, args):
        calls[names[module]] = calls.get(names[module], 0) + 1
        bn_in[names[module]] = id(args[0])
        alive.append(args[0])

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
    """conv(x) -> bn as one conv, by the one folding formula (`atrous.ops.fold_batchnorm`)."""
    with torch.no_grad():
        weight, new_bias = fold_conv_bn(conv.weight, bn, conv.bias)
        conv.weight.copy_(weight)
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
