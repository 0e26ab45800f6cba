"""`folder:ROOT`: the user's own images and masks.

Layout: `ROOT/<split>/images/*` with `ROOT/<split>/masks/*.png` matched by file stem, or `ROOT/images` +
`ROOT/masks` without splits. Images: any of `atrous.data.io.IMAGE_SUFFIXES` (PNG, JPEG, TIFF, BMP, WEBP).
Masks hold class indices (8-bit grey or palette PNG; 16-bit is read too), 255 = ignore; other conventions
through the label options (`map=`, `ignore=`, `reduce_zero_label=`, `palette=`). Option `mask_suffix`
(default `.png`; `.tif` for TIFF masks). Classes: see `atrous.data.classes`.
"""

from __future__ import annotations

from pathlib import Path

from atrous.data.base import Listing, require_split
from atrous.data.classes import paired_folder, resolve_classes
from atrous.data.io import IMAGE_SUFFIXES, DataError, check_dir, list_dirs

# The class list comes from the user's files (or num_classes, or a scan): `find` takes `num_classes`.
USER_CLASSES = True
OPTIONS = {"mask_suffix": ".png"}


def splits(root: Path, options: dict | None = None) -> list[str]:
    """Split folders of ROOT (those with an images/ folder); [] for the flat layout."""
    check_dir(root, "data folder")
    if (root / "images").is_dir():
        return []
    return [d.name for d in list_dirs(root) if (d / "images").is_dir()]


def find(
    root: Path, split: str | None, *, options: dict, labels, skip_bad: bool, num_classes: int | None
) -> Listing:
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
        base = root / require_split(f"folder:{root}", split, available)
    image_dir = check_dir(base / "images", "images folder")
    mask_dir = check_dir(base / "masks", "masks folder")
    mask_suffix = str(options["mask_suffix"])
    names, palette, label_fix, classes_from = resolve_classes(
        root,
        num_classes=num_classes,
        palette_names=labels.palette_names,
        mask_dirs=[root / s / "masks" for s in available] if available else [mask_dir],
        mask_suffix=mask_suffix,
        convention=labels.convention,
        skip_bad=skip_bad,
    )
    pairs, skipped = paired_folder(
        image_dir, mask_dir, image_suffixes=IMAGE_SUFFIXES, mask_suffix=mask_suffix, skip_bad=skip_bad
    )
    return Listing(
        name=f"folder:{root}" + (f" split {split!r}" if split is not None else ""),
        pairs=pairs,
        skipped=skipped,
        classes=names,
        palette=palette,
        label_fix=label_fix,
        empty=f"{image_dir} holds no image with a mask in {mask_dir}",
        classes_from=classes_from,
    )


__all__ = ["OPTIONS", "find", "splits"]
