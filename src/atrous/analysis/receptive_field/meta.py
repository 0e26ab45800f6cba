"""Receptive-field metadata carried by every tracked (N, C, H, W) tensor, and its union."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from atrous.analysis.receptive_field.axis import Axis


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

    @staticmethod
    def input() -> Meta:
        """The model's input: every unit sees itself, at full detail."""
        return Meta((Axis.identity(), Axis.identity()), False, (Fraction(1), Fraction(1)))


NO_DETAIL = Fraction(10**9)  # a purely global tensor has no spatial grid of its own


def global_meta() -> Meta:
    """A tensor only a global (pooled) path reaches."""
    return Meta(None, True, (NO_DETAIL, NO_DETAIL))


def union(metas: list[Meta], notes: set, shape=None) -> Meta:
    """Elementwise union of tensors of one spatial size (`shape`, for the drift of unequal jumps); a note
    is added to `notes` where the union is approximate."""
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
