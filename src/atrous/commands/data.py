"""`atrous data check SPEC`: the label histogram, image sizes, classes and findings of a data set, without
training (the checks `atrous train` runs first: `atrous.data.check`). Exits 1 when a finding is an error."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check",
        help="check a data set's masks and images (histogram, sizes, classes, findings)",
        description="Check a data set's masks and images: label histogram, image sizes, classes, and the "
        "errors and warnings training would stop on or print. Exits 1 on an error.",
    )
    check.add_argument(
        "spec", metavar="SPEC", help="data spec, e.g. folder:ROOT or folder:ROOT?map=0:0,255:1"
    )
    check.add_argument("--split", help="split to check (default: every split of the data)")
    check.add_argument("--num-classes", type=int, metavar="K", help="the class count training would use")
    check.add_argument(
        "--ignore-index",
        type=int,
        default=255,
        metavar="V",
        help="the mask value that is not a class (training's loss.ignore_index; default 255)",
    )
    check.add_argument("--json", metavar="FILE", help="also write the reports as JSON (atomically)")


def run(args: argparse.Namespace) -> int:
    from atrous._io import atomic_write_text, check_writable
    from atrous.data import available_splits, check_data
    from atrous.data.check import reports_json
    from atrous.errors import AtrousError

    if args.json:
        check_writable(args.json, what="--json")  # before the masks are read
    try:
        splits = [args.split] if args.split is not None else available_splits(args.spec) or [None]
    except AtrousError:
        splits = [args.split]  # check_data reports why the data cannot be read
    reports = [
        check_data(args.spec, split, num_classes=args.num_classes, ignore_index=args.ignore_index)
        for split in splits
    ]
    print("\n\n".join(r.format() for r in reports))
    if args.json:
        atomic_write_text(args.json, reports_json(reports) + "\n")
        print(f"wrote {args.json}")
    return 0 if all(r.ok for r in reports) else 1
