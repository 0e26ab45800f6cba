"""The `atrous` command line: thin subcommands over the library.

Each subcommand lives in `atrous.commands.<name>` and defines `add_arguments(parser)` and `run(args) -> int`.
Command modules import only the standard library at top level, so `atrous --help` stays fast; torch is
imported when a command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from atrous import __version__
from atrous.errors import AtrousError

# name -> one-line help; the module is atrous.commands.<name with - replaced by _>
COMMANDS: dict[str, str] = {
    "demo": "train and evaluate small dilated and pooling models on built-in data; write a report of the claims",
    "models": "list the models with a one-line description (or one model's options)",
    "train": "train a model (YAML config + flags; --resume, --init-from; data-parallel under torchrun)",
    "data": "check a data set without training: label histogram, image sizes, classes, findings (data check)",
    "eval": "evaluate a checkpoint on a data set: mIoU, pixel accuracy, per-class IoU, object recall by size",
    "predict": "segment images and folders with a checkpoint: class-index PNGs and colour overlays",
    "export": "export a checkpoint's model to ONNX and check onnxruntime against PyTorch",
    "rf": "receptive field per layer, output stride, small-object limit and degenerate-rate warnings",
    "grid": "gridding: coverage map (paths per input pixel) of a rate list or a model; holes and spread",
    "hdc": "hybrid dilated convolution rules: check a rate list, or plan valid ones",
    "erf": "effective receptive field (gradient heat-map) of a model at init or from a checkpoint",
    "objects": "per-class object sizes of a data set next to a model's small-object limit and ERF",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atrous",
        description="Dense prediction with dilated (atrous) convolution: models, diagnostics, pipeline.",
    )
    parser.add_argument("--version", action="version", version=f"atrous {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"atrous.commands.{name.replace('-', '_')}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except AtrousError as e:
        print(f"atrous {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"atrous {args.command}: interrupted", file=sys.stderr)
        return 130
