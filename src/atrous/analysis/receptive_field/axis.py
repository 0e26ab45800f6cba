"""One spatial axis of a receptive field, and the per-axis form of every op that moves it.

An op is written per axis as `(q_out, r_in, reads)`: output unit `m*q_out + q` reads input units
`reads[q] + m*r_in` (a convolution: q_out 1, r_in its stride, reads its taps; a 2x upsampling: q_out 2,
r_in 1, one read list per output phase). `Axis.apply` maps intervals through such an op exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

# a periodic pattern longer than this is replaced by its bounding (conservative) one-phase form
_MAX_PERIOD = 4096


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
def conv_op(kernel: int, stride: int, padding: int, dilation: int):
    return 1, stride, [[-padding + t * dilation for t in range(kernel)]]


def transposed_op(kernel: int, stride: int, padding: int, dilation: int):
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


def interp_op(scale: Fraction, mode: str, align_corners: bool | None):
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


def adaptive_op(n_in: int, n_out: int):
    # PyTorch: output o averages input [floor(o*n_in/n_out), ceil((o+1)*n_in/n_out))
    g = math.gcd(n_in, n_out)
    q_out, r_in = n_out // g, n_in // g
    reads = [list(range((q * n_in) // n_out, -((-(q + 1) * n_in) // n_out))) for q in range(q_out)]
    return q_out, r_in, reads


def block_op(r: int):
    # every unit of an r-block sees the whole block (the group-interaction layer of smoothed dilation)
    return r, r, [list(range(r)) for _ in range(r)]
