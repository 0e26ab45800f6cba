"""atrous benchmarks: `make bench` (or `python benchmarks/run.py [--quick]`).

Prints one table per benchmark and writes everything to benchmarks/results.json (atomically):
1. dilated conv against dense conv of the same shape (benchmarks/conv.py);
2. models against torchvision with the same weights, inference at batch 1 (benchmarks/models.py);
3. training steps; 4. scaling with the input size; 5. the demo's models at the demo's resolution;
6. bfloat16 against float32 inference (benchmarks/precision.py).
Times are medians of repeats run round-robin in this process; memory comes from a fresh process per row.
`--quick` shrinks every benchmark (small shapes, few repeats) to check that it all runs, in seconds.
`--merge` keeps the other sections of an existing --out file (meta.merged_runs says which ran when, where).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import conv
import demo_models
import models
import precision
from atrous._io import atomic_write_text

SECTIONS = ("conv", "inference", "training", "scaling", "demo", "precision")


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few repeats (a smoke run)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")), help="JSON path")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="run only these")
    parser.add_argument(
        "--merge", action="store_true", help="keep the sections of an existing --out that are not run"
    )
    args = parser.parse_args(argv)
    if args.quick:
        # a smoke run of tiny shapes: thousands of tiny parallel regions, each waiting for the slowest
        # thread; on a busy machine one thread finishes many times sooner (no timing here is reported)
        torch.set_num_threads(1)
    started = time.perf_counter()
    results: dict = {
        "meta": {
            "quick": args.quick,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(),
            "flops": "2 x multiply-adds (torch.utils.flop_counter convention)",
        },
        "seconds": {},
        "cpu_seconds": {},
    }
    if args.merge and Path(args.out).is_file():  # the earlier run's sections and meta, this run's noted
        old = json.loads(Path(args.out).read_text())
        this_run = {"sections": args.only, **results["meta"]}
        results["meta"] = {**old["meta"], "merged_runs": [*old["meta"].get("merged_runs", []), this_run]}
        for key in old.keys() - {"meta", "seconds", "cpu_seconds"} - set(args.only):
            results[key] = old[key]  # also sections other scripts write (e.g. "crop")
        for key in ("seconds", "cpu_seconds"):
            results[key] = {k: v for k, v in old.get(key, {}).items() if k not in args.only}
    print(f"atrous benchmarks{' (--quick)' if args.quick else ''} on {results['meta']['machine']['cpu']}")

    def timed(name, fn):
        t0, c0 = time.perf_counter(), time.process_time()
        results[name] = fn()
        results["seconds"][name] = time.perf_counter() - t0
        # CPU seconds of this process (all threads): with a busy machine, the wall time says little
        results["cpu_seconds"][name] = time.process_time() - c0
        print(
            f"[{name}: {results['seconds'][name]:.1f} s, {results['cpu_seconds'][name]:.1f} CPU s]\n",
            flush=True,
        )
        atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")  # a cut-short run keeps what it has

    if "conv" in args.only or "inference" in args.only:  # the ceiling comes from the conv grid
        print("== 1. dilated conv vs dense conv of the same shape (ratios: time / dense time)")
        print(conv.HEADER)
        timed("conv", lambda: conv.run(quick=args.quick))
        print(_conv_summary(results["conv"]))
    ceiling = results["conv"]["ceiling_gflops"] if "conv" in results else None
    if "inference" in args.only:
        print(f"== 2. inference, batch 1, fp32 (conv ceiling {ceiling:.1f} GFLOP/s)")
        timed("inference", lambda: models.inference(quick=args.quick, ceiling_gflops=ceiling))
    if "training" in args.only:
        print("== 3. training steps")
        timed("training", lambda: models.training(quick=args.quick))
    if "scaling" in args.only:
        print("== 4. scaling with the input size")
        timed("scaling", lambda: models.scaling(quick=args.quick))
    if "demo" in args.only:
        print("== 5. the demo's models")
        timed("demo", lambda: demo_models.run(quick=args.quick))
    if "precision" in args.only:
        print("== 6. bf16 against fp32 inference")
        timed("precision", lambda: precision.run(quick=args.quick))
    elapsed = time.perf_counter() - started
    if "merged_runs" in results["meta"]:  # the total stays the full run's
        results["meta"]["merged_runs"][-1]["seconds"] = elapsed
    else:
        results["seconds"]["total"] = elapsed
    atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out} in {elapsed:.1f} s")
    return 0


def _conv_summary(res: dict) -> str:
    lines = [
        f"conv ceiling (best dense forward): {res['ceiling_gflops']:.1f} GFLOP/s",
        "median / max ratio to dense:",
    ]
    for group, per_impl in res["summary"].items():
        cells = ", ".join(
            f"{impl} {v['median_ratio']:.2f} / {v['max_ratio']:.2f}" for impl, v in per_impl.items()
        )
        lines.append(f"  {group:<22} {cells}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
