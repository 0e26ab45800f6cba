"""The demo experiment: train small models of the dilation family on the built-in synthetic data on the CPU,
evaluate them with `atrous.metrics`, measure their receptive fields (`atrous.analysis`) and cost
(`atrous.perf`), and judge the mission's claims (`atrous.report.claims`).

Papers: Long et al., FCN (CVPR 2015); Yu & Koltun, dilated convolutions (ICLR 2016); Wang et al., HDC
(WACV 2018); Chen et al., DeepLab v3 (2017); Luo et al., effective receptive field (NeurIPS 2016).

Every model is trained with the same plain loop (AdamW, linear warm-up then cosine decay, cross-entropy,
random crops and flips), the same number of steps and batch size, on the same generated images.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from atrous import analysis, models, perf
from atrous.data import synthetic
from atrous.metrics import SIZE_BUCKETS, ConfusionMatrix, ObjectRecall
from atrous.optimize import optimize, prepare_training
from atrous.report.claims import judge

# "small" objects: sqrt(area) below this many pixels (the buckets [0, 4) and [4, 8))
SMALL_PX = 8
# input normalisation of the generated uint8 images: (x / 255 - 0.5) / 0.25
_MEAN, _STD = 0.5, 0.25


@dataclass(frozen=True)
class Budget:
    """Sizes of one demo run. `quick` keeps the report's structure with smaller numbers."""

    shapes_size: int  # square image side of synthetic:shapes (px)
    shapes_train: int  # generated training images
    shapes_val: int
    texture_size: int
    texture_train: int
    texture_val: int
    crop: int  # training crop side (px)
    batch: int
    steps: int  # optimiser steps per model on synthetic:shapes
    replicates: int  # training runs (seeds) of each model in REPLICATED; its numbers are their means
    texture_steps: int  # ... and on synthetic:texture (an easier task for a network that can solve it)
    lr: float
    erf_samples: int  # random inputs averaged for the ERF
    latency_repeats: int


DEFAULT = Budget(
    shapes_size=64,
    shapes_train=512,
    shapes_val=256,
    texture_size=48,
    texture_train=256,
    texture_val=32,
    crop=48,
    batch=8,
    steps=600,
    replicates=3,
    texture_steps=150,
    lr=4e-3,
    erf_samples=8,
    latency_repeats=10,
)
QUICK = Budget(
    shapes_size=48,
    shapes_train=64,
    shapes_val=16,
    texture_size=32,
    texture_train=64,
    texture_val=8,
    crop=32,
    batch=4,
    steps=25,
    replicates=2,
    texture_steps=25,
    lr=4e-3,
    erf_samples=2,
    latency_repeats=3,
)

# The compared models: key -> (registry name, options, role). Widths are chosen so that every model has
# 27k to 62k parameters (stated in the report), small enough to train on a CPU in a minute.
CHANNELS = 24  # width of the pooling-free dilated stacks
GRIDDED_RATES = (2, 2, 2, 2, 2, 2)  # common factor 2: 25x25 receptive field with holes
HDC_RATES = (1, 2, 3, 1, 2, 3)  # Wang et al.'s rule: same depth, width and 25x25 field, no holes
LARGE_RATES = (5, 7, 9, 5, 7, 9)  # large rates only (no common factor, so no parity gridding)
RATE1_RATES = (1, 1, 1, 1, 1, 1)  # analysis only: the undilated stack with the same parameters
# DeepLab v3 at output stride 8 samples the 65x65 map of a 513 px input with ASPP rates (12, 24, 36); the
# demo's 64 px input gives an 8x8 map, so the rates are scaled by 8/65 and rounded: (2, 3, 4)
ASPP_RATES = (2, 3, 4)
SHAPES_MODELS: dict[str, tuple[str, dict, str]] = {
    # FCN's heads on the same ResNet-18 as DeepLab v3: FCN's own VGG-16 (no BatchNorm) does not train from
    # scratch in this budget (measured: it predicts only the background after 300 steps)
    "fcn32s": (
        "fcn32s",
        {"backbone": "resnet18", "width": 0.0625},
        "ResNet-18 + FCN-32s head, output stride 32",
    ),
    "fcn8s": (
        "fcn8s",
        {"backbone": "resnet18", "width": 0.0625},
        "ResNet-18 + FCN-8s skips, output stride 8",
    ),
    "gridded": (
        "dilated_net",
        {"rates": list(GRIDDED_RATES), "channels": CHANNELS},
        "dilated, common factor",
    ),
    "hdc": ("dilated_net", {"rates": list(HDC_RATES), "channels": CHANNELS}, "dilated, HDC rates"),
    "large": ("dilated_net", {"rates": list(LARGE_RATES), "channels": CHANNELS}, "dilated, large rates only"),
    "aspp": (
        "deeplabv3",
        {"backbone": "resnet18", "width": 0.0625, "output_stride": 8, "rates": list(ASPP_RATES)},
        "ResNet-18 + ASPP (DeepLab v3)",
    ),
}
TEXTURE_MODELS = ("gridded", "hdc")
# Trained `budget.replicates` times with different seeds, their metrics averaged: FCN-8s's and FCN-32s's
# recalls of objects under 8 px differ by about their seed-to-seed spread (measured at 600 steps: 0.03 to
# 0.09 apart over three seeds), so one run each would let the seed decide `skips_recover_small_objects`.
# The other models are far apart on every claim that reads them, and the dilated stacks cost most to train.
REPLICATED = ("fcn32s", "fcn8s")


