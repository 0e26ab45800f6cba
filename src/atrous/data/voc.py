"""`voc:ROOT`: PASCAL VOC 2012 segmentation (Everingham et al., "The PASCAL Visual Object Classes
Challenge", IJCV 2010).

Layout: `ROOT/JPEGImages/<id>.jpg`, `ROOT/SegmentationClass/<id>.png` (palette PNGs: the palette index is
the label, 255 = the ignored object borders) and `ROOT/ImageSets/Segmentation/<split>.txt` (one id per
line; train, val, trainval). ROOT may also be the `VOCdevkit` folder or the folder above it.
A CVAT "Segmentation mask 1.1" export has this layout with RGB masks and a `labelmap.txt`:
`voc:EXPORT?palette=labelmap.txt` reads it (its classes are the label map's).
"""

from __future__ import annotations

from pathlib import Path

from atrous.data.base import Listing, pair_up, require_split, standard_palette
from atrous.data.io import SKIP_HINT, DataError, check_dir

CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
PALETTE = standard_palette(len(CLASSES))  # (0,0,0), (128,0,0), (0,128,0), ...


def _resolve(root: Path) -> Path:
    check_dir(root, "VOC folder")
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "ImageSets" / "Segmentation").is_dir():
            return candidate
    raise DataError(
        f"voc:{root}: no ImageSets/Segmentation folder here, in VOC2012/ or VOCdevkit/VOC2012/: point at the "
        "VOC2012 folder"
    )


def splits(root: Path, options: dict | None = None) -> list[str]:
    base = _resolve(root) / "ImageSets" / "Segmentation"
    return sorted(p.stem for p in base.glob("*.txt") if not p.name.startswith("."))


def find(root: Path, split: str | None, *, options: dict, labels, skip_bad: bool) -> Listing:
    base = _resolve(root)
    classes, palette = labels.classes(CLASSES, PALETTE)
    split = require_split(f"voc:{root}", split, splits(root))
    list_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    try:
        ids = [line.strip() for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{list_file}: cannot be read ({e}): restore the VOC split file") from None
    if not ids:
        raise DataError(f"{list_file} lists no image id: the split is empty")
    image_dir = check_dir(base / "JPEGImages", "VOC JPEGImages folder")
    mask_dir = check_dir(base / "SegmentationClass", "VOC SegmentationClass folder")
    # The split file is the list; a listed id whose image or mask is missing is a missing pair.
    images = {i: image_dir / f"{i}.jpg" for i in ids if (image_dir / f"{i}.jpg").is_file()}
    masks = {i: mask_dir / f"{i}.png" for i in ids if (mask_dir / f"{i}.png").is_file()}
    missing = [i for i in ids if i not in images and i not in masks]
    if missing:
        msg = f"{list_file} lists {missing[0]!r} ({len(missing)} id(s) in all) with neither image nor mask"
        if not skip_bad:
            raise DataError(msg + f": restore the files or remove the ids ({SKIP_HINT.lstrip(', ')})")
    pairs, skipped = pair_up(
        images,
        masks,
        skip_bad=skip_bad,
        expected_mask=lambda i: mask_dir / f"{i}.png",
        expected_image=lambda i: str(image_dir / f"{i}.jpg"),
    )
    skipped += [(list_file, f"{list_file}: id {i!r} has neither image nor mask") for i in missing]
    return Listing(
        name=f"voc:{root} split {split!r}",
        pairs=pairs,
        skipped=skipped,
        classes=classes,
        palette=palette,
        label_fix="VOC labels are 0..20 and 255: restore the original SegmentationClass PNG",
        empty=f"no id of {list_file} has both files",
    )
