"""`atrous rf MODEL`: theoretical receptive field per layer, output stride, small-object limit, and warnings
for rates that degenerate toward 1x1 at the given input size (`atrous.analysis.receptive_field`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from atrous.commands._diagnostics import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument("--json", metavar="FILE", help="write the result as JSON")
    parser.add_argument("--all-layers", action="store_true", help="list every layer (default: up to 40 rows)")


def run(args: argparse.Namespace) -> int:
    from atrous.analysis import receptive_field
    from atrous.commands._diagnostics import build_model, check_outputs, check_size, pair, table, write_json

    check_outputs(json=args.json)
    size = check_size(args.size)
    model = build_model(args.model, args.opt, args.num_classes)
    r = receptive_field(model, size)
    rows = r["layers"]
    shown = rows if args.all_layers or len(rows) <= 40 else [*rows[:20], None, *rows[-19:]]
    cells = []
    for row in shown:
        if row is None:
            cells.append([f"... {len(rows) - 39} more (--all-layers)", "", "", "", "", "", ""])
            continue
        cells.append(
            [
                row["name"],
                row["type"],
                pair(row["kernel"]),
                pair(row["stride"]),
                pair(row["dilation"]),
                pair(row["jump"]),
                "global" if row["rf"] is None else pair(row["rf"]) + (" +global" if row["global"] else ""),
            ]
        )
    print(table(cells, ["layer", "type", "kernel", "stride", "dilation", "jump", "rf"]))
    print()
    h, w = size
    if r["global"]:
        print(
            f"receptive field: the whole {h}x{w} input (a global-pooling branch); largest local one: "
            f"{pair(r['rf_local'])}"
        )
    else:
        print(f"receptive field: {pair(r['rf'])} pixels (input {h}x{w})")
    print(f"output stride: {r['output_stride']}")
    if r["small_object_limit"] is not None:
        print(
            f"small-object limit: {r['small_object_limit']} px (narrower objects can fall between the "
            "output's independent samples)"
        )
    for note in r["notes"]:
        print(f"note: {note}")
    for warning in r["warnings"]:
        print(f"warning: {warning}")
    if args.json:
        write_json(args.json, {"model": args.model, "options": _plain_opts(args.opt), **r})
    return 0


def _plain_opts(options: list[str]) -> dict:
    from atrous.config import parse_kv_list

    return {k: list(v) if isinstance(v, tuple) else v for k, v in parse_kv_list(options).items()}
