"""results.json from the run folders: each model's per-seed scores, their means and standard deviations
and its resolved training config; the static measurements (coverage, receptive fields); and every claim's
evidence, copied from those numbers with the path it came from, judged by `atrous.report.claims`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from atrous import analysis, models, perf
from atrous.report import measures, plan
from atrous.report.claims import CLAIMS, judge
from atrous.report.runs import SCORES, run_dir


def _m(key: str, path: str) -> str:
    return f"models.{key}.{path}"


_OCT = {"1_2": 0, "2_4": 1, "4_8": 2, "8_16": 3, "16_32": 4, "32_64": 5, "64_128": 6}


def _octave(key: str, bucket: str) -> str:
    return _m(key, f"octave_recall.{_OCT[bucket]}.recall")


# claim id -> {evidence name: source path in results.json}. A source "models.KEY.PATH" is a measurement over
# seeds: its evidence is {"mean": models.KEY.mean.PATH, "std": models.KEY.std.PATH, "n": seeds}.
EVIDENCE: dict[str, dict[str, str]] = {
    "fixed_upsampling_loses_detail": {
        "duc_boundary_iou": _m("pool3_duc", "boundary_iou"),
        "bilinear_boundary_iou": _m("pool3", "boundary_iou"),
        "deconv_boundary_iou": _m("pool3_deconv", "boundary_iou"),
        "duc_small_recall": _m("pool3_duc", "small_recall"),
        "bilinear_small_recall": _m("pool3", "small_recall"),
        "deconv_small_recall": _m("pool3_deconv", "small_recall"),
    },
    "pooling_limit_2k": {
        "pool0_r_2_4": _octave("pool0", "2_4"),
        "pool3_r_2_4": _octave("pool3", "2_4"),
        "pool0_r_4_8": _octave("pool0", "4_8"),
        "pool4_r_4_8": _octave("pool4", "4_8"),
        "pool0_r_16_32": _octave("pool0", "16_32"),
        "pool3_r_16_32": _octave("pool3", "16_32"),
        "pool0_r_32_64": _octave("pool0", "32_64"),
        "pool4_r_32_64": _octave("pool4", "32_64"),
    },
    "pooling_loses_boundaries": {f"pool{k}_boundary_iou": _m(f"pool{k}", "boundary_iou") for k in (0, 3, 5)},
    "pooling_loses_small_objects": {
        "hdc_small_recall": _m("hdc", "small_recall"),
        "pool5_small_recall": _m("pool5", "small_recall"),
    },
    "skips_recover_small_objects": {
        "fcn32s_small_recall": _m("fcn32s", "small_recall"),
        "fcn8s_small_recall": _m("fcn8s", "small_recall"),
    },
    "dilation_keeps_small_objects": {
        "hdc_small_recall": _m("hdc", "small_recall"),
        "fcn8s_small_recall": _m("fcn8s", "small_recall"),
    },
    "dilation_grows_rf_for_free": {
        "hdc_rf": "static.hdc.rf",
        "rate1_rf": "static.rate1.rf",
        "hdc_params": "static.hdc.params",
        "rate1_params": "static.rate1.params",
        "hdc_output_stride": "static.hdc.output_stride",
    },
    "gridding_leaves_holes": {
        "gridded_gridding_ratio": "static.coverage.gridded.gridding_ratio",
        "gridded_holes": "static.coverage.gridded.holes",
        "hdc_holes": "static.coverage.hdc.holes",
        "gridded_rf": "static.coverage.gridded.rf",
        "hdc_rf": "static.coverage.hdc.rf",
    },
    "gridding_fails_texture": {
        "gridded_texture_acc": _m("tex_gridded", "pixel_acc"),
        "chance_acc": "static.texture_chance_acc",
    },
    "hdc_fixes_gridding": {
        "hdc_texture_acc": _m("tex_hdc", "pixel_acc"),
        "gridded_texture_acc": _m("tex_gridded", "pixel_acc"),
    },
    "gridding_artifact": {
        "gridded_artifact": _m("tex_gridded", "artifact"),
        "hdc_artifact": _m("tex_hdc", "artifact"),
    },
    "large_rates_lose_small_objects": {
        "hdc_small_recall": _m("brd_hdc", "small_recall"),
        "large_small_recall": _m("brd_large", "small_recall"),
    },
    "hdc_beats_large_rates": {"hdc_miou": _m("brd_hdc", "miou"), "large_miou": _m("brd_large", "miou")},
    "aspp_beats_large_rates": {"aspp_miou": _m("ctx_aspp", "miou"), "large_miou": _m("ctx_large", "miou")},
    "erf_smaller_than_rf": {
        f"d{d}_{when}_share": _m(key, f"erf_{when}_share")
        for d, key in plan.ERF_STACKS.items()
        for when in ("init", "trained")
    },
    "reparam_vs_hdc": {
        "reparam_miou": _m("brd_reparam", "miou"),
        "hdc_miou": _m("brd_hdc", "miou"),
        "reparam_small_recall": _m("brd_reparam", "small_recall"),
        "hdc_small_recall": _m("brd_hdc", "small_recall"),
    },
    "dense_aspp_vs_aspp": {
        "denseaspp_miou": _m("ctx_denseaspp", "miou"),
        "aspp_miou": _m("ctx_aspp", "miou"),
    },
    "nuclei_pooling_loses_nuclei": {
        "dilated_recall": _m("nuc_dilated", "recall"),
        "pool4_recall": _m("nuc_pool4", "recall"),
    },
}


def walk(node, path: str):
    """The value at a dotted path ("static.coverage.hdc.holes"; list indices as numbers); None where a part
    is missing (a model that was not trained, an empty bucket)."""
    for part in path.split("."):
        if node is None:
            return None
        if isinstance(node, list):
            node = node[int(part)] if int(part) < len(node) else None
        else:
            node = node.get(part)
    return node


def evidence_value(results: dict, source: str):
    """The number a source names; for "models.KEY.PATH" the measurement {"mean", "std", "n"}."""
    if not source.startswith("models."):
        return walk(results, source)
    _, key, path = source.split(".", 2)
    entry = results["models"].get(key)
    if entry is None:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": walk(entry["mean"], path), "std": walk(entry["std"], path), "n": len(entry["seeds"])}


def experiment_of(claim_id: str) -> str:
    """The report section whose runs a claim reads (the first model named in its sources)."""
    for source in EVIDENCE[claim_id].values():
        if source.startswith("models."):
            return plan.MODELS[source.split(".")[1]].experiment
    return "gridding"  # the static claims (coverage, receptive fields) sit beside the gridding runs


def models_of_claim(claim_id: str) -> list[str]:
    """The models a claim's experiment trains (what `atrous demo --only CLAIM` reruns)."""
    return plan.models_of(experiment_of(claim_id))


