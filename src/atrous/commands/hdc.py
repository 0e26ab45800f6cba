"""`atrous hdc check RATES` / `atrous hdc plan`: hybrid dilated convolution rules of Wang et al. (WACV 2018)
(`atrous.analysis.hdc_check`, `hdc_plan`). `check` exits 0 for a valid list and 1 for an invalid one."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="hdc_command", metavar="{check,plan}", required=True)
    check = sub.add_parser("check", help="check a rate list: M_2 <= K, no common factor, no holes")
    check.add_argument("rates", help="comma-separated rates, e.g. 1,2,5")
    check.add_argument("--kernel", type=int, default=3, help="kernel size (odd, default 3)")
    check.add_argument("--json", metavar="FILE", help="write the result as JSON")
    plan = sub.add_parser("plan", help="list valid rate lists, ranked by receptive field then evenness")
    plan.add_argument("--kernel", type=int, default=3, help="kernel size (odd, default 3)")
    plan.add_argument("--layers", type=int, default=3, help="number of layers (default 3)")
    plan.add_argument("--max-rate", type=int, default=9, help="largest rate allowed (default 9)")
    plan.add_argument("--top", type=int, default=20, help="rows to print (default 20; JSON has all)")
    plan.add_argument("--json", metavar="FILE", help="write the ranked list as JSON")


def run(args: argparse.Namespace) -> int:
    from atrous.analysis import hdc_check, hdc_plan
    from atrous.commands._diagnostics import check_outputs, fmt_float, parse_rates, table, write_json
    from atrous.errors import AtrousError

    check_outputs(json=args.json)

    if args.hdc_command == "check":
        rates = parse_rates(args.rates)
        try:
            r = hdc_check(rates, args.kernel)
        except ValueError as e:
            raise AtrousError(f"hdc check {args.rates} --kernel {args.kernel}: {e}") from None
        rec = r["recurrence"]
        print(
            f"rates {','.join(map(str, rates))} with a {args.kernel}x{args.kernel} kernel: "
            f"{'VALID' if r['valid'] else 'INVALID'}"
        )
        print(
            f"  recurrence: M = {rec['M']}, M_2 = {rec['M_2']} {'<=' if rec['ok'] else '>'} K = {args.kernel}"
            if rec["M_2"] is not None
            else "  recurrence: needs 2 or more rates"
        )
        print(f"  common factor: {r['common_factor']}")
        print(f"  coverage: {r['holes']} holes in {r['rf'][0]}x{r['rf'][1]}, spread {fmt_float(r['spread'])}")
        for reason in r["reasons"]:
            print(f"  fails: {reason}")
        if args.json:
            write_json(args.json, r)
        return 0 if r["valid"] else 1
    try:
        plan = hdc_plan(args.kernel, args.layers, args.max_rate)
    except ValueError as e:
        raise AtrousError(f"hdc plan: {e}") from None
    rows = [
        [
            i + 1,
            ",".join(map(str, e["rates"])),
            f"{e['rf'][0]}x{e['rf'][1]}",
            fmt_float(e["spread"]),
            e["M_2"],
        ]
        for i, e in enumerate(plan[: args.top])
    ]
    print(table(rows, ["#", "rates", "rf", "spread", "M_2"]))
    print(
        f"{len(plan)} valid lists of {args.layers} rates <= {args.max_rate} for a {args.kernel}x{args.kernel} "
        "kernel (ranked by receptive field, then evenness)"
    )
    if args.json:
        write_json(
            args.json,
            {"kernel_size": args.kernel, "layers": args.layers, "max_rate": args.max_rate, "plans": plan},
        )
    return 0
