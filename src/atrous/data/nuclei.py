"""Real data that ships inside a package: the 2D fluorescence nuclei image and its instance mask from the
`stardist` wheel (Schmidt, Weigert et al., "Cell Detection with Star-convex Polygons", MICCAI 2018;
files `stardist/data/images/img2d.tif` and `mask2d.tif`, BSD-3-Clause; a crop of the DSB 2018 nuclei
data, Caicedo et al., Nature Methods 2019).

The package is located through its metadata and never imported (importing it would pull in TensorFlow), so
`pip install --no-deps stardist` is enough (`make install` does it). The image is 512x512, 16-bit, values
0..235: it is read by atrous's one reader (`atrous.data.io`), whose default 16-bit rule keeps values that fit
in 8 bits, so it is returned as 8 bits without change of value. Nuclei are mostly 15-25 px across.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np

from atrous.data.io import read_image, read_mask
from atrous.errors import AtrousError

CLASSES = ("background", "nucleus")
PALETTE = ((0, 0, 0), (255, 200, 0))
SOURCE = (
    "stardist {version} wheel, stardist/data/images/img2d.tif + mask2d.tif (Schmidt, Weigert et al., "
    "MICCAI 2018; BSD-3-Clause; from the DSB 2018 nuclei data)"
)
_INSTALL = "install it with `pip install --no-deps stardist==0.9.2` (`make install` does this)"


def files() -> tuple[Path, Path, str]:
    """(img2d.tif, mask2d.tif, stardist version) of the installed stardist distribution."""
    try:
        dist = importlib.metadata.distribution("stardist")
    except importlib.metadata.PackageNotFoundError:
        raise AtrousError(
            f"the real nuclei image comes from the stardist wheel, which is absent: {_INSTALL}"
        ) from None
    found = {}
    for f in dist.files or ():
        if f.parent.as_posix() == "stardist/data/images" and f.name in ("img2d.tif", "mask2d.tif"):
            found[f.name] = Path(dist.locate_file(f))
    if len(found) != 2 or not all(p.is_file() for p in found.values()):
        raise AtrousError(
            f"stardist {dist.version} does not ship data/images/img2d.tif and mask2d.tif: {_INSTALL}"
        )
    return found["img2d.tif"], found["mask2d.tif"], dist.version


def read() -> tuple[np.ndarray, np.ndarray, str]:
    """(uint8 (512, 512) grey image, int64 (512, 512) instance ids with 0 = background, provenance text)."""
    image_path, mask_path, version = files()
    image = read_image(image_path)[:, :, 0]  # auto: values <= 255 kept as they are (grey: R = G = B)
    instances = read_mask(mask_path)
    if image.shape != instances.shape:
        raise AtrousError(
            f"{image_path}: expected an image with a mask of the same shape, got {image.shape} and "
            f"{instances.shape}: reinstall stardist==0.9.2"
        )
    return image, instances, SOURCE.format(version=version)


def halves() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Disjoint train/val parts: {"train": top half, "val": bottom half} as (uint8 (256, 512, 3) RGB,
    uint8 (256, 512) mask with 0 = background, 1 = nucleus). A nucleus cut by the middle row is split."""
    image, instances, _ = read()
    h = image.shape[0] // 2
    rgb = np.repeat(image[:, :, None], 3, axis=2)
    mask = (instances > 0).astype(np.uint8)
    return {"train": (rgb[:h], mask[:h]), "val": (rgb[h:], mask[h:])}
