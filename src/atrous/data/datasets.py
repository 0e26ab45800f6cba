"""Image/mask pairs on disk, read safely, and the dataset spec (`folder:`, `voc:`, `cityscapes:`,
`synthetic:`) that names them everywhere in atrous.

Reading follows the layouts of the PASCAL VOC 2012 (Everingham et al., IJCV 2010) and Cityscapes (Cordts
et al., CVPR 2016) benchmarks. Bad files are the rule in real data sets, so a pair is checked in two steps:
- eagerly, when the data set is built: every image has its mask and the reverse, and each file's header
  opens (not empty, not a decompression bomb, non-zero size, image and mask of the same size, a mask mode
  that holds class indices). This reads headers only: a few thousand pairs take well under a second.
- lazily, in `__getitem__`: the pixels decode (a truncated file fails here) and every mask label is a
  class index or 255 (ignore); a label >= num_classes would otherwise silently corrupt the loss and the
  metrics.
Each problem is a `DataError` (an `AtrousError`) of one line naming the file and the fix. With `skip_bad=True` every pair is
decoded and checked once up front instead, bad pairs are left out with a warning, and `skipped` lists them:
the remaining items are exactly the good pairs, so no metric counts a substitute.
"""

from __future__ import annotations

import errno
import os
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from atrous.errors import AtrousError

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Mask modes that hold class indices: 8-bit grey, palette (the index is the label, as in VOC), 1-bit,
# and 16/32-bit integer grey (labels must still be < num_classes or 255).
_MASK_MODES = ("L", "P", "1", "I;16", "I;16L", "I;16B", "I")
# At most this many skipped files are warned about one by one; a summary line gives the total.
_WARN_EACH = 5


class DataError(AtrousError):
    """A bad data file or layout (an `AtrousError`: the CLI prints it as one line and exits 2)."""


