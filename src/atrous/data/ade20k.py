"""`ade20k:ROOT`: the ADE20K scene parsing benchmark (Zhou et al., "Scene Parsing through ADE20K Dataset",
CVPR 2017), as `ADEChallengeData2016`.

Layout: `ROOT/images/<split>/*.jpg` with `ROOT/annotations/<split>/*.png`, splits `training` and
`validation` (which also answer to `train` and `val`); ROOT may be the folder above
`ADEChallengeData2016`. Masks store 0 = "other" and 1..150 = the classes, so `reduce_zero_label` is on by
default (0 -> ignore, k -> k-1: 150 classes, as mmsegmentation trains them); with `reduce_zero_label=0`
there are 151 classes, "other" first.
"""

from __future__ import annotations

from pathlib import Path

from atrous.data.base import Listing, require_split, standard_palette
from atrous.data.classes import paired_folder
from atrous.data.io import IMAGE_SUFFIXES, DataError, check_dir, list_dirs

OPTIONS: dict = {}
REDUCE_ZERO_LABEL = True
SPLIT_ALIASES = {"train": "training", "val": "validation"}
CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
]  # fmt: skip


def _base(root: Path) -> Path:
    check_dir(root, "ADE20K folder")
    for candidate in (root, root / "ADEChallengeData2016"):
        if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
            return candidate
    raise DataError(
        f"ade20k:{root}: no images/ and annotations/ here or in ADEChallengeData2016/: point at that folder"
    )


def splits(root: Path, options: dict | None = None) -> list[str]:
    base = _base(root)
    return [d.name for d in list_dirs(base / "images") if (base / "annotations" / d.name).is_dir()]


def find(root: Path, split: str | None, *, options: dict, labels, skip_bad: bool) -> Listing:
    base = _base(root)
    split = require_split(f"ade20k:{root}", split, splits(root))
    names = CLASSES if labels.convention.reduce_zero_label else ["other", *CLASSES]
    classes, palette = labels.classes(names, standard_palette(len(names)))
    pairs, skipped = paired_folder(
        base / "images" / split,
        base / "annotations" / split,
        image_suffixes=IMAGE_SUFFIXES,
        mask_suffix=".png",
        skip_bad=skip_bad,
    )
    return Listing(
        name=f"ade20k:{root} split {split!r}",
        pairs=pairs,
        skipped=skipped,
        classes=classes,
        palette=palette,
        label_fix="ADE20K masks hold 0 (other) and 1..150: restore the annotation PNG",
        empty=f"no image in {base / 'images' / split} with a mask",
    )
