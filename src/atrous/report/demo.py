"""`run_demo`: run the experiment, then write the figures, results.json and index.html (all atomically)."""

from __future__ import annotations

import json
from pathlib import Path

from atrous._io import atomic_write_text
from atrous.data.synthetic import SHAPES_PALETTE, TEXTURE_PALETTE
from atrous.report import figures
from atrous.report.experiment import run_experiment
from atrous.report.html import render


def run_demo(out: str | Path, *, seed: int = 0, quick: bool = False, progress: bool = True) -> dict:
    """Train, evaluate and measure the demo models, write `out/{index.html, results.json, *.png}` and return
    the results (the content of results.json)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, art = run_experiment(seed=seed, quick=quick, progress=progress)
    images, masks = art["shapes_example"]
    timg, tmask = art["texture_example"]
    results["figures"] = {
        "recall_by_size": figures.recall_by_size(results["models"], out / "recall_by_size.png"),
        "coverage": figures.coverage_maps(results["coverage"], art["coverage"], out / "coverage.png"),
        "shapes_predictions": figures.prediction_grid(
            images,
            masks,
            art["shapes_pred"],
            SHAPES_PALETTE,
            out / "shapes_predictions.png",
            title="synthetic:shapes validation images and predictions",
        ),
        "texture_predictions": figures.prediction_grid(
            timg,
            tmask,
            art["texture_pred"],
            TEXTURE_PALETTE,
            out / "texture_predictions.png",
            title="synthetic:texture: gridded vs HDC predictions (4x zoom)",
            zoom=4,
            rows=2,
        ),
        "erf": figures.erf_maps(art["erf"], results["models"], out / "erf.png"),
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    atomic_write_text(out / "index.html", render(results))
    return results
