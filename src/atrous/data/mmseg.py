"""`mmseg:ROOT`: mmsegmentation's custom data set layout (`CustomDataset` / `BaseSegDataset`).

Layout: `ROOT/<img_dir>/<split>/<name><img_suffix>` with `ROOT/<ann_dir>/<split>/<name><seg_map_suffix>`;
the splits are the sub-folders present in both. Options (mmsegmentation's names and defaults):
`img_dir=img_dir`, `ann_dir=ann_dir`, `img_suffix=.jpg`, `seg_map_suffix=.png` (e.g. `_labelTrainIds.png`).
Classes as for `folder:` (a classes file at ROOT, `num_classes`, or a scan); mmsegmentation's
`reduce_zero_label` is the spec option of the same name.
"""

from __future__ import annotations

from pathlib import Path

from atrous.data.base import Listing, require_split
from atrous.data.classes import paired_folder, resolve_classes
from atrous.data.io import check_dir, list_dirs

# The class list comes from the user's files (or num_classes, or a scan): `find` takes `num_classes`.
USER_CLASSES = True
OPTIONS = {"img_dir": "img_dir", "ann_dir": "ann_dir", "img_suffix": ".jpg", "seg_map_suffix": ".png"}


def splits(root: Path, options: dict) -> list[str]:
    check_dir(root, "mmseg data folder")
    images = check_dir(root / options["img_dir"], f"mmseg image folder (img_dir={options['img_dir']})")
    return [d.name for d in list_dirs(images) if (root / options["ann_dir"] / d.name).is_dir()]


def find(
    root: Path, split: str | None, *, options: dict, labels, skip_bad: bool, num_classes: int | None
) -> Listing:
    available = splits(root, options)
    split = require_split(f"mmseg:{root}", split, available)
    image_dir = root / options["img_dir"] / split
    mask_dir = root / options["ann_dir"] / split
    mask_suffix = str(options["seg_map_suffix"])
    names, palette, label_fix, classes_from = resolve_classes(
        root,
        num_classes=num_classes,
        palette_names=labels.palette_names,
        mask_dirs=[root / options["ann_dir"] / s for s in available],
        mask_suffix=mask_suffix,
        convention=labels.convention,
        skip_bad=skip_bad,
    )
    pairs, skipped = paired_folder(
        image_dir,
        mask_dir,
        image_suffixes=(str(options["img_suffix"]),),
        mask_suffix=mask_suffix,
        skip_bad=skip_bad,
    )
    return Listing(
        name=f"mmseg:{root} split {split!r}",
        pairs=pairs,
        skipped=skipped,
        classes=names,
        palette=palette,
        label_fix=label_fix,
        empty=f"no *{options['img_suffix']} image in {image_dir} with a mask",
        classes_from=classes_from,
    )