# ----------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------
def _tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """All items of a synthetic dataset as (uint8 (N, 3, H, W), int64 (N, H, W))."""
    images, masks = zip(*(ds.generate(i) for i in range(len(ds))))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(
        np.stack(masks)
    )


def _normalise(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255 - _MEAN) / _STD


def _batch(images, masks, *, batch: int, crop: int, gen: torch.Generator):
    """A random batch of random crops with random horizontal and vertical flips."""
    n, _, h, w = images.shape
    idx = torch.randint(n, (batch,), generator=gen)
    ys = torch.randint(h - crop + 1, (batch,), generator=gen)
    xs = torch.randint(w - crop + 1, (batch,), generator=gen)
    flips = torch.rand(batch, 2, generator=gen) < 0.5
    xb, yb = [], []
    for i, y0, x0, (fh, fv) in zip(idx.tolist(), ys.tolist(), xs.tolist(), flips.tolist()):
        x = images[i, :, y0 : y0 + crop, x0 : x0 + crop]
        y = masks[i, y0 : y0 + crop, x0 : x0 + crop]
        dims = [d for d, f in ((-1, fh), (-2, fv)) if f]
        if dims:
            x, y = x.flip(dims), y.flip(dims)
        xb.append(x)
        yb.append(y)
    return _normalise(torch.stack(xb)), torch.stack(yb)


