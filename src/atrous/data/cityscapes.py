"""`cityscapes:ROOT`: Cityscapes fine annotations (Cordts et al., "The Cityscapes Dataset for Semantic Urban
Scene Understanding", CVPR 2016).

Layout: `ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png` with
`ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png`. The 34 label ids are mapped to the
19 evaluation classes (the `trainId`s of cityscapesScripts' `labels.py`); every other id becomes 255 and
is ignored, as in the benchmark.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atrous.data.base import Listing, pair_up, require_split
from atrous.data.io import IGNORE_INDEX, check_dir, list_dirs, list_files
from atrous.data.labels import LabelConvention

# (name, labelId, colour) of the 19 evaluated classes, in trainId order (cityscapesScripts labels.py).
_TRAIN_CLASSES = [
    ("road", 7, (128, 64, 128)),
    ("sidewalk", 8, (244, 35, 232)),
    ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)),
    ("fence", 13, (190, 153, 153)),
    ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)),
    ("traffic sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)),
    ("sky", 23, (70, 130, 180)),
    ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)),
    ("car", 26, (0, 0, 142)),
    ("truck", 27, (0, 0, 70)),
    ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)),
    ("motorcycle", 32, (0, 0, 230)),
    ("bicycle", 33, (119, 11, 32)),
]
CLASSES = [name for name, _, _ in _TRAIN_CLASSES]
PALETTE = [colour for _, _, colour in _TRAIN_CLASSES]
# labelId -> trainId lookup table over all 8-bit values; unlisted ids -> 255 (ignore).
LABEL_TO_TRAIN = np.full(256, IGNORE_INDEX, dtype=np.int64)
for _train_id, (_, _label_id, _) in enumerate(_TRAIN_CLASSES):
    LABEL_TO_TRAIN[_label_id] = _train_id
# The same table as the data set's label convention (written back by `atrous predict`).
CONVENTION = LabelConvention(
    values={label_id: train_id for train_id, (_, label_id, _) in enumerate(_TRAIN_CLASSES)},
    unlisted_ignored=True,
)

_IMAGE_SUFFIX = "_leftImg8bit"
_MASK_SUFFIX = "_gtFine_labelIds"


def splits(root: Path, options: dict | None = None) -> list[str]:
    check_dir(root, "Cityscapes folder")
    images = check_dir(root / "leftImg8bit", "Cityscapes leftImg8bit folder")
    return [d.name for d in list_dirs(images) if (root / "gtFine" / d.name).is_dir()]


def _by_frame(folder: Path, suffix: str) -> dict[str, Path]:
    """Files `<frame><suffix>.png` of every city folder of `folder`, keyed by `<city>/<frame>`."""
    out = {}
    for city in list_dirs(folder):
        for stem, path in list_files(city, (f"{suffix}.png",)).items():
            out[f"{city.name}/{stem}"] = path  # list_files strips the whole suffix
    return out


def find(root: Path, split: str | None, *, options: dict, labels, skip_bad: bool) -> Listing:
    split = require_split(f"cityscapes:{root}", split, splits(root))
    classes, palette = labels.classes(CLASSES, PALETTE)
    image_dir = root / "leftImg8bit" / split
    mask_dir = check_dir(root / "gtFine" / split, "Cityscapes gtFine split folder")
    pairs, skipped = pair_up(
        _by_frame(image_dir, _IMAGE_SUFFIX),
        _by_frame(mask_dir, _MASK_SUFFIX),
        skip_bad=skip_bad,
        expected_mask=lambda key: mask_dir / f"{key}{_MASK_SUFFIX}.png",
        expected_image=lambda key: str(image_dir / f"{key}{_IMAGE_SUFFIX}.png"),
    )
    return Listing(
        name=f"cityscapes:{root} split {split!r}",
        pairs=pairs,
        skipped=skipped,
        classes=classes,
        palette=palette,
        label_fix="gtFine labelIds are 8-bit (0..33): use the *_gtFine_labelIds.png files",
        empty=f"no <city>/*{_IMAGE_SUFFIX}.png in {image_dir}",
    )
