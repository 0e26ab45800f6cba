"""Shared pieces of the diagnostics commands (`atrous rf / grid / hdc / erf / objects`): model arguments,
tables, JSON and the coverage figure. Standard library only at top level (matplotlib, torch and the
library are imported inside the functions), as the command modules."""

from __future__ import annotations

import argparse
import json
import math

from atrous.errors import AtrousError


def add_model_arguments(
    parser: argparse.ArgumentParser,
    *,
    model_required: bool = True,
    model_flag: str | None = None,
    size: tuple[int, int] = (512, 512),
) -> None:
    """MODEL (positional; optional unless `model_required`) or, with `model_flag` (its help text), a
    `--model NAME` option; then --opt, --num-classes and --size (default `size`)."""
    if model_flag is not None:
        parser.add_argument("--model", help=model_flag)
    else:
        parser.add_argument(
            "model",
            nargs=None if model_required else "?",
            help="a registered model name (see `atrous models`)",
        )
    parser.add_argument(
        "--opt", action="append", default=[], metavar="KEY=VALUE", help="model option, e.g. output_stride=8"
    )
    parser.add_argument("--num-classes", type=int, default=21, help="number of classes (default 21)")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=size,
        metavar=("H", "W"),
        help=f"input size (default {size[0]} {size[1]})",
    )


def build_model(name: str, options: list[str], num_classes: int):
    """`atrous.models.build` with `--opt` options (its errors are already one-line `ModelError`s)."""
    from atrous import models
    from atrous.config import parse_kv_list

    return models.build(name, num_classes, **parse_kv_list(options))


def check_outputs(**paths) -> None:
    """Stop in one line, before any expensive work, when an output cannot be written (`_io.check_writable`).

    Keywords are the flags (`json="out/rf.json"` for `--json`); None means the flag was not given.
    """
    from atrous._io import check_writable

    for flag, path in paths.items():
        if path is not None:
            check_writable(path, what=f"--{flag}")


def check_size(size) -> tuple[int, int]:
    h, w = size
    if h < 1 or w < 1:
        raise AtrousError(f"--size {h} {w}: both sides must be positive, e.g. --size 512 512")
    return h, w


def write_json(path, payload) -> None:
    from atrous._io import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}")


def table(rows: list[list], headers: list[str]) -> str:
    """A plain left-aligned text table."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def pair(v) -> str:
    if v is None:
        return "-"
    a, b = v
    fmt = lambda x: f"{x:g}" if isinstance(x, float) else str(x)  # noqa: E731
    return fmt(a) if a == b else f"{fmt(a)}x{fmt(b)}"


def parse_rates(text: str) -> tuple[int, ...]:
    try:
        rates = tuple(int(p) for p in text.replace(" ", "").split(",") if p)
    except ValueError:
        raise AtrousError(f"rates {text!r}: write integers separated by commas, e.g. 1,2,5") from None
    if not rates or min(rates) < 1:
        raise AtrousError(f"rates {text!r}: give one or more integers >= 1, e.g. 1,2,5")
    return rates


def fmt_float(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and (math.isinf(v) or abs(v) >= 1e5):
        return f"{v:.3g}"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)
