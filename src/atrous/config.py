"""Configuration: `key=value` parsing shared by `--opt` and `--set`.

Values are read as YAML scalars (`3` -> int, `0.5` -> float, `true` -> bool, `null` -> None, anything else a
string); a value with a comma outside brackets is a tuple of such scalars (`rates=1,2,5` -> (1, 2, 5)), and
a bracketed YAML list (`rates=[1,2,5]`) is a tuple too.
"""

from __future__ import annotations

from typing import Any

import yaml

from atrous.errors import AtrousError


def parse_value(text: str) -> Any:
    """Parse one option value (see the module docstring)."""
    text = text.strip()
    if "," in text and not text.startswith(("[", "{", "'", '"')):
        return tuple(parse_value(part) for part in text.split(","))
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return text
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        raise AtrousError(f"value {text!r} is a mapping: write key=value, key=1,2,3 or key=[1,2,3]")
    if value is not None and not isinstance(value, (int, float, str, bool)):
        return text  # e.g. a date: keep what the user wrote
    return value


def parse_kv(item: str, flag: str = "--opt") -> tuple[str, Any]:
    """Parse `key=value` (as given to `flag`) into (key, parsed value)."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise AtrousError(f"{flag} expects key=value, got {item!r}")
    if not all(part.isidentifier() for part in key.split(".")):
        raise AtrousError(f"{flag} {item!r}: {key!r} is not a valid key (letters, digits, _ and dots)")
    return key, parse_value(value)


def parse_kv_list(items: list[str] | None, flag: str = "--opt") -> dict[str, Any]:
    """Parse repeated `key=value` flags into a dict; a key given twice keeps the last value."""
    return dict(parse_kv(item, flag) for item in items or [])
