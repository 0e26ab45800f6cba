"""The base of every file-backed data set: `SegmentationDataset` (image/mask pairs, checked) and `pair_up`.

Reading follows the layouts of the PASCAL VOC 2012 (Everingham et al., IJCV 2010) and Cityscapes (Cordts
et al., CVPR 2016) benchmarks. Bad files are the rule in real data sets, so a pair is checked in two steps:
- eagerly, when the data set is built: every image has its mask and the reverse, and each file's header
  opens (not empty, not a decompression bomb, non-zero size, image (as shown, EXIF orientation applied)
  and mask of the same size, a mask mode that holds class indices). This reads headers only: a few
  thousand pairs take well under a second.
- lazily, in `__getitem__`: the pixels decode (a truncated file fails here) and every mask label, after
  the data set's `LabelConvention`, is a class index or 255 (ignore); a label >= num_classes would
  otherwise silently corrupt the loss and the metrics.
Each problem is a `DataError` (an `AtrousError`) of one line naming the file and the fix. With
`skip_bad=True` every pair is decoded and checked once up front instead, bad pairs are left out with a
warning, and `skipped` lists them: the remaining items are exactly the good pairs, so no metric counts a
substitute.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors

from atrous.data.io import (
    IGNORE_INDEX,
    SKIP_HINT,
    DataError,
    check_intensity,
    probe_pair,
    read_image,
    without_skip_hint,
)
from atrous.data.labels import LabelConvention
from atrous.errors import AtrousError

# At most this many skipped files are warned about one by one; a summary line gives the total.
_WARN_EACH = 5


def standard_palette(n: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map (bits of the index spread over R, G, B): distinct colours for n classes."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


class SegmentationDataset(torch.utils.data.Dataset):
    """Image/mask file pairs with class names, palette and label convention.

    Items: `(tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask int64 (H, W))` with 255 = ignore, or
    `transform(image, mask)` when a transform is given. `label_convention` (a JSON-able dict) says how the
    mask files store the classes, so that predictions can be written back the same way
    (`atrous.data.encode_prediction`).
    """

    def __init__(
        self,
        *,
        name: str,
        pairs: Sequence[tuple[Path, Path]],
        classes: Sequence[str],
        palette: Sequence[tuple[int, int, int]],
        transform: Callable | None = None,
        skip_bad: bool = False,
        skipped: Sequence[tuple[Path, str]] = (),
        convention: LabelConvention | None = None,
        label_fix: str = "fix the mask",
        intensity: str = "auto",
        classes_from: str = "layout",
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        """`name` (e.g. "folder:data split 'val'") starts messages; `convention` maps stored mask values to
        classes (Cityscapes label ids, reduce_zero_label, map=, palette=); `label_fix` says how to fix a
        label out of range; `skipped` lists pairs the caller already left out (missing partners);
        `intensity` is the 16-bit image rule of `atrous.data.io.read_image`; `classes_from` says where the
        class list came from ("layout", "file", "num_classes", or "scan": the largest label in the masks,
        which `atrous.data.check` questions); `ignore_index` is the one mask value besides the classes
        (the run's `loss.ignore_index`: with another value, 255 is an ordinary label and must be a class)."""
        if len(palette) != len(classes):
            raise ValueError(f"{len(classes)} classes but {len(palette)} palette colours")
        self.name = name
        self.classes = list(classes)
        self.palette = [tuple(int(v) for v in colour) for colour in palette]
        self.num_classes = len(self.classes)
        self.transform = transform
        self.skip_bad = skip_bad
        self.convention = convention or LabelConvention()
        self.label_fix = label_fix
        self.intensity = check_intensity(intensity)
        self.classes_from = classes_from
        self.ignore_index = ignore_index
        self.skipped: list[tuple[Path, str]] = list(skipped)
        self.pairs: list[tuple[Path, Path]] = []
        colour = self.convention.palette is not None
        for image_path, mask_path in pairs:
            try:
                if skip_bad:
                    self._load(image_path, mask_path)
                else:
                    probe_pair(image_path, mask_path, colour=colour)
            except AtrousError as e:
                if not skip_bad:
                    raise
                self.skipped.append((image_path, without_skip_hint(str(e))))
                continue
            self.pairs.append((image_path, mask_path))
        if self.skipped:
            for _, reason in self.skipped[:_WARN_EACH]:
                warnings.warn(f"skipping {without_skip_hint(reason)}", stacklevel=2)
            warnings.warn(
                f"{name}: skipped {len(self.skipped)} bad file(s), kept {len(self.pairs)} pair(s)",
                stacklevel=2,
            )
        if not self.pairs:
            raise DataError(f"{name} has no usable image/mask pairs: add data or check the path and split")

    @property
    def label_convention(self) -> dict:
        """The mask convention as a JSON-able dict (`LabelConvention.to_dict`), for checkpoints."""
        return self.convention.to_dict()

    def __len__(self) -> int:
        return len(self.pairs)

    def read_labels(self, mask_path: Path) -> np.ndarray:
        """(H, W) int64 class indices of one mask file under the convention (no range check)."""
        return self.convention.read(mask_path)

    def _load(self, image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(image_path, intensity=self.intensity)
        mask = self.read_labels(mask_path)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} but {image_path} is "
                f"{image.shape[1]}x{image.shape[0]} (as shown, EXIF orientation applied): masks must match "
                "their image"
            )
        bad = ((mask < 0) | (mask >= self.num_classes)) & (mask != self.ignore_index)
        if bad.any():
            values = ", ".join(str(v) for v in np.unique(mask[bad])[:5])
            how = "" if self.convention.identity else f" (after {self.convention.describe()})"
            raise DataError(
                f"{mask_path}: mask holds label(s) {values}{how} but {self.name} has {self.num_classes} classes "
                f"(0..{self.num_classes - 1}, {self.ignore_index} = ignore): {self.label_fix}"
            )
        return image, mask

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item `index` as numpy arrays: (uint8 (H, W, 3), int64 (H, W)), labels checked."""
        return self._load(*self.pairs[index])

    def __getitem__(self, index: int):
        image, mask = self.read(index)
        # HWC -> CHW; the copy is contiguous and writable (PIL's buffer may be read-only).
        image = tv_tensors.Image(torch.from_numpy(image.transpose(2, 0, 1).copy()))
        mask = tv_tensors.Mask(torch.from_numpy(mask))
        if self.transform is not None:
            return self.transform(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return f"SegmentationDataset({self.name}, {len(self)} pairs, {self.num_classes} classes)"


@dataclass(frozen=True)
class Listing:
    """What a layout module finds for one split: the pairs, the ones left out, and the classes. The spec
    (`atrous.data.spec`) makes the `SegmentationDataset` from it, so no layout repeats that."""

    name: str  # e.g. "folder:data split 'val'": starts every message about this split
    pairs: list[tuple[Path, Path]]
    skipped: list[tuple[Path, str]]
    classes: list[str]
    palette: list[tuple[int, int, int]]
    label_fix: str  # how to fix a label out of range
    empty: str  # what to say when the split holds no pair: "{name} is empty: {empty}"
    classes_from: str = "layout"

    def dataset(
        self,
        *,
        convention: LabelConvention,
        transform: Callable | None,
        skip_bad: bool,
        intensity: str,
        ignore_index: int,
    ) -> SegmentationDataset:
        if not self.pairs and not self.skipped:
            raise DataError(f"{self.name} is empty: {self.empty}")
        return SegmentationDataset(
            name=self.name,
            pairs=self.pairs,
            classes=self.classes,
            palette=self.palette,
            transform=transform,
            skip_bad=skip_bad,
            skipped=self.skipped,
            convention=convention,
            label_fix=self.label_fix,
            intensity=intensity,
            classes_from=self.classes_from,
            ignore_index=ignore_index,
        )


def pair_up(
    images: dict[str, Path],
    masks: dict[str, Path],
    *,
    skip_bad: bool,
    expected_mask: Callable[[str], Path],
    expected_image: Callable[[str], str],
) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """Match images and masks by key; an image without mask or a mask without image is an AtrousError
    (or, with `skip_bad`, a skipped entry). Returns (pairs sorted by key, skipped)."""
    pairs, skipped = [], []
    for key in sorted(set(images) | set(masks)):
        if key in images and key in masks:
            pairs.append((images[key], masks[key]))
            continue
        if key in images:
            reason = f"{images[key]} has no mask {expected_mask(key)}: add the mask, or remove the image"
            path = images[key]
        else:
            reason = f"{masks[key]} has no image {expected_image(key)}: add the image, or remove the mask"
            path = masks[key]
        if not skip_bad:
            raise DataError(reason + f" ({SKIP_HINT.lstrip(', ')})")
        skipped.append((path, reason))
    return pairs, skipped


# The split names data sets use for the same thing (ADE20K's `training`/`validation`, ...).
_SPLIT_SYNONYMS = (
    {"train", "training", "trn"},
    {"val", "valid", "validation", "dev"},
    {"test", "testing", "tst"},
)


def likely_split(split: str, available: Sequence[str]) -> str | None:
    """The available split that names the same thing as `split` (e.g. `validation` for `val`), if any."""
    for group in _SPLIT_SYNONYMS:
        if split.lower() in group:
            found = [s for s in available if s.lower() in group and s != split]
            if found:
                return found[0]
    return None


def require_split(name: str, split: str | None, available: Sequence[str]) -> str:
    """`split` when `available` has it; otherwise a DataError that lists the splits (and the likely one)."""
    if split is not None and split in available:
        return split
    what = "needs a split" if split is None else f"has no split {split!r}"
    likely = likely_split(split, available) if split is not None else None
    hint = f" (did you mean {likely!r}?)" if likely else ""
    raise DataError(f"{name} {what}{hint}: choose one of {', '.join(available) or '(none found)'}")
