"""`atrous eval`: evaluate a checkpoint on a data set (whole image, sliding window, or multi-scale + flip).

Every number comes from `atrous.metrics` (one confusion matrix, Dice, Boundary IoU, object recall by size)
through `atrous.evaluate.evaluate`, the loop training validates with. Object recall counts the regions of
every class except the ignore index and a class named "background" (`default_object_classes`).
"""

from __future__ import annotations

import argparse

from atrous.commands._inference import add_inference_arguments, build_infer_from_args, load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_inference_arguments(parser)
    parser.add_argument(
        "--data", required=True, metavar="SPEC", help="folder:ROOT, voc:ROOT, synthetic:NAME, ..."
    )
    parser.add_argument(
        "--split", help="split to evaluate (default: val when the data has splits, else all of it)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the metrics as JSON (atomically)")
    parser.add_argument(
        "--ignore-index",
        type=int,
        metavar="N",
        help="mask value that is not scored (default: the checkpoint's loss.ignore_index, else 255)",
    )
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    parser.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable image/mask pairs with a warning and a count"
    )


def _plain(value):
    """Metrics as JSON values: numpy/torch scalars -> Python numbers, NaN -> None."""
    import math

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_report(result: dict) -> str:
    """The metrics as a short text table."""

    def pct(v):
        return "   n/a" if v is None else f"{100 * v:5.1f}%"

    lines = [
        f"{result['data']} [{result['split'] or 'all'}], {result['images']} images, inference: {result['inference']}",
        f"mIoU {pct(result['miou'])}   pixel acc {pct(result['pixel_acc'])}   mean acc {pct(result.get('mean_acc'))}"
        f"   fw IoU {pct(result.get('fw_iou'))}",
        f"Dice {pct(result.get('dice'))}   boundary IoU {pct(result.get('boundary_iou'))}",
    ]
    width = max(len(n) for n in result["class_names"])
    lines.append(f"  {'class':<{width}}    IoU    Dice  bnd IoU")
    per_class = zip(
        result["class_names"],
        result["per_class_iou"],
        result.get("per_class_dice") or [None] * len(result["class_names"]),
        result.get("per_class_boundary_iou") or [None] * len(result["class_names"]),
    )
    for name, iou, dice, biou in per_class:
        lines.append(f"  {name:<{width}} {pct(iou)} {pct(dice)}  {pct(biou)}")
    lines.append("object recall by size (sqrt(area), px):")
    for b in result["object_recall_by_size"]:
        span = f"[{b['min']}, {b['max'] if b['max'] is not None else 'inf'})"
        lines.append(f"  {span:<10} objects {b['objects']:6d}   recall {pct(b['recall'])}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from atrous._io import atomic_write_text, check_writable
    from atrous.errors import AtrousError
    from atrous.evaluate import evaluate
    from atrous.inference import describe
    from atrous.metrics import default_object_classes

    if args.workers < 0:
        raise AtrousError(f"--workers {args.workers}: give 0 or more worker processes")
    if args.json:
        check_writable(args.json, what="--json")  # before the evaluation, not after it
    infer = build_infer_from_args(args)
    model = load_model(args)
    meta = model.meta
    ignore = meta.ignore_index if args.ignore_index is None else args.ignore_index
    split, dataset = _dataset(args, meta, ignore)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False, num_workers=args.workers)
    metrics = evaluate(
        model,
        loader,
        num_classes=meta.num_classes,
        device=args.device,
        infer=infer,
        ignore_index=ignore,
        object_classes=default_object_classes(meta.classes, meta.num_classes, ignore),
    )
    result = _plain(
        {
            "checkpoint": str(args.checkpoint),
            "model": meta.name,
            "data": args.data,
            "split": split,
            "images": len(dataset),
            "skipped": len(getattr(dataset, "skipped", ())),  # unreadable pairs left out (--skip-bad)
            "inference": describe(infer),
            "precision": args.precision,
            "ignore_index": ignore,
            "class_names": list(meta.classes),
            **metrics,
        }
    )
    print(format_report(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _dataset(args: argparse.Namespace, meta, ignore_index: int):
    """(split, data set) to evaluate: `--split`, else val where the data has splits; checked against the
    checkpoint's classes."""
    import sys

    from atrous.data import available_splits, build_dataset, eval_transform
    from atrous.errors import AtrousError

    split = args.split
    if split is None and available_splits(args.data):
        split = "val"
    dataset = build_dataset(
        args.data,
        split,
        transform=eval_transform(mean=meta.mean, std=meta.std),
        skip_bad=args.skip_bad,
        ignore_index=ignore_index,  # the one value masks may hold besides the classes
    )
    if len(dataset) == 0:
        raise AtrousError(f"data {args.data!r} split {split!r} is empty: give a split with images")
    if dataset.num_classes != meta.num_classes:
        raise AtrousError(
            f"checkpoint {args.checkpoint} predicts {meta.num_classes} classes but data {args.data!r} has "
            f"{dataset.num_classes}: evaluate on data with the model's classes"
        )
    if list(dataset.classes) != list(meta.classes):
        print(
            f"atrous eval: warning: class names differ (checkpoint {meta.classes}, data {list(dataset.classes)}); "
            "reporting the checkpoint's",
            file=sys.stderr,
        )
    return split, dataset
