"""The rule table: how each spatial op moves the receptive field, written once per op.

A `Rule` names the functional calls and the module types it covers and the parameters it reads, by the
names a functional signature and its module's attributes share (`stride`, `padding`, `dilation`,
`kernel_size`, `mode`, `upscale_factor`, ...). The tracer binds a call's arguments, or a module's
attributes, to those names and calls the same rule, so `F.conv2d` and `nn.Conv2d` (and its subclasses such
as `AtrousConv2d`, whatever their forward does inside) cannot disagree. A rule gives

- `meta(m, x, out, p)`: the output's metadata from the input's (`m`), the input and output tensors and the
  bound parameters `p`; None when this call has no exact rule (the tracer's generic union decides);
- `fields(p, x, out)`: the row's kernel / stride / dilation (`row=False`: the op leaves no row, e.g. padding);
- `shape(x, p)`: the output shape from shapes alone, for the meta run (None: run the op's meta kernel).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from atrous.analysis.receptive_field.axis import (
    adaptive_op,
    block_op,
    conv_op,
    interp_op,
    transposed_op,
)
from atrous.analysis.receptive_field.meta import Meta, global_meta
from atrous.ops import SmoothedAtrousConv2d


@dataclass(frozen=True, kw_only=True)
class Rule:
    """One op's receptive-field rule (see the module docstring)."""

    name: str  # the row's type, and the suffix of a functional call's row name ("layer1.0:conv2d")
    params: tuple[str, ...]  # the functional signature after the input, in order; module attribute names
    meta: Callable[..., Meta | None]
    fields: Callable[..., dict] = lambda p, x, out: {}
    shape: Callable[..., tuple | None] | None = None
    functions: tuple = ()
    modules: tuple = ()
    defaults: dict = field(default_factory=dict)
    row: bool = True
    kind: Callable[[dict], str] | None = None  # a row type that depends on the parameters

    def bind_call(self, args, kwargs) -> dict:
        """Parameters of a functional call `func(x, *args[1:], **kwargs)` by name."""
        p = dict(self.defaults)
        p.update(zip(self.params, args[1:]))
        p.update((k, v) for k, v in kwargs.items() if k in self.params)
        return p

    def bind_module(self, module: nn.Module) -> dict:
        """Parameters of a module, read from its attributes of the same names."""
        p = dict(self.defaults)
        p.update((k, getattr(module, k)) for k in self.params if hasattr(module, k))
        return p

    def row_type(self, p: dict) -> str:
        return self.kind(p) if self.kind is not None else self.name


def pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1])) if len(v) > 1 else (int(v[0]), int(v[0]))
    return int(v), int(v)


# ----------------------------------------------------------------------------------------------------------
# the geometry shared by several rules
# ----------------------------------------------------------------------------------------------------------
def window_meta(m: Meta, k, s, p, d, *, transposed: bool = False, learned: bool = False) -> Meta:
    """A sliding window (convolution, pooling) or its transpose, per axis (kernel, stride, padding,
    dilation)."""
    if transposed:
        ops = [transposed_op(*a) for a in zip(k, s, p, d)]
        new = m.map(ops)
        # a learned upsampling (channels mixed per sub-pixel) can place detail at its output spacing
        detail = tuple(di / si for di, si in zip(m.detail, s)) if learned else m.detail
        return Meta(new.axes, new.is_global, tuple(max(dd, Fraction(1)) for dd in detail))
    ops = [conv_op(*a) for a in zip(k, s, p, d)]
    return Meta(m.map(ops).axes, m.is_global, m.strided_detail(ops))


def adaptive_meta(m: Meta, x, out) -> Meta:
    n_in, n_out = tuple(x.shape[-2:]), tuple(out.shape[-2:])
    if n_out == (1, 1) and n_in != (1, 1):
        return global_meta()
    ops = [adaptive_op(a, b) for a, b in zip(n_in, n_out)]
    return Meta(m.map(ops).axes, m.is_global, m.strided_detail(ops))


