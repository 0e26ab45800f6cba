"""`atrous grid`: coverage map (number of paths from each input pixel to one output pixel) of a rate list or
of a model; holes, gridding ratio and spread (`atrous.analysis.coverage`, `coverage_model`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rates",
        action="append",
        default=[],
        metavar="R1,R2,...",
        help="rates of a stack of KxK convolutions; repeat to compare lists side by side",
    )
    parser.add_argument("--kernel", type=int, default=3, help="kernel size (odd, default 3)")
    parser.add_argument("--model", help="a registered model instead of --rates (float64 path weights)")
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="model option")
    parser.add_argument("--num-classes", type=int, default=21, help="number of classes (default 21)")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(129, 129),
        metavar=("H", "W"),
        help="model input size (default 129)",
    )
    parser.add_argument(
        "--valid-weights",
        type=int,
        metavar="SIZE",
        help="instead: valid taps of a KxK kernel on a SIZExSIZE map against the rate (DeepLab v3 Fig. 4)",
    )
    parser.add_argument(
        "--max-rate", type=int, default=72, help="largest rate for --valid-weights (default 72)"
    )
    parser.add_argument("--show", action="store_true", help="print the map as text (small receptive fields)")
    parser.add_argument("--png", metavar="FILE", help="write the coverage map(s) as a PNG")
    parser.add_argument("--json", metavar="FILE", help="write the result(s) as JSON")


def run(args: argparse.Namespace) -> int:
    from atrous.analysis import coverage, coverage_model
    from atrous.commands._diagnostics import (
        build_model,
        check_outputs,
        check_size,
        fmt_float,
        parse_rates,
        plot_coverage,
        table,
        write_json,
    )
    from atrous.errors import AtrousError

    check_outputs(png=args.png, json=args.json)
    if args.valid_weights is not None:
        return _valid_weights(args)
    if bool(args.rates) == bool(args.model):
        raise AtrousError("give --rates R1,R2,... (one or more times) or --model NAME, not both")
    results, titles = [], []
    if args.model:
        size = check_size(args.size)
        model = build_model(args.model, args.opt, args.num_classes)
        res = coverage_model(model, size)
        top, left, bottom, right = res["box"]
        crop = [row[left : right + 1] for row in res["coverage"][top : bottom + 1]]
        results.append({"model": args.model, **res})
        titles.append((f"{args.model} {' '.join(args.opt)}".strip(), crop))
    else:
        for text in args.rates:
            try:
                res = coverage(parse_rates(text), args.kernel)
            except ValueError as e:
                raise AtrousError(f"--rates {text} --kernel {args.kernel}: {e}") from None
            results.append(res)
            titles.append((f"rates {text}, {args.kernel}x{args.kernel}", res["coverage"]))
    rows = [
        [
            title,
            f"{r['rf'][0]}x{r['rf'][1]}",
            r["holes"],
            f"{r['gridding_ratio']:.3f}",
            fmt_float(r["spread"]),
        ]
        for (title, _), r in zip(titles, results)
    ]
    print(table(rows, ["coverage of", "rf", "holes", "gridding ratio", "spread (max/min paths)"]))
    if args.show:
        for title, grid in titles:
            print(f"\n{title} (. = hole, digits = log10 of the path count):")
            for row in grid:
                print("".join("." if v == 0 else str(min(9, len(str(int(v))) - 1)) for v in row))
    if args.png:
        plot_coverage(titles, args.png)
    if args.json:
        write_json(args.json, results[0] if len(results) == 1 else results)
    return 0


def _valid_weights(args: argparse.Namespace) -> int:
    from atrous.analysis import valid_weight_curve
    from atrous.analysis.valid_weights import plot_valid_weights
    from atrous.commands._diagnostics import table, write_json
    from atrous.errors import AtrousError

    if args.valid_weights < 1 or args.max_rate < 1:
        raise AtrousError(
            "--valid-weights SIZE and --max-rate need positive integers, e.g. --valid-weights 65"
        )
    try:
        curve = valid_weight_curve(args.valid_weights, range(1, args.max_rate + 1), args.kernel)
    except ValueError as e:
        raise AtrousError(f"--valid-weights {args.valid_weights} --kernel {args.kernel}: {e}") from None
    k2 = args.kernel * args.kernel
    step = max(1, len(curve) // 12)
    rows = [
        [c["rate"], f"{c['all_valid']:.3f}", f"{c['only_centre']:.3f}", f"{c['mean_fraction']:.3f}"]
        for c in curve[::step]
    ]
    print(table(rows, ["rate", f"all {k2} valid", "only centre", "mean fraction"]))
    if args.png:
        plot_valid_weights(curve, args.png)
        print(f"wrote {args.png}")
    if args.json:
        write_json(args.json, curve)
    return 0
