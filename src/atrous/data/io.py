"""The one image and mask reader of atrous: data sets, `atrous predict`, `atrous eval` and the Python API
(`atrous.predict`) all read pixels here, so the same file gives the same tensor everywhere.

- `IMAGE_SUFFIXES`: the image files atrous reads (PNG, JPEG, TIFF, BMP, WEBP), for training as for predict.
- `read_image(path, intensity=...)`: uint8 `(H, W, 3)` RGB. EXIF orientation is applied, as every viewer
  does (a phone photo stored sideways is read upright). 16-bit and 32-bit integer grey images are brought
  to 8 bits by one documented rule (`INTENSITY_RULES`, default "auto"):
    auto        values that fit in 8 bits (max <= 255) are kept unchanged (e.g. stardist's img2d.tif, a
                16-bit TIFF holding 0..235); otherwise value * 255 / (the file's own max), rounded, so the
                brightest pixel is 255 and 0 stays 0.
    full        value / 257, rounded: the full 16-bit range 0..65535 onto 0..255 (what a photo editor does).
    minmax      (value - min) / (max - min) * 255 per file (a constant image reads 0).
    percentile  (value - p1) / (p99.8 - p1) * 255 clipped to 0..255, per file: the percentile
                normalisation of microscopy tools (CSBDeep / stardist `normalize(x, 1, 99.8)`).
  8-bit images are never rescaled.
- `read_mask(path)`: `(H, W)` int64 values as stored (palette masks: the index); never rotated (a mask is
  data, not a photo). `read_colour_mask` reads RGB masks for palette decoding.
- Safety: decompression bombs, empty, truncated and zero-sized files, symlink loops are each a `DataError`
  (an `AtrousError`) of one line that names the file and says how to fix it.
"""

from __future__ import annotations

import errno
import os
import unicodedata
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from atrous.errors import AtrousError

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Masks must be lossless: PNG, or TIFF/BMP as some tools export them (never JPEG or lossy WEBP).
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
INTENSITY_RULES = ("auto", "full", "minmax", "percentile")
# Mask modes that hold class indices: 8-bit grey, palette (the index is the label, as in VOC), 1-bit,
# and 16/32-bit integer grey (labels must still be < num_classes or 255).
MASK_MODES = ("L", "P", "1", "I;16", "I;16L", "I;16B", "I")
_DEEP_MODES = ("I;16", "I;16L", "I;16B", "I")
# Appended to messages about one bad file; a warning about a file that *was* skipped drops it.
SKIP_HINT = ", or skip bad files (predict/eval --skip-bad, train --set data.skip_bad=true)"
_FIX = "replace or remove it" + SKIP_HINT


class DataError(AtrousError):
    """A bad data file or layout (an `AtrousError`: the CLI prints it as one line and exits 2)."""


def without_skip_hint(message: str) -> str:
    """A bad-file message as a warning about a file that is being skipped (no advice to skip it)."""
    return message.replace(SKIP_HINT, "")


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def open_image(path: str | os.PathLike, what: str = "image") -> Image.Image:
    """Open an image file (header only) or raise DataError naming it."""
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size == 0:
            raise DataError(f"{path}: the file is empty (0 bytes), not an {what}; {_FIX}")
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and raises above twice that: refuse both, in one line.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(
            f"{path}: {what} is too large to decode safely ({_one_line(e)}): downscale it, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        ) from None
    except FileNotFoundError:
        raise DataError(f"{path}: no such {what} file (it does not exist): check the path") from None
    except Image.UnidentifiedImageError:
        raise DataError(
            f"{path}: not an image file PIL can read (PNG, JPEG, TIFF, BMP, WEBP); {_FIX}"
        ) from None
    except DataError:
        raise
    except Exception as e:  # PIL raises many types for garbage (OSError, SyntaxError, struct.error, ...)
        raise DataError(f"{path}: unreadable or truncated {what} file ({_one_line(e)}); {_FIX}") from None
    w, h = img.size
    if w == 0 or h == 0:
        img.close()
        raise DataError(f"{path}: the {what} is {w}x{h} pixels (empty); {_FIX}")
    return img


def _decode(img: Image.Image, path: Path, what: str) -> None:
    try:
        img.load()
    except Exception as e:  # truncated data, corrupt chunks, bad CRC, ...
        raise DataError(f"{path}: unreadable or truncated {what} ({_one_line(e)}); {_FIX}") from None


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright; 5..8 swap width and height), read from the header."""
    if img.format == "PNG" and "exif" not in img.info:
        # PIL's PngImageFile.getexif() decodes every pixel to look for an eXIf chunk after them: the header
        # check of a data set would decode each image. An eXIf chunk before the pixels (as PIL writes it) is
        # in `info` already; one after them is seen once the pixels are decoded (`read_image` loads first).
        return 1
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # a malformed EXIF block: treat as upright, as viewers do
        return 1


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as the image is shown, i.e. after its EXIF orientation."""
    w, h = img.size
    return (h, w) if _orientation(img) in (5, 6, 7, 8) else (w, h)