# ----------------------------------------------------------------------------------------------------------
# convolution
# ----------------------------------------------------------------------------------------------------------
def _conv(p: dict) -> tuple:
    """(kernel, stride, padding, dilation) pairs; "same" pads as PyTorch does (the extra pixel of an even
    kernel on the right)."""
    k = tuple(int(v) for v in p["weight"].shape[-2:])
    s, d, pad = pair(p["stride"]), pair(p["dilation"]), p["padding"]
    if pad == "same":
        return k, s, tuple(di * (ki - 1) // 2 for di, ki in zip(d, k)), d
    return k, s, (0, 0) if pad == "valid" else pair(pad), d


def _conv_fields(p: dict, x, out) -> dict:
    k, s, _, d = _conv(p)
    return {"kernel": k, "stride": s, "dilation": d}


def _conv_meta(m, x, out, p) -> Meta:
    return window_meta(m, *_conv(p))


def _conv_shape(x, p):
    k, s, pad, d = _conv(p)
    if p["padding"] == "same":
        return (x.shape[0], p["weight"].shape[0], *x.shape[-2:])
    size = [(n + 2 * pad[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i, n in enumerate(x.shape[-2:])]
    return (x.shape[0], p["weight"].shape[0], *size)


def _transposed_meta(m, x, out, p) -> Meta:
    k, s, pad, d = _conv(p)
    # a transposed convolution that mixes channels is a learned upsampling (it can place sub-pixel detail);
    # a per-channel one (FCN's bilinear deconvolution) only interpolates
    learned = int(p["groups"]) != int(x.shape[1])
    return window_meta(m, k, s, pad, d, transposed=True, learned=learned)


def _transposed_shape(x, p):
    k, s, pad, d = _conv(p)
    op = pair(p["output_padding"])
    size = [(n - 1) * s[i] - 2 * pad[i] + d[i] * (k[i] - 1) + op[i] + 1 for i, n in enumerate(x.shape[-2:])]
    return (x.shape[0], p["weight"].shape[1] * int(p["groups"]), *size)


# ----------------------------------------------------------------------------------------------------------
# pooling
# ----------------------------------------------------------------------------------------------------------
def _pool(p: dict) -> tuple:
    k = pair(p["kernel_size"])
    s = k if p["stride"] in (None, [], ()) else pair(p["stride"])
    return k, s, pair(p["padding"]), pair(p["dilation"])


def _pool_fields(p: dict, x, out) -> dict:
    k, s, _, d = _pool(p)
    return {"kernel": k, "stride": s, "dilation": d}


def _pool_meta(m, x, out, p) -> Meta:
    return window_meta(m, *_pool(p))


def _pool_shape(x, p):
    if p.get("return_indices"):
        return None
    k, s, pad, d = _pool(p)
    size = []
    for i, n in enumerate(x.shape[-2:]):
        span = n + 2 * pad[i] - d[i] * (k[i] - 1) - 1
        out = (-(-span // s[i]) if p["ceil_mode"] else span // s[i]) + 1
        if p["ceil_mode"] and (out - 1) * s[i] >= n + pad[i]:  # the last window must start inside
            out -= 1
        size.append(out)
    return (*x.shape[:2], *size)


def _adaptive_shape(x, p):
    if p["return_indices"]:
        return None
    size = p["output_size"]
    size = size if isinstance(size, (tuple, list)) else (size, size)
    return (*x.shape[:2], *(n if o is None else int(o) for n, o in zip(x.shape[-2:], size)))


# ----------------------------------------------------------------------------------------------------------
# interpolation, pixel (un)shuffle, padding, slicing
# ----------------------------------------------------------------------------------------------------------
def _interp_scale(p: dict, n_in: int, n_out: int, i: int) -> Fraction:
    """Input units per output unit along axis `i`, as PyTorch computes the source coordinate."""
    if p["align_corners"] and p["mode"] not in ("nearest", "nearest-exact"):
        scale = Fraction(n_in - 1, n_out - 1) if n_out > 1 else Fraction(0)
    elif p["scale_factor"] is not None and not p["recompute_scale_factor"]:
        sf = p["scale_factor"]
        sf = sf[i] if isinstance(sf, (tuple, list)) else sf
        scale = 1 / Fraction(sf).limit_denominator(10_000)
    else:
        scale = Fraction(n_in, n_out)
    return Fraction(n_in, max(n_out, 1)) if scale == 0 else scale  # one output pixel reads input 0


def _interp_meta(m, x, out, p) -> Meta:
    if p["mode"] == "area":  # area interpolation is adaptive average pooling
        return adaptive_meta(m, x, out)
    if m.axes is None:  # a broadcast of a pooled value (ASPP image pooling): no local geometry to map
        return m
    n_in, n_out = tuple(x.shape[-2:]), tuple(out.shape[-2:])
    ops = [interp_op(_interp_scale(p, n_in[i], n_out[i], i), p["mode"], p["align_corners"]) for i in range(2)]
    new = m.map(ops)
    # interpolation adds no detail; shrinking by interpolation coarsens it to the new spacing
    detail = tuple(max(d, ax.jump) if r > q else d for d, ax, (q, r, _) in zip(m.detail, new.axes, ops))
    return Meta(new.axes, new.is_global, detail)


def _interp_shape(x, p):
    if p["size"] is not None:
        return (*x.shape[:2], *pair(p["size"]))
    sf = p["scale_factor"]
    sf = sf if isinstance(sf, (tuple, list)) else (sf, sf)
    return (*x.shape[:2], *(math.floor(n * f) for n, f in zip(x.shape[-2:], sf)))


def _shuffle_meta(m, x, out, p) -> Meta:
    r = int(p["upscale_factor"])
    detail = tuple(max(d / r, Fraction(1)) for d in m.detail)  # each sub-pixel has its own channels
    return Meta(m.map([(r, 1, [[0]] * r)] * 2).axes, m.is_global, detail)


def _shuffle_shape(x, p):
    n, c, h, w = x.shape
    r = int(p["upscale_factor"])
    return (n, c // (r * r), h * r, w * r)


def _unshuffle_meta(m, x, out, p) -> Meta:
    r = int(p["downscale_factor"])
    ops = [(1, r, [list(range(r))])] * 2
    return Meta(m.map(ops).axes, m.is_global, m.strided_detail(ops))


def _pad_meta(m, x, out, p) -> Meta:
    pad = [*p["pad"], 0, 0, 0, 0][:4]  # (left, right, top, bottom)
    return m.map([(1, 1, [[-int(pad[2])]]), (1, 1, [[-int(pad[0])]])])


def _getitem_meta(m, x, out, p) -> Meta | None:
    """Slices of the spatial axes (FCN's crop `x[..., :h, :w]`); anything else: None (the generic rule)."""
    index = p["index"] if isinstance(p["index"], tuple) else (p["index"],)
    if sum(i is Ellipsis for i in index) == 1:  # x[..., :h, :w]: spell the ellipsis out as full slices
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (x.dim() - len(index) + 1) + index[at + 1 :]
    if any(i is Ellipsis or i is None for i in index) or not (
        isinstance(out, torch.Tensor) and out.dim() == 4
    ):
        return None
    if any(not isinstance(i, slice) for i in index[:2]):
        return None
    ops = []
    for dim in (2, 3):
        sl = index[dim] if len(index) > dim else slice(None)
        if not isinstance(sl, slice):
            return None
        start, _, step = sl.indices(int(x.shape[dim]))
        ops.append((1, step, [[start]]))
    return Meta(m.map(ops).axes, m.is_global, m.strided_detail(ops))


# ----------------------------------------------------------------------------------------------------------
# composite layers, from their attributes
# ----------------------------------------------------------------------------------------------------------
def _smoothed_meta(m, x, out, p) -> Meta:
    """Wang & Ji's smoothed dilation: a (2r-1)^2 shared filter before, or an r-block mixing after, the
    dilated convolution (its space-to-batch reshapes are implementation, not geometry)."""
    conv = p["conv"]
    r = conv.dilation[0]
    if p["method"] == "shared_separable":
        m = window_meta(m, (2 * r - 1,) * 2, (1, 1), (r - 1, r - 1), (1, 1))
    m = window_meta(m, conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    return m.map([block_op(r)] * 2) if p["method"] == "group_interaction" else m


def _smoothed_fields(p: dict, x, out) -> dict:
    conv = p["conv"]
    return {"kernel": conv.kernel_size, "stride": conv.stride, "dilation": conv.dilation}


_CONV = ("weight", "bias", "stride", "padding", "dilation", "groups")
_TRANSPOSED = ("weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
_MAX_POOL = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG_POOL = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_INTERP = ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor")
_WINDOW = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "output_padding": 0}
_POOL = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False}
_INTERP_DEFAULTS = {"size": None, "scale_factor": None, "mode": "nearest", "align_corners": None}
_INTERP_DEFAULTS |= {"recompute_scale_factor": None}

# Module types are matched with isinstance, in this order (a composite layer before the convolution it holds).
RULES = (
    Rule(
        name="smoothed_atrous_conv2d",
        params=("conv", "method"),
        meta=_smoothed_meta,
        fields=_smoothed_fields,
        modules=(SmoothedAtrousConv2d,),
    ),
    Rule(
        name="conv2d",
        params=_CONV,
        meta=_conv_meta,
        fields=_conv_fields,
        shape=_conv_shape,
        functions=(torch.conv2d,),
        modules=(nn.Conv2d,),
        defaults=_WINDOW,
    ),
    Rule(
        name="conv_transpose2d",
        params=_TRANSPOSED,
        meta=_transposed_meta,
        fields=_conv_fields,
        shape=_transposed_shape,
        functions=(F.conv_transpose2d,),
        modules=(nn.ConvTranspose2d,),
        defaults=_WINDOW,
    ),
    Rule(
        name="max_pool2d",
        params=_MAX_POOL,
        meta=_pool_meta,
        fields=_pool_fields,
        shape=_pool_shape,
        functions=(F.max_pool2d,),
        modules=(nn.MaxPool2d,),
        defaults=_POOL,
    ),
    Rule(
        name="avg_pool2d",
        params=_AVG_POOL,
        meta=_pool_meta,
        fields=_pool_fields,
        shape=_pool_shape,
        functions=(F.avg_pool2d,),
        modules=(nn.AvgPool2d,),
        defaults=_POOL,
    ),
    Rule(
        name="adaptive_pool2d",
        params=("output_size", "return_indices"),
        meta=lambda m, x, out, p: adaptive_meta(m, x, out),
        shape=_adaptive_shape,
        functions=(F.adaptive_avg_pool2d, F.adaptive_max_pool2d),
        modules=(nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d),
        defaults={"return_indices": False},
    ),
    Rule(
        name="interpolate",
        params=_INTERP,
        meta=_interp_meta,
        # the stride of a resize: input units per output unit (1/2 for a 2x upsampling)
        fields=lambda p, x, out: {
            "stride": [Fraction(int(i), int(o)) for i, o in zip(x.shape[-2:], out.shape[-2:])]
        },
        shape=_interp_shape,
        functions=(F.interpolate,),
        modules=(nn.Upsample,),
        defaults=_INTERP_DEFAULTS,
        kind=lambda p: f"interpolate({p['mode']})",
    ),
    Rule(
        name="pixel_shuffle",
        params=("upscale_factor",),
        meta=_shuffle_meta,
        fields=lambda p, x, out: {"stride": (Fraction(1, int(p["upscale_factor"])),) * 2},
        shape=_shuffle_shape,
        functions=(F.pixel_shuffle,),
        modules=(nn.PixelShuffle,),
    ),
    Rule(
        name="pixel_unshuffle",
        params=("downscale_factor",),
        meta=_unshuffle_meta,
        fields=lambda p, x, out: {"stride": (int(p["downscale_factor"]),) * 2},
        functions=(F.pixel_unshuffle,),
        modules=(nn.PixelUnshuffle,),
    ),
    Rule(
        name="pad",
        params=("pad", "mode", "value"),
        meta=_pad_meta,
        functions=(F.pad,),
        row=False,
    ),
    Rule(
        name="getitem",
        params=("index",),
        meta=_getitem_meta,
        functions=(torch.Tensor.__getitem__, torch._C.TensorBase.__getitem__),
        row=False,
    ),
)

FUNCTIONS = {func: rule for rule in RULES for func in rule.functions}


def module_rule(module: nn.Module) -> Rule | None:
    """The rule that handles `module` as a whole, from its attributes, or None (traced op by op)."""
    return next((rule for rule in RULES if rule.modules and isinstance(module, rule.modules)), None)
