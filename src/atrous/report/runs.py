"""One demo run: train a model from its `Config` with the training engine (what `atrous train` runs), load
its final weights from the run folder, score them on the validation split with `atrous.evaluate` (what
`atrous eval` runs), add the demo's own measures, and write `scores.json` beside the run's `config.yaml`
and `last.pt`. `run_all` runs many in parallel processes of one thread each.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

from atrous import analysis, models, perf
from atrous._io import atomic_write_text
from atrous.api import load
from atrous.evaluate import evaluate
from atrous.report import measures, plan
from atrous.report.tasks import Budget
from atrous.train import fit

SCORES = "scores.json"
PREDICTIONS = "predictions.npz"
ERF_SIZE = 65  # input side of the ERF measurements (the 12-layer stack's field is 25 px)


def run_dir(out: Path, key: str, seed: int) -> Path:
    return out / "runs" / key / f"seed{seed}"


def _val_loader(data_spec: str, config):
    from atrous.data import build_dataset, eval_transform

    ds = build_dataset(data_spec, "val", transform=eval_transform(mean=config.data.mean, std=config.data.std))
    return torch.utils.data.DataLoader(ds, batch_size=1)


def score(model: torch.nn.Module, data_spec: str, config, *, object_classes: list[int], num_classes: int):
    """(metrics, predictions): `atrous.evaluate.evaluate`'s metrics of `model` on the validation split, plus
    octave-bucket object recall, small-object recall and the gridding artifact rate from the same
    forward passes; predictions are the (H, W) uint8 class maps of the validation images."""
    loader = _val_loader(data_spec, config)
    preds: list[torch.Tensor] = []

    def infer(m, images):  # the forward evaluate runs; its argmax kept for the demo's own measures
        logits = m(images)
        preds.extend(logits.argmax(1).to(torch.uint8))
        return logits

    metrics = evaluate(
        model, loader, num_classes=num_classes, infer=infer, object_classes=object_classes, boundary=True
    )
    targets = [mask[0] for _, mask in loader]
    keep = ("miou", "pixel_acc", "mean_acc", "per_class_iou", "boundary_iou", "object_recall_by_size")
    out = {k: metrics.get(k) for k in keep}
    if object_classes:
        out["octave_recall"] = measures.octave_recall(preds, targets, object_classes)
        out["small_recall"] = measures.small_recall(out["octave_recall"])
        out["recall"] = measures.overall_recall(out["octave_recall"])
    out["artifact"] = float(np.mean([measures.artifact_rate(p.long(), t) for p, t in zip(preds, targets)]))
    return out, preds


def _erf_share(model: torch.nn.Module, samples: int) -> tuple[float, np.ndarray]:
    """(ERF share of the theoretical field, heatmap): `atrous.analysis.erf`'s ratio, radius holding 95 % of
    the gradient mass over that of a flat weighting of the theoretical receptive field."""
    found = analysis.erf(model, input_size=(ERF_SIZE, ERF_SIZE), samples=samples)
    return float(found["ratio"]), np.asarray(found["heatmap"], dtype=np.float32)


def _structure(model: torch.nn.Module, size: int) -> dict:
    rf = analysis.receptive_field(model, input_size=(size, size))
    return {
        "params": perf.param_count(model),
        "output_stride": model.output_stride,
        "rf": int(rf["rf"][0]),
        "global": bool(rf.get("global", False)),
    }


def run_one(job: dict) -> dict:
    """Train, score and measure one (model, seed); returns {"key", "seed", "scores"} (also in scores.json)."""
    key, seed, folder = job["key"], job["seed"], Path(job["dir"])
    budget = Budget(**job["budget"])
    torch.set_num_threads(1)
    config = plan.config_for(key, seed, data_spec=job["data_spec"], budget=budget, out=folder)
    t0 = time.perf_counter()
    # a rerun (`--only`, a second demo into the same folder) replaces the run: overwrite
    summary = fit(config, overwrite=True, log=lambda message: None)
    trained = time.perf_counter() - t0
    model = load(folder / "last.pt")  # what predict and eval load: eval mode, CPU
    scores, preds = score(
        model,
        job["data_spec"],
        config,
        object_classes=job["object_classes"],
        num_classes=summary["num_classes"],
    )
    scores.update(_structure(model, job["val_size"]))
    scores["final_loss"] = summary["history"][-1]["train_loss"]
    scores["train_seconds"] = trained
    arrays = {"predictions": np.stack([p.numpy() for p in preds[:2]])} if job["first"] else {}
    if key in plan.ERF_STACKS.values():
        scores["erf_trained_share"], heat = _erf_share(model, budget.erf_samples)
        torch.manual_seed(seed)
        spec = plan.MODELS[key]
        fresh = models.build(spec.name, summary["num_classes"], **spec.options)
        scores["erf_init_share"], init_heat = _erf_share(fresh, budget.erf_samples)
        if job["first"]:
            arrays.update(erf_trained=heat, erf_init=init_heat)
    scores["seconds"] = time.perf_counter() - t0
    if arrays:
        np.savez_compressed(folder / PREDICTIONS, **arrays)
    atomic_write_text(folder / SCORES, json.dumps(scores, indent=1) + "\n")
    return {"key": key, "seed": seed, "scores": scores}


def run_all(jobs: list[dict], *, workers: int, log: Callable[[str], None]) -> list[dict]:
    """Run `jobs` in `workers` spawned processes (one thread each), longest first; results in job order."""
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i]["cost"])
    results: list[dict | None] = [None] * len(jobs)
    if workers <= 1:
        for i in order:
            results[i] = run_one(jobs[i])
            log(f"{jobs[i]['key']} seed {jobs[i]['seed']}: {results[i]['scores']['seconds']:.0f} s")
        return results
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_one, jobs[i]): i for i in order}
        for done, future in enumerate(as_completed(futures), 1):
            i = futures[future]
            results[i] = future.result()
            log(
                f"[{done}/{len(jobs)}] {jobs[i]['key']} seed {jobs[i]['seed']}: "
                f"{results[i]['scores']['seconds']:.0f} s"
            )
    return results
