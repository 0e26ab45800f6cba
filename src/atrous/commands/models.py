"""`atrous models`: list the registered models with a one-line description and the paper each (and their
options)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="show the options (with defaults) of this model")


def run(args: argparse.Namespace) -> int:
    from atrous.models import available, describe, options
    from atrous.models.zoo import MODELS

    if args.name is None:
        names = available()
        width = max(len(n) for n in names)
        for name in names:
            print(f"{name:<{width}}  {describe(name)} ({MODELS[name].paper})")
        return 0
    print(f"{args.name}: {describe(args.name)} ({MODELS[args.name].paper})")  # UnknownModel lists the names
    for key, default in options(args.name).items():
        print(f"  {key}={default!r}")
    return 0
