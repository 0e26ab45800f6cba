"""`atrous objects --data SPEC`: per-class object sizes (8-connected components, sqrt(area)) next to a
model's output stride, small-object limit and ERF: which classes are at risk
(`atrous.analysis.object_sizes`, `objects_at_risk`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", required=True, metavar="SPEC", help="data set, e.g. synthetic:shapes or voc:ROOT"
    )
    parser.add_argument("--split", default=None, help="data set split (default: the data set's default)")
    parser.add_argument("--model", help="a registered model name, to compare against")
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="model option")
    parser.add_argument("--checkpoint", metavar="CK", help="a checkpoint's model instead of --model")
    parser.add_argument("--limit", type=int, default=None, help="read at most this many items")
    parser.add_argument(
        "--erf-samples", type=int, default=2, help="random inputs for the model's ERF (default 2; 0 skips it)"
    )
    parser.add_argument("--png", metavar="FILE", help="write the per-class size histograms as a PNG")
    parser.add_argument("--json", metavar="FILE", help="write the result as JSON")


def run(args: argparse.Namespace) -> int:
    from atrous.analysis import erf, object_sizes, objects_at_risk, receptive_field
    from atrous.analysis.plots import plot_object_sizes
    from atrous.commands._diagnostics import check_outputs, table, write_json
    from atrous.data import build_dataset
    from atrous.errors import AtrousError
    from atrous.metrics import SIZE_BUCKETS

    check_outputs(png=args.png, json=args.json)

    ds = build_dataset(args.data, args.split)
    if len(ds) == 0:
        raise AtrousError(f"--data {args.data}: the data set is empty")
    sizes = object_sizes(ds, limit=args.limit)
    classes = list(getattr(ds, "classes", []))
    image_size = tuple(int(v) for v in ds[0][1].shape[-2:])
    model_info = None
    if args.model or args.checkpoint:
        from atrous.commands.erf import load_model

        ns = argparse.Namespace(
            model=args.model, opt=args.opt, checkpoint=args.checkpoint, num_classes=max(len(classes), 1)
        )
        model, what, _ = load_model(ns)
        rf = receptive_field(model, image_size)
        model_info = {
            "model": what,
            "input_size": list(image_size),
            "output_stride": rf["output_stride"],
            "small_object_limit": rf["small_object_limit"],
            "rf": rf["rf"],
        }
        if args.erf_samples > 0:
            e = erf(model, image_size, samples=args.erf_samples, progress=True)
            model_info["erf_radius95"] = e["radius95"]
            model_info["erf_radius50"] = e["radius50"]
    limit = model_info["small_object_limit"] if model_info else None
    rows = objects_at_risk(sizes, limit=limit or 0, erf_radius=(model_info or {}).get("erf_radius95"))
    buckets = [f"[{lo},{hi if hi is not None else 'inf'})" for lo, hi in SIZE_BUCKETS]
    headers = ["class", "objects", "median", *buckets]
    if model_info:
        headers += [f"< {limit}px", "> ERF95"] if "erf_radius95" in model_info else [f"< {limit}px"]
        headers.append("at risk")
    cells = []
    for r in rows:
        name = classes[r["class"]] if r["class"] < len(classes) else str(r["class"])
        cell = [name, r["objects"], f"{r['median_size']:.1f}", *r["histogram"]]
        if model_info:
            cell.append(f"{r['below_limit']:.0%}")
            if "wider_than_erf" in r:
                cell.append(f"{r['wider_than_erf']:.0%}")
            cell.append("AT RISK" if r["at_risk"] else "")
        cells.append(cell)
    print(f"object sizes (sqrt(area) of 8-connected components, pixels) in {args.data}:")
    print(table(cells, headers))
    if model_info:
        print(
            f"\n{model_info['model']} at {image_size[0]}x{image_size[1]}: output stride "
            f"{model_info['output_stride']}, small-object limit {limit} px"
            + (
                f", ERF radius 50%/95% {model_info['erf_radius50']:.1f}/{model_info['erf_radius95']:.1f} px"
                if "erf_radius95" in model_info
                else ""
            )
        )
        print("a class is at risk when a quarter or more of its objects are narrower than the limit")
    if args.png:
        plot_object_sizes(
            sizes, classes, args.png, limit=limit, erf_radius=(model_info or {}).get("erf_radius95")
        )
        print(f"wrote {args.png}")
    if args.json:
        write_json(args.json, {"data": args.data, "classes": classes, "per_class": rows, "model": model_info})
    return 0
