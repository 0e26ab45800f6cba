"""`atrous train`: train a model on a data set; a YAML config holds everything, flags override it.

Precedence: defaults < CONFIG.yaml (or, with --resume and no CONFIG, the run folder's saved config.yaml)
< flags < --set. Under torchrun (`torchrun --standalone --nproc_per_node 2 -m atrous train ...`) the run is
data-parallel.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config",
        nargs="?",
        metavar="CONFIG.yaml",
        help="YAML config (sections: model, data, optim, loss, train, log); flags override it",
    )
    parser.add_argument("--model", help="model name (see `atrous models`)")
    parser.add_argument(
        "--opt",
        action="append",
        metavar="KEY=VALUE",
        help="model option, repeatable (e.g. --opt rates=1,2,5 --opt width=0.25)",
    )
    parser.add_argument(
        "--data",
        metavar="SPEC",
        help="training data: folder:PATH, voc:PATH, cityscapes:PATH, "
        "synthetic:NAME[?n=64&size=96] (split 'train' when it has splits)",
    )
    parser.add_argument(
        "--val-data",
        metavar="SPEC",
        help="validation data (default: the training data's 'val' split when it has one)",
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, metavar="N", help="number of epochs (default 10)")
    length.add_argument("--iters", type=int, metavar="N", help="number of optimiser steps instead of epochs")
    parser.add_argument(
        "--batch-size", type=int, metavar="B", help="global batch size (split over processes)"
    )
    parser.add_argument("--lr", type=float, metavar="X", help="base learning rate")
    parser.add_argument(
        "--crop",
        type=int,
        metavar="S",
        help="training crop size (pixels, square; default: the median short side of the training images, "
        "at most 321)",
    )
    parser.add_argument(
        "--seed", type=int, metavar="S", help="seed of initialisation, data order, augmentation"
    )
    parser.add_argument("--workers", type=int, metavar="N", help="data loader worker processes")
    parser.add_argument("--device", metavar="D", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="run folder: config.yaml, last.pt, best.pt, metrics.csv (default: a fresh runs/MODEL-TIMESTAMP)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in DIR (--out) from its newest intact "
        "checkpoint (its saved config.yaml is the base when no CONFIG is given)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in DIR even if it holds one: the old run's checkpoints, config, metrics and "
        "TensorBoard events are removed",
    )
    parser.add_argument(
        "--init-from",
        metavar="CK",
        help="fine-tune from a checkpoint (tensors of another shape, "
        "e.g. the classifier for another class count, keep their initialisation)",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="set any config value, repeatable (e.g. --set optim.name=adamw --set train.checkpoint_every=50)",
    )
    parser.add_argument(
        "--amp", action="store_true", default=None, help="mixed precision (bfloat16 on the CPU)"
    )


# flag -> dotted config key
_FLAGS = {
    "model": "model.name",
    "data": "data.train",
    "val_data": "data.val",
    "epochs": "train.epochs",
    "iters": "train.iters",
    "batch_size": "data.batch_size",
    "lr": "optim.lr",
    "crop": "data.crop_size",
    "seed": "train.seed",
    "workers": "data.workers",
    "device": "train.device",
    "threads": "train.threads",
    "out": "train.out",
    "init_from": "train.init_from",
    "amp": "train.amp",
}


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from atrous.config import load_config, parse_kv_list
    from atrous.errors import AtrousError
    from atrous.train import CONFIG_YAML, fit

    overrides: dict = {}
    for flag, key in _FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    # --epochs and --iters replace each other (also over a config that set the other one).
    if args.epochs is not None:
        overrides["train.iters"] = None
    if args.iters is not None:
        overrides["train.epochs"] = None
    overrides.update({f"model.options.{k}": v for k, v in parse_kv_list(args.opt, "--opt").items()})
    overrides.update(parse_kv_list(args.set, "--set"))

    if args.resume and args.overwrite:
        raise AtrousError("--resume continues the run in --out, --overwrite replaces it: give one of them")
    source = args.config
    if args.resume and args.out is None:
        raise AtrousError("--resume needs --out DIR: the run folder to continue")
    if source is None and args.resume:
        # Continue a run as it was configured, unless told otherwise.
        saved = Path(args.out) / CONFIG_YAML
        if saved.is_file():
            source = saved
            _check_same_model(saved, args.model)
    config = load_config(source, overrides)
    fit(config, resume=args.resume, overwrite=args.overwrite)
    return 0


def _check_same_model(saved, model: str | None) -> None:
    """`--resume --model OTHER`: say that a resumed run keeps its model (before OTHER meets the saved
    run's model options, which it would not know)."""
    from atrous.config import load_config
    from atrous.errors import AtrousError

    held = load_config(saved).model.name
    if model is not None and model != held:
        raise AtrousError(
            f"{saved.parent} holds a {held} run: --resume continues it with its own model (drop --model "
            f"{model}), or start a new {model} run with another --out"
        )