def _check_symlink(path: Path, what: str) -> None:
    """Refuse a symlink that loops or points nowhere, naming it (a listing would otherwise fail later)."""
    try:
        os.stat(path)
    except OSError as e:
        kind = "a symlink loop" if e.errno == errno.ELOOP else "a broken symlink"
        raise DataError(f"{path} is {kind}: remove it or point it at a real {what}") from None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _open(path: Path, what: str) -> Image.Image:
    """Open an image file (header only) or raise AtrousError naming it."""
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and raises above twice that: refuse both, in one line.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(
            f"{path}: {what} is too large to decode safely ({_one_line(e)}): resize it, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        ) from None
    except FileNotFoundError:
        raise DataError(
            f"{path}: {what} does not exist (it was listed a moment ago): check the data set"
        ) from None
    except Exception as e:  # PIL raises many types for garbage (OSError, SyntaxError, struct.error, ...)
        raise DataError(
            f"{path}: unreadable {what} file ({_one_line(e)}): replace or remove it, or skip bad files (eval --skip-bad, train --set data.skip_bad=true)"
        ) from None
    w, h = img.size
    if w == 0 or h == 0:
        img.close()
        raise DataError(
            f"{path}: {what} is {w}x{h} pixels (empty): replace or remove it, or skip bad files (eval --skip-bad, train --set data.skip_bad=true)"
        )
    return img


def _decode(img: Image.Image, path: Path, what: str) -> None:
    try:
        img.load()
    except Exception as e:  # truncated data, corrupt chunks, bad CRC, ...
        raise DataError(
            f"{path}: {what} is damaged ({_one_line(e)}): replace or remove it, or skip bad files (eval --skip-bad, train --set data.skip_bad=true)"
        ) from None


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of an image file. Grey, palette and alpha images are converted to RGB
    as PIL does; 16-bit grey is scaled to 8 bits (value / 257, rounded)."""
    with _open(path, "image") as img:
        _decode(img, path, "image")
        if img.mode in ("I;16", "I;16L", "I;16B", "I"):
            grey = np.asarray(img).astype(np.float64)
            if grey.min() < 0 or grey.max() > 65535:
                raise DataError(f"{path}: image values exceed 16 bits: save it as 8-bit RGB")
            grey = np.round(grey / 257.0).astype(np.uint8)
            return np.repeat(grey[:, :, None], 3, axis=2)
        if img.mode == "F":
            raise DataError(f"{path}: image is 32-bit float: save it as 8-bit RGB")
        return np.asarray(img.convert("RGB"))


def read_mask(path: Path) -> np.ndarray:
    """(H, W) int64 class indices of a mask file (palette masks: the palette index is the label)."""
    with _open(path, "mask") as img:
        _check_mask_mode(img, path)
        _decode(img, path, "mask")
        return np.asarray(img).astype(np.int64)


def _check_mask_mode(img: Image.Image, path: Path) -> None:
    if img.mode not in _MASK_MODES:
        raise DataError(
            f"{path}: mask is {img.mode} ({len(img.getbands())} channels): masks must be single-channel class "
            "indices (8-bit grey or palette PNG, 255 = ignore); convert colour masks to indices first"
        )


def probe_pair(image_path: Path, mask_path: Path) -> None:
    """The eager header check of one pair (no pixel is decoded)."""
    with _open(image_path, "image") as img:
        image_size = img.size
    with _open(mask_path, "mask") as mask:
        _check_mask_mode(mask, mask_path)
        mask_size = mask.size
    if image_size != mask_size:
        raise DataError(
            f"{mask_path} is {mask_size[0]}x{mask_size[1]} but {image_path} is {image_size[0]}x{image_size[1]}: "
            "masks must match their image"
        )


def check_dir(path: Path, what: str) -> Path:
    """`path` must be a readable folder; symlink loops and files are named as such."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(f"{path}: {what} is a symlink loop: point it at a real folder") from None
        raise DataError(f"{path}: {what} does not exist: check the path") from None
    if not path.is_dir():
        raise DataError(f"{path}: {what} is not a folder: check the path")
    return path


def list_files(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """Files of `folder` (not recursive) with one of `suffixes` (any case), by NFC-normalised stem.

    Hidden files (".*", e.g. macOS "._x.png") are ignored. A symlink that loops or dangles, or two files
    with the same stem, is an AtrousError.
    """
    found: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            name = entry.name
            if name.startswith(".") or not name.lower().endswith(tuple(s.lower() for s in suffixes)):
                continue
            path = Path(entry.path)
            if entry.is_symlink():
                _check_symlink(path, "file")
            if not entry.is_file():
                continue
            stem = unicodedata.normalize("NFC", path.stem)
            if stem in found:
                raise DataError(
                    f"{path} and {found[stem]} have the same name stem: keep one (pairs are matched by stem)"
                )
            found[stem] = path
    return found


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
    """Image/mask file pairs with class names and palette.

    Items: `(tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask int64 (H, W))` with 255 = ignore, or
    `transform(image, mask)` when a transform is given.
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
        label_map: np.ndarray | None = None,
        label_fix: str = "fix the mask",
    ) -> None:
        """`name` (e.g. "folder:data split 'val'") starts messages; `label_map` (a lookup table, raw mask
        value -> label) maps stored ids to train ids (Cityscapes); `label_fix` says how to fix a label out
        of range; `skipped` lists pairs the caller already left out (missing partners)."""
        if len(palette) != len(classes):
            raise ValueError(f"{len(classes)} classes but {len(palette)} palette colours")
        self.name = name
        self.classes = list(classes)
        self.palette = [tuple(int(v) for v in colour) for colour in palette]
        self.num_classes = len(self.classes)
        self.transform = transform
        self.skip_bad = skip_bad
        self.label_map = label_map
        self.label_fix = label_fix
        self.skipped: list[tuple[Path, str]] = list(skipped)
        self.pairs: list[tuple[Path, Path]] = []
        for image_path, mask_path in pairs:
            try:
                if skip_bad:
                    self._load(image_path, mask_path)
                else:
                    probe_pair(image_path, mask_path)
            except AtrousError as e:
                if not skip_bad:
                    raise
                self.skipped.append((image_path, str(e)))
                continue
            self.pairs.append((image_path, mask_path))
        if self.skipped:
            for _, reason in self.skipped[:_WARN_EACH]:
                warnings.warn(f"skipping {reason}", stacklevel=2)
            warnings.warn(
                f"{name}: skipped {len(self.skipped)} bad file(s), kept {len(self.pairs)} pair(s)",
                stacklevel=2,
            )
        if not self.pairs:
            raise DataError(f"{name} has no usable image/mask pairs: add data or check the path and split")

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(image_path)
        mask = read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} but {image_path} is "
                f"{image.shape[1]}x{image.shape[0]}: masks must match their image"
            )
        if self.label_map is not None:
            if mask.min() < 0 or mask.max() >= len(self.label_map):
                raise DataError(
                    f"{mask_path}: mask holds ids outside 0..{len(self.label_map) - 1}: {self.label_fix}"
                )
            mask = self.label_map[mask]
        bad = ((mask < 0) | (mask >= self.num_classes)) & (mask != IGNORE_INDEX)
        if bad.any():
            values = ", ".join(str(v) for v in np.unique(mask[bad])[:5])
            raise DataError(
                f"{mask_path}: mask holds label(s) {values} but {self.name} has {self.num_classes} classes "
                f"(0..{self.num_classes - 1}, {IGNORE_INDEX} = ignore): {self.label_fix}"
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


def list_dirs(folder: Path) -> list[Path]:
    """Sub-folders of `folder`, sorted; hidden ones ignored; a looping or dangling symlink is an AtrousError."""
    out = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_symlink():
                _check_symlink(path, "folder")
            if entry.is_dir():
                out.append(path)
    return out


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
            raise DataError(reason + " (or skip bad files (eval --skip-bad, train --set data.skip_bad=true))")
        skipped.append((path, reason))
    return pairs, skipped


# ---- the dataset spec -------------------------------------------------------------------------------

KINDS = ("folder", "voc", "cityscapes", "synthetic")


def parse_spec(spec: str) -> tuple[str, str, dict]:
    """`KIND:TARGET` -> (kind, target, options). Only `synthetic:NAME?key=value&key=value` has options
    (values parsed like `--opt`); for the other kinds everything after the colon is the path."""
    from atrous.config import parse_value

    if not isinstance(spec, str):
        raise DataError(f"data spec must be a string like folder:PATH, got {spec!r}")
    kind, sep, target = spec.partition(":")
    if not sep:
        hint = f" (to read the folder {spec}, write folder:{spec})" if Path(spec).is_dir() else ""
        raise DataError(
            f"data spec {spec!r} has no kind: write folder:PATH, voc:PATH, cityscapes:PATH or synthetic:NAME{hint}"
        )
    if kind not in KINDS:
        raise DataError(f"data spec {spec!r}: unknown kind {kind!r}: valid kinds are {', '.join(KINDS)}")
    if not target:
        raise DataError(
            f"data spec {spec!r} names no {'data set' if kind == 'synthetic' else 'path'} after the colon"
        )
    options: dict = {}
    if kind == "synthetic":
        target, _, query = target.partition("?")
        for item in filter(None, query.split("&")):
            key, eq, value = item.partition("=")
            if not eq or not key.isidentifier():
                raise DataError(f"data spec {spec!r}: option {item!r} must be key=value (joined with &)")
            options[key] = parse_value(value)
    else:
        target = os.path.expanduser(target)
    return kind, target, options


def available_splits(spec: str) -> list[str]:
    """The splits a data set offers (e.g. ["train", "val"]); [] for a folder without split folders."""
    kind, target, _ = parse_spec(spec)
    if kind == "synthetic":
        from atrous.data import synthetic

        return list(synthetic.SPLITS)
    module = _module(kind)
    return module.splits(Path(target))


def _module(kind: str):
    # Imported here: the readers import this module for the base class.
    if kind == "folder":
        from atrous.data import folder as module
    elif kind == "voc":
        from atrous.data import voc as module
    else:
        from atrous.data import cityscapes as module
    return module


def build_dataset(
    spec: str,
    split: str | None = None,
    *,
    transform: Callable | None = None,
    skip_bad: bool = False,
    num_classes: int | None = None,
):
    """The data set named by `spec` (see the module docstring and the README's Data section).

    `num_classes`, when given, must agree with the data set's own class list (VOC 21, Cityscapes 19,
    synthetic per task, a folder's classes file); for a folder without a classes file it sets the number
    of classes and spares the scan of every mask.
    """
    kind, target, options = parse_spec(spec)
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise DataError(f"num_classes must be a positive integer, got {num_classes!r}")
    if kind == "synthetic":
        from atrous.data import synthetic

        dataset = synthetic.build(target, split, transform=transform, **options)
    else:
        dataset = _module(kind).build(
            Path(target), split, transform=transform, skip_bad=skip_bad, num_classes=num_classes
        )
    if num_classes is not None and dataset.num_classes != num_classes:
        raise DataError(
            f"data {spec!r} has {dataset.num_classes} classes but num_classes={num_classes} was asked for: "
            "drop num_classes or fix it"
        )
    return dataset
