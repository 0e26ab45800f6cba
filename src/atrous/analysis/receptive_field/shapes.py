"""Output shapes of the meta run, computed from shapes alone.

The meta kernels of normalisation and elementwise ops import torch's Python decompositions (and sympy):
seconds of start-up for an answer that is just the (broadcast) input shape. The ops with a receptive-field
rule give their shape through the rule table (`Rule.shape`); the shape-only ops below have no rule of their
own (the tracer's generic union covers them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from atrous.analysis.receptive_field.rules import FUNCTIONS

_SHAPE_PRESERVING = {F.batch_norm, F.group_norm, F.instance_norm, F.layer_norm, F.dropout, F.dropout2d}
_ACTIVATIONS = {F.relu, F.relu6, F.leaky_relu, F.elu, F.hardtanh, F.silu, F.gelu, F.hardswish, F.mish}
_ELEMENTWISE = {"add", "sub", "mul", "div", "relu", "sigmoid", "tanh", "hardtanh", "silu", "gelu", "clamp"}
_ELEMENTWISE |= {f"__{op}__" for op in ("add", "radd", "sub", "rsub", "mul", "rmul", "truediv")}


def _empty(shape, dtype) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


def meta_output(func, margs, mkwargs) -> torch.Tensor | None:
    """The output of `func(*margs, **mkwargs)` on meta tensors without running its meta kernel, or None."""
    if func is torch.cat and margs and isinstance(margs[0], (list, tuple)) and margs[0]:
        dim = mkwargs.get("dim", margs[1] if len(margs) > 1 else 0) % margs[0][0].dim()
        shape = list(margs[0][0].shape)
        shape[dim] = sum(int(t.shape[dim]) for t in margs[0])
        return _empty(shape, margs[0][0].dtype)
    if not margs or not isinstance(margs[0], torch.Tensor):
        return None
    x = margs[0]
    rule = FUNCTIONS.get(func)
    if rule is not None:
        shape = rule.shape(x, rule.bind_call(margs, mkwargs)) if rule.shape and x.dim() == 4 else None
        return None if shape is None else _empty(shape, x.dtype)
    if func in _ACTIVATIONS:
        inplace = mkwargs.get(
            "inplace", margs[-1] if len(margs) > 1 and isinstance(margs[-1], bool) else False
        )
        return x if inplace else _empty(x.shape, x.dtype)
    if func in _SHAPE_PRESERVING:
        return _empty(x.shape, x.dtype)
    return None if mkwargs else _elementwise(func, margs)


def _elementwise(func, margs) -> torch.Tensor | None:
    name = getattr(func, "__name__", "")
    if name.startswith("__i") or (name.endswith("_") and not name.endswith("__")):  # in place: the input
        base = name[3:-2] if name.startswith("__i") else name[:-1]
        return margs[0] if base in _ELEMENTWISE or f"__{base}__" in _ELEMENTWISE else None
    if name not in _ELEMENTWISE:
        return None
    tensors = [a for a in margs if isinstance(a, torch.Tensor)]
    ndim = max(t.dim() for t in tensors)  # broadcasting (torch.broadcast_shapes imports sympy too)
    shapes = [(1,) * (ndim - t.dim()) + tuple(t.shape) for t in tensors]
    shape = [max(dims) if min(dims) > 0 else 0 for dims in zip(*shapes)]
    dtype = torch.result_type(*margs[:2]) if len(margs) >= 2 else margs[0].dtype
    return _empty(shape, dtype)
