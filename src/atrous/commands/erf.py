"""`atrous erf MODEL`: effective receptive field (Luo et al., NeurIPS 2016) at initialisation or from a
checkpoint, over random inputs or a data set's images (`atrous.analysis.erf`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from atrous.commands._diagnostics import add_model_arguments

    add_model_arguments(parser, model_required=False, size=(257, 257))
    parser.add_argument(
        "--checkpoint", metavar="CK", help="use a trained checkpoint's model (MODEL not needed)"
    )
    parser.add_argument("--samples", type=int, default=8, help="inputs to average over (default 8)")
    parser.add_argument("--data", metavar="SPEC", help="average over this data set's images instead of noise")
    parser.add_argument("--split", default=None, help="data set split (default: the data set's default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--png", metavar="FILE", help="write the heat-map as a PNG")
    parser.add_argument("--json", metavar="FILE", help="write the summary (and the heat-map) as JSON")


def load_model(args: argparse.Namespace):
    """(model, description, normalisation mean/std or None) from MODEL/--opt or --checkpoint."""
    from atrous.commands._diagnostics import build_model
    from atrous.errors import AtrousError

    if args.checkpoint:
        from atrous.checkpoint import build_model_from_checkpoint, load_checkpoint

        ck = load_checkpoint(args.checkpoint)
        model = build_model_from_checkpoint(ck, expect_name=args.model, source=args.checkpoint)
        norm = ck.get("normalize") or {}
        return model, f"{ck['model']['name']} from {args.checkpoint}", (norm.get("mean"), norm.get("std"))
    if not args.model:
        raise AtrousError("give a model name (see `atrous models`) or --checkpoint CK")
    return build_model(args.model, args.opt, args.num_classes), args.model, None


def run(args: argparse.Namespace) -> int:
    from atrous.analysis import erf
    from atrous.analysis.plots import plot_erf
    from atrous.commands._diagnostics import check_outputs, check_size, write_json
    from atrous.errors import AtrousError

    check_outputs(png=args.png, json=args.json)
    size = check_size(args.size)
    if args.samples < 1:
        raise AtrousError(f"--samples {args.samples}: give 1 or more")
    model, what, norm = load_model(args)
    images = None
    if args.data:
        images = _images(args.data, args.split, norm, args.samples)
    result = erf(model, size, samples=args.samples, images=images, seed=args.seed, progress=True)
    source = (
        f"{result['samples']} images of {args.data}" if args.data else f"{result['samples']} random inputs"
    )
    print(f"effective receptive field of {what} at {size[0]}x{size[1]} ({source}):")
    print(f"  radius holding 50% of the gradient mass: {result['radius50']:.1f} px")
    print(f"  radius holding 95%: {result['radius95']:.1f} px")
    rf = result["rf"]
    print(
        f"  theoretical receptive field: {rf[0]}x{rf[1]}{' + global pooling' if result['global'] else ''}; "
        f"ERF/RF ratio (95% radii, RF flat and clipped to the input): {result['ratio']:.2f}"
    )
    if args.png:
        plot_erf(result, args.png, title=f"ERF {what}")
        print(f"wrote {args.png}")
    if args.json:
        summary = {k: v for k, v in result.items() if k != "heatmap"}
        write_json(args.json, {"model": what, **summary, "heatmap": result["heatmap"].tolist()})
    return 0


def _images(spec: str, split, norm, limit: int):
    """Normalised (C, H, W) images of a data set (the first `limit`)."""
    from atrous.data import IMAGENET_MEAN, IMAGENET_STD, build_dataset, eval_transform

    mean, std = norm if norm and norm[0] is not None else (IMAGENET_MEAN, IMAGENET_STD)
    ds = build_dataset(spec, split, transform=eval_transform(mean=mean, std=std))
    return (ds[i][0] for i in range(min(limit, len(ds))))
