"""The diagnostics' figures, each a PNG written atomically: coverage maps (`atrous grid`), the valid-weight
curve (DeepLab v3 Fig. 4), the ERF heat-map (`atrous erf`) and object-size histograms (`atrous objects`).
matplotlib is imported when a figure is drawn, with the file-only Agg backend."""

from __future__ import annotations

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    from atrous._io import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    _pyplot().close(fig)


def plot_coverage(maps: list[tuple[str, list[list]]], path) -> None:
    """(title, 2-D path counts) maps side by side; log colour scale, holes in white."""
    import matplotlib

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * len(maps), 4.0), squeeze=False)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    for ax, (title, grid) in zip(axes[0], maps):
        arr = np.array([[float(v) for v in row] for row in grid])
        shown = np.where(arr > 0, np.log10(np.where(arr > 0, arr, 1.0)), np.nan)
        im = ax.imshow(shown, cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, label="log10 paths")
    _save(fig, path)


def plot_valid_weights(curve: list[dict], path) -> None:
    """Share of positions with each number of valid weights against the rate (`valid_weight_curve`)."""
    plt = _pyplot()
    rates = [c["rate"] for c in curve]
    counts = sorted({k for c in curve for k in c["histogram"]})
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for k in counts:
        ax.plot(rates, [c["histogram"].get(k, 0.0) for c in curve], label=f"{k} valid")
    ax.plot(rates, [c["mean_fraction"] for c in curve], "k--", label="mean fraction")
    h, w = curve[0]["size"]
    ks = curve[0]["kernel_size"]
    ax.set(xlabel="atrous rate", ylabel="share of positions", title=f"valid weights, {ks}x{ks} on {h}x{w}")
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)


def plot_erf(result: dict, path, *, title: str = "effective receptive field") -> None:
    """The ERF heat-map (`erf`) with its 50 % / 95 % circles and the theoretical receptive field's box."""
    from matplotlib.patches import Circle, Rectangle

    plt = _pyplot()
    heat = result["heatmap"]
    cy, cx = result["centre"]
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    im = ax.imshow(heat, cmap="magma", interpolation="nearest")
    for r, style in ((result["radius50"], "--"), (result["radius95"], "-")):
        ax.add_patch(Circle((cx, cy), r, fill=False, color="cyan", ls=style, lw=1))
    rh, rw = result["rf"]
    ax.add_patch(Rectangle((cx - rw / 2, cy - rh / 2), rw, rh, fill=False, color="white", lw=0.8, ls=":"))
    ax.set_xlim(-0.5, heat.shape[1] - 0.5)
    ax.set_ylim(heat.shape[0] - 0.5, -0.5)
    ax.set_title(f"{title}\nr50={result['radius50']:.1f}px r95={result['radius95']:.1f}px", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, path)


def plot_object_sizes(sizes: dict, classes: list[str], path, *, limit=None, erf_radius=None) -> None:
    """Per-class histograms of object sizes (`object_sizes`), with the model's small-object limit and its
    ERF's 95 % diameter when given."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    top = max((max(v) for v in sizes.values() if v), default=1.0)
    bins = np.geomspace(1, max(top, 2) * 1.01, 24)
    for c, values in sizes.items():
        ax.hist(values, bins=bins, histtype="step", label=classes[c] if c < len(classes) else str(c))
    if limit:
        ax.axvline(limit, color="red", ls="--", label=f"small-object limit {limit}px")
    if erf_radius:
        ax.axvline(2 * erf_radius + 1, color="purple", ls=":", label="ERF 95% diameter")
    ax.set(xscale="log", xlabel="object size sqrt(area) [px]", ylabel="objects")
    ax.legend(fontsize=7)
    _save(fig, path)
