"""The demo report's PNG figures (matplotlib, Agg backend), each written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

from atrous._io import atomic_write_bytes


def _save(fig, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path.name


def _bucket_label(b: dict) -> str:
    return f"[{b['min']},{b['max']})" if b["max"] is not None else f"[{b['min']},inf)"


def recall_by_size(models: dict, path: Path) -> str:
    """Object recall per sqrt(area) bucket, one line per model."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    buckets = next(iter(models.values()))["object_recall_by_size"]
    x = np.arange(len(buckets))
    for key, m in models.items():
        y = [np.nan if b["recall"] is None else b["recall"] for b in m["object_recall_by_size"]]
        ax.plot(x, y, marker="o", label=f"{key} (OS {m['output_stride']})")
    ax.set_xticks(x, [f"{_bucket_label(b)}\n{b['objects']} obj" for b in buckets])
    ax.set_xlabel("object size: sqrt(area) in px, and number of validation objects")
    ax.set_ylabel("object recall")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Object recall by size (synthetic:shapes, validation split)")
    return _save(fig, path)


def coverage_maps(coverage: dict, maps: dict, path: Path) -> str:
    """Path-count maps of the rate lists: white pixels inside the field are holes (no path)."""
    fig, axes = plt.subplots(1, len(maps), figsize=(3.6 * len(maps), 3.8))
    for ax, (key, cov) in zip(np.atleast_1d(axes), maps.items()):
        masked = np.ma.masked_where(cov <= 0, cov)
        cmap = plt.get_cmap("viridis").with_extremes(bad="white")
        ax.imshow(masked, cmap=cmap, norm=LogNorm(vmin=max(1.0, masked.min()), vmax=max(1.0, masked.max())))
        info = coverage[key]
        ax.set_title(
            f"{key}: rates {','.join(map(str, info['rates']))}\n"
            f"RF {info['rf']}x{info['rf']}, holes {info['holes']} ({100 * info['gridding_ratio']:.0f} %)",
            fontsize=9,
        )
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Coverage: paths from each input pixel to one output pixel (log scale; white = hole)")
    return _save(fig, path)


def _colour(mask: np.ndarray, palette: list) -> np.ndarray:
    return np.asarray(palette, dtype=np.uint8)[mask]


def prediction_grid(
    images, masks, preds: dict, palette: list, path: Path, *, title: str, zoom: int = 1, rows: int = 4
) -> str:
    """Rows of examples: input, ground truth, then each model's prediction (class colours)."""
    n = min(rows, len(images))
    cols = 2 + len(preds)
    fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 1.9 * n + 0.4), squeeze=False)
    for r in range(n):
        panels = [
            ("input", images[r].permute(1, 2, 0).numpy()),
            ("ground truth", _colour(masks[r].numpy(), palette)),
        ]
        panels += [(key, _colour(p[r].numpy(), palette)) for key, p in preds.items()]
        for c, (label, img) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(
                np.kron(img, np.ones((zoom, zoom, 1), dtype=img.dtype)) if zoom > 1 else img,
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def erf_maps(erf: dict, models: dict, path: Path) -> str:
    """Effective receptive fields (input-gradient magnitude of the centre output), with the theoretical RF."""
    fig, axes = plt.subplots(1, len(erf), figsize=(2.3 * len(erf), 2.7), squeeze=False)
    for ax, (key, heat) in zip(axes[0], erf.items()):
        ax.imshow(heat, cmap="magma")
        m = models[key]
        rf = "global" if m["global"] else f"{m['rf']}"
        ax.set_title(f"{key}\nERF r95={m['erf_radius95']:.0f}, RF {rf}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Effective receptive fields of the trained models", fontsize=10)
    return _save(fig, path)
