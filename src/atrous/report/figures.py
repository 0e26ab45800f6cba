"""The demo report's PNG figures (matplotlib, Agg backend), each written atomically; drawn only from
results.json's numbers, the run folders' saved predictions and the data sets' validation images."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

from atrous._io import atomic_write_bytes
from atrous.data.io import read_image, read_mask
from atrous.report import plan
from atrous.report.runs import PREDICTIONS

PALETTES = {
    "shapes": [(0, 0, 0), (220, 50, 50), (50, 180, 60), (60, 90, 220)],
    "borders": [(0, 0, 0), (220, 50, 50), (50, 180, 60), (60, 90, 220)],
    "texture": [(70, 130, 180), (230, 140, 40)],
    "nuclei": [(0, 0, 0), (255, 200, 0)],
}


def _save(fig, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path.name


def recall_by_octave(results: dict, keys: list[str], path: Path, *, title: str) -> str:
    """Mean object recall (error bars: std over seeds) per octave bucket of sqrt(area); a dotted line at
    2^k for each pooling network (its output stride)."""
    fig, ax = plt.subplots(figsize=(8, 4.4))
    octaves = results["octaves"]
    x = np.arange(len(octaves))
    for i, key in enumerate(k for k in keys if k in results["models"]):
        m = results["models"][key]
        mean = [np.nan if b["recall"] is None else b["recall"] for b in m["mean"]["octave_recall"]]
        std = [0 if b["recall"] is None else b["recall"] for b in m["std"]["octave_recall"]]
        colour = f"C{i}"
        ax.errorbar(
            x,
            mean,
            yerr=std,
            marker="o",
            capsize=3,
            color=colour,
            label=f"{key} (OS {m['mean']['output_stride']})",
        )
        stride = m["mean"]["output_stride"]
        if stride > 1:  # sqrt(area) = 2^k sits at the left edge of bucket log2(2^k)
            ax.axvline(np.log2(stride) - 0.5, color=colour, linestyle=":", alpha=0.8)
    counts = next(iter(results["models"][k] for k in keys if k in results["models"]))["mean"]["octave_recall"]
    ax.set_xticks(x, [f"[{o['min']},{o['max']})\n{b['objects']} obj" for o, b in zip(octaves, counts)])
    ax.set_xlabel("object size sqrt(area) in px (validation objects); dotted: the model's 2^k")
    ax.set_ylabel("object recall (mean ± std over seeds)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def metric_by_model(results: dict, keys: list[str], metrics: list[str], path: Path, *, title: str) -> str:
    """Grouped bars: each metric's mean over seeds per model, with the std as error bars."""
    keys = [k for k in keys if k in results["models"]]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(keys) + 2), 3.6))
    width = 0.8 / len(metrics)
    for j, metric in enumerate(metrics):
        mean = [results["models"][k]["mean"].get(metric) or 0.0 for k in keys]
        std = [results["models"][k]["std"].get(metric) or 0.0 for k in keys]
        ax.bar(np.arange(len(keys)) + j * width, mean, width, yerr=std, capsize=3, label=metric)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, keys, rotation=20, fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _val_image(out: Path, task: str) -> tuple[np.ndarray, np.ndarray]:
    root = out / "data" / task / "val"
    return read_image(root / "images" / "0000.png"), read_mask(root / "masks" / "0000.png")


def _colour(mask: np.ndarray, palette: list) -> np.ndarray:
    """(H, W) labels -> (H, W, 3) colours; values outside the palette (the ignore label) are black."""
    colours = np.asarray(palette, dtype=np.uint8)
    labels = np.asarray(mask, dtype=np.int64)
    out = np.zeros((*labels.shape, 3), dtype=np.uint8)
    known = (labels >= 0) & (labels < len(colours))
    out[known] = colours[labels[known]]
    return out


