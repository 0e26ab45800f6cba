"""The data spec that names a data set everywhere in atrous: `KIND:PATH?key=value&key=value`.

Grammar. `KIND` is a layout (`folder`, `voc`, `cityscapes`, `synthetic`, `mmseg`, `ade20k`, `camvid`);
`PATH` a folder (`~` expanded; for `synthetic` a task name); options follow the LAST `?` whose text holds a
`=`, as `key=value` pairs joined by `&`. A `?` not followed by options is part of the path
(`folder:odd?name` is the folder `odd?name`), and so is all the text when it names an existing file or
folder; otherwise a path whose own `?` is followed by text with `=` is written with one more `?` at the end
(`folder:a?b=c?` is the folder `a?b=c`, without options; `folder:a?b=c?map=255:1` with options).

Options every file layout takes (the label options are applied in the order of `atrous.data.labels`):
- `palette=FILE`   colour masks, decoded with a CVAT `labelmap.txt` or a `classes.json` palette (relative
                   to the data root); its names become the classes.
- `map=V:C,V:C`    stored value V -> class C (255 = ignore); unlisted values are kept. `map=0:0,255:1`
                   reads 0/255 binary masks as classes 0 and 1.
- `ignore=V,V`     stored values that mean "ignore" (`map=V:255`).
- `reduce_zero_label=1`  0 -> ignore, k -> k-1 (ADE20K, 1-based masks such as Oxford-IIIT Pet trimaps).
- `intensity=auto|full|minmax|percentile`  the 16-bit image rule of `atrous.data.io`.
Each layout adds its own (e.g. `mmseg:`'s `img_dir`, `ann_dir`, `img_suffix`, `seg_map_suffix`).

This module parses and builds from a plain dict of layouts that `atrous.data` assembles (no registry):
each layout module defines `OPTIONS` (its own options and defaults), `REDUCE_ZERO_LABEL` (the default),
`SPLIT_ALIASES`, `splits(root, options)` and `find(root, split, *, options, labels, skip_bad)` (plus
`num_classes` for layouts whose classes come from the user's files, `USER_CLASSES = True`), which returns a
`base.Listing` (pairs and classes) that this module turns into the data set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from atrous.data.io import IGNORE_INDEX, DataError, check_intensity
from atrous.data.labels import LabelConvention, parse_ignore, parse_value_map, read_palette_file

# Options every file layout takes: the label options and the 16-bit image rule.
COMMON_OPTIONS = ("palette", "map", "ignore", "reduce_zero_label", "intensity")
# Options kept as the text written (a map such as 255:1 would read as a base-60 number in YAML).
_TEXT_OPTIONS = (
    "palette",
    "map",
    "ignore",
    "intensity",
    "img_dir",
    "ann_dir",
    "img_suffix",
    "seg_map_suffix",
)


def parse_spec(spec: str) -> tuple[str, str, dict]:
    """`KIND:PATH?key=value&...` -> (kind, path or name, options); values parsed like `--opt` (numbers,
    booleans), except the text options (palette, map, ignore, intensity, folder names and suffixes)."""
    from atrous.config import parse_value

    if not isinstance(spec, str):
        raise DataError(f"data spec must be a string like folder:PATH, got {spec!r}")
    kind, sep, target = spec.partition(":")
    if not sep:
        hint = f" (to read the folder {spec}, write folder:{spec})" if Path(spec).is_dir() else ""
        raise DataError(f"data spec {spec!r} has no kind: write KIND:PATH, e.g. folder:PATH{hint}")
    cut = target.rfind("?")
    query = ""
    if kind != "synthetic" and os.path.exists(os.path.expanduser(target)):
        pass  # an existing file or folder is the path, `?` and all
    elif cut >= 0 and "=" in target[cut + 1 :]:
        target, query = target[:cut], target[cut + 1 :]
    elif target.endswith("?"):
        target = target[:-1]
    if not target:
        raise DataError(
            f"data spec {spec!r} names no {'data set' if kind == 'synthetic' else 'path'} after the colon"
        )
    options: dict = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or not key.isidentifier():
            raise DataError(f"data spec {spec!r}: option {item!r} must be key=value (joined with &)")
        if key in options:
            raise DataError(f"data spec {spec!r}: option {key!r} is given twice: give it once")
        options[key] = value if key in _TEXT_OPTIONS else parse_value(value)
    if kind != "synthetic":
        target = os.path.expanduser(target)
    return kind, target, options


def intensity_of(spec: str) -> str:
    """The 16-bit image rule a spec names with `?intensity=` ("auto" when none), checked."""
    rule = parse_spec(spec)[2].get("intensity", "auto")
    return check_intensity(str(rule), f"data spec {spec!r}: intensity")


@dataclass(frozen=True)
class Labels:
    """What the label options of a spec resolve to: the convention and, with a palette file, its names."""

    convention: LabelConvention
    palette_names: list[str] | None = None

    def classes(self, names, palette) -> tuple[list, list]:
        """A fixed-class layout's (names, palette), or the palette file's when one is given."""
        if self.palette_names is None:
            return list(names), list(palette)
        reduce = self.convention.reduce_zero_label
        colours = list(self.convention.palette or ())
        return (self.palette_names[1:], colours[1:]) if reduce else (self.palette_names, colours)


def _flag(value, key: str, spec: str) -> bool:
    if value in (0, 1, True, False):
        return bool(value)
    raise DataError(f"data spec {spec!r}: {key}={value!r} must be 0 or 1")


def _labels(spec: str, root: Path, module: ModuleType, options: dict) -> Labels:
    """The convention of `module`'s layout followed by the spec's label options."""
    values: dict[int, int] = {}
    if "map" in options:
        values.update(parse_value_map(options["map"], f"data spec {spec!r}"))
    if "ignore" in options:
        for value, target in parse_ignore(options["ignore"], f"data spec {spec!r}").items():
            if value in values:
                raise DataError(
                    f"data spec {spec!r}: value {value} is in both map= and ignore=: give it once"
                )
            values[value] = target
    reduce = getattr(module, "REDUCE_ZERO_LABEL", False)
    if "reduce_zero_label" in options:
        reduce = _flag(options["reduce_zero_label"], "reduce_zero_label", spec)
    names = colours = None
    if "palette" in options:
        path = Path(os.path.expanduser(options["palette"]))
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise DataError(f"data spec {spec!r}: palette file {path} does not exist: give palette=FILE")
        names, colours = read_palette_file(path)
    base = getattr(module, "CONVENTION", LabelConvention())
    return Labels(base.then(values=values, reduce_zero_label=reduce, palette=colours), names)


def _layout(layouts: Mapping[str, ModuleType], spec: str) -> tuple[ModuleType, Path, dict, dict]:
    """(module, root, layout options, label options) of a file spec; unknown options are refused."""
    kind, target, options = parse_spec(spec)
    if kind not in layouts:
        raise DataError(f"data spec {spec!r}: unknown kind {kind!r}: valid kinds are {', '.join(layouts)}")
    module = layouts[kind]
    own = dict(getattr(module, "OPTIONS", {}))
    unknown = sorted(set(options) - set(own) - set(COMMON_OPTIONS))
    if unknown:
        valid = ", ".join([*own, *COMMON_OPTIONS])
        raise DataError(
            f"data spec {spec!r}: {kind}: has no option {unknown[0]!r}: valid options are {valid}"
        )
    own.update({k: v for k, v in options.items() if k in own})
    return module, Path(target), own, {k: v for k, v in options.items() if k in COMMON_OPTIONS}


def resolve_split(module: ModuleType, root: Path, options: dict, split: str | None) -> str | None:
    """`split` as the layout names it (ADE20K's `val` is `validation`)."""
    aliases = getattr(module, "SPLIT_ALIASES", {})
    if split in aliases and split not in module.splits(root, options):
        return aliases[split]
    return split


def available_splits_in(layouts: Mapping[str, ModuleType], spec: str) -> list[str]:
    """The splits a data set offers (e.g. ["train", "val"]); [] for a folder without split folders."""
    kind = parse_spec(spec)[0]
    if kind == "synthetic":
        return list(layouts["synthetic"].SPLITS)
    module, root, own, _ = _layout(layouts, spec)
    return module.splits(root, own)


def build_from(
    layouts: Mapping[str, ModuleType],
    spec: str,
    split: str | None = None,
    *,
    transform: Callable | None = None,
    skip_bad: bool = False,
    num_classes: int | None = None,
    ignore_index: int = IGNORE_INDEX,
):
    """The data set named by `spec` from `layouts` (see `atrous.data.build_dataset`)."""
    kind, target, options = parse_spec(spec)
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise DataError(f"num_classes must be a positive integer, got {num_classes!r}")
    if kind == "synthetic":  # generated, not read: its own options, no label options
        dataset = layouts["synthetic"].build(target, split, transform=transform, **options)
    else:
        module, root, own, common = _layout(layouts, spec)
        intensity = intensity_of(spec)
        labels = _labels(spec, root, module, common)
        listing = module.find(
            root,
            resolve_split(module, root, own, split),
            options=own,
            labels=labels,
            skip_bad=skip_bad,
            # Layouts with a fixed class list do not take it: the check below covers them.
            **({"num_classes": num_classes} if getattr(module, "USER_CLASSES", False) else {}),
        )
        dataset = listing.dataset(
            convention=labels.convention,
            transform=transform,
            skip_bad=skip_bad,
            intensity=intensity,
            ignore_index=ignore_index,
        )
    if num_classes is not None and dataset.num_classes != num_classes:
        raise DataError(
            f"data {spec!r} has {dataset.num_classes} classes but num_classes={num_classes} was asked for: "
            "drop num_classes or fix it"
        )
    return dataset
