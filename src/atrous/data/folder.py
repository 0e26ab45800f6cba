"""`folder:ROOT`: the user's own images and masks.

Layout: `ROOT/<split>/images/*.{png,jpg,jpeg}` with `ROOT/<split>/masks/*.png` matched by file stem, or
`ROOT/images` + `ROOT/masks` without splits. Masks hold class indices (8-bit grey or palette PNG; 16-bit is
read too), 255 = ignore.

Classes, in this order of precedence:
1. `ROOT/classes.txt` (one class name per line; blank lines and `#` comments skipped) or `ROOT/classes.json`
   (a list of names, or `{"classes": [...], "palette": [[r, g, b], ...]}`): the names, and the palette when
   given (else the VOC colour map). `num_classes`, if also given, must agree.
2. `num_classes` from the caller (the config or `--set data.num_classes=K`): names `class0`, `class1`, ...
3. Otherwise every mask of every split is read once and K = largest label (other than 255) + 1, so that
   train and val agree. This costs one decode per mask; write a classes file to skip it and to name the
   classes.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

from atrous.data.datasets import (
    IGNORE_INDEX,
    IMAGE_SUFFIXES,
    DataError,
    SegmentationDataset,
    check_dir,
    list_dirs,
    list_files,
    pair_up,
    read_mask,
    standard_palette,
)


def splits(root: Path) -> list[str]:
    """Split folders of ROOT (those with an images/ folder); [] for the flat layout."""
    check_dir(root, "data folder")
    if (root / "images").is_dir():
        return []
    return [d.name for d in list_dirs(root) if (d / "images").is_dir()]


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
        ok = isinstance(palette, list) and len(palette) == len(names)
        ok = ok and all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in palette
        )
        if not ok:
            raise DataError(f"{source}: 'palette' must hold one [r, g, b] (0..255) per class ({len(names)})")
        palette = [tuple(c) for c in palette]
    return names, palette


def _scan_num_classes(root: Path, mask_dirs: list[Path], skip_bad: bool) -> int:
    """K = largest label over all masks + 1 (255 = ignore not counted)."""
    largest = -1
    for folder in mask_dirs:
        for path in list_files(folder, (".png",)).values():
            try:
                mask = read_mask(path)
            except DataError:
                if skip_bad:
                    continue  # the data set itself skips and reports it
                raise
            labels = mask[mask != IGNORE_INDEX]
            if labels.size:
                if labels.min() < 0:
                    raise DataError(f"{path}: mask holds negative labels: labels are 0..K-1, 255 = ignore")
                largest = max(largest, int(labels.max()))
    if largest < 0:
        raise DataError(f"{root}: no mask holds a label other than {IGNORE_INDEX}: check the masks")
    if largest > 1000:
        raise DataError(
            f"{root}: masks hold labels up to {largest}: write ROOT/classes.txt (one name per class) to confirm"
        )
    return largest + 1


def build(
    root: Path,
    split: str | None,
    *,
    transform: Callable | None = None,
    skip_bad: bool = False,
    num_classes: int | None = None,
) -> SegmentationDataset:
    available = splits(root)
    if not available and not (root / "images").is_dir():
        raise DataError(
            f"folder:{root} has neither images/ nor <split>/images/: lay it out as ROOT/images + "
            "ROOT/masks or ROOT/<split>/images + ROOT/<split>/masks"
        )
    if split is None:
        if available:
            raise DataError(
                f"folder:{root} has splits {', '.join(available)}: choose one (--split, or split=...)"
            )
        base = root
    else:
        if not available:
            raise DataError(
                f"folder:{root} has no split folders (it has images/ and masks/ directly): leave the split "
                f"out, or move the files to {root}/{split}/images and {root}/{split}/masks"
            )
        if split not in available:
            raise DataError(f"folder:{root} has no split {split!r}: choose one of {', '.join(available)}")
        base = root / split
    image_dir = check_dir(base / "images", "images folder")
    mask_dir = check_dir(base / "masks", "masks folder")

    declared = read_classes(root)
    if declared is not None:
        names, palette = declared
        if num_classes is not None and num_classes != len(names):
            raise DataError(
                f"{root}: the classes file lists {len(names)} classes but num_classes={num_classes}: make them agree"
            )
        label_fix = f"fix the mask, or list all classes in {root}/classes.txt"
    else:
        if num_classes is None:
            mask_dirs = [root / s / "masks" for s in available] if available else [mask_dir]
            num_classes = _scan_num_classes(root, [d for d in mask_dirs if d.is_dir()], skip_bad)
        names, palette = [f"class{i}" for i in range(num_classes)], None
        label_fix = "fix the mask, or raise num_classes (or list the classes in ROOT/classes.txt)"

    images = list_files(image_dir, IMAGE_SUFFIXES)
    masks = list_files(mask_dir, (".png",))
    for stem, path in list_files(mask_dir, (".jpg", ".jpeg")).items():
        if stem not in masks:
            warnings.warn(
                f"{path}: masks must be lossless PNG (JPEG changes labels); this file is ignored",
                stacklevel=3,
            )
    pairs, skipped = pair_up(
        images,
        masks,
        skip_bad=skip_bad,
        expected_mask=lambda stem: mask_dir / f"{stem}.png",
        expected_image=lambda stem: f"{image_dir}/{stem}.{{png,jpg,jpeg}}",
    )
    name = f"folder:{root}" + (f" split {split!r}" if split is not None else "")
    if not pairs and not skipped:
        raise DataError(
            f"{name} is empty: {image_dir} holds no .png/.jpg/.jpeg image with a mask in {mask_dir}"
        )
    return SegmentationDataset(
        name=name,
        pairs=pairs,
        classes=names,
        palette=palette if palette is not None else standard_palette(len(names)),
        transform=transform,
        skip_bad=skip_bad,
        skipped=skipped,
        label_fix=label_fix,
    )


__all__ = ["build", "read_classes", "splits"]
