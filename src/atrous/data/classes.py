"""Class lists of user data (`folder:`, `mmseg:`): a classes file, the caller's `num_classes`, or a scan of
the masks; and the listing of paired image/mask folders that those layouts share.

Classes, in this order of precedence:
1. a palette file given with `?palette=FILE` (CVAT `labelmap.txt`, or `classes.json` with a palette): its
   names (without the first when `reduce_zero_label` is on) and colours;
2. `ROOT/classes.txt` (one class name per line; blank lines and `#` comments skipped) or `ROOT/classes.json`
   (a list of names, or `{"classes": [...], "palette": [[r, g, b], ...]}`): the names, and the palette when
   given (else the VOC colour map). `num_classes`, if also given, must agree;
3. `num_classes` from the caller (the config or `--set data.num_classes=K`): names `class0`, `class1`, ...;
4. otherwise every mask of every split is read once (through the label convention) and K = largest label
   (other than 255) + 1, so that train and val agree. This costs one decode per mask; write a classes
   file to skip it and to name the classes. (`atrous data check` reports a stray label that alone sets K.)
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

from atrous.data.base import pair_up, standard_palette
from atrous.data.io import IGNORE_INDEX, DataError, check_dir, list_files
from atrous.data.labels import LabelConvention, check_palette

# Above this, a scanned class count is refused without a classes file (a 16-bit instance mask, not classes).
MAX_SCANNED_LABEL = 1000


def read_classes(root: Path) -> tuple[list[str], list[tuple[int, int, int]] | None] | None:
    """(names, palette or None) from ROOT/classes.txt or ROOT/classes.json; None when neither exists."""
    txt, js = root / "classes.txt", root / "classes.json"
    if txt.exists() and js.exists():
        raise DataError(f"{root} has both classes.txt and classes.json: keep one")
    palette = None
    if txt.exists():
        try:
            lines = txt.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{txt}: cannot be read ({e}): write one class name per line in UTF-8") from None
        names = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        source = txt
    elif js.exists():
        try:
            data = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            msg = str(e).splitlines()[0]
            raise DataError(f"{js}: not valid JSON ({msg}): write a list of class names") from None
        if isinstance(data, dict):
            unknown = sorted(set(data) - {"classes", "palette"})
            if unknown or "classes" not in data:
                raise DataError(f"{js}: expected keys 'classes' and optionally 'palette', got {sorted(data)}")
            names, palette = data["classes"], data.get("palette")
        else:
            names = data
        source = js
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            raise DataError(f"{js}: 'classes' must be a list of non-empty names")
        names = [n.strip() for n in names]
    else:
        return None
    if not names:
        raise DataError(f"{source}: lists no class: write one class name per line")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{source}: class {dup!r} is listed twice: class names must be unique")
    if len(names) > IGNORE_INDEX:
        raise DataError(
            f"{source}: {len(names)} classes, but label {IGNORE_INDEX} is reserved for ignore: at most 255"
        )
    if palette is not None:
        palette = check_palette(palette, len(names), source)
    return names, palette


def scan_num_classes(
    root: Path,
    mask_dirs: Sequence[Path],
    mask_suffix: str,
    convention: LabelConvention,
    skip_bad: bool,
) -> int:
    """K = largest label over all masks (after `convention`) + 1 (255 = ignore not counted)."""
    largest, seen = -1, 0
    for folder in mask_dirs:
        for path in list_files(folder, (mask_suffix,)).values():
            try:
                mask = convention.read(path)
            except DataError:
                if skip_bad:
                    continue  # the data set itself skips and reports it
                raise
            seen += 1
            labels = mask[mask != IGNORE_INDEX]
            if labels.size:
                if labels.min() < 0:
                    raise DataError(f"{path}: mask holds negative labels: labels are 0..K-1, 255 = ignore")
                largest = max(largest, int(labels.max()))
    if seen == 0:
        where = ", ".join(str(d) for d in mask_dirs) or str(root)
        raise DataError(f"{root}: no {mask_suffix} mask file in {where}: the data set is empty; add masks")
    if largest < 0:
        raise DataError(
            f"{root}: every pixel of all {seen} mask(s) is {IGNORE_INDEX} (= ignore) after "
            f"{convention.describe()}, so there is nothing to learn: if {IGNORE_INDEX} marks a class "
            f"(e.g. 0/255 binary masks), map it with ?map=0:0,255:1"
        )
    if largest > MAX_SCANNED_LABEL:
        raise DataError(
            f"{root}: masks hold labels up to {largest}: write ROOT/classes.txt (one name per class) to confirm"
        )
    return largest + 1


def resolve_classes(
    root: Path,
    *,
    num_classes: int | None,
    palette_names: list[str] | None,
    mask_dirs: Sequence[Path],
    mask_suffix: str,
    convention: LabelConvention,
    skip_bad: bool,
) -> tuple[list[str], list[tuple[int, int, int]], str, str]:
    """(class names, display palette, how to fix a label out of range, where the classes came from: "file",
    "num_classes" or "scan") by the module docstring's order."""
    declared = read_classes(root)
    if palette_names is not None:
        names = palette_names[1:] if convention.reduce_zero_label else palette_names
        colours = list(convention.palette or ())
        colours = colours[1:] if convention.reduce_zero_label else colours
        declared = (names, colours[: len(names)])
        source = "the palette file"
    else:
        source = f"{root}/classes.txt"
    if declared is not None:
        names, palette = declared
        if num_classes is not None and num_classes != len(names):
            raise DataError(
                f"{root}: the classes file lists {len(names)} classes but num_classes={num_classes}: make them agree"
            )
        label_fix = f"fix the mask, or list all classes in {source}"
        origin = "file"
    else:
        origin = "num_classes" if num_classes is not None else "scan"
        if num_classes is None:
            num_classes = scan_num_classes(
                root, [d for d in mask_dirs if d.is_dir()], mask_suffix, convention, skip_bad
            )
        names, palette = [f"class{i}" for i in range(num_classes)], None
        label_fix = "fix the mask, or raise num_classes (or list the classes in ROOT/classes.txt)"
    return names, list(palette) if palette else standard_palette(len(names)), label_fix, origin


def paired_folder(
    image_dir: Path,
    mask_dir: Path,
    *,
    image_suffixes: Sequence[str],
    mask_suffix: str,
    skip_bad: bool,
) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """Pairs `image_dir/<stem><image suffix>` with `mask_dir/<stem><mask_suffix>` (JPEG masks are named and
    ignored: JPEG changes labels). Returns (pairs, skipped)."""
    check_dir(image_dir, "images folder")
    check_dir(mask_dir, "masks folder")
    images = list_files(image_dir, image_suffixes)
    masks = list_files(mask_dir, (mask_suffix,))
    if mask_suffix.lower().endswith(".png"):
        lossy = mask_suffix[: -len(".png")]
        for stem, path in list_files(mask_dir, (lossy + ".jpg", lossy + ".jpeg")).items():
            if stem not in masks:
                warnings.warn(
                    f"{path}: masks must be lossless PNG (JPEG changes labels); this file is ignored",
                    stacklevel=4,
                )
    suffixes = ",".join(s.lstrip(".") for s in image_suffixes)
    return pair_up(
        images,
        masks,
        skip_bad=skip_bad,
        expected_mask=lambda stem: mask_dir / f"{stem}{mask_suffix}",
        expected_image=lambda stem: f"{image_dir}/{stem}.{{{suffixes}}}",
    )
