"""The tracing mode: runs a model once, carrying receptive-field metadata on every tensor.

Functional calls are seen by a `TorchFunctionMode`; layers that the rule table knows (`rules.module_rule`)
are handled whole by forward hooks, from their attributes, while the calls inside them run untracked. Both
paths apply the same `Rule`.
"""

from __future__ import annotations

from fractions import Fraction

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

from atrous.analysis.receptive_field.meta import Meta, global_meta, union
from atrous.analysis.receptive_field.rules import FUNCTIONS, Rule, module_rule
from atrous.analysis.receptive_field.shapes import meta_output

# calls that make new tensors or read sizes: their outputs carry no receptive field of the input
_FACTORIES = {"new_zeros", "new_ones", "new_full", "new_empty", "zeros_like", "ones_like", "empty_like"}
_FACTORIES |= {"full_like", "rand_like", "randn_like", "new_tensor", "size", "dim", "numel"}


def is_spatial(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() == 4


class Tracer(TorchFunctionMode):
    """`meta` maps every tracked tensor to its `Meta`; `rows` holds one row per spatial layer in call order;
    `notes` says where the answer is approximate; `to_meta` is False when the model had to run for real."""

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

    def apply(self, rule: Rule, p: dict, name: str, x, out) -> bool:
        """Apply `rule` with parameters `p` to input `x` -> `out`, add its row; False when it has no answer."""
        m = rule.meta(self.meta[x], x, out, p)
        if m is None:
            return False
        self.set(out, m)
        if rule.row:
            self.row(name, rule.row_type(p), m, in_size=x.shape[-2:], **rule.fields(p, x, out))
        return True

    def row(
        self, name: str, kind: str, out: Meta, *, kernel=None, stride=None, dilation=None, in_size=None
    ) -> None:
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

    # -- the mode ------------------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = self._run(func, args, kwargs)
        if self.suspended:
            return out
        name = getattr(func, "__name__", "")
        if name in _FACTORIES or (name.startswith("__get") and name != "__getitem__"):
            return out
        ins = [self.meta.get(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if not any(m is not None for m in ins):
            return out
        rule = FUNCTIONS.get(func)
        x = args[0] if args else None
        if rule is not None and is_spatial(x) and x in self.meta and isinstance(out, torch.Tensor):
            prefix = self.names[-1][0]
            if self.apply(
                rule, rule.bind_call(args, kwargs), f"{prefix}:{rule.name}" if prefix else rule.name, x, out
            ):
                return out
        if func is torch.cat and (kwargs.get("dim", args[1] if len(args) > 1 else 0)) in (2, 3, -1, -2):
            self.notes.add("a concatenation along a spatial axis was treated as a union (approximate)")
        self._generic(args, kwargs, out)
        return out

    def _run(self, func, args, kwargs):
        """The op itself: on meta copies of its tensors (from shapes alone where possible), or for real."""
        if not self.to_meta:
            return func(*args, **kwargs)
        to_meta = lambda t: t.to("meta") if isinstance(t, torch.Tensor) and not t.is_meta else t  # noqa: E731
        margs, mkwargs = tree_map(to_meta, args), tree_map(to_meta, kwargs)
        out = meta_output(func, margs, mkwargs)
        return func(*margs, **mkwargs) if out is None else out

    def _generic(self, args, kwargs, out) -> None:
        """Ops without a rule: same spatial size -> union of the inputs of that size (elementwise ops,
        concat, normalisation, activations); spatial size 1 or fewer dims from a spatial input -> global."""
        sources = [
            t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t in self.meta
        ]
        for o in (t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)):
            if not is_spatial(o):
                self.set(o, global_meta())
                continue
            same = [self.meta[t] for t in sources if is_spatial(t) and t.shape[-2:] == o.shape[-2:]]
            others = [self.meta[t] for t in sources if not (is_spatial(t) and t.shape[-2:] == o.shape[-2:])]
            if same:
                m = union(same, self.notes, o.shape)
                # a broadcast pooled tensor (x * attention(N, C, 1, 1)) brings the whole input
                self.set(o, Meta(m.axes, m.is_global or any(g.is_global for g in others), m.detail))
            elif tuple(o.shape[-2:]) == (1, 1) or all(g.axes is None for g in others):
                self.set(o, global_meta())
            else:
                self.notes.add(
                    f"an op without a receptive-field rule (output {tuple(o.shape)}) changed the spatial "
                    "size; the receptive field after it is approximate"
                )
                self.set(o, union(others, self.notes))


def _install_hooks(model: nn.Module, tracer: Tracer) -> list:
    """Hooks that hand the layers the rule table knows to their rule, as a whole."""
    handles = []
    for name, module in model.named_modules():
        rule = module_rule(module) if name or not list(module.children()) else None

        def pre(mod, args, name=name, rule=rule):
            x = args[0] if args else None
            # a layer is handled whole only when it gets a tracked (N, C, H, W) tensor; a subclass with its
            # own forward (a conv reading a feature dict) is traced op by op instead
            whole = rule is not None and is_spatial(x) and x in tracer.meta and not tracer.suspended
            tracer.names.append((name, whole))
            if whole:
                tracer.suspended += 1

        def post(mod, args, out, name=name, rule=rule):
            _, whole = tracer.names.pop()
            if not whole:
                return
            tracer.suspended -= 1
            if is_spatial(out):
                tracer.apply(rule, rule.bind_module(mod), name, args[0], out)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    return handles


def trace(model: nn.Module, input_size=(512, 512), *, in_channels: int | None = None) -> Tracer:
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
            tracer = Tracer(to_meta=to_meta)
            x = torch.zeros(1, in_channels, h, w, device="meta" if to_meta else _device(model))
            tracer.set(x, Meta.input())
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


def _size(input_size) -> tuple[int, int]:
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    h, w = (int(v) for v in input_size)
    if h < 1 or w < 1:
        raise ValueError(f"input_size must be positive (h, w), got {input_size!r}")
    return h, w


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
