"""Benchmark 1: dilated 3x3 convolution against the dense convolution of the same shape.

For each (channels, size), rate, memory format and pass (forward; forward+backward), the cell times each
fixed implementation and a dense (rate 1) `F.conv2d` of the same shape, round-robin in this process
(`atrous.perf.interleave`), over whole rotations of the order (every callable runs once in every position,
so that none always follows the same neighbour: with fewer repeats than callables the median of the same
kernel measured in two columns differed by up to 1.6x on a quiet machine). `AtrousConv2d(impl="auto")`
runs exactly one of those callables (the rule's pick, converted layout included): that column is timed
through the auto module, and its time is auto's (`auto_measured_as` names the column). GFLOP/s use the nominal FLOPs of the conv (2 x multiply-adds,
forward+backward = 3x forward), which are the same for every rate: a ratio to dense above 1 is what the
rate costs on top of the arithmetic.
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
from torch import nn

from atrous import perf
from atrous.ops import IMPLS, AtrousConv2d, atrous_conv2d, choose_impl, choose_layout

# rotations: whole rotations of the order per pass (forward cells are cheap: two); warmup: untimed rounds
# (the first call of a shape creates oneDNN's primitive)
FULL = {
    "shapes": [(64, 128), (256, 64), (512, 32)],
    "rates": [1, 2, 4, 8, 12, 16],
    "rotations": {"fwd": 2, "fwd+bwd": 1},
    "warmup": {"fwd": 2, "fwd+bwd": 1},
}
QUICK = {
    "shapes": [(32, 24)],
    "rates": [1, 4],
    "rotations": {"fwd": 1, "fwd+bwd": 1},
    "warmup": {"fwd": 1, "fwd+bwd": 1},
}
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def _cell_fns(channels: int, size: int, rate: int, layout: str, backward: bool, auto_column: str) -> dict:
    """Callables for one cell: each implementation, dense, and in NCHW the native kernel run in
    channels_last (the conversion auto may choose); all with the same weights and input. The
    `auto_column` callable runs `AtrousConv2d(impl="auto")`, which computes exactly that column."""
    fmt = LAYOUTS[layout]
    torch.manual_seed(0)
    x = torch.randn(1, channels, size, size).contiguous(memory_format=fmt).requires_grad_(backward)
    weight = torch.randn(channels, channels, 3, 3).contiguous(memory_format=fmt).requires_grad_(backward)
    grad = torch.randn(1, channels, size, size).contiguous(memory_format=fmt)

    def run(forward):
        if not backward:
            with torch.no_grad():
                return forward()
        x.grad, weight.grad = None, None
        forward().backward(grad)
        return None

    fns = {
        impl: (lambda impl=impl: run(lambda: atrous_conv2d(x, weight, None, rate, impl=impl)))
        for impl in IMPLS
    }
    fns["dense"] = lambda: run(lambda: F.conv2d(x, weight, None, padding=1))
    if layout == "nchw":  # the conversion that auto may choose: NCHW in and out, channels_last inside
        cl = torch.channels_last
        fns["native_via_cl"] = lambda: run(
            lambda: atrous_conv2d(
                x.contiguous(memory_format=cl), weight.contiguous(memory_format=cl), None, rate
            ).contiguous()
        )
    auto = AtrousConv2d(channels, channels, 3, dilation=rate, bias=False, impl="auto")
    auto.weight = nn.Parameter(weight, requires_grad=backward)  # the same tensor, no copy
    fns[auto_column] = lambda: run(lambda: auto(x))
    return fns


def _auto_column(impl: str, layout: torch.memory_format | None) -> str:
    """The callable of `_cell_fns` that runs what auto picked."""
    if layout is None:
        return impl
    if impl == "native" and layout == torch.channels_last:
        return "native_via_cl"
    raise ValueError(f"benchmarks/conv.py has no column for auto's pick {impl} + {layout}")


def run(*, quick: bool, log=print) -> dict:
    cfg = QUICK if quick else FULL
    rows = []
    for channels, size in cfg["shapes"]:
        flops = 2 * channels * channels * 9 * size * size
        for layout, fmt in LAYOUTS.items():
            probe = torch.empty(1, channels, size, size).contiguous(memory_format=fmt)
            for backward in (False, True):
                pas = "fwd+bwd" if backward else "fwd"
                for rate in cfg["rates"]:
                    with torch.set_grad_enabled(backward):  # the rule looks at the grad mode too
                        impl_pick, layout_pick = choose_impl(probe, 3, rate), choose_layout(probe, 3, rate)
                    measured_as = _auto_column(impl_pick, layout_pick)
                    fns = _cell_fns(channels, size, rate, layout, backward, measured_as)
                    stats = perf.interleave(
                        fns, warmup=cfg["warmup"][pas], repeats=cfg["rotations"][pas] * len(fns)
                    )
                    stats = {"auto": stats[measured_as], **stats}
                    work = flops * (3 if backward else 1)
                    times = {k: v["median_s"] for k, v in stats.items()}
                    row = {
                        "channels": channels,
                        "size": size,
                        "rate": rate,
                        "layout": layout,
                        "pass": pas,
                        "auto_picks": impl_pick + ("" if layout_pick is None else "+channels_last"),
                        "auto_measured_as": measured_as,
                        "repeats": stats["dense"]["repeats"],
                        "median_s": times,
                        "gflops": {k: work / t / 1e9 for k, t in times.items()},
                        "ratio_to_dense": {k: t / times["dense"] for k, t in times.items() if k != "dense"},
                    }
                    rows.append(row)
                    log(_format_row(row))
    return {"rows": rows, "summary": summarise(rows), "ceiling_gflops": ceiling(rows)}


def ceiling(rows: list[dict]) -> float:
    """The conv ceiling of this run: the best forward GFLOP/s of a dense conv in any layout."""
    return max(r["gflops"]["dense"] for r in rows if r["pass"] == "fwd")


def summarise(rows: list[dict]) -> dict:
    """Median and worst ratio of each implementation to dense, over all cells and per layout and pass."""
    out = {}
    groups = {"all": rows}
    for layout in LAYOUTS:
        for pas in ("fwd", "fwd+bwd"):
            groups[f"{layout}/{pas}"] = [r for r in rows if r["layout"] == layout and r["pass"] == pas]
    for name, group in groups.items():
        out[name] = {
            impl: {
                "median_ratio": statistics.median(r["ratio_to_dense"][impl] for r in group),
                "max_ratio": max(r["ratio_to_dense"][impl] for r in group),
            }
            for impl in ("auto", *IMPLS)
        }
    return out


HEADER = (
    f"{'ch':>4} {'size':>4} {'rate':>4} {'layout':<13} {'pass':<7} {'dense ms':>8} {'GFLOP/s':>7}"
    f" {'auto/dense':>10} {'native':>7} {'s2b':>6}  auto picks"
)


def _format_row(r: dict) -> str:
    ratio = r["ratio_to_dense"]
    return (
        f"{r['channels']:>4} {r['size']:>4} {r['rate']:>4} {r['layout']:<13} {r['pass']:<7}"
        f" {r['median_s']['dense'] * 1e3:>8.1f} {r['gflops']['dense']:>7.1f} {ratio['auto']:>10.2f}"
        f" {ratio['native']:>7.2f} {ratio['space_to_batch']:>6.2f}  {r['auto_picks']}"
    )
