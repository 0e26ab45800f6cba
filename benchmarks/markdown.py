"""Markdown tables of a benchmarks/results.json, for the README's "Performance" section:
`python benchmarks/markdown.py [benchmarks/results.json]`."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _f(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def tables(res: dict) -> str:
    m = res["meta"]["machine"]
    out = [
        f"Measured {res['meta']['date_utc']} on {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads,"
        f" {m['cpu_capability']}), torch {m['torch']}, load average at start {m['load_average_at_start'][0]:.1f}"
        f"{' (--quick)' if res['meta']['quick'] else ''}; sections took"
        f" {', '.join(f'{k} {v:.0f} s' for k, v in res['seconds'].items())}.",
        "",
    ]
    if "conv" in res:
        c = res["conv"]
        out += [
            f"**Dilated conv / dense conv of the same shape** (median and worst ratio of times over"
            f" {len(c['rows'])} cells; conv ceiling {c['ceiling_gflops']:.0f} GFLOP/s):",
            "",
            "| cells | auto | native | space_to_batch |",
            "| --- | --- | --- | --- |",
        ]
        for group, per in c["summary"].items():
            cells = " | ".join(f"{v['median_ratio']:.2f} / {v['max_ratio']:.2f}" for v in per.values())
            out.append(f"| {group} | {cells} |")
        out.append("")
    if "inference" in res:
        inf = res["inference"]
        shape = "x".join(map(str, inf["input_shape"][1:]))
        for name, rows in inf["pairs"].items():
            out += [
                f"**{name}, batch 1, {shape}, fp32 inference** (same weights; limit = real-pixel FLOPs / ceiling):",
                "",
                "| variant | median s | vs tv NCHW | vs tv channels_last | real GFLOP | GFLOP/s (real) | x limit |"
                " peak MiB | mem vs tv | output rel. diff |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            for k, r in rows.items():
                diff = r["output_vs_torchvision"]
                out.append(
                    f"| {k} | {r['median_s']:.3f} | {r['speedup_vs_torchvision_nchw']:.2f}x"
                    f" | {r['speedup_vs_torchvision_channels_last']:.2f}x | {r['gflops_real_pixel']:.1f}"
                    f" | {r['achieved_gflops_real']:.1f} | {r['ratio_to_limit']:.2f} | {_f(r['peak_memory_mib'], '.0f')}"
                    f" | {_f(r.get('memory_vs_torchvision_nchw'))} | {_f(diff and diff['relative'], '.1e')} |"
                )
            out.append("")
    if "training" in res:
        t = res["training"]
        for name, rows in t["pairs"].items():
            out += [
                f"**Training step, {name}, batch {t['batch']}, {t['input_shape'][2]}x{t['input_shape'][3]}**:",
                "",
                "| variant | step s | images/s | vs tv NCHW |",
                "| --- | --- | --- | --- |",
            ]
            out += [
                f"| {k} | {r['median_s']:.3f} | {r['images_per_s']:.2f} | {r['speedup_vs_torchvision_nchw']:.2f}x |"
                for k, r in rows.items()
            ]
            out.append("")
        out += [f"AMP: {t['amp']}", ""]
    if "scaling" in res:
        s = res["scaling"]
        out += [
            f"**Scaling, {s['model']}**: fitted exponent vs pixel count: time {s['time_exponent']:.3f},"
            f" memory {_f(s['memory_exponent'], '.3f')}, real FLOPs {s['real_flops_exponent']:.3f}; spread of"
            f" time per real FLOP {_f(s['ns_per_real_flop_spread'], '.1%')}, memory per real FLOP"
            f" {_f(s['bytes_per_real_flop_spread'], '.1%')}.",
            "",
            "| size | median s | peak MiB | real GFLOP | ns per real kFLOP |",
            "| --- | --- | --- | --- | --- |",
        ]
        out += [
            f"| {r['size']} | {r['median_s']:.3f} | {_f(r['peak_memory_mib'], '.0f')} | {r['gflops_real_pixel']:.1f}"
            f" | {r['ns_per_real_flop'] * 1e3:.3f} |"
            for r in s["rows"]
        ]
        out.append("")
    if "demo" in res:
        d = res["demo"]
        out += [
            f"**Demo models** ({d['source']}; input {d['input_shape'][2]}x{d['input_shape'][3]}):",
            "",
            "| model | params | MFLOP | eager ms | optimize ms | speedup |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        out += [
            f"| {k} | {r['params']} | {r['flops']['nominal'] / 1e6:.1f} | {r['eager_s'] * 1e3:.2f}"
            f" | {r['optimize_s'] * 1e3:.2f} | {r['speedup']:.2f}x |"
            for k, r in d["rows"].items()
        ]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("results.json"))
    print(tables(json.loads(path.read_text())))
