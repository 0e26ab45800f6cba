"""`atrous grid`: coverage map (number of paths from each input pixel to one output pixel) of a rate list, of
a model, or of one dilated re-parameterisation block; holes, gridding ratio and spread
(`atrous.analysis.coverage`, `coverage_model`, `coverage_reparam`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from atrous.commands._diagnostics import add_model_arguments

    parser.add_argument(
        "--rates",
        action="append",
        default=[],
        metavar="R1,R2,...",
        help="rates of a stack of KxK convolutions; repeat to compare lists side by side",
    )
    parser.add_argument("--kernel", type=int, default=3, help="kernel size (odd, default 3)")
    add_model_arguments(
        parser,
        model_flag="a registered model instead of --rates (float64 path weights); a model with dilated "
        "re-parameterisation blocks (dilated_net --opt block=reparam) is drawn in both forms",
        size=(129, 129),
    )
    parser.add_argument(
        "--reparam",
        type=int,
        metavar="K",
        help="instead: one dilated re-parameterisation block with a KxK large kernel (UniRepLKNet): its "
        "dilated branches alone, its training form and its merged kernel",
    )
    parser.add_argument(
        "--branches",
        metavar="K1:R1,...",
        help="the block's (kernel:rate) branches for --reparam (default UniRepLKNet's for K)",
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
    from atrous.analysis.plots import plot_coverage
    from atrous.commands._diagnostics import check_outputs, fmt_float, table, write_json
    from atrous.errors import AtrousError

    check_outputs(png=args.png, json=args.json)
    if args.valid_weights is not None:
        return _valid_weights(args)
    if sum(map(bool, (args.rates, args.model, args.reparam is not None))) != 1:
        raise AtrousError(
            "give one of --rates R1,R2,... (one or more times), --model NAME or --reparam K, e.g. --rates 1,2,5"
        )
    if args.model:
        results, titles = _model_maps(args)
    elif args.reparam is not None:
        results, titles = _reparam_maps(args)
    else:
        results, titles = _rate_maps(args)
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
        print(f"wrote {args.png}")
    if args.json:
        write_json(args.json, results[0] if len(results) == 1 else results)
    return 0


def _crop(res: dict) -> list[list]:
    """A model's (H, W) coverage map cut to the box of reached pixels."""
    top, left, bottom, right = res["box"]
    return [row[left : right + 1] for row in res["coverage"][top : bottom + 1]]


def _model_maps(args: argparse.Namespace) -> tuple[list[dict], list]:
    """The model's coverage; for a model with DilatedReparam blocks, its training and merged forms."""
    from atrous.analysis import coverage_model, merge_reparam
    from atrous.commands._diagnostics import build_model, check_size
    from atrous.ops import DilatedReparam

    size = check_size(args.size)
    model = build_model(args.model, args.opt, args.num_classes)
    name = f"{args.model} {' '.join(args.opt)}".strip()
    forms = [(name, model)]
    if any(isinstance(m, DilatedReparam) for m in model.modules()):
        forms = [(f"{name} (training form)", model), (f"{name} (merged)", merge_reparam(model))]
    results, titles = [], []
    for title, m in forms:
        res = coverage_model(m, size)
        results.append({"model": title, **res})
        titles.append((title, _crop(res)))
    return results, titles


def _reparam_maps(args: argparse.Namespace) -> tuple[list[dict], list]:
    """One DilatedReparam block: its dilated branches alone (exact tap counts), its training form and its
    merged kernel (both through `coverage_model` on the real module)."""
    from atrous.analysis import coverage_model, coverage_reparam, merge_reparam
    from atrous.errors import AtrousError
    from atrous.ops import DilatedReparam

    k = args.reparam
    branches = _parse_branches(args.branches) if args.branches else None
    try:
        alone = coverage_reparam(k, branches, large=False)
        block = DilatedReparam(1, k, branches=alone["branches"])
    except ValueError as e:
        raise AtrousError(f"--reparam {k} --branches {args.branches or '(UniRepLKNet)'}: {e}") from None
    spec = " ".join(f"{b}@{r}" for b, r in alone["branches"])
    results = [{"form": "dilated branches alone", **alone}]
    titles = [(f"K={k} branches {spec} alone", alone["coverage"])]
    for form, m in (("training form", block), ("merged", merge_reparam(block))):
        res = coverage_model(m, (2 * k + 1, 2 * k + 1))
        results.append({"form": form, "kernel_size": k, "branches": alone["branches"], **res})
        titles.append((f"K={k} {form}", _crop(res)))
    return results, titles


def _parse_branches(text: str) -> list[tuple[int, int]]:
    from atrous.errors import AtrousError

    try:
        pairs = [tuple(int(v) for v in part.split(":")) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 for p in pairs):
        raise AtrousError(
            f"--branches {text!r}: write kernel:rate pairs separated by commas, e.g. 5:1,7:2,3:3"
        )
    return pairs


def _rate_maps(args: argparse.Namespace) -> tuple[list[dict], list]:
    from atrous.analysis import coverage
    from atrous.commands._diagnostics import parse_rates
    from atrous.errors import AtrousError

    results, titles = [], []
    for text in args.rates:
        try:
            res = coverage(parse_rates(text), args.kernel)
        except ValueError as e:
            raise AtrousError(f"--rates {text} --kernel {args.kernel}: {e}") from None
        results.append(res)
        titles.append((f"rates {text}, {args.kernel}x{args.kernel}", res["coverage"]))
    return results, titles


def _valid_weights(args: argparse.Namespace) -> int:
    from atrous.analysis import valid_weight_curve
    from atrous.analysis.plots import plot_valid_weights
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
