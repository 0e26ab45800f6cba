"""Benchmark 1: dilated 3x3 convolution against the dense convolution of the same shape.

For each (channels, size), rate, memory format and pass (forward; forward+backward), the cell times
`AtrousConv2d(impl="auto")`, each fixed implementation and a dense (rate 1) `F.conv2d` of the same shape,
round-robin in this process (`atrous.perf.interleave`). GFLOP/s use the nominal FLOPs of the conv
(2 x multiply-adds, forward+backward = 3x forward), which are the same for every rate: a ratio to dense
above 1 is what the rate costs on top of the arithmetic.
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from atrous import perf
from atrous.ops import IMPLS, AtrousConv2d, atrous_conv2d, choose_impl, choose_layout

FULL = {"shapes": [(64, 128), (256, 64), (512, 32)], "rates": [1, 2, 4, 8, 12, 16], "repeats": 3}
QUICK = {"shapes": [(32, 24)], "rates": [1, 4], "repeats": 2}
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def _cell_fns(channels: int, size: int, rate: int, layout: str, backward: bool) -> dict:
    """Callables for one cell: auto, each implementation, dense; all with the same weights and input."""
    fmt = LAYOUTS[layout]
    torch.manual_seed(0)
    x = torch.randn(1, channels, size, size).contiguous(memory_format=fmt).requires_grad_(backward)
    convs = {}
    for impl in ("auto", *IMPLS):
        conv = AtrousConv2d(channels, channels, 3, dilation=rate, bias=False, impl=impl)
        conv = conv.to(memory_format=fmt)
        convs[impl] = conv
    weight = convs["auto"].weight
    for conv in convs.values():
        conv.weight = weight
    grad = torch.randn(1, channels, size, size).contiguous(memory_format=fmt)

    def run(forward):
        if not backward:
            with torch.no_grad():
                return forward()
        x.grad, weight.grad = None, None
        forward().backward(grad)
        return None

    fns = {impl: (lambda conv=conv: run(lambda: conv(x))) for impl, conv in convs.items()}
    fns["dense"] = lambda: run(lambda: F.conv2d(x, weight, None, padding=1))
    if layout == "nchw":  # the conversion that auto may choose: NCHW in and out, channels_last inside
        cl = torch.channels_last
        fns["native_via_cl"] = lambda: run(
            lambda: atrous_conv2d(
                x.contiguous(memory_format=cl), weight.contiguous(memory_format=cl), None, rate
            ).contiguous()
        )
    return fns


def run(*, quick: bool, log=print) -> dict:
    cfg = QUICK if quick else FULL
    rows = []
    for channels, size in cfg["shapes"]:
        flops = 2 * channels * channels * 9 * size * size
        for layout, fmt in LAYOUTS.items():
            probe = torch.empty(1, channels, size, size).contiguous(memory_format=fmt)
            for backward in (False, True):
                for rate in cfg["rates"]:
                    stats = perf.interleave(
                        _cell_fns(channels, size, rate, layout, backward), warmup=1, repeats=cfg["repeats"]
                    )
                    work = flops * (3 if backward else 1)
                    times = {k: v["median_s"] for k, v in stats.items()}
                    with torch.set_grad_enabled(backward):  # the rule looks at the grad mode too
                        impl_pick, layout_pick = choose_impl(probe, 3, rate), choose_layout(probe, 3, rate)
                    row = {
                        "channels": channels,
                        "size": size,
                        "rate": rate,
                        "layout": layout,
                        "pass": "fwd+bwd" if backward else "fwd",
                        "auto_picks": impl_pick + ("" if layout_pick is None else "+channels_last"),
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
