"""Built-in synthetic data: determinism, types, class and size coverage, and the texture task's sublattice
property (every parity sublattice looks the same whatever the class), checked on generated data with
independent code (scipy's connected components, two-sample Kolmogorov-Smirnov tests)."""

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from scipy.stats import ks_2samp
from torchvision import tv_tensors

from atrous.data import synthetic
from atrous.errors import AtrousError


def test_available_and_metadata():
    assert synthetic.available() == ["borders", "shapes", "texture"]
    for name in synthetic.available():
        ds = synthetic.build(name, "val", n=3, size=40)
        assert len(ds) == 3
        assert ds.num_classes == len(ds.classes) == len(ds.palette)
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in ds.palette)
        image, mask = ds[0]
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
        assert image.shape == (3, 40, 40)
        assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64
        assert mask.shape == (40, 40)
        assert int(mask.min()) >= 0 and int(mask.max()) < ds.num_classes


def test_deterministic_and_splits_differ():
    for name in synthetic.available():
        a = synthetic.build(name, "train", n=4, size=48, seed=7)
        b = synthetic.build(name, "train", n=4, size=48, seed=7)
        for i in range(4):
            assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
        # access order does not matter (items are generated from their own seed)
        assert torch.equal(a[3][0], synthetic.build(name, "train", n=4, size=48, seed=7)[3][0])
        val = synthetic.build(name, "val", n=4, size=48, seed=7)
        other_seed = synthetic.build(name, "train", n=4, size=48, seed=8)
        for i in range(4):
            assert not torch.equal(a[i][0], val[i][0])
            assert not torch.equal(a[i][0], other_seed[i][0])


def test_transform_is_applied():
    ds = synthetic.build("shapes", "train", n=2, size=32, transform=lambda im, m: (im.float() / 255, m + 1))
    image, mask = ds[1]
    raw_image, raw_mask = synthetic.build("shapes", "train", n=2, size=32)[1]
    assert torch.allclose(image, raw_image.float() / 255)
    assert torch.equal(mask, raw_mask + 1)


def test_bad_names_and_options():
    with pytest.raises(AtrousError, match="borders, shapes, texture"):
        synthetic.build("nope", "train")
    with pytest.raises(AtrousError, match="valid options"):
        synthetic.build("shapes", "train", regions=3)
    with pytest.raises(AtrousError, match="size"):
        synthetic.build("texture", "train", size=2)
    with pytest.raises(AtrousError, match="split"):
        synthetic.build("texture", "training")
    # values from a `?key=value` query arrive as strings
    assert synthetic.build("texture", "train", n="5", size="16").size == 16
    with pytest.raises(IndexError):
        synthetic.build("texture", "train", n=2)[2]


def _objects(mask: np.ndarray, num_classes: int) -> list[tuple[int, float]]:
    """(class, sqrt(area)) of every 8-connected component of every non-background class."""
    out = []
    for c in range(1, num_classes):
        labels, k = ndi.label(mask == c, structure=np.ones((3, 3), dtype=int))
        areas = np.bincount(labels.ravel(), minlength=k + 1)[1:]
        out += [(c, float(np.sqrt(a))) for a in areas]
    return out


def test_shapes_cover_every_class_and_size_bucket():
    ds = synthetic.build("shapes", "val", n=60, size=96)
    objects = [o for i in range(len(ds)) for o in _objects(ds.generate(i)[1], ds.num_classes)]
    classes = np.array([c for c, _ in objects])
    sizes = np.array([s for _, s in objects])
    assert set(classes.tolist()) == {1, 2, 3}
    counts = np.histogram(sizes, bins=[0, 4, 8, 16, 32, np.inf])[0]
    assert (counts >= 20).all(), counts  # every object-recall bucket is populated
    assert sizes.min() < 3 and sizes.max() > 40  # sizes span about 2 to 64 px
    # every placed object is its own component: the generator's count of pixels per class equals the sum
    # of the component areas (no merged or split objects)
    for i in range(5):
        m = ds.generate(i)[1]
        per_image = _objects(m, ds.num_classes)
        assert sum(round(s * s) for _, s in per_image) == int((m > 0).sum())


def _regions(mask: np.ndarray):
    """(class, boolean region) for each 4-connected region of one class (touching Voronoi cells of the same
    class form one region; the statistics below are per region, so that is fine)."""
    for c in (0, 1):
        labels, k = ndi.label(mask == c)
        for j in range(1, k + 1):
            yield c, labels == j


def _coset_stats(n: int = 120, size: int = 48):
    """Per region and per parity sublattice (p, q): mean value, and the mean absolute difference to the
    same-sublattice neighbour two columns right and to the opposite-parity neighbour one column right."""
    ds = synthetic.build("texture", "val", n=n, size=size, regions=6)
    stats = {c: {"value": {}, "same": [], "opposite": []} for c in (0, 1)}
    for i in range(n):
        image, mask = ds.generate(i)
        img = image[..., 0].astype(np.float64)  # one channel suffices; all are built alike
        for c, region in _regions(mask):
            if region.sum() < 40:
                continue
            for p in (0, 1):
                for q in (0, 1):
                    sub = region[p::2, q::2]
                    stats[c]["value"].setdefault((p, q), []).append(img[p::2, q::2][sub].mean())
            inner2 = region[:, :-2] & region[:, 2:]
            inner1 = region[:, :-1] & region[:, 1:]
            stats[c]["same"].append(np.abs(img[:, :-2] - img[:, 2:])[inner2].mean())
            stats[c]["opposite"].append(np.abs(img[:, :-1] - img[:, 1:])[inner1].mean())
    return stats


