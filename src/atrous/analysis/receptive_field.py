"""Theoretical receptive field of any `nn.Module`, following the real graph.

The receptive field (RF) of a unit is the set of input pixels that can influence it (Araujo, Norris & Sim,
"Computing Receptive Fields of Convolutional Neural Networks", Distill 2019, give the chain formulas; Yu &
Koltun, ICLR 2016, Table 1 lists the context module's). Tools that walk a layer list are wrong for
residual, concatenating and multi-branch (ASPP) graphs, and `torch.fx` cannot trace the atrous models
(they read Python ints from `x.shape`). Here the model runs once on an input of the requested size under a
`TorchFunctionMode` that (a) moves every tensor to the `meta` device, so nothing is computed and a
ResNet-101 at 512x512 takes a fraction of a second, and (b) carries receptive-field metadata on every
tensor through every op:

- per spatial axis, the *jump* `j` (distance in input pixels between neighbouring units, a Fraction after
  upsampling) and, for each phase of a periodic pattern, the interval `[o*j + lo, o*j + hi]` of input pixels
  seen by unit `o` (on an unbounded input, so the RF is not clipped by the image border);
- a `global` flag, set by global / adaptive-to-1x1 pooling and spatial reductions (ASPP image pooling);
- the *detail*: the spacing of the coarsest grid of independent values on the path (the small-object limit).

Convolutions, pooling, transposed convolutions, interpolation, pixel (un)shuffle, padding and slicing map
the intervals exactly; elementwise ops and channel concatenation take their union. Known layers
(`nn.Conv2d` and its subclasses such as `AtrousConv2d`, pooling, upsampling, `SmoothedAtrousConv2d`) are
handled as a whole from their attributes, so an implementation detail inside them (space-to-batch
reshapes, kernel taps cropped because they only read padding) does not change the theoretical answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

# a periodic pattern longer than this is replaced by its bounding (conservative) one-phase form
_MAX_PERIOD = 4096


# ----------------------------------------------------------------------------------------------------------
# one spatial axis
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    """Receptive field along one axis: unit `o` sees input pixels `[o*jump + lo[o % P], o*jump + hi[o % P]]`
    (None where that phase sees nothing, e.g. a transposed convolution whose kernel is shorter than its
    stride)."""

    jump: Fraction
    lo: tuple
    hi: tuple

    @property
    def period(self) -> int:
        return len(self.lo)

    @property
    def size(self) -> int:
        """The largest receptive field over phases, in input pixels."""
        sizes = [h - lo + 1 for lo, h in zip(self.lo, self.hi) if lo is not None]
        return int(max(sizes)) if sizes else 0

    @staticmethod
    def identity() -> Axis:
        return Axis(Fraction(1), (Fraction(0),), (Fraction(0),))

    def interval(self, o: int) -> tuple[Fraction, Fraction] | None:
        """Absolute input-pixel interval seen by unit `o` (unbounded input)."""
        p = o % self.period
        if self.lo[p] is None:
            return None
        return o * self.jump + self.lo[p], o * self.jump + self.hi[p]

    def apply(self, q_out: int, r_in: int, reads: list[list[int]]) -> Axis:
        """Map through a periodic op: output unit `m*q_out + q` reads input units `reads[q] + m*r_in`."""
        p = self.period
        periods = p // math.gcd(r_in, p)
        n_out = q_out * periods
        jump = self.jump * r_in / q_out
        if n_out > _MAX_PERIOD and p > 1:
            return self._collapse().apply(q_out, r_in, reads)
        lo, hi = [], []
        for o in range(n_out):
            m, q = divmod(o, q_out)
            spans = [self.interval(i + m * r_in) for i in reads[q]]
            spans = [s for s in spans if s is not None]
            if not spans:
                lo.append(None)
                hi.append(None)
                continue
            lo.append(min(s[0] for s in spans) - o * jump)
            hi.append(max(s[1] for s in spans) - o * jump)
        return Axis(jump, tuple(lo), tuple(hi))._reduced()

    def union(self, other: Axis, units: int | None = None) -> tuple[Axis, bool]:
        """Elementwise union (residual add, channel concat); second value True when it is approximate.

        Two maps of the same size can have different jumps (a map resized to an odd size beside a strided
        one, as DeepLab v3+'s decoder at odd input sizes). Then the result keeps the finer jump and widens
        the other's offsets by the drift `o * (j_other - j)` over the `units` units of the map: a superset
        of every unit's receptive field.
        """
        if self.jump != other.jump:
            fine, coarse = (self, other) if self.jump < other.jump else (other, self)
            c = coarse._collapse()
            drift = (max(units or 1, 1) - 1) * (coarse.jump - fine.jump)
            widened = Axis(fine.jump, (c.lo[0],), (c.hi[0] + drift,))
            return fine.union(widened)[0], True
        n = math.lcm(self.period, other.period)
        lo, hi = [], []
        for o in range(n):
            a, b = self.lo[o % self.period], other.lo[o % other.period]
            if a is None or b is None:
                lo.append(a if b is None else b)
                hi.append(self.hi[o % self.period] if b is None else other.hi[o % other.period])
                continue
            lo.append(min(a, b))
            hi.append(max(self.hi[o % self.period], other.hi[o % other.period]))
        return Axis(self.jump, tuple(lo), tuple(hi))._reduced(), False

    def _collapse(self) -> Axis:
        """One phase bounding every phase (a superset of each unit's receptive field)."""
        los = [v for v in self.lo if v is not None]
        his = [v for v in self.hi if v is not None]
        # unit o of phase p: [o*j + lo_p, ...]; relative to o*j the offsets stay the same: min / max are exact
        return Axis(self.jump, (min(los),), (max(his),))

    def _reduced(self) -> Axis:
        n = self.period
        for d in range(1, n):
            if n % d == 0 and all(
                self.lo[i] == self.lo[i % d] and self.hi[i] == self.hi[i % d] for i in range(n)
            ):
                return Axis(self.jump, self.lo[:d], self.hi[:d])
        return self


# ----------------------------------------------------------------------------------------------------------
# per-axis ops as (q_out, r_in, reads)
# ----------------------------------------------------------------------------------------------------------
def _conv_op(kernel: int, stride: int, padding: int, dilation: int):
    return 1, stride, [[-padding + t * dilation for t in range(kernel)]]


def _transposed_op(kernel: int, stride: int, padding: int, dilation: int):
    # output o = i*stride - padding + t*dilation  =>  i = (o + padding - t*dilation) / stride when exact
    reads = [
        [
            (q + padding - t * dilation) // stride
            for t in range(kernel)
            if (q + padding - t * dilation) % stride == 0
        ]
        for q in range(stride)
    ]
    return stride, 1, reads


def _interp_op(scale: Fraction, mode: str, align_corners: bool | None):
    """Output unit o reads the input units that get a non-zero weight at source coordinate x(o).

    `scale` is input units per output unit, as PyTorch uses it (in/out, or 1/scale_factor when given).
    """
    q_out, r_in = scale.denominator, scale.numerator
    reads = []
    for q in range(q_out):
        if mode == "nearest":
            reads.append([math.floor(q * scale)])
            continue
        if mode == "nearest-exact":
            reads.append([math.floor((q + Fraction(1, 2)) * scale)])
            continue
        x = q * scale if align_corners else (q + Fraction(1, 2)) * scale - Fraction(1, 2)
        i0 = math.floor(x)
        exact = x == i0  # the neighbour gets weight 0 exactly (bilinear and bicubic)
        if mode in ("bilinear", "linear", "trilinear"):
            reads.append([i0] if exact else [i0, i0 + 1])
        elif mode == "bicubic":
            reads.append([i0] if exact else [i0 - 1, i0, i0 + 1, i0 + 2])
        else:  # "area" is adaptive average pooling; handled by the caller
            raise ValueError(f"unsupported interpolation mode {mode!r}")
    return q_out, r_in, reads


def _adaptive_op(n_in: int, n_out: int):
    # PyTorch: output o averages input [floor(o*n_in/n_out), ceil((o+1)*n_in/n_out))
    g = math.gcd(n_in, n_out)
    q_out, r_in = n_out // g, n_in // g
    reads = [list(range((q * n_in) // n_out, -((-(q + 1) * n_in) // n_out))) for q in range(q_out)]
    return q_out, r_in, reads


def _block_op(r: int):
    # every unit of an r-block sees the whole block (the group-interaction layer of smoothed dilation)
    return r, r, [list(range(r)) for _ in range(r)]


# ----------------------------------------------------------------------------------------------------------
# tensor metadata
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Meta:
    """Receptive-field metadata of an (N, C, H, W) tensor. `axes` is None when only a global (pooled)
    path reaches it; `detail` is the spacing (h, w) in input pixels of the coarsest grid of independent
    values on the best path to it."""

    axes: tuple[Axis, Axis] | None
    is_global: bool
    detail: tuple[Fraction, Fraction]

    def map(self, ops_hw) -> Meta:
        """The same tensor through per-axis ops (q_out, r_in, reads); the detail is the caller's business."""
        axes = None
        if self.axes is not None:
            axes = tuple(ax.apply(*op) for ax, op in zip(self.axes, ops_hw))
        return Meta(axes, self.is_global, self.detail)

    def strided_detail(self, ops_hw) -> tuple[Fraction, Fraction]:
        """Detail after a downsampling op: at least the new grid spacing."""
        out = []
        for d, ax, (q, r, _) in zip(self.detail, self.axes or (None, None), ops_hw):
            jump = (ax.jump if ax is not None else Fraction(1)) * r / q
            out.append(max(d, jump) if r > q else d)
        return tuple(out)


def _union(metas: list[Meta], notes: set, shape=None) -> Meta:
    axes = None
    for m in metas:
        if m.axes is None:
            continue
        if axes is None:
            axes = m.axes
            continue
        merged = []
        for i, (a, b) in enumerate(zip(axes, m.axes)):
            u, approx = a.union(b, None if shape is None else int(shape[-2 + i]))
            if approx:
                notes.add("tensors with different strides were added: their union is approximate")
            merged.append(u)
        axes = tuple(merged)
    local = [m for m in metas if m.axes is not None] or metas
    detail = tuple(min(m.detail[i] for m in local) for i in range(2))
    return Meta(axes, any(m.is_global for m in metas), detail)


_NO_DETAIL = Fraction(10**9)  # a purely global tensor has no spatial grid of its own


def _global() -> Meta:
    return Meta(None, True, (_NO_DETAIL, _NO_DETAIL))


# ----------------------------------------------------------------------------------------------------------
# the tracing mode
# ----------------------------------------------------------------------------------------------------------
def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1])) if len(v) > 1 else (int(v[0]), int(v[0]))
    return int(v), int(v)


def _arg(args, kwargs, index: int, name: str, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _is_spatial(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() == 4


_FACTORIES = {"new_zeros", "new_ones", "new_full", "new_empty", "zeros_like", "ones_like", "empty_like"}
_FACTORIES |= {"full_like", "rand_like", "randn_like", "new_tensor", "size", "dim", "numel"}


_SHAPE_PRESERVING = {F.batch_norm, F.group_norm, F.instance_norm, F.layer_norm, F.dropout, F.dropout2d}
_ACTIVATIONS = {F.relu, F.relu6, F.leaky_relu, F.elu, F.hardtanh, F.silu, F.gelu, F.hardswish, F.mish}
_ELEMENTWISE = {"add", "sub", "mul", "div", "relu", "sigmoid", "tanh", "hardtanh", "silu", "gelu", "clamp"}
_ELEMENTWISE |= {f"__{op}__" for op in ("add", "radd", "sub", "rsub", "mul", "rmul", "truediv")}


def _meta_shortcut(func, margs, mkwargs):
    """The output of a shape-only (normalisation, elementwise) op on meta tensors, or None.

    The meta kernels of these ops import torch's Python decompositions (and sympy): seconds of start-up
    for an answer that is just the (broadcast) input shape.
    """
    if func is torch.cat and margs and isinstance(margs[0], (list, tuple)) and margs[0]:
        dim = mkwargs.get("dim", margs[1] if len(margs) > 1 else 0) % margs[0][0].dim()
        shape = list(margs[0][0].shape)
        shape[dim] = sum(int(t.shape[dim]) for t in margs[0])
        return torch.empty(shape, dtype=margs[0][0].dtype, device="meta")
    if not margs or not isinstance(margs[0], torch.Tensor):
        return None
    if func in _ACTIVATIONS:
        inplace = mkwargs.get(
            "inplace", margs[-1] if len(margs) > 1 and isinstance(margs[-1], bool) else False
        )
        return margs[0] if inplace else torch.empty(margs[0].shape, dtype=margs[0].dtype, device="meta")
    if func in _SHAPE_PRESERVING:
        return torch.empty(margs[0].shape, dtype=margs[0].dtype, device="meta")
    if func is torch.conv2d and margs[0].dim() == 4:
        return _conv_shortcut(*margs, **mkwargs)
    if func in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d) and margs[0].dim() == 4 and not mkwargs:
        size = margs[1] if isinstance(margs[1], (tuple, list)) else (margs[1], margs[1])
        size = [n if o is None else int(o) for n, o in zip(margs[0].shape[-2:], size)]
        if func is F.adaptive_max_pool2d and len(margs) > 2 and margs[2]:
            return None
        return torch.empty(*margs[0].shape[:2], *size, dtype=margs[0].dtype, device="meta")
    if func is F.pixel_shuffle and margs[0].dim() == 4 and not mkwargs:
        n, c, h, w = margs[0].shape
        r = int(margs[1])
        return torch.empty(n, c // (r * r), h * r, w * r, dtype=margs[0].dtype, device="meta")
    if func is F.interpolate and margs[0].dim() == 4:
        return _interp_shortcut(*margs, **mkwargs)
    if func is F.conv_transpose2d and margs[0].dim() == 4:
        return _transposed_shortcut(*margs, **mkwargs)
    if func in (F.max_pool2d, F.avg_pool2d) and margs[0].dim() == 4 and not mkwargs.get("return_indices"):
        return _pool_shortcut(func, *margs, **mkwargs)
    if mkwargs:
        return None
    name = getattr(func, "__name__", "")
    if name.startswith("__i") or (name.endswith("_") and not name.endswith("__")):
        base = name[3:-2] if name.startswith("__i") else name[:-1]
        return margs[0] if base in _ELEMENTWISE or f"__{base}__" in _ELEMENTWISE else None
    if name not in _ELEMENTWISE:
        return None
    tensors = [a for a in margs if isinstance(a, torch.Tensor)]
    ndim = max(t.dim() for t in tensors)  # broadcasting (torch.broadcast_shapes imports sympy too)
    shapes = [(1,) * (ndim - t.dim()) + tuple(t.shape) for t in tensors]
    shape = [max(dims) if min(dims) > 0 else 0 for dims in zip(*shapes)]
    dtype = torch.result_type(*margs[:2]) if len(margs) >= 2 else margs[0].dtype
    return torch.empty(shape, dtype=dtype, device="meta")


def _conv_shortcut(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    k, s, d = weight.shape[-2:], _pair(stride), _pair(dilation)
    if padding == "same":
        return torch.empty(x.shape[0], weight.shape[0], *x.shape[-2:], dtype=x.dtype, device="meta")
    p = (0, 0) if padding == "valid" else _pair(padding)
    size = [(n + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i, n in enumerate(x.shape[-2:])]
    return torch.empty(x.shape[0], weight.shape[0], *size, dtype=x.dtype, device="meta")


def _transposed_shortcut(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    k, s, p = weight.shape[-2:], _pair(stride), _pair(padding)
    op, d = _pair(output_padding), _pair(dilation)
    size = [(n - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + op[i] + 1 for i, n in enumerate(x.shape[-2:])]
    return torch.empty(x.shape[0], weight.shape[1] * groups, *size, dtype=x.dtype, device="meta")


def _interp_shortcut(x, size=None, scale_factor=None, *rest, **kwargs):
    if size is not None:
        size = _pair(size)
    else:
        sf = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor, scale_factor)
        size = [math.floor(n * f) for n, f in zip(x.shape[-2:], sf)]
    return torch.empty(*x.shape[:2], *size, dtype=x.dtype, device="meta")


def _pool_shortcut(func, x, kernel_size, stride=None, padding=0, *rest, **kwargs):
    names = ("dilation", "ceil_mode") if func is F.max_pool2d else ("ceil_mode",)
    opts = dict(zip(names, rest)) | kwargs
    k = _pair(kernel_size)
    s = k if stride in (None, [], ()) else _pair(stride)
    p, d = _pair(padding), _pair(opts.get("dilation", 1))
    size = []
    for i, n in enumerate(x.shape[-2:]):
        span = n + 2 * p[i] - d[i] * (k[i] - 1) - 1
        out = (-(-span // s[i]) if opts.get("ceil_mode") else span // s[i]) + 1
        if opts.get("ceil_mode") and (out - 1) * s[i] >= n + p[i]:  # the last window must start inside
            out -= 1
        size.append(out)
    return torch.empty(*x.shape[:2], *size, dtype=x.dtype, device="meta")


class _Tracer(TorchFunctionMode):
    def __init__(self, *, to_meta: bool) -> None:
        super().__init__()
        self.to_meta = to_meta
        self.meta = WeakIdKeyDictionary()
        self.rows: list[dict] = []
        self.notes: set[str] = set()
        self.max_jump = [Fraction(1), Fraction(1)]
        self.suspended = 0
        self.output = None  # the model's output tensor and the (h, w) input size, set by `trace`
        self.input_size: tuple[int, int] | None = None
        self.names: list[tuple[str, bool]] = [("", False)]  # the module stack: (name, handled whole)

    # -- bookkeeping ---------------------------------------------------------------------------------------
    def set(self, t, m: Meta | None) -> None:
        if m is None or not isinstance(t, torch.Tensor):
            return
        self.meta[t] = m
        if m.axes is not None:
            for i, ax in enumerate(m.axes):
                self.max_jump[i] = max(self.max_jump[i], ax.jump)

    def row(
        self, name: str, kind: str, out: Meta | None, *, kernel=None, stride=None, dilation=None, in_size=None
    ) -> None:
        if out is None:
            return
        axes = out.axes
        self.rows.append(
            {
                "name": name,
                "type": kind,
                "in_size": [int(v) for v in in_size] if in_size is not None else None,
                "kernel": list(kernel) if kernel is not None else None,
                "stride": [float(s) if isinstance(s, Fraction) else s for s in stride] if stride else None,
                "dilation": list(dilation) if dilation is not None else None,
                "jump": [float(a.jump) for a in axes] if axes else None,
                "rf": [a.size for a in axes] if axes else None,
                "global": out.is_global,
            }
        )

    def op_name(self, op: str) -> str:
        prefix = self.names[-1][0]
        return f"{prefix}:{op}" if prefix else op

    # -- the mode ------------------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.to_meta:
            to_meta = lambda t: t.to("meta") if isinstance(t, torch.Tensor) and not t.is_meta else t  # noqa: E731
            margs, mkwargs = tree_map(to_meta, args), tree_map(to_meta, kwargs)
        else:
            margs, mkwargs = args, kwargs
        out = _meta_shortcut(func, margs, mkwargs) if self.to_meta else None
        if out is None:
            out = func(*margs, **mkwargs)
        if self.suspended:
            return out
        name = getattr(func, "__name__", "")
        if name in _FACTORIES or (name.startswith("__get") and name != "__getitem__"):
            return out
        ins = [self.meta.get(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        ins = [m for m in ins if m is not None]
        if not ins:
            return out
        handler = _HANDLERS.get(func)
        first = args[0] if args else None
        if (
            handler is not None
            and _is_spatial(first)
            and first in self.meta
            and isinstance(out, torch.Tensor)
        ):
            m, row = handler(self.meta[first], args, kwargs, first, out)
            if m is not None:
                self.set(out, m)
                if row is not None:
                    self.row(
                        self.op_name(row.pop("type")), row.pop("kind"), m, in_size=first.shape[-2:], **row
                    )
                return out
        if func is torch.cat and _arg(args, kwargs, 1, "dim", 0) in (2, 3, -1, -2):
            self.notes.add("a concatenation along a spatial axis was treated as a union (approximate)")
        self._generic(args, kwargs, out, ins)
        return out

    def _generic(self, args, kwargs, out, ins: list[Meta]) -> None:
        """Ops without a handler: same spatial size -> union of the inputs of that size (elementwise ops,
        concat, normalisation, activations); spatial size 1 or fewer dims from a spatial input -> global."""
        sources = [
            t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t in self.meta
        ]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        for o in outs:
            if not _is_spatial(o):
                self.set(o, _global())
                continue
            same = [self.meta[t] for t in sources if _is_spatial(t) and t.shape[-2:] == o.shape[-2:]]
            others = [self.meta[t] for t in sources if not (_is_spatial(t) and t.shape[-2:] == o.shape[-2:])]
            if same:
                m = _union(same, self.notes, o.shape)
                # a broadcast pooled tensor (x * attention(N, C, 1, 1)) brings the whole input
                self.set(o, Meta(m.axes, m.is_global or any(g.is_global for g in others), m.detail))
            elif tuple(o.shape[-2:]) == (1, 1) or all(g.axes is None for g in others):
                self.set(o, _global())
            else:
                self.notes.add(
                    f"an op without a receptive-field rule (output {tuple(o.shape)}) changed the spatial "
                    "size; the receptive field after it is approximate"
                )
                self.set(o, _union(others, self.notes))


# -- functional handlers: (meta_in, args, kwargs, x, out) -> (meta_out, row or None) -----------------------
def _h_conv(m, args, kwargs, x, out, transposed=False):
    w = _arg(args, kwargs, 1, "weight")
    k = tuple(int(s) for s in w.shape[-2:])
    s = _pair(_arg(args, kwargs, 3, "stride", 1))
    if transposed:
        p = _pair(_arg(args, kwargs, 4, "padding", 0))
        d = _pair(_arg(args, kwargs, 7, "dilation", 1))
    else:
        pad = _arg(args, kwargs, 4, "padding", 0)
        d = _pair(_arg(args, kwargs, 5, "dilation", 1))
        if pad == "valid":
            pad = 0
        if pad == "same":  # PyTorch pads the extra pixel of an even kernel on the right
            p = tuple(di * (ki - 1) // 2 for di, ki in zip(d, k))
        else:
            p = _pair(pad)
    # a transposed convolution that mixes channels is a learned upsampling (it can place sub-pixel detail);
    # a per-channel one (FCN's bilinear deconvolution) only interpolates
    learned = transposed and int(_arg(args, kwargs, 6, "groups", 1)) != int(x.shape[1])
    meta = _conv_meta(m, k, s, p, d, transposed=transposed, learned=learned)
    kind = "conv_transpose2d" if transposed else "conv2d"
    return meta, {"type": kind, "kind": kind, "kernel": k, "stride": s, "dilation": d}


def _conv_meta(m: Meta, k, s, p, d, *, transposed: bool, learned: bool) -> Meta:
    if transposed:
        ops = [_transposed_op(*a) for a in zip(k, s, p, d)]
        new = m.map(ops)
        # a learned upsampling (channels mixed per sub-pixel) can place detail at its output spacing
        detail = tuple(di / si for di, si in zip(m.detail, s)) if learned else m.detail
        return Meta(new.axes, new.is_global, tuple(max(dd, Fraction(1)) for dd in detail))
    ops = [_conv_op(*a) for a in zip(k, s, p, d)]
    return Meta(m.map(ops).axes, m.is_global, m.strided_detail(ops))


def _h_pool(m, args, kwargs, x, out, kind="max_pool2d"):
    k = _pair(_arg(args, kwargs, 1, "kernel_size"))
    stride = _arg(args, kwargs, 2, "stride", None)
    s = k if stride in (None, [], ()) else _pair(stride)
    p = _pair(_arg(args, kwargs, 3, "padding", 0))
    d = _pair(_arg(args, kwargs, 4, "dilation", 1)) if kind == "max_pool2d" else (1, 1)
    return _conv_meta(m, k, s, p, d, transposed=False, learned=False), {
        "type": kind,
        "kind": kind,
        "kernel": k,
        "stride": s,
        "dilation": d,
    }


def _adaptive_meta(m: Meta, x, out) -> Meta:
    n_in, n_out = tuple(x.shape[-2:]), tuple(out.shape[-2:])
    if n_out == (1, 1) and n_in != (1, 1):
        return _global()
    ops = [_adaptive_op(a, b) for a, b in zip(n_in, n_out)]
    return Meta(m.map(ops).axes, m.is_global, m.strided_detail(ops))


def _h_adaptive(m, args, kwargs, x, out):
    meta = _adaptive_meta(m, x, out)
    return meta, {"type": "adaptive_pool2d", "kind": "adaptive_pool2d"}


def _interp_meta(m: Meta, x, out, mode: str, align_corners, scale_factor, recompute) -> Meta:
    n_in, n_out = tuple(x.shape[-2:]), tuple(out.shape[-2:])
    if mode == "area":
        return _adaptive_meta(m, x, out)
    if m.axes is None:  # a broadcast of a pooled value (ASPP image pooling): no local geometry to map
        return m
    ops = []
    for i in range(2):
        if align_corners and mode not in ("nearest", "nearest-exact"):
            scale = Fraction(n_in[i] - 1, n_out[i] - 1) if n_out[i] > 1 else Fraction(0)
        elif scale_factor is not None and not recompute:
            sf = scale_factor[i] if isinstance(scale_factor, (tuple, list)) else scale_factor
            scale = 1 / Fraction(sf).limit_denominator(10_000)
        else:
            scale = Fraction(n_in[i], n_out[i])
        if scale == 0:  # one output pixel with align_corners: it reads input 0
            scale = Fraction(n_in[i], max(n_out[i], 1))
        ops.append(_interp_op(scale, mode, align_corners))
    new = m.map(ops)
    # interpolation adds no detail; shrinking by interpolation coarsens it to the new spacing
    detail = tuple(max(d, ax.jump) if r > q else d for d, ax, (q, r, _) in zip(m.detail, new.axes, ops))
    return Meta(new.axes, new.is_global, detail)


def _h_interp(m, args, kwargs, x, out):
    mode = _arg(args, kwargs, 3, "mode", "nearest")
    align = _arg(args, kwargs, 4, "align_corners", None)
    sf = _arg(args, kwargs, 2, "scale_factor", None)
    recompute = _arg(args, kwargs, 5, "recompute_scale_factor", None)
    meta = _interp_meta(m, x, out, mode, align, sf, recompute)
    scale = [Fraction(int(o), int(i)) for i, o in zip(x.shape[-2:], out.shape[-2:])]
    return meta, {"type": "interpolate", "kind": f"interpolate({mode})", "stride": [1 / s for s in scale]}


def _h_pixel_shuffle(m, args, kwargs, x, out, unshuffle=False):
    r = int(_arg(args, kwargs, 1, "upscale_factor" if not unshuffle else "downscale_factor"))
    if unshuffle:
        ops = [(1, r, [list(range(r))])] * 2
        return Meta(m.map(ops).axes, m.is_global, m.strided_detail(ops)), {
            "type": "pixel_unshuffle",
            "kind": "pixel_unshuffle",
            "stride": (r, r),
        }
    ops = [(r, 1, [[0]] * r)] * 2
    detail = tuple(max(d / r, Fraction(1)) for d in m.detail)  # each sub-pixel has its own channels
    new = m.map(ops)
    return Meta(new.axes, new.is_global, detail), {
        "type": "pixel_shuffle",
        "kind": "pixel_shuffle",
        "stride": (Fraction(1, r), Fraction(1, r)),
    }


def _h_pad(m, args, kwargs, x, out):
    pad = list(_arg(args, kwargs, 1, "pad"))
    pad += [0] * (4 - len(pad))
    left, top = int(pad[0]), int(pad[2])
    ops = [(1, 1, [[-top]]), (1, 1, [[-left]])]
    return m.map(ops), None


def _h_getitem(m, args, kwargs, x, out):
    index = args[1]
    if not isinstance(index, tuple):
        index = (index,)
    if sum(i is Ellipsis for i in index) == 1:  # x[..., :h, :w]: spell the ellipsis out as full slices
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (x.dim() - len(index) + 1) + index[at + 1 :]
    if any(i is Ellipsis or i is None for i in index) or not _is_spatial(out):
        return None, None  # let the generic rule decide
    if any(not isinstance(i, slice) for i in index[:2]):
        return None, None
    ops = []
    for dim in (2, 3):
        sl = index[dim] if len(index) > dim else slice(None)
        if not isinstance(sl, slice):
            return None, None
        start, _, step = sl.indices(int(x.shape[dim]))
        ops.append((1, step, [[start]]))
    return Meta(m.map(ops).axes, m.is_global, m.strided_detail(ops)), None


_HANDLERS = {
    torch.conv2d: _h_conv,
    F.conv_transpose2d: lambda *a: _h_conv(*a, transposed=True),
    F.max_pool2d: _h_pool,
    F.avg_pool2d: lambda *a: _h_pool(*a, kind="avg_pool2d"),
    F.adaptive_avg_pool2d: _h_adaptive,
    F.adaptive_max_pool2d: _h_adaptive,
    F.interpolate: _h_interp,
    F.pixel_shuffle: _h_pixel_shuffle,
    F.pixel_unshuffle: lambda *a: _h_pixel_shuffle(*a, unshuffle=True),
    F.pad: _h_pad,
    torch.Tensor.__getitem__: _h_getitem,
    torch._C.TensorBase.__getitem__: _h_getitem,
}


# ----------------------------------------------------------------------------------------------------------
# whole layers, from their attributes
# ----------------------------------------------------------------------------------------------------------
def _layer_rule(module: nn.Module):
    """(kind, fn(meta, x, out) -> meta, row fields) for layers handled as a whole, else None."""
    from atrous.ops import SmoothedAtrousConv2d

    if isinstance(module, SmoothedAtrousConv2d):
        conv = module.conv
        r, k = conv.dilation[0], conv.kernel_size

        def smoothed(m, x, out):
            if module.method == "shared_separable":
                s = 2 * r - 1
                m = _conv_meta(m, (s, s), (1, 1), (r - 1, r - 1), (1, 1), transposed=False, learned=False)
            m = _conv_meta(m, k, conv.stride, conv.padding, conv.dilation, transposed=False, learned=False)
            if module.method == "group_interaction":
                m = m.map([_block_op(r)] * 2)
            return m

        return (
            "smoothed_atrous_conv2d",
            smoothed,
            {"kernel": k, "stride": conv.stride, "dilation": conv.dilation},
        )
    if isinstance(module, nn.ConvTranspose2d):
        learned = module.groups != module.in_channels
        fn = lambda m, x, out: _conv_meta(  # noqa: E731
            m,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            transposed=True,
            learned=learned,
        )
        return (
            "conv_transpose2d",
            fn,
            {"kernel": module.kernel_size, "stride": module.stride, "dilation": module.dilation},
        )
    if isinstance(module, nn.Conv2d):
        pad = module.padding
        if pad == "same":
            pad = tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size))
        elif pad == "valid":
            pad = (0, 0)
        fn = lambda m, x, out: _conv_meta(  # noqa: E731
            m, module.kernel_size, module.stride, pad, module.dilation, transposed=False, learned=False
        )
        return (
            "conv2d",
            fn,
            {"kernel": module.kernel_size, "stride": module.stride, "dilation": module.dilation},
        )
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        k = _pair(module.kernel_size)
        s = _pair(module.stride if module.stride is not None else module.kernel_size)
        p = _pair(module.padding)
        d = _pair(getattr(module, "dilation", 1))
        kind = "max_pool2d" if isinstance(module, nn.MaxPool2d) else "avg_pool2d"
        fn = lambda m, x, out: _conv_meta(m, k, s, p, d, transposed=False, learned=False)  # noqa: E731
        return kind, fn, {"kernel": k, "stride": s, "dilation": d}
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return "adaptive_pool2d", _adaptive_meta, {}
    if isinstance(module, nn.Upsample):
        fn = lambda m, x, out: _interp_meta(  # noqa: E731
            m, x, out, module.mode, module.align_corners, module.scale_factor, module.recompute_scale_factor
        )
        return f"upsample({module.mode})", fn, {}
    if isinstance(module, nn.PixelShuffle):
        r = module.upscale_factor
        fn = lambda m, x, out: _h_pixel_shuffle(m, (x, r), {}, x, out)[0]  # noqa: E731
        return "pixel_shuffle", fn, {"stride": (Fraction(1, r), Fraction(1, r))}
    if isinstance(module, nn.PixelUnshuffle):
        r = module.downscale_factor
        fn = lambda m, x, out: _h_pixel_shuffle(m, (x, r), {}, x, out, unshuffle=True)[0]  # noqa: E731
        return "pixel_unshuffle", fn, {"stride": (r, r)}
    return None


# ----------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------
def _size(input_size) -> tuple[int, int]:
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    h, w = (int(v) for v in input_size)
    if h < 1 or w < 1:
        raise ValueError(f"input_size must be positive (h, w), got {input_size!r}")
    return h, w


def trace(model: nn.Module, input_size=(512, 512), *, in_channels: int | None = None) -> _Tracer:
    """Run `model` once on a (1, C, H, W) input under the tracer; return it with rows and metadata.

    The run uses meta tensors (no arithmetic); a model whose forward needs real values (`.item()`,
    data-dependent control flow) is run for real instead, under `torch.no_grad()`.
    """
    h, w = _size(input_size)
    if in_channels is None:
        in_channels = _in_channels(model)
    was_training = model.training
    model.eval()
    try:
        for to_meta in (True, False):
            tracer = _Tracer(to_meta=to_meta)
            x = torch.zeros(1, in_channels, h, w, device="meta" if to_meta else _device(model))
            tracer.set(x, Meta((Axis.identity(), Axis.identity()), False, (Fraction(1), Fraction(1))))
            handles = _install_hooks(model, tracer)
            try:
                with torch.no_grad(), tracer:
                    out = model(x)
            except Exception:  # any failure of the shape-only run: retry with real values
                if not to_meta:
                    raise
                continue
            finally:
                for handle in handles:
                    handle.remove()
            tracer.output = _pick_output(out)
            tracer.input_size = (h, w)
            return tracer
    finally:
        model.train(was_training)
    raise AssertionError("unreachable")


def _pick_output(out):
    if isinstance(out, dict):  # torchvision segmentation models return {"out": ..., "aux": ...}
        out = out.get("out", next(iter(out.values())))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _device(model: nn.Module):
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _in_channels(model: nn.Module) -> int:
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
            return mod.in_channels
    return 3


def _install_hooks(model: nn.Module, tracer: _Tracer) -> list:
    handles = []
    for name, module in model.named_modules():
        rule = _layer_rule(module) if name or not list(module.children()) else None

        def pre(mod, args, name=name, rule=rule):
            x = args[0] if args else None
            # a layer is handled whole only when it gets a tracked (N, C, H, W) tensor; a subclass with its
            # own forward (a conv reading a feature dict) is traced op by op instead
            whole = rule is not None and _is_spatial(x) and x in tracer.meta and not tracer.suspended
            tracer.names.append((name, whole))
            if whole:
                tracer.suspended += 1

        def post(mod, args, out, name=name, rule=rule):
            _, whole = tracer.names.pop()
            if not whole:
                return
            tracer.suspended -= 1
            x = args[0]
            if not _is_spatial(out):
                return
            kind, fn, fields = rule
            m = tracer.meta[x]
            meta = fn(m, x, out)
            tracer.set(out, meta)
            tracer.row(name, kind, meta, in_size=x.shape[-2:], **fields)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    return handles


def _frac_int(v: Fraction):
    return int(v) if v.denominator == 1 else float(v)


def receptive_field(model: nn.Module, input_size=(512, 512), *, in_channels: int | None = None) -> dict:
    """The theoretical receptive field of `model`'s output, following its real graph.

    Returns a JSON-able dict: `rf` [h, w] (the whole input when `global`, else the largest local one),
    `rf_local` [h, w] (the largest receptive field through local paths only, unclipped by the image
    border), `global` (a global-pooling path reaches the output), `output_stride` (the largest jump on the
    way), `output_jump` [h, w] (the output's own spacing; 1 for logits at input size), `small_object_limit`
    (pixels, see `small_object_limit`), `input_size`, `layers` (one row per spatial layer in call order:
    name, type, kernel, stride, dilation, jump, rf) and `notes` (where the answer is approximate).
    """
    tracer = trace(model, input_size, in_channels=in_channels)
    out = tracer.output
    m = tracer.meta.get(out) if isinstance(out, torch.Tensor) else None
    if m is None:
        raise ValueError("the model's output does not depend on its input through a tracked tensor op")
    h, w = tracer.input_size
    local = [ax.size for ax in m.axes] if m.axes is not None else [0, 0]
    rf = [max(local[0], h), max(local[1], w)] if m.is_global else local
    stride = max(tracer.max_jump)
    detail = [math.ceil(d) if d < 10**9 else None for d in m.detail]
    if m.axes is None:  # a classifier-style output: report the largest local field on the way
        local = [max((row["rf"][i] for row in tracer.rows if row["rf"]), default=0) for i in range(2)]
    return {
        "input_size": [h, w],
        "rf": rf,
        "rf_local": local,
        "global": m.is_global,
        "output_stride": _frac_int(stride),
        "output_jump": [_frac_int(ax.jump) for ax in m.axes] if m.axes else None,
        "small_object_limit": max(d for d in detail if d is not None) if any(detail) else None,
        "layers": tracer.rows,
        "notes": sorted(tracer.notes),
        "warnings": degenerate_rates(tracer.rows),
    }


def degenerate_rates(rows: list[dict], threshold: float = 0.5) -> list[str]:
    """Warnings for dilated layers whose kernel degenerates toward 1x1 on their feature map: on average
    fewer than `threshold` of the taps read real features (DeepLab v3, Fig. 4)."""
    from atrous.analysis.valid_weights import valid_weights

    out = []
    for row in rows:
        d, k, size = row.get("dilation"), row.get("kernel"), row.get("in_size")
        if not d or not k or not size or max(d) <= 1 or k[0] != k[1] or d[0] != d[1] or k[0] % 2 == 0:
            continue
        v = valid_weights(tuple(size), d[0], k[0])
        if v["mean_fraction"] < threshold:
            out.append(
                f"{row['name']}: rate {d[0]} on a {size[0]}x{size[1]} map: on average "
                f"{v['mean_fraction'] * k[0] * k[0]:.1f} of {k[0] * k[0]} taps read real features "
                f"({v['only_centre']:.0%} of positions only the centre): the kernel degenerates toward 1x1 "
                "(use a larger input or a smaller rate)"
            )
    return out


def small_object_limit(model: nn.Module, input_size=(512, 512)) -> int:
    """The object width (pixels) below which `model` cannot place an object.

    Follows the path to the output: a strided layer makes the grid of independent values as coarse as its
    spacing; bilinear / nearest interpolation and per-channel (depthwise) transposed convolution add no
    detail; a skip connection from a finer map (FCN-8s, DeepLab v3+ decoder) or a learned sub-pixel
    upsampling (DUC's pixel shuffle, a channel-mixing transposed convolution) restores it. An object
    narrower than the final spacing `d` can fall between the output's independent samples; every object at
    least `d` wide contains one. Returns `d` rounded up.
    """
    limit = receptive_field(model, input_size)["small_object_limit"]
    if limit is None:
        raise ValueError("the model's output has no local path from the input: no small-object limit")
    return limit
