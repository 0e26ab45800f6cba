"""`atrous demo`: train and evaluate small models of the dilation family on built-in synthetic data and the
real nuclei image (CPU) and write a report that measures the mission's claims (index.html, results.json,
PNG figures)."""

from __future__ import annotations

import argparse
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo-report", help="output folder (default: demo-report)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny budgets (under a minute), every section of the report"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the generated data (training seeds follow)"
    )
    parser.add_argument(
        "--only",
        metavar="CLAIM",
        default=None,
        help="rerun only the experiment of this claim id (other models' scores are read from --out)",
    )


def run(args: argparse.Namespace) -> int:
    from atrous.report import run_demo

    t0 = time.perf_counter()
    results = run_demo(args.out, seed=args.seed, quick=args.quick, only=args.only)
    for claim in results["claims"]:
        print(f"{claim['verdict']:>14}  {claim['id']}")
    print(f"wrote {args.out}/index.html and results.json in {time.perf_counter() - t0:.0f} s")
    return 0
