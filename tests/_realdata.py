"""Real data that ships inside a package: the 2D nuclei image and its instance mask from the `stardist`
wheel (installed with `pip install --no-deps stardist`; `make install` does it). The package is located
through its metadata and never imported (it would pull in TensorFlow).

`write_stardist_folder(root)` converts it into the `folder:` layout: the 512x512 16-bit image (values 0..235)
is stored as an 8-bit grey PNG without change of value, the uint16 instance ids are binarised to
0 = background / 1 = nucleus, and the image is cut into four 256x256 quadrants: train = top-left,
top-right, bottom-left; val = bottom-right. `classes.txt` names the two classes.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("background", "nucleus")


def stardist_files() -> tuple[Path, Path]:
    """Paths of (img2d.tif, mask2d.tif) inside the installed stardist distribution."""
    try:
        dist = importlib.metadata.distribution("stardist")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            "the real-data tests need the stardist wheel: .venv/bin/pip install --no-deps stardist==0.9.2 "
            "(make install does this)"
        ) from None
    found = {}
    for f in dist.files or ():
        if f.parent.as_posix() == "stardist/data/images" and f.name in ("img2d.tif", "mask2d.tif"):
            found[f.name] = Path(dist.locate_file(f))
    if len(found) != 2:
        raise RuntimeError(f"stardist {dist.version} does not ship data/images/img2d.tif and mask2d.tif")
    return found["img2d.tif"], found["mask2d.tif"]


def read_stardist() -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (512, 512) grey image, uint8 (512, 512) mask with 0 = background, 1 = nucleus)."""
    image_path, mask_path = stardist_files()
    image = np.asarray(Image.open(image_path))
    instances = np.asarray(Image.open(mask_path))
    if image.shape != instances.shape or image.max() > 255:
        raise RuntimeError(f"unexpected stardist data: {image.shape} {instances.shape} max {image.max()}")
    return image.astype(np.uint8), (instances > 0).astype(np.uint8)


QUADRANTS = {"train": ("tl", "tr", "bl"), "val": ("br",)}


def write_stardist_folder(root: Path) -> Path:
    """Write the stardist image as `folder:` data under `root` (see the module docstring); returns root."""
    image, mask = read_stardist()
    h, w = image.shape
    cuts = {
        "tl": (slice(0, h // 2), slice(0, w // 2)),
        "tr": (slice(0, h // 2), slice(w // 2, w)),
        "bl": (slice(h // 2, h), slice(0, w // 2)),
        "br": (slice(h // 2, h), slice(w // 2, w)),
    }
    root = Path(root)
    for split, names in QUADRANTS.items():
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for name in names:
            Image.fromarray(image[cuts[name]], mode="L").save(root / split / "images" / f"nuclei_{name}.png")
            Image.fromarray(mask[cuts[name]], mode="L").save(root / split / "masks" / f"nuclei_{name}.png")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root