def predictions(results: dict, out: Path, task: str, keys: list[str], path: Path, *, title: str) -> str:
    """The first validation image, its ground truth and each model's prediction (first seed)."""
    image, mask = _val_image(out, task)
    palette = PALETTES[task]
    panels = [("input", image), ("ground truth", _colour(mask, palette))]
    for key in keys:
        m = results["models"].get(key)
        if m is None:
            continue
        saved = out / m["runs"][0]["dir"] / PREDICTIONS
        if saved.is_file():
            panels.append((key, _colour(np.load(saved)["predictions"][0], palette)))
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    aspect = image.shape[1] / image.shape[0]
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols * aspect, 3.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (label, img) in zip(axes.ravel(), panels):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def coverage_maps(static: dict, path: Path) -> str:
    """Path-count maps of the rate lists: white pixels inside the field are holes (no path)."""
    cov = static["coverage"]
    fig, axes = plt.subplots(1, len(cov), figsize=(3.6 * len(cov), 3.8))
    for ax, (key, info) in zip(np.atleast_1d(axes), cov.items()):
        grid = np.asarray(info["map"], dtype=np.float64)
        masked = np.ma.masked_where(grid <= 0, grid)
        cmap = plt.get_cmap("viridis").with_extremes(bad="white")
        ax.imshow(masked, cmap=cmap, norm=LogNorm(vmin=max(1.0, masked.min()), vmax=max(1.0, masked.max())))
        ax.set_title(
            f"{key}: rates {','.join(map(str, info['rates']))}\nRF {info['rf']}x{info['rf']}, holes "
            f"{info['holes']} ({100 * info['gridding_ratio']:.0f} %)",
            fontsize=9,
        )
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Coverage: paths from each input pixel to one output pixel (log scale; white = hole)")
    return _save(fig, path)


def erf_maps(results: dict, out: Path, path: Path) -> str:
    """ERF heatmaps of the rate-1 stacks (first seed) at initialisation and trained, with the share."""
    keys = [(d, k) for d, k in plan.ERF_STACKS.items() if k in results["models"]]
    fig, axes = plt.subplots(2, max(1, len(keys)), figsize=(2.8 * max(1, len(keys)), 5.8), squeeze=False)
    for col, (depth, key) in enumerate(keys):
        m = results["models"][key]
        saved = np.load(out / m["runs"][0]["dir"] / PREDICTIONS)
        for row, when in enumerate(("init", "trained")):
            ax = axes[row][col]
            ax.imshow(saved[f"erf_{when}"], cmap="magma")
            share = m["mean"][f"erf_{when}_share"]
            ax.set_title(f"{depth} layers, {when}\nRF {m['mean']['rf']} px, share {share:.2f}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Effective receptive fields of rate-1 stacks (gradient of the centre output)", fontsize=10)
    return _save(fig, path)


def write_all(results: dict, out: Path) -> dict[str, str]:
    """Every figure of the page: {name: file name in `out`}."""
    have = results["models"]
    figs: dict[str, str] = {"coverage": coverage_maps(results["static"], out / "coverage.png")}
    pooling = [f"pool{k}" for k in range(6)]
    if any(k in have for k in pooling):
        figs["pooling_recall"] = recall_by_octave(
            results,
            pooling,
            out / "pooling_recall.png",
            title="Object recall by size, k = 0..5 poolings (shapes)",
        )
        figs["pooling_metrics"] = metric_by_model(
            results,
            [*pooling, "hdc", "fcn32s", "fcn8s"],
            ["miou", "boundary_iou", "small_recall"],
            out / "pooling_metrics.png",
            title="mIoU, boundary IoU and recall < 8 px (shapes)",
        )
    for name, task, title in (
        ("pooling", "shapes", "shapes: pooling networks"),
        ("upsampling", "shapes", "shapes: output stride 8, three upsamplings"),
        ("gridding", "texture", "texture: gridded vs HDC"),
        ("neighbourhood", "borders", "borders: HDC vs large rates"),
        ("context", "borders", "borders: context heads at output stride 8"),
        ("nuclei", "nuclei", "real nuclei (validation: bottom half)"),
    ):
        keys = [k for k in results["experiments"][name]["models"] if k in have]
        if keys:
            figs[f"{name}_predictions"] = predictions(
                results, out, task, keys, out / f"{name}_predictions.png", title=title
            )
    for name, metrics in (
        ("upsampling", ["miou", "boundary_iou", "small_recall"]),
        ("neighbourhood", ["miou", "small_recall"]),
        ("context", ["miou", "boundary_iou"]),
        ("nuclei", ["miou", "recall", "boundary_iou"]),
    ):
        keys = [k for k in results["experiments"][name]["models"] if k in have]
        if keys:
            figs[f"{name}_metrics"] = metric_by_model(
                results, keys, metrics, out / f"{name}_metrics.png", title=f"{name}: mean ± std over seeds"
            )
    for name, keys, title in (
        (
            "neighbourhood_recall",
            ["brd_hdc", "brd_large", "brd_reparam"],
            "Object recall by size (borders)",
        ),
        ("nuclei_recall", ["nuc_pool4", "nuc_dilated"], "Nucleus recall by size (real nuclei)"),
    ):
        if any(k in have for k in keys):
            figs[name] = recall_by_octave(results, keys, out / f"{name}.png", title=title)
    if any(k in have for k in plan.ERF_STACKS.values()):
        figs["erf"] = erf_maps(results, out, out / "erf.png")
    return figs
