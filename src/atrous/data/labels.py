"""Label conventions: how the values stored in a data set's mask files become class indices, and back.

Masks in the wild store classes in many ways: 0..K-1 with 255 = ignore (VOC, atrous), 0/255 binary
masks, 1-based labels with 0 = "other" (ADE20K, Oxford-IIIT Pet trimaps), a void value (CamVid's 11),
Cityscapes label ids, RGB colours (CVAT exports). A `LabelConvention` says which, in three steps applied
in this order to every mask pixel:

1. colour masks (`palette`): the colour's position in the palette file is the value (an unknown colour
   is an error naming it and the file);
2. the value map (`values`, e.g. `map=0:0,255:1`; `ignore=11` is `map=11:255`): listed values become the
   given class (255 = ignore); unlisted values are kept (or, with `unlisted_ignored`, become 255);
3. `reduce_zero_label` (mmsegmentation's name): 0 -> 255 (ignore), k -> k-1; 255 stays 255.

`encode_prediction(labels, convention)` inverts the three steps, so that `atrous predict` writes masks in
the data's own convention: each class goes back to the value the map names for it (else the smallest
stored value that decodes to it), in the palette's colour for colour masks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atrous.data.io import IGNORE_INDEX, DataError, read_colour_mask, read_mask

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class LabelConvention:
    """The three decoding steps of the module docstring. JSON-able through `to_dict`/`from_dict` (T1 stores
    it in checkpoints as `label_convention`, so `atrous predict` can write predictions back)."""

    values: Mapping[int, int] = field(default_factory=dict)
    unlisted_ignored: bool = False
    reduce_zero_label: bool = False
    palette: Sequence[Colour] | None = None

    @property
    def identity(self) -> bool:
        return (
            not self.values and not self.unlisted_ignored and not self.reduce_zero_label and not self.palette
        )

    def to_dict(self) -> dict:
        return {
            "values": {str(k): int(v) for k, v in sorted(self.values.items())},
            "unlisted_ignored": self.unlisted_ignored,
            "reduce_zero_label": self.reduce_zero_label,
            "palette": None if self.palette is None else [list(c) for c in self.palette],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> LabelConvention:
        palette = data.get("palette")
        return cls(
            values={int(k): int(v) for k, v in (data.get("values") or {}).items()},
            unlisted_ignored=bool(data.get("unlisted_ignored", False)),
            reduce_zero_label=bool(data.get("reduce_zero_label", False)),
            palette=None if palette is None else [tuple(int(v) for v in c) for c in palette],
        )

    def then(self, *, values: Mapping[int, int], reduce_zero_label: bool, palette) -> LabelConvention:
        """This convention followed by a user's options: value maps compose (the user's map reads the
        values this one produces), `reduce_zero_label` and `palette` are set by the user."""
        composed = {raw: values.get(v, v) for raw, v in self.values.items()}
        if not self.unlisted_ignored:
            composed.update({raw: v for raw, v in values.items() if raw not in self.values})
        return LabelConvention(
            values=composed,
            unlisted_ignored=self.unlisted_ignored,
            reduce_zero_label=reduce_zero_label,
            palette=palette if palette is not None else self.palette,
        )

    def lut(self, size: int) -> np.ndarray:
        """Steps 2 and 3 as a lookup table over stored values 0..size-1 (int64)."""
        table = np.full(size, IGNORE_INDEX, np.int64) if self.unlisted_ignored else np.arange(size)
        for raw, value in self.values.items():
            if raw < size:
                table[raw] = value
        if self.reduce_zero_label:
            table = np.where(table == 0, IGNORE_INDEX, np.where(table == IGNORE_INDEX, table, table - 1))
        return table

    def read(self, path: Path) -> np.ndarray:
        """(H, W) int64 class indices (255 = ignore) of the mask file `path` under this convention."""
        if self.palette is not None:
            raw = colours_to_index(read_colour_mask(path), self.palette, path)
        else:
            raw = read_mask(path)
        if self.identity:
            return raw
        if raw.size and raw.min() < 0:
            raise DataError(f"{path}: mask holds negative values: store labels as 0..K-1, 255 = ignore")
        size = max(256, int(raw.max(initial=0)) + 1, max(self.values, default=0) + 1)
        return self.lut(size)[raw]

    def describe(self) -> str:
        """A short text for messages, e.g. 'map=0:0,255:1 reduce_zero_label=1'."""
        parts = []
        if self.palette is not None:
            parts.append(f"palette of {len(self.palette)} colours")
        if self.values:
            parts.append("map=" + ",".join(f"{k}:{v}" for k, v in sorted(self.values.items())))
        if self.unlisted_ignored:
            parts.append("other values ignored")
        if self.reduce_zero_label:
            parts.append("reduce_zero_label=1")
        return " ".join(parts) or "values as stored"


def colours_to_index(rgb: np.ndarray, palette: Sequence[Colour], path: Path) -> np.ndarray:
    """(H, W, 3) uint8 colours -> (H, W) int64 palette positions; a colour outside the palette is an error."""
    keys = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    codes = np.array([(r << 16) | (g << 8) | b for r, g, b in palette], np.int64)
    order = np.argsort(codes)
    pos = np.searchsorted(codes[order], keys).clip(0, len(codes) - 1)
    found = codes[order][pos] == keys
    if not found.all():
        y, x = np.argwhere(~found)[0]
        colour = tuple(int(v) for v in rgb[y, x])
        raise DataError(
            f"{path}: colour {colour} at (x={x}, y={y}) is not in the palette file: add it there, or fix the mask"
        )
    return order[pos].astype(np.int64)


def encode_prediction(labels: np.ndarray, convention: LabelConvention | Mapping | None) -> np.ndarray:
    """Class indices (H, W) -> the data's own mask values: the inverse of `LabelConvention`'s steps.

    Each class becomes the stored value the value map names for it (the smallest, if several), else the
    smallest unlisted value that decodes to it (e.g. with `map=255:1`, class 1 -> 255, not 1; with
    `reduce_zero_label`, k -> k+1). Returns uint8 (uint16 when a value exceeds 255) `(H, W)`
    values, or for a colour convention uint8 `(H, W, 3)` colours of the palette. A class no stored value
    decodes to is an error.
    """
    if convention is None:
        convention = LabelConvention()
    elif not isinstance(convention, LabelConvention):
        convention = LabelConvention.from_dict(convention)
    labels = np.asarray(labels, dtype=np.int64)
    size = max(256, max(convention.values, default=0) + 1)
    if convention.palette is not None:
        size = len(convention.palette)
    table = convention.lut(size)  # stored value -> class
    classes = np.unique(labels)
    inverse = np.zeros(int(classes.max(initial=0)) + 1, np.int64)
    for c in classes:
        sources = np.flatnonzero(table == c)
        if sources.size == 0:
            raise DataError(
                f"class {int(c)} has no stored value under the data's convention ({convention.describe()}): "
                "cannot write it back"
            )
        listed = [v for v in sources.tolist() if v in convention.values]
        inverse[c] = min(listed) if listed else sources[0]
    raw = inverse[labels]
    if convention.palette is not None:
        return np.asarray(convention.palette, np.uint8)[raw]
    return raw.astype(np.uint8 if raw.max(initial=0) <= 255 else np.uint16)


# ---- option values ------------------------------------------------------------------------------------------
def parse_value_map(text, source: str) -> dict[int, int]:
    """`"0:0,255:1"` -> {0: 0, 255: 1}: stored value -> class (255 = ignore)."""
    out: dict[int, int] = {}
    for item in filter(None, str(text).split(",")):
        raw, sep, value = item.partition(":")
        try:
            key, target = int(raw), int(value)
        except ValueError:
            key = target = -1
        if not sep or key < 0 or not 0 <= target <= IGNORE_INDEX:
            raise DataError(
                f"{source}: map item {item!r} must be VALUE:CLASS with VALUE >= 0 and CLASS 0..255 "
                "(255 = ignore), e.g. map=0:0,255:1"
            )
        if key in out:
            raise DataError(f"{source}: map lists the value {key} twice: give each stored value once")
        out[key] = target
    if not out:
        raise DataError(f"{source}: map is empty: give VALUE:CLASS pairs, e.g. map=0:0,255:1")
    return out


def parse_ignore(text, source: str) -> dict[int, int]:
    """`"11"` or `"11,12"` -> {11: 255, 12: 255}."""
    try:
        values = [int(v) for v in str(text).split(",") if v != ""]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise DataError(f"{source}: ignore={text!r} must list stored values, e.g. ignore=11 or ignore=0,11")
    return dict.fromkeys(values, IGNORE_INDEX)


def check_palette(colours, count: int, source, *, unique: bool = False) -> list[Colour]:
    """`colours` as `count` (r, g, b) tuples of 0..255, or a one-line DataError naming `source`; with
    `unique` (a palette that decodes colour masks) no colour may stand for two classes."""
    ok = isinstance(colours, (list, tuple)) and len(colours) == count
    ok = ok and all(
        isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
        for c in colours
    )
    if not ok:
        raise DataError(f"{source}: the palette must hold one [r, g, b] (0..255) per class ({count})")
    out = [tuple(int(v) for v in c) for c in colours]
    if unique and len(set(out)) != len(out):
        dup = next(c for c in out if out.count(c) > 1)
        raise DataError(f"{source}: colour {dup} is listed twice: each class needs its own colour")
    return out


def read_palette_file(path: Path) -> tuple[list[str], list[Colour]]:
    """(names, colours) from a CVAT `labelmap.txt` (`name:r,g,b:parts:actions` per line, `#` comments) or a
    `classes.json` (`{"classes": [...], "palette": [[r, g, b], ...]}`); a colour's line is its value."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: palette file cannot be read ({e}): check palette=") from None
    names: list[str] = []
    colours: list[Colour] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
            names, colours = list(data["classes"]), data["palette"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(
                f"{path}: a JSON palette needs 'classes' and 'palette' ({type(e).__name__}): "
                'write {"classes": [...], "palette": [[r, g, b], ...]}'
            ) from None
    else:
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, rest = line.partition(":")
            try:
                colour = tuple(int(v) for v in rest.split(":")[0].split(","))
            except ValueError:
                colour = ()
            if len(colour) != 3:
                raise DataError(f"{path}:{number}: expected 'name:r,g,b::' (CVAT labelmap.txt), got {line!r}")
            names.append(name.strip())
            colours.append(colour)
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise DataError(f"{path}: needs one non-empty name and one [r, g, b] colour per class")
    colours = check_palette(colours, len(names), path, unique=True)
    return [n.strip() for n in names], colours
