"""Built-in synthetic segmentation data: no files, no download, deterministic from a seed.

Three tasks, each built to expose one claim about dilated convolution (the demo report measures all three):

`synthetic:shapes`: small-object loss (Long et al., FCN, CVPR 2015; Yu & Koltun, ICLR 2016).
    Classes `background, disc, box, diamond`. The background is a low-saturation texture: smooth value
    noise (a coarse random grid upsampled bilinearly) plus a sinusoidal grating of random orientation and
    period, a random grey level and tint, and per-pixel noise. On it sit 3 to `max_objects` objects, each a
    disc (`x^2 + y^2 <= r^2`), an axis-aligned box or a diamond (`|x| + |y| <= r`) whose class fixes both its
    shape and its hue (disc red, box green, diamond blue; per-object brightness jitter and per-pixel noise), so
    even a 2 px object can be classified from its colour: what loses it is resolution, not ambiguity.
    Object sizes: the target sqrt(area) `s` is drawn log-uniformly from [2, min(64, 0.6 * size)), so each
    octave [2,4), [4,8), [8,16), [16,32), [32,64) (the object-recall buckets of `atrous eval`) gets the same
    share of draws; objects are placed largest first, inside the image, with at least a 1-pixel gap to every
    other object (so two objects never merge into one 8-connected component), and an object that finds no
    free place in 30 tries is dropped (this thins the largest bucket on small images).

`synthetic:borders`: small objects that need their own neighbourhood, large ones that need context.
    `shapes` with two changes: every object's colour is a uniform random RGB value, and its class is written
    only in a 2 px band along its border, as a stripe pattern of +-45 around that colour: disc = stripes
    alternating by row, box = by column, diamond = a checkerboard. Inside the band the object is flat. A
    pixel's own colour says nothing about the class; a small object (all band) is classified from its few
    pixels seen together (rate-1 taps); a pixel at the centre of a 60 px object only by a network whose
    field reaches the object's border (about 30 px away). A stack of large rates has the second and not the
    first (its taps land outside a small object); a small-rate (HDC) stack the first and not the second.

`synthetic:texture`: gridding (Wang et al., "Understanding Convolution for Semantic Segmentation", WACV
    2018; Yu, Koltun & Funkhouser, DRN, CVPR 2017). Classes `flat, checker`. The image is cut into Voronoi
    cells around `regions` uniform random sites; each cell's class is a fair coin, independent of the
    geometry. Each cell draws one value X per channel, uniform on [32, 224). A `flat` cell is X everywhere; a
    `checker` cell is X on pixels with (row + col) even and Y = 32 + ((X - 32 + 96) mod 192) on pixels with
    (row + col) odd: Y is again uniform on [32, 224) and |X - Y| = 96 always. Per-pixel Gaussian noise
    (sigma 6) is added to both, then the image is rounded and clipped to uint8.
    The point: on each of the four parity sublattices `image[:, p::2, q::2]` every cell shows one value
    uniform on [32, 224) plus iid noise whatever its class, and cell values are independent across cells, so
    the sublattice image is independent of the label map. A network whose every convolution has an even rate
    (a gridded stack such as rates 2,2,2,2,2,2 after 1x1 layers) computes each output pixel from its own
    sublattice only and can do no better than the class prior (50 %); a single rate-1 (or odd-rate) layer
    sees the opposite-parity neighbour and the task becomes easy (|X - Y| = 96 against noise of 6).
    `tests/test_data_synthetic.py` checks the sublattice property on generated data.

Items are `(torchvision.tv_tensors.Image uint8 (3, H, W), tv_tensors.Mask int64 (H, W))` (no ignore label:
every pixel is labelled), generated on access from `SeedSequence([task, seed, split, index])`: the same
(seed, split, index) always gives the same item, and `train`, `val` and `test` never share an item.
Generation is vectorised numpy (a few milliseconds per item: about 2 ms for a 64 px texture, 8 ms for a 96 px
shapes image, measured on a loaded 2-core machine).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from atrous.errors import AtrousError

SPLITS = ("train", "val", "test")
# default number of items per split (option `n` overrides)
_DEFAULT_N = {"train": 256, "val": 64, "test": 64}


# ----------------------------------------------------------------------------------------------------------
# generators: rng -> (image uint8 (H, W, 3), mask int64 (H, W))
# ----------------------------------------------------------------------------------------------------------
SHAPES_CLASSES = ["background", "disc", "box", "diamond"]
SHAPES_PALETTE = [(0, 0, 0), (220, 50, 50), (50, 180, 60), (60, 90, 220)]
# class hue (RGB at full brightness): colour alone identifies the class, even for a 2 px object
_SHAPE_COLOURS = np.array([[0, 0, 0], [215, 45, 40], [45, 190, 50], [50, 70, 225]], dtype=np.float32)
_OCTAVE_MIN = 2.0  # smallest target sqrt(area), px
_OCTAVE_MAX = 64.0  # largest target sqrt(area), px


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-saturation textured background, float32 (H, W, 3) in about [0, 255]."""
    # smooth value noise: a coarse grid upsampled bilinearly (separable interpolation as two matmuls)
    cells = max(2, size // 12)
    grid = rng.normal(0.0, 1.0, size=(cells, cells)).astype(np.float32)
    pos = np.linspace(0, cells - 1, size, dtype=np.float32)
    lo = np.minimum(pos.astype(np.int64), cells - 2)
    frac = pos - lo
    interp = np.zeros((size, cells), dtype=np.float32)  # (size, cells): row i mixes grid lines lo, lo+1
    interp[np.arange(size), lo] = 1 - frac
    interp[np.arange(size), lo + 1] = frac
    smooth = interp @ grid @ interp.T  # (size, size)
    # a sinusoidal grating of random orientation and period (4 to 16 px)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(4.0, 16.0)
    grating = np.sin(
        2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + rng.uniform(0, 6.3)
    )
    texture = 22.0 * smooth + rng.uniform(5.0, 20.0) * grating  # (H, W)
    grey = rng.uniform(70.0, 180.0)
    tint = rng.uniform(-15.0, 15.0, size=3).astype(np.float32)  # low saturation: objects keep their hue
    noise = rng.normal(0.0, 6.0, size=(size, size, 3)).astype(np.float32)
    return grey + tint + texture[..., None] + noise


def _shape_mask(kind: int, s: float, cy: float, cx: float, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Boolean (h, w) window at (y0, x0) of a shape with target sqrt(area) `s` centred at (cy, cx)."""
    yy = np.arange(y0, y0 + h, dtype=np.float32)[:, None] + 0.5 - cy
    xx = np.arange(x0, x0 + w, dtype=np.float32)[None, :] + 0.5 - cx
    if kind == 1:  # disc: pi r^2 = s^2
        r = s / math.sqrt(math.pi)
        return yy * yy + xx * xx <= r * r
    if kind == 2:  # box: side s
        half = s / 2
        return (np.abs(yy) <= half) & (np.abs(xx) <= half)
    r = s / math.sqrt(2.0)  # diamond: 2 r^2 = s^2
    return np.abs(yy) + np.abs(xx) <= r


_BAND = 2  # width (px) of the border band that carries a `borders` object's class
_BAND_CONTRAST = 45.0


def _band(shape: np.ndarray, kind: int, y0: int, x0: int) -> np.ndarray:
    """(band (h, w) bool, pattern sign (h, w) float32 in {-1, 1}) of a `borders` object: the shape's pixels
    within _BAND px (chessboard) of its outside, and the class's stripes in image coordinates."""
    h, w = shape.shape
    pad = np.pad(shape, _BAND, constant_values=False)
    inner = np.ones_like(shape)
    for dy in range(2 * _BAND + 1):
        for dx in range(2 * _BAND + 1):
            inner &= pad[dy : dy + h, dx : dx + w]
    rows = np.arange(y0, y0 + h)[:, None]
    cols = np.arange(x0, x0 + w)[None, :]
    parity = {1: rows + 0 * cols, 2: cols + 0 * rows, 3: rows + cols}[kind] % 2
    return shape & ~inner, (2 * parity - 1).astype(np.float32)


def _shapes_item(
    rng: np.random.Generator, size: int, max_objects: int, *, class_colour: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """`class_colour`: each object's hue is its class's (shapes); else a random RGB colour with the class
    written in a striped border band (borders)."""
    image = _background(rng, size)
    mask = np.zeros((size, size), dtype=np.int64)
    taken = np.zeros((size, size), dtype=bool)  # object pixels grown by 1 px: the required gap
    s_max = min(_OCTAVE_MAX, 0.6 * size)
    k = int(rng.integers(3, max_objects + 1))
    # log-uniform target sizes: equal share per octave bucket; largest first so big objects find room
    sizes = np.sort(np.exp(rng.uniform(math.log(_OCTAVE_MIN), math.log(s_max), size=k)))[::-1]
    kinds = rng.integers(1, len(SHAPES_CLASSES), size=k)
    for s, kind in zip(sizes, kinds):
        extent = math.ceil(s * 0.8) + 1  # half-extent bound of all three shapes (diamond: s/sqrt2)
        if 2 * extent + 1 > size:
            continue
        for _ in range(30):
            cy = rng.uniform(extent, size - extent)
            cx = rng.uniform(extent, size - extent)
            y0, x0 = int(cy) - extent, int(cx) - extent
            y0, x0 = max(y0, 0), max(x0, 0)
            h, w = min(2 * extent + 1, size - y0), min(2 * extent + 1, size - x0)
            shape = _shape_mask(int(kind), float(s), cy, cx, y0, x0, h, w)
            if not shape.any() or (taken[y0 : y0 + h, x0 : x0 + w] & shape).any():
                continue
            if class_colour:
                colour = _SHAPE_COLOURS[kind] * rng.uniform(0.75, 1.05)
            else:  # a random colour: the class is only in the border band's stripes
                colour = rng.uniform(0.0, 255.0, size=3).astype(np.float32)
            window = image[y0 : y0 + h, x0 : x0 + w]
            window[shape] = colour + rng.normal(0.0, 8.0, size=(int(shape.sum()), 3))
            if not class_colour:
                band, sign = _band(shape, int(kind), y0, x0)
                window[band] += _BAND_CONTRAST * sign[band][:, None]
            mask[y0 : y0 + h, x0 : x0 + w][shape] = kind
            # grow by one pixel (8-neighbourhood) so the next object keeps a gap
            grown = np.zeros((h + 2, w + 2), dtype=bool)
            for dy in range(3):
                for dx in range(3):
                    grown[dy : dy + h, dx : dx + w] |= shape
            gy0, gx0 = y0 - 1, x0 - 1
            sy, sx = max(gy0, 0), max(gx0, 0)
            ey, ex = min(gy0 + h + 2, size), min(gx0 + w + 2, size)
            taken[sy:ey, sx:ex] |= grown[sy - gy0 : ey - gy0, sx - gx0 : ex - gx0]
            break
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def _borders_item(rng: np.random.Generator, size: int, max_objects: int) -> tuple[np.ndarray, np.ndarray]:
    return _shapes_item(rng, size, max_objects, class_colour=False)


TEXTURE_CLASSES = ["flat", "checker"]
TEXTURE_PALETTE = [(70, 130, 180), (230, 140, 40)]
_TEX_LOW, _TEX_RANGE = 32.0, 192.0  # cell values uniform on [32, 224)
_TEX_NOISE = 6.0


def _texture_item(rng: np.random.Generator, size: int, regions: int) -> tuple[np.ndarray, np.ndarray]:
    sites = rng.uniform(0, size, size=(regions, 2)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # (regions, H, W) squared distances -> nearest site = Voronoi cell id (H, W)
    d2 = (yy[None] + 0.5 - sites[:, 0, None, None]) ** 2 + (xx[None] + 0.5 - sites[:, 1, None, None]) ** 2
    cell = d2.argmin(axis=0)
    label = rng.integers(0, 2, size=regions)  # fair coin per cell, independent of the geometry
    x = rng.uniform(_TEX_LOW, _TEX_LOW + _TEX_RANGE, size=(regions, 3)).astype(np.float32)
    y = _TEX_LOW + np.mod(x - _TEX_LOW + _TEX_RANGE / 2, _TEX_RANGE)  # uniform too; |x - y| = 96
    odd = ((np.arange(size)[:, None] + np.arange(size)[None, :]) % 2 == 1)[..., None]  # (H, W, 1)
    checker = (label[cell] == 1)[..., None]
    value = np.where(odd & checker, y[cell], x[cell])  # (H, W, 3)
    value = value + rng.normal(0.0, _TEX_NOISE, size=value.shape).astype(np.float32)
    return np.clip(np.rint(value), 0, 255).astype(np.uint8), label[cell].astype(np.int64)


# ----------------------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------------------
# name -> (classes, palette, generator, {option: default}); `n`, `size` and `seed` are common to all
_TASKS: dict[str, tuple[list[str], list[tuple[int, int, int]], Callable, dict[str, int]]] = {
    "shapes": (SHAPES_CLASSES, SHAPES_PALETTE, _shapes_item, {"size": 96, "max_objects": 8}),
    "texture": (TEXTURE_CLASSES, TEXTURE_PALETTE, _texture_item, {"size": 64, "regions": 10}),
    "borders": (SHAPES_CLASSES, SHAPES_PALETTE, _borders_item, {"size": 96, "max_objects": 8}),
}
_TASK_ID = {name: i for i, name in enumerate(_TASKS)}
_MINIMUM = {"n": 1, "size": 8, "seed": 0, "max_objects": 3, "regions": 1}


def available() -> list[str]:
    """Names accepted by `build` (and by the dataset spec `synthetic:NAME`)."""
    return sorted(_TASKS)


class SyntheticSegmentation(torch.utils.data.Dataset):
    """`n` generated items of one task and split; item `i` is a pure function of (task, seed, split, i)."""

    def __init__(
        self,
        *,
        name: str,
        split: str,
        n: int,
        seed: int,
        size: int,
        task_options: dict[str, int],
        transform: Callable | None = None,
    ) -> None:
        classes, palette, generator, _ = _TASKS[name]
        self.name = name
        self.split = split
        self.n = n
        self.seed = seed
        self.size = size
        self.task_options = dict(task_options)
        self.transform = transform
        self.classes = list(classes)
        self.palette = list(palette)
        self.num_classes = len(classes)
        self._generator = generator

    def __len__(self) -> int:
        return self.n

    def generate(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item `index` as numpy arrays: (uint8 (H, W, 3), int64 (H, W))."""
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} items")
        seq = np.random.SeedSequence([_TASK_ID[self.name], self.seed, SPLITS.index(self.split), index])
        return self._generator(np.random.default_rng(seq), self.size, **self.task_options)

    def __getitem__(self, index: int):
        image, mask = self.generate(index)
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))
        mask = tv_tensors.Mask(torch.from_numpy(mask))
        if self.transform is not None:
            return self.transform(image, mask)
        return image, mask

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v}" for k, v in self.task_options.items())
        return f"SyntheticSegmentation({self.name!r}, split={self.split!r}, n={self.n}, size={self.size}, seed={self.seed}{opts})"


def _as_int(name: str, key: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < _MINIMUM[key]:
        raise AtrousError(f"synthetic:{name} option {key}={value!r}: must be an integer >= {_MINIMUM[key]}")
    return value


def build(name: str, split: str | None = None, *, transform: Callable | None = None, **options: Any):
    """The synthetic data set `name` ("shapes" or "texture") for `split` ("train", "val", "test"; None =
    "train"). Options (integers): `n` items (default 256 for train, 64 otherwise), `size` (square side in px),
    `seed` (default 0; each split draws from its own stream), and per task `max_objects` (shapes) or
    `regions` (texture). `transform(image, mask)` is applied to each item when given."""
    if name not in _TASKS:
        raise AtrousError(f"unknown synthetic data set {name!r}: choose one of {', '.join(available())}")
    split = "train" if split is None else split
    if split not in SPLITS:
        raise AtrousError(f"synthetic:{name} has no split {split!r}: choose one of {', '.join(SPLITS)}")
    defaults = _TASKS[name][3]
    allowed = ["n", "seed", *defaults]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise AtrousError(
            f"synthetic:{name} has no option {unknown[0]!r}: valid options are {', '.join(sorted(allowed))}"
        )
    values = {"n": _DEFAULT_N[split], "seed": 0, **defaults}
    values.update({k: _as_int(name, k, v) for k, v in options.items()})
    task_options = {k: values[k] for k in defaults if k != "size"}
    return SyntheticSegmentation(
        name=name,
        split=split,
        n=values["n"],
        seed=values["seed"],
        size=values["size"],
        task_options=task_options,
        transform=transform,
    )
