"""Benchmark 5: the demo's models at the demo's resolution, eager against `atrous.optimize`.

The models and the resolution are read from the demo's own configuration (`atrous.report.plan.MODELS`,
`atrous.report.tasks.DEFAULT.val_size`), so this table follows the demo. Where the demo is not installed,
the gridding pair it compares (dilated_net rates 2,2,2,2,2,2 against HDC's 1,2,3,1,2,3) is measured at
128x128 instead, and the JSON says so.
"""

from __future__ import annotations

import torch

import atrous
from atrous import perf


def _config() -> tuple[dict[str, tuple[str, dict]], int, str]:
    try:
        from atrous.report import plan, tasks
    except ImportError:
        pair = {
            "gridded": ("dilated_net", {"rates": [2, 2, 2, 2, 2, 2], "channels": 32}),
            "hdc": ("dilated_net", {"rates": [1, 2, 3, 1, 2, 3], "channels": 32}),
        }
        return pair, 128, "atrous.report not available: the demo's gridding pair at 128x128"
    specs = {key: (spec.name, spec.options) for key, spec in plan.MODELS.items()}
    return (
        specs,
        tasks.DEFAULT.val_size,
        "atrous.report.plan (MODELS), atrous.report.tasks (DEFAULT.val_size)",
    )


def run(*, quick: bool, log=print) -> dict:
    specs, size, source = _config()
    if quick:  # two models exercise the path
        specs = dict(list(specs.items())[-2:])
    batch = 1
    shape = (batch, 3, size, size)
    x = torch.randn(shape)
    rows, skipped = {}, {}
    fns = {}
    for key, (name, opts) in specs.items():
        try:
            model = atrous.build(name, 2, **opts).eval()
        except ValueError as err:  # a model the registry does not have (yet)
            skipped[key] = str(err).splitlines()[0]
            continue
        fast = atrous.optimize(model)
        counted = perf.flop_breakdown(model, shape)
        rows[key] = {"model": name, "options": opts, "params": perf.param_count(model), "flops": counted}
        fns[f"{key}/eager"] = lambda m=model: m(x)
        fns[f"{key}/optimize"] = lambda m=fast: m(x)
    with torch.inference_mode():
        stats = perf.interleave(fns, warmup=1, repeats=3 if quick else 15)
    lines = [
        f"source: {source}; input {size}x{size}, batch {batch}",
        f"{'model':<10} {'params':>8} {'MFLOP':>7} {'eager ms':>8} {'optimize ms':>11} {'speedup':>7}",
    ]
    for key, row in rows.items():
        eager, fast = stats[f"{key}/eager"]["median_s"], stats[f"{key}/optimize"]["median_s"]
        row.update({"eager_s": eager, "optimize_s": fast, "speedup": eager / fast})
        lines.append(
            f"{key:<10} {row['params']:>8} {row['flops']['nominal'] / 1e6:>7.1f} {eager * 1e3:>8.2f}"
            f" {fast * 1e3:>11.2f} {eager / fast:>7.2f}"
        )
    for key, why in skipped.items():
        lines.append(f"{key:<10} skipped: {why}")
    log("\n".join(lines))
    return {"source": source, "input_shape": list(shape), "rows": rows, "skipped": skipped}
