"""`atrous predict`: segment image files and folders with a trained model.

For each image, `OUT/masks/<name>.png` (class indices, shown in the class palette) and
`OUT/overlays/<name>.png` (the image blended with the class colours), each written atomically.
"""

from __future__ import annotations

import argparse

from atrous.commands._inference import add_inference_arguments, build_infer_from_args, load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders of images")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_inference_arguments(parser)
    parser.add_argument(
        "--skip-existing",
        action="store_true",
        help="keep images whose outputs already exist (rerun an interrupted run without redoing them)",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="warn about unreadable images and go on (counted at the end) instead of stopping",
    )
    parser.add_argument(
        "--intensity",
        choices=("auto", "full", "minmax", "percentile"),
        help="16-bit grey images to 8 bits: auto (kept when they fit in 8 bits, else scaled by the file's "
        "max), full (/257), minmax or percentile (1-99.8 %%, as microscopy tools) per file (default: the "
        "rule the model was trained with, its data spec's ?intensity=)",
    )
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="overlay opacity of the class colours (default 0.5)"
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from tqdm import tqdm

    from atrous._io import check_writable
    from atrous.api import find_images, predict_files
    from atrous.errors import AtrousError

    check_writable(args.out, what="--out", folder=True)  # before the model is loaded
    if not 0.0 <= args.alpha <= 1.0:
        raise AtrousError(f"--alpha {args.alpha}: the overlay opacity must be between 0 and 1")
    infer = build_infer_from_args(args)
    total = len(find_images(args.inputs, args.out))  # checks inputs before the model is loaded
    model = load_model(args)
    counts = {"written": 0, "existing": 0, "bad": 0}
    results = predict_files(
        model,
        args.inputs,
        args.out,
        skip_existing=args.skip_existing,
        skip_bad=args.skip_bad,
        infer=infer,
        alpha=args.alpha,
        intensity=args.intensity,
    )
    with tqdm(results, total=total, unit="img", desc="predict", file=sys.stderr, dynamic_ncols=True) as bar:
        for result in bar:
            counts[result.status] += 1
            if result.status == "bad":
                bar.write(f"atrous predict: warning: skipped {result.detail}", file=sys.stderr)
    summary = f"{counts['written']} predicted into {args.out}"
    if args.skip_existing:
        summary += f", {counts['existing']} already done"
    if args.skip_bad:
        summary += f", {counts['bad']} unreadable skipped"
    print(summary)
    return 0