def check_intensity(intensity: str, source: str = "intensity") -> str:
    if intensity not in INTENSITY_RULES:
        raise DataError(
            f"{source}={intensity!r} is not a 16-bit intensity rule: use one of {', '.join(INTENSITY_RULES)}"
        )
    return intensity


def to_8bit(grey: np.ndarray, intensity: str = "auto") -> np.ndarray:
    """16/32-bit grey values -> uint8 by the rule `intensity` (see the module docstring)."""
    check_intensity(intensity)
    g = grey.astype(np.float64)
    if intensity == "full":
        out = g / 257.0
    elif intensity == "auto":
        top = float(g.max())
        out = g if top <= 255 else g * (255.0 / top)
    else:
        lo, hi = (
            (float(g.min()), float(g.max()))
            if intensity == "minmax"
            else tuple(float(v) for v in np.percentile(g, (1.0, 99.8)))
        )
        out = (g - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(g)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def read_image(path: str | os.PathLike, *, intensity: str = "auto") -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of an image file, EXIF orientation applied. Grey, palette and alpha
    images are converted to RGB as PIL does; 16-bit grey follows the rule `intensity`."""
    path = Path(path)
    with open_image(path, "image") as img:
        _decode(img, path, "image")
        if img.mode in _DEEP_MODES:
            grey = np.asarray(img)
            if grey.min() < 0 or grey.max() > 65535:
                raise DataError(f"{path}: image values exceed 16 bits: save it as 8-bit RGB or 16-bit grey")
            return _upright(img, np.repeat(to_8bit(grey, intensity)[:, :, None], 3, axis=2))
        if img.mode == "F":
            raise DataError(f"{path}: image is 32-bit float: save it as 8-bit RGB or 16-bit grey")
        return _upright(img, np.asarray(img.convert("RGB")))


def _upright(img: Image.Image, rgb: np.ndarray) -> np.ndarray:
    """`rgb` (the pixels of `img` as stored) turned by `img`'s EXIF orientation."""
    orientation = _orientation(img)
    if orientation == 1:
        return rgb
    shown = Image.fromarray(rgb)
    shown.getexif()[0x0112] = orientation
    return np.asarray(ImageOps.exif_transpose(shown))


def as_rgb_array(image, *, intensity: str = "auto") -> np.ndarray:
    """A PIL image, a uint8 `(H, W, 3)` array or an image path as a uint8 `(H, W, 3)` array (a PIL image
    is taken as the caller holds it: no EXIF turn, which `read_image` does for files)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, intensity=intensity)
    if isinstance(image, Image.Image):
        if image.mode in _DEEP_MODES:
            return np.repeat(to_8bit(np.asarray(image), intensity)[:, :, None], 3, axis=2)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise ValueError(
                f"image arrays must be uint8 (H, W, 3) RGB with H, W >= 1, got {image.dtype} {image.shape}"
            )
        return image
    raise ValueError(
        f"image must be a PIL image, a uint8 (H, W, 3) array or a path, got {type(image).__name__}"
    )


def check_mask_mode(img: Image.Image, path: Path, *, colour: bool = False) -> None:
    """Masks hold class indices in one channel; with `colour` (a palette file decodes them) RGB too."""
    if colour and img.mode in ("RGB", "RGBA", "P"):
        return
    if img.mode not in MASK_MODES:
        raise DataError(
            f"{path}: mask is {img.mode} ({len(img.getbands())} channels): masks must be single-channel class "
            "indices (8-bit grey or palette PNG, 255 = ignore); for colour masks give a palette file "
            "(?palette=labelmap.txt or classes.json)"
        )


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """(H, W) int64 values of a mask file as stored (palette masks: the palette index is the value)."""
    path = Path(path)
    with open_image(path, "mask") as img:
        check_mask_mode(img, path)
        _decode(img, path, "mask")
        return np.asarray(img).astype(np.int64)


def read_colour_mask(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 colours of a colour mask (RGB, RGBA without alpha, or a palette PNG's colours)."""
    path = Path(path)
    with open_image(path, "mask") as img:
        check_mask_mode(img, path, colour=True)
        _decode(img, path, "mask")
        return np.asarray(img.convert("RGB"))


def probe_pair(image_path: Path, mask_path: Path, *, colour: bool = False) -> None:
    """The eager header check of one pair (no pixel is decoded): the image as shown (EXIF orientation
    applied) must have the mask's size."""
    with open_image(image_path, "image") as img:
        image_size = oriented_size(img)
    with open_image(mask_path, "mask") as mask:
        check_mask_mode(mask, mask_path, colour=colour)
        mask_size = mask.size
    if image_size != mask_size:
        raise DataError(
            f"{mask_path} is {mask_size[0]}x{mask_size[1]} but {image_path} is {image_size[0]}x{image_size[1]}"
            " (as shown, EXIF orientation applied): masks must match their image"
        )


# ---- folders ----------------------------------------------------------------------------------------------
def check_symlink(path: Path, what: str) -> None:
    """Refuse a symlink that loops or points nowhere, naming it (a listing would otherwise fail later)."""
    try:
        os.stat(path)
    except OSError as e:
        kind = "a symlink loop" if e.errno == errno.ELOOP else "a broken symlink"
        raise DataError(f"{path} is {kind}: remove it or point it at a real {what}") from None


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
    """Files of `folder` (not recursive) ending in one of `suffixes` (any case), keyed by the NFC-normalised
    name without that suffix.

    Hidden files (".*", e.g. macOS "._x.png") are ignored. A symlink that loops or dangles, or two files
    with the same key, is an AtrousError.
    """
    lowered = tuple(s.lower() for s in suffixes)
    found: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            name = entry.name
            suffix = next((s for s in lowered if name.lower().endswith(s)), None)
            if name.startswith(".") or suffix is None:
                continue
            path = Path(entry.path)
            if entry.is_symlink():
                check_symlink(path, "file")
            if not entry.is_file():
                continue
            stem = unicodedata.normalize("NFC", name[: len(name) - len(suffix)])
            if stem in found:
                raise DataError(
                    f"{path} and {found[stem]} have the same name stem: keep one (pairs are matched by stem)"
                )
            found[stem] = path
    return found


def list_dirs(folder: Path) -> list[Path]:
    """Sub-folders of `folder`, sorted; hidden ones ignored; a looping or dangling symlink is an AtrousError."""
    out = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_symlink():
                check_symlink(path, "folder")
            if entry.is_dir():
                out.append(path)
    return out


def find_images(inputs: list[str | os.PathLike], out: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Expand files and folders into `(image file, output name)` pairs, in a stable order (`atrous predict`).

    A file given by name is taken whatever its suffix (and reported if it is no image); folders are walked
    recursively for `IMAGE_SUFFIXES`, without following directory symlinks (no loops) and skipping `out`
    itself (so predictions written into an input folder are never read back as inputs). The output name is
    the path relative to its folder (the file name for a file) with the suffix `.png`; two inputs with the
    same output name are refused before anything is written.
    """
    out_dir = Path(out).resolve()
    pairs: list[tuple[Path, Path]] = []
    for item in inputs:
        root = Path(item)
        if root.is_dir():
            for folder, dirs, files in os.walk(root):
                dirs[:] = sorted(d for d in dirs if (Path(folder) / d).resolve() != out_dir)
                for name in sorted(files):
                    path = Path(folder) / name
                    if path.suffix.lower() in IMAGE_SUFFIXES:
                        pairs.append((path, path.relative_to(root).with_suffix(".png")))
        elif root.exists():
            pairs.append((root, Path(root.name).with_suffix(".png")))
        else:
            raise DataError(f"{root}: no such file or folder; give image files or folders of images")
    if not pairs:
        raise DataError(
            f"no images found in {', '.join(str(i) for i in inputs)} (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    seen: dict[Path, Path] = {}
    for source, name in pairs:
        if name in seen:
            raise DataError(
                f"{seen[name]} and {source} would both be written as {name}: rename one, or predict them "
                "into separate --out folders"
            )
        seen[name] = source
    return pairs
