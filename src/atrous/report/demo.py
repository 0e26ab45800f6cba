"""`run_demo`: generate the data once, train and score every model over its seeds (in parallel processes
through the training engine), collect results.json from the run folders, judge the claims, and write the
figures and index.html (all atomically)."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from atrous._io import atomic_write_text
from atrous.data.io import read_mask
from atrous.errors import AtrousError
from atrous.report import evidence, figures, plan, tasks
from atrous.report.claims import CLAIMS
from atrous.report.html import render
from atrous.report.measures import OCTAVES
from atrous.report.runs import run_all, run_dir


def machine() -> str:
    """The CPU's model name as `lscpu` prints it (the machine beside every time on the page)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def _object_classes(entry: dict) -> list[int]:
    """Every class except one named "background" (texture has no objects: its classes are regions)."""
    if entry["name"] == "texture":
        return []
    return [i for i, name in enumerate(entry["classes"]) if name.lower() != "background"]


def _chance(entry: dict) -> float:
    """Majority-class pixel rate of a data set's validation masks."""
    root = Path(entry["spec"].split(":", 1)[1]) / "val" / "masks"
    counts = sum(np.bincount(read_mask(p).ravel(), minlength=2) for p in sorted(root.glob("*.png")))
    return float(counts.max() / counts.sum())


def training_seeds(seed: int, budget: tasks.Budget) -> list[int]:
    return [1000 * seed + i for i in range(budget.seeds)]


def _jobs(out: Path, keys: list[str], datasets: dict, budget: tasks.Budget, seeds: list[int]) -> list[dict]:
    jobs = []
    for key in keys:
        spec = plan.MODELS[key]
        entry = datasets[spec.task]
        full_res = spec.options.get("poolings", 0) == 0 and spec.name in ("poolnet", "dilated_net")
        for s in seeds:
            jobs.append(
                {
                    "key": key,
                    "seed": s,
                    "first": s == seeds[0],
                    "dir": str(run_dir(out, key, s)),
                    "data_spec": entry["spec"],
                    "object_classes": _object_classes(entry),
                    "val_size": budget.val_size,
                    "budget": tasks.budget_dict(budget),
                    # longest first: full-resolution stacks cost most per step
                    "cost": (4 if full_res else 1) * len(spec.options.get("rates", [1] * 6)),
                }
            )
    return jobs


def run_demo(
    out: str | Path,
    *,
    seed: int = 0,
    quick: bool = False,
    only: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Write `out/{index.html, results.json, *.png}` (and `out/data`, `out/runs`); return the results.
    `only`: a claim id; only its experiment's models are (re)trained, the other models' scores are read
    from earlier runs in `out` where present."""
    if only is not None and only not in CLAIMS:
        raise AtrousError(f"--only {only!r}: not a claim id; valid ids: {', '.join(CLAIMS)}")
    t_start = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget = tasks.QUICK if quick else tasks.DEFAULT
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    datasets = tasks.write_all(
        out / "data", ["shapes", "borders", "texture", "nuclei"], budget=budget, seed=seed
    )
    timings["data"] = time.perf_counter() - t0
    keys = list(plan.MODELS) if only is None else evidence.models_of_claim(only)
    seeds = training_seeds(seed, budget)
    t0 = time.perf_counter()
    run_all(
        _jobs(out, keys, datasets, budget, seeds),
        workers=budget.workers,
        log=log if progress else (lambda message: None),
    )
    timings["training and scoring"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    results: dict = {
        "version": 2,
        "seed": seed,
        "quick": quick,
        "only": only,
        "budget": tasks.budget_dict(budget),
        "training_seeds": seeds,
        "machine": machine(),
        "datasets": [{k: v for k, v in d.items() if k != "spec"} for d in datasets.values()],
        "octaves": [{"min": lo, "max": hi} for lo, hi in OCTAVES],
        "models": {},
        "experiments": {
            name: {"title": title, "factor": factor, "models": plan.models_of(name)}
            for name, (title, factor) in plan.EXPERIMENTS.items()
        },
    }
    for key in plan.MODELS:
        entry = evidence.collect_model(out, key, seeds)
        if entry is not None:
            results["models"][key] = entry
    results["static"] = evidence.static_measures(budget.val_size, _chance(datasets["texture"]))
    results["claims"] = evidence.build_claims(results)
    results["figures"] = figures.write_all(results, out)
    timings["report"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    results["timings_s"] = timings
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    atomic_write_text(out / "index.html", render(results))
    return results