def test_texture_classes_are_identical_on_every_parity_sublattice():
    stats = _coset_stats()
    flat, checker = stats[0], stats[1]
    assert len(flat["same"]) > 100 and len(checker["same"]) > 100
    # on each sublattice (p, q) a region's value is uniform on [32, 224) whatever its class: the KS test
    # finds no difference (it would, with these sample sizes, for a shift of a few grey levels)
    for pq in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        a, b = np.array(flat["value"][pq]), np.array(checker["value"][pq])
        assert ks_2samp(a, b).pvalue > 0.01, pq
        assert a.min() > 26 and b.max() < 230 and abs(a.mean() - 128) < 10 and abs(b.mean() - 128) < 10
    # differences within one sublattice (rate-2 neighbours) look the same too: noise only
    assert ks_2samp(flat["same"], checker["same"]).pvalue > 0.01
    assert np.mean(flat["same"]) < 12 and np.mean(checker["same"]) < 12
    # ...while opposite-parity neighbours (rate 1) separate the classes completely: the test has power
    assert ks_2samp(flat["opposite"], checker["opposite"]).pvalue < 1e-30
    assert max(flat["opposite"]) < 20 < 80 < min(checker["opposite"])


def test_texture_power_check_detects_a_sublattice_leak():
    """The KS check above is able to fail: shifting the checker regions' even sublattice by 48 grey levels
    (as a naive design, checker = X +- 48 on the two parities, would) is detected."""
    ds = synthetic.build("texture", "val", n=120, size=48, regions=6)
    flat, checker = [], []
    for i in range(len(ds)):
        image, mask = ds.generate(i)
        img = image[..., 0].astype(np.float64)
        leaked = img + 48.0 * (mask == 1)
        for c, region in _regions(mask):
            if region.sum() >= 40:
                (flat if c == 0 else checker).append(leaked[0::2, 0::2][region[0::2, 0::2]].mean())
    assert ks_2samp(flat, checker).pvalue < 0.01


def test_borders_colour_says_nothing_about_the_class():
    """shapes: an object's mean colour names its class (red disc, green box, blue diamond); borders: the
    same generator with random colours, so the dominant channel is no better than chance (1/3)."""
    for name, low, high in (("shapes", 0.95, 1.0), ("borders", 0.2, 0.5)):
        ds = synthetic.build(name, "val", n=60, size=96, seed=3)
        hits, total = 0, 0
        for i in range(len(ds)):
            image, mask = ds.generate(i)
            for c in range(1, 4):
                labels, k = ndi.label(mask == c, structure=np.ones((3, 3), dtype=int))
                for j in range(1, k + 1):
                    colour = image[labels == j].astype(float).mean(axis=0)
                    hits += int(np.argmax(colour) == c - 1)  # red=disc, green=box, blue=diamond
                    total += 1
        assert total > 200 and low <= hits / total <= high, (name, hits / total)
    assert synthetic.build("borders", "val", n=1).classes == synthetic.build("shapes", "val", n=1).classes


def test_borders_class_is_written_in_the_border_band():
    """Each `borders` object of at least 8 px: inside its 2 px border band, pixel brightness follows its
    class's parity pattern (rows for discs, columns for boxes, checkerboard for diamonds) far better than
    the other two patterns; pixels deeper inside carry none of them (checked with scipy's erosion)."""
    ds = synthetic.build("borders", "val", n=20, size=96, seed=5)
    checked = 0
    for i in range(len(ds)):
        image, mask = ds.generate(i)
        grey = image.astype(float).mean(axis=2)
        rows, cols = np.indices(mask.shape)
        patterns = {1: rows % 2, 2: cols % 2, 3: (rows + cols) % 2}
        for c in (1, 2, 3):
            labels, k = ndi.label(mask == c, structure=np.ones((3, 3), dtype=int))
            for j in range(1, k + 1):
                obj = labels == j
                if obj.sum() < 64:
                    continue
                inner = ndi.binary_erosion(obj, structure=np.ones((5, 5)), border_value=0)
                band = obj & ~inner
                # mean brightness difference between the pattern's 1 and 0 pixels, per pattern
                gap = {
                    p: grey[band & (v == 1)].mean() - grey[band & (v == 0)].mean()
                    for p, v in patterns.items()
                }
                assert gap[c] > 60 and all(abs(gap[p]) < 30 for p in gap if p != c), (c, gap)
                deep = {
                    p: grey[inner & (v == 1)].mean() - grey[inner & (v == 0)].mean()
                    for p, v in patterns.items()
                }
                assert all(abs(g) < 10 for g in deep.values()), deep
                checked += 1
    assert checked >= 20