# ----------------------------------------------------------------------------------------------------------
# training and evaluation
# ----------------------------------------------------------------------------------------------------------
def train_model(
    model: nn.Module,
    images,
    masks,
    *,
    steps: int,
    budget: Budget,
    seed: int,
    desc: str,
    progress: bool = True,
) -> dict:
    """Plain loop: AdamW, 5 % linear warm-up then cosine decay, cross-entropy. Returns the loss curve."""
    gen = torch.Generator().manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=1e-4)
    warm = max(1, steps // 20)

    def lr_at(step: int) -> float:  # factor on budget.lr
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    losses = []
    with tqdm(total=steps, desc=desc, unit="step", leave=False, disable=not progress) as bar:
        for _ in range(steps):
            x, y = _batch(images, masks, batch=budget.batch, crop=budget.crop, gen=gen)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update()
    model.eval()
    tail = max(1, len(losses) // 10)
    return {"first_loss": losses[0], "final_loss": float(np.mean(losses[-tail:])), "losses": losses}


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """Class indices (N, H, W) for uint8 images (N, 3, H, W)."""
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        out.append(model(_normalise(images[i : i + batch])).argmax(1))
    return torch.cat(out)


def small_recall(buckets: list[dict]) -> float | None:
    """Object-weighted mean recall over the buckets below SMALL_PX (None when there is no such object)."""
    small = [b for b in buckets if b["max"] is not None and b["max"] <= SMALL_PX and b["objects"]]
    n = sum(b["objects"] for b in small)
    return sum(b["recall"] * b["objects"] for b in small) / n if n else None


def artifact_rate(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Gridding artifact: among horizontally or vertically adjacent pixel pairs with the same ground-truth
    class, the fraction whose predictions differ (0 for a prediction constant inside uniform regions)."""
    same_h = target[:, :, 1:] == target[:, :, :-1]
    same_v = target[:, 1:, :] == target[:, :-1, :]
    diff_h = (pred[:, :, 1:] != pred[:, :, :-1]) & same_h
    diff_v = (pred[:, 1:, :] != pred[:, :-1, :]) & same_v
    return float((diff_h.sum() + diff_v.sum()) / (same_h.sum() + same_v.sum()))


def evaluate_predictions(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, *, objects: bool
) -> dict:
    """Pixel metrics from one ConfusionMatrix; with `objects`, object recall by size over the foreground
    objects (class 0, the background, is passed as ObjectRecall's ignore_index: it is not an object)."""
    cm = ConfusionMatrix(num_classes)
    cm.update(pred, target)
    out = cm.compute()
    if objects:
        rec = ObjectRecall(num_classes, ignore_index=0)
        rec.update(pred, target)
        out["object_recall_by_size"] = rec.compute()
        out["small_recall"] = small_recall(out["object_recall_by_size"])
    return out


def mean_metrics(runs: list[dict]):
    """Element-wise mean of the metrics of several runs on the same validation set: numbers are averaged
    (None if any run has None), dicts and lists recursively; a bucket's object count, the same in every
    run, stays an integer. With one run, that run's metrics."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: mean_metrics([r[k] for r in runs]) for k in first}
    if isinstance(first, list):
        return [mean_metrics(list(parts)) for parts in zip(*runs)]
    if any(r is None for r in runs):
        return None
    if isinstance(first, int) and all(r == first for r in runs):
        return first
    return float(np.mean(runs))


# ----------------------------------------------------------------------------------------------------------
# measurements of a model: receptive field, ERF, cost
# ----------------------------------------------------------------------------------------------------------
def _rf_entry(model: nn.Module, size: int) -> dict:
    rf = analysis.receptive_field(model, input_size=(size, size))
    return {"rf": rf["rf"][0], "global": bool(rf.get("global", False)), "output_stride": model.output_stride}


def measure(trained: nn.Module, *, size: int, budget: Budget) -> dict:
    """Theoretical RF, ERF radius, output stride, parameters, FLOPs, CPU latency and the small-object limit
    (`atrous.analysis.small_object_limit`) at `size` x `size`, on a fresh instance holding the trained
    weights: what `atrous.load` gives predict and eval, without the training set-up's layout hooks."""
    args = trained.build_args
    model = models.build(args["name"], args["num_classes"], **args["options"]).eval()
    model.load_state_dict(trained.state_dict())
    entry = _rf_entry(model, size)
    erf = analysis.erf(model, input_size=(size, size), samples=budget.erf_samples)
    entry["erf_radius50"] = erf["radius50"]
    entry["erf_radius95"] = erf["radius95"]
    entry["erf_heatmap"] = np.asarray(erf["heatmap"], dtype=np.float64)
    entry["params"] = perf.param_count(model)
    entry["flops"] = perf.count_flops(model, (1, 3, size, size))
    x = torch.randn(1, 3, size, size)
    fast = optimize(model, example_input=x)  # what predict/eval run on the CPU: BN folded, channels_last
    with torch.inference_mode():
        entry["latency_ms"] = (
            1000 * perf.latency(lambda: fast(x), warmup=2, repeats=budget.latency_repeats)["median_s"]
        )
    entry["small_object_limit"] = analysis.small_object_limit(model, input_size=(size, size))
    return entry


def peak_memories(specs: dict[str, tuple[str, dict]], num_classes: int, size: int) -> dict[str, float]:
    """Peak inference memory (MiB) of each model's `atrous.optimize` copy, each in a fresh process
    (atrous.perf.peak_memory); the processes run two at a time (their start-up is most of their time)."""

    def one(item):
        key, (name, options) = item
        res = perf.peak_memory(
            name, num_classes=num_classes, options=options, input_shape=(1, 3, size, size), optimize={}
        )
        return key, res["peak_mib"]

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, specs.items()))


# ----------------------------------------------------------------------------------------------------------
# the experiment
# ----------------------------------------------------------------------------------------------------------
def _build(name: str, options: dict, num_classes: int, seed: int) -> nn.Module:
    """The model, set up for channels_last training (`atrous.optimize.prepare_training`: about 1.5x faster
    steps for the dilated stacks on this CPU, same values)."""
    torch.manual_seed(seed)
    return prepare_training(models.build(name, num_classes, **options))


def run_experiment(*, seed: int, quick: bool, progress: bool = True) -> tuple[dict, dict]:
    """Train, evaluate and measure everything. Returns (results: JSON-able, artefacts: arrays for figures)."""
    budget = QUICK if quick else DEFAULT
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    steps = ["data"] + [f"shapes/{k}" for k in SHAPES_MODELS] + [f"texture/{k}" for k in TEXTURE_MODELS]
    steps += ["memory", "claims"]
    overall = tqdm(total=len(steps), desc="atrous demo", unit="stage", disable=not progress)

    def done(stage: str, t0: float) -> None:
        timings[stage] = time.perf_counter() - t0
        overall.update()

    t0 = time.perf_counter()
    shapes_train = synthetic.build(
        "shapes", "train", n=budget.shapes_train, size=budget.shapes_size, seed=seed
    )
    shapes_val = synthetic.build("shapes", "val", n=budget.shapes_val, size=budget.shapes_size, seed=seed)
    tex_train = synthetic.build(
        "texture", "train", n=budget.texture_train, size=budget.texture_size, seed=seed
    )
    tex_val = synthetic.build("texture", "val", n=budget.texture_val, size=budget.texture_size, seed=seed)
    s_imgs, s_masks = _tensors(shapes_train)
    sv_imgs, sv_masks = _tensors(shapes_val)
    t_imgs, t_masks = _tensors(tex_train)
    tv_imgs, tv_masks = _tensors(tex_val)
    done("data", t0)

    k_shapes, k_tex = shapes_train.num_classes, tex_train.num_classes
    results: dict = {
        "seed": seed,
        "quick": quick,
        "budget": asdict(budget),
        "data": {
            "shapes": {"spec": repr(shapes_train), "classes": shapes_train.classes, "val": repr(shapes_val)},
            "texture": {"spec": repr(tex_train), "classes": tex_train.classes, "val": repr(tex_val)},
        },
        "size_buckets": [{"min": lo, "max": hi} for lo, hi in SIZE_BUCKETS],
        "small_px": SMALL_PX,
        "models": {},
        "texture": {},
    }
    artefacts: dict = {
        "shapes_example": (sv_imgs[:4], sv_masks[:4]),
        "texture_example": (tv_imgs[:2], tv_masks[:2]),
    }
    artefacts["shapes_pred"], artefacts["texture_pred"], artefacts["erf"] = {}, {}, {}

    for i, (key, (name, options, role)) in enumerate(SHAPES_MODELS.items()):
        t0 = time.perf_counter()
        runs = []  # (seed, model, train summary, predictions, metrics) per replicate
        for r in range(budget.replicates if key in REPLICATED else 1):
            run_seed = seed * 1000 + i + 10 * r
            model = _build(name, options, k_shapes, run_seed)
            train = train_model(
                model,
                s_imgs,
                s_masks,
                steps=budget.steps,
                budget=budget,
                seed=run_seed,
                desc=f"shapes/{key}" + (f" #{r + 1}" if r else ""),
                progress=progress,
            )
            pred = predict(model, sv_imgs)
            runs.append(
                (run_seed, model, train, pred, evaluate_predictions(pred, sv_masks, k_shapes, objects=True))
            )
        _, model, train, pred, _ = runs[0]  # cost, ERF and example predictions: the first run's model
        cost = measure(model, size=budget.shapes_size, budget=budget)
        artefacts["erf"][key] = cost.pop("erf_heatmap")
        artefacts["shapes_pred"][key] = pred[:4]
        results["models"][key] = {
            "model": name,
            "options": options,
            "role": role,
            "train": {"first_loss": train["first_loss"], "final_loss": train["final_loss"]},
            **mean_metrics([m for *_, m in runs]),
            **cost,
        }
        if len(runs) > 1:
            results["models"][key]["replicates"] = [
                {
                    "seed": s,
                    "final_loss": t["final_loss"],
                    "miou": m["miou"],
                    "small_recall": m["small_recall"],
                }
                for s, _, t, _, m in runs
            ]
        done(f"shapes/{key}", t0)

    for i, key in enumerate(TEXTURE_MODELS):
        t0 = time.perf_counter()
        name, options, role = SHAPES_MODELS[key]
        model = _build(name, options, k_tex, seed * 1000 + 100 + i)
        train = train_model(
            model,
            t_imgs,
            t_masks,
            steps=budget.texture_steps,
            budget=budget,
            seed=seed * 1000 + 100 + i,
            desc=f"texture/{key}",
            progress=progress,
        )
        pred = predict(model, tv_imgs)
        metrics = evaluate_predictions(pred, tv_masks, k_tex, objects=False)
        metrics["artifact"] = artifact_rate(pred, tv_masks)
        artefacts["texture_pred"][key] = pred[:2]
        results["texture"][key] = {
            "model": name,
            "options": options,
            "role": role,
            "train": {"first_loss": train["first_loss"], "final_loss": train["final_loss"]},
            **metrics,
        }
        done(f"texture/{key}", t0)
    counts = torch.bincount(tv_masks.flatten(), minlength=k_tex)
    results["texture_chance_acc"] = float(counts.max() / counts.sum())

    t0 = time.perf_counter()
    memory = peak_memories(
        {k: (name, options) for k, (name, options, _) in SHAPES_MODELS.items()}, k_shapes, budget.shapes_size
    )
    for key, mib in memory.items():
        results["models"][key]["peak_memory_mib"] = mib
    done("memory", t0)

    t0 = time.perf_counter()
    results["coverage"] = {}
    artefacts["coverage"] = {}
    for key, rates in (("gridded", GRIDDED_RATES), ("hdc", HDC_RATES), ("large", LARGE_RATES)):
        cov = analysis.coverage(list(rates), kernel_size=3)
        artefacts["coverage"][key] = np.asarray(cov["coverage"], dtype=np.float64)
        results["coverage"][key] = {
            "rates": list(rates),
            "rf": _side(cov["rf"]),
            "holes": int(cov["holes"]),
            "gridding_ratio": float(cov["gridding_ratio"]),
        }
    rate1 = models.build("dilated_net", k_shapes, rates=list(RATE1_RATES), channels=CHANNELS)
    results["rate1_stack"] = {
        "rates": list(RATE1_RATES),
        "params": perf.param_count(rate1),
        **_rf_entry(rate1, budget.shapes_size),
    }
    results["claims"] = build_claims(results)
    done("claims", t0)
    overall.close()
    timings["total"] = time.perf_counter() - t_start
    results["timings_s"] = timings
    return results, artefacts


def _side(rf) -> int:
    """A receptive-field size as one side (the demo's fields are square)."""
    return int(rf[0]) if isinstance(rf, (list, tuple)) else int(rf)


# ----------------------------------------------------------------------------------------------------------
# claims: evidence copied from the results, with the path it came from
# ----------------------------------------------------------------------------------------------------------
def lookup(results: dict, path: str):
    """The value at a dotted path of results ("models.hdc.small_recall")."""
    value = results
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


# claim id -> {evidence name: dotted source path in results}
EVIDENCE: dict[str, dict[str, str]] = {
    "pooling_loses_small_objects": {
        "fcn32s_small_recall": "models.fcn32s.small_recall",
        "hdc_small_recall": "models.hdc.small_recall",
    },
    "skips_recover_small_objects": {
        "fcn32s_small_recall": "models.fcn32s.small_recall",
        "fcn8s_small_recall": "models.fcn8s.small_recall",
    },
    "dilation_keeps_small_objects": {
        "hdc_small_recall": "models.hdc.small_recall",
        "fcn8s_small_recall": "models.fcn8s.small_recall",
    },
    "dilation_grows_rf_for_free": {
        "hdc_rf": "models.hdc.rf",
        "rate1_rf": "rate1_stack.rf",
        "hdc_params": "models.hdc.params",
        "rate1_params": "rate1_stack.params",
        "hdc_output_stride": "models.hdc.output_stride",
    },
    "gridding_leaves_holes": {
        "gridded_gridding_ratio": "coverage.gridded.gridding_ratio",
        "gridded_holes": "coverage.gridded.holes",
        "hdc_holes": "coverage.hdc.holes",
        "gridded_rf": "coverage.gridded.rf",
        "hdc_rf": "coverage.hdc.rf",
    },
    "gridding_fails_texture": {
        "gridded_texture_acc": "texture.gridded.pixel_acc",
        "chance_acc": "texture_chance_acc",
    },
    "hdc_fixes_gridding": {
        "hdc_texture_acc": "texture.hdc.pixel_acc",
        "gridded_texture_acc": "texture.gridded.pixel_acc",
    },
    "gridding_artifact": {
        "gridded_artifact": "texture.gridded.artifact",
        "hdc_artifact": "texture.hdc.artifact",
    },
    "large_rates_lose_small_objects": {
        "hdc_small_recall": "models.hdc.small_recall",
        "large_small_recall": "models.large.small_recall",
    },
    "aspp_beats_large_rates": {"aspp_miou": "models.aspp.miou", "large_miou": "models.large.miou"},
    "hdc_beats_large_rates": {"hdc_miou": "models.hdc.miou", "large_miou": "models.large.miou"},
    "erf_smaller_than_rf": {"hdc_erf95_side": "models.hdc.erf95_side", "hdc_rf": "models.hdc.rf"},
}


def build_claims(results: dict) -> list[dict]:
    for entry in results["models"].values():  # the ERF's 95 % square side, from its radius
        entry["erf95_side"] = 2 * entry["erf_radius95"] + 1
    return [
        judge(claim_id, {k: lookup(results, p) for k, p in sources.items()}, sources)
        for claim_id, sources in EVIDENCE.items()
    ]