def collect_model(out: Path, key: str, seeds: list[int]) -> dict | None:
    """A model's results.json entry from its run folders (None when no seed has scores)."""
    spec = plan.MODELS[key]
    found = [(s, run_dir(out, key, s)) for s in seeds if (run_dir(out, key, s) / SCORES).is_file()]
    if not found:
        return None
    per_seed = [json.loads((folder / SCORES).read_text()) for _, folder in found]
    mean, std = measures.seed_stats(per_seed)
    config = yaml.safe_load((found[0][1] / "config.yaml").read_text())
    return {
        "name": spec.name,
        "options": spec.options,
        "role": spec.role,
        "task": spec.task,
        "experiment": spec.experiment,
        "config": config,
        "runs": [{"seed": s, "dir": str(folder.relative_to(out))} for s, folder in found],
        "seeds": per_seed,
        "mean": mean,
        "std": std,
    }


def static_measures(val_size: int, texture_chance: float) -> dict:
    """Numbers that need no training: the HDC and rate-1 stacks' parameters, stride and receptive field;
    the coverage of the compared rate lists; the texture task's chance accuracy."""
    out: dict = {"texture_chance_acc": texture_chance, "coverage": {}}
    for key, rates in (("hdc", plan.HDC_RATES), ("rate1", plan.RATE1)):
        model = models.build("dilated_net", 4, rates=list(rates), channels=plan.CHANNELS)
        rf = analysis.receptive_field(model, input_size=(val_size, val_size))
        out[key] = {
            "rates": list(rates),
            "params": perf.param_count(model),
            "output_stride": model.output_stride,
            "rf": int(rf["rf"][0]),
        }
    for key, rates in (("gridded", plan.GRIDDED_RATES), ("hdc", plan.HDC_RATES), ("large", plan.LARGE_RATES)):
        cov = analysis.coverage(list(rates), kernel_size=3)
        out["coverage"][key] = {
            "rates": list(rates),
            "rf": int(cov["rf"][0]),
            "holes": int(cov["holes"]),
            "gridding_ratio": float(cov["gridding_ratio"]),
            "map": np.asarray(cov["coverage"], dtype=np.float64).tolist(),
        }
    return out


def build_claims(results: dict) -> list[dict]:
    claims = []
    for claim_id in CLAIMS:
        sources = EVIDENCE[claim_id]
        evidence = {name: evidence_value(results, path) for name, path in sources.items()}
        entry = judge(claim_id, evidence, sources)
        entry["experiment"] = experiment_of(claim_id)
        claims.append(entry)
    return claims
