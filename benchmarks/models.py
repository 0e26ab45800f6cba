"""Benchmarks 2-5: whole models against torchvision with the same weights, training steps, scaling with
the input size, and the demo's models.

Every timing table runs its rows round-robin in this process (`atrous.perf.interleave`) and reports
medians; every memory figure comes from a fresh subprocess (`atrous.perf.peak_memory`). torchvision
models are built with `weights=None` (nothing is downloaded) and random BatchNorm statistics, so that the
output comparison (atrous after `optimize`, BN folded, against torchvision's eager model) tests something.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import segmentation

import atrous
from atrous import perf
from atrous.optimize import prepare_training

NUM_CLASSES = 21
FULL = {
    "size": 512,
    "repeats": 5,
    "compile": True,
    "memory_runs": 3,
    "train_size": 256,
    "train_repeats": 3,
    "scaling": [256, 512, 768, 1024],
}
QUICK = {
    "size": 32,
    "repeats": 2,
    "compile": False,
    "memory_runs": 1,
    "train_size": 32,
    "train_repeats": 1,
    "scaling": [32, 64],
}
CL = torch.channels_last


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model


@functools.cache
def torchvision_pair(tv_name: str, *, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """torchvision's model (random weights, random BN statistics) and its atrous twin (same weights).

    Built once per process (ResNet-50's initialisation is not free); the training benchmark trains
    copies, so the pair stays as built."""
    torch.manual_seed(seed)
    builder = getattr(segmentation, tv_name)
    tv = builder(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=False)
    randomise_bn(tv, seed)
    return perf.TorchvisionLogits(tv).eval(), atrous.from_torchvision(tv).eval()


def flops(model: nn.Module, shape) -> dict:
    """FLOP breakdown on the meta device: shapes only, no arithmetic, so any size is free to count."""
    return perf.flop_breakdown(copy.deepcopy(model).to("meta"), shape)


def rel_diff(got: torch.Tensor, ref: torch.Tensor) -> dict:
    diff = float((got.double() - ref.double()).abs().max())
    scale = float(ref.abs().max())
    return {"max_abs": diff, "ref_max_abs": scale, "relative": diff / max(scale, 1.0)}


def _memory_jobs(jobs: dict[str, dict], runs: int = 1) -> dict[str, dict]:
    """Each job `runs` times, each run in its own fresh process, two at a time (memory is per process, so
    they do not mix). Per job: the run with the median peak, and every run's peak in "peak_mib_runs" (glibc's
    heap fragmentation moves one process's peak by up to a third: DeepLab v3 R-50 at 512^2, atrous 115-138
    MiB and torchvision 180-215 MiB over three runs each on the quiet machine)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {k: [pool.submit(perf.peak_memory, **kw) for _ in range(runs)] for k, kw in jobs.items()}
        out = {}
        for k, fs in futures.items():
            results = sorted((f.result() for f in fs), key=lambda r: r["peak_bytes"])
            out[k] = {**results[len(results) // 2], "peak_mib_runs": [r["peak_mib"] for r in results]}
        return out


def _mem_job(model_kind: str, build_args: dict | None, shape, *, channels_last=False, optimize=None):
    if build_args is None:
        return {
            "name": f"torchvision:{model_kind}",
            "num_classes": NUM_CLASSES,
            "input_shape": shape,
            "channels_last": channels_last,
        }
    return {
        "name": build_args["name"],
        "num_classes": build_args["num_classes"],
        "options": build_args["options"],
        "input_shape": shape,
        "optimize": optimize,
    }


# ----------------------------------------------------------------------------------------------------------
# 2. inference against torchvision
# ----------------------------------------------------------------------------------------------------------
def inference(*, quick: bool, ceiling_gflops: float, log=print) -> dict:
    cfg = QUICK if quick else FULL
    shape = (1, 3, cfg["size"], cfg["size"])
    torch.manual_seed(0)
    x = torch.randn(shape)
    x_cl = x.contiguous(memory_format=CL)
    out = {"input_shape": list(shape), "ceiling_gflops": ceiling_gflops, "pairs": {}}
    # --quick: one pair, memory for two rows (each subprocess costs seconds of start-up)
    for tv_name in ("deeplabv3_resnet50",) if quick else ("deeplabv3_resnet50", "fcn_resnet50"):
        tv, ours = torchvision_pair(tv_name)
        variants = {
            "torchvision_nchw": (tv, x),
            "torchvision_channels_last": (copy.deepcopy(tv).to(memory_format=CL), x_cl),
        }
        variants["atrous"] = (atrous.optimize(ours, example_input=x), x)
        models = {"torchvision_nchw": tv, "atrous": ours}
        mem = {
            "torchvision_nchw": _mem_job(tv_name, None, list(shape)),
            "torchvision_channels_last": _mem_job(tv_name, None, list(shape), channels_last=True),
            "atrous": _mem_job("", ours.build_args, list(shape), optimize={}),
        }
        if tv_name == "deeplabv3_resnet50":
            opts = {**ours.build_args["options"], "output_stride": 16, "rates": None}
            os16 = atrous.build("deeplabv3", NUM_CLASSES, **opts).eval()
            os16.load_state_dict(ours.state_dict())  # same weights, stride 16 instead of 8
            variants["atrous_os16"] = (atrous.optimize(os16, example_input=x), x)
            models["atrous_os16"] = os16
            mem["atrous_os16"] = _mem_job("", os16.build_args, list(shape), optimize={})
        compile_s = None
        if cfg["compile"] and tv_name == "deeplabv3_resnet50":
            compiled = atrous.optimize(ours, compile=True, example_input=x)
            t0 = time.perf_counter()
            with torch.inference_mode():
                compiled(x)  # the first call compiles
            compile_s = time.perf_counter() - t0
            variants["atrous_compiled"] = (compiled, x)
        if quick:  # as the main process of a quick run: one thread
            for job in mem.values():
                job["threads"] = 1
        memory = _memory_jobs(
            {k: v for k, v in mem.items() if not quick or k in ("torchvision_nchw", "atrous")},
            # the pair the memory target is set on gets the median of several processes; one run each
            # elsewhere keeps `make bench` under ten minutes
            cfg["memory_runs"] if tv_name == "deeplabv3_resnet50" else 1,
        )
        with torch.inference_mode():
            outputs = {k: m(inp) for k, (m, inp) in variants.items()}
            stats = perf.interleave(
                {k: (lambda m=m, inp=inp: m(inp)) for k, (m, inp) in variants.items()},
                warmup=1,
                repeats=cfg["repeats"],
            )
        ref = outputs["torchvision_nchw"]
        rows = {}
        counts = {id(m): flops(m, shape) for m in models.values()}
        for k in variants:
            counted = counts[id(models.get(k, models["atrous"] if k.startswith("atrous") else tv))]
            t = stats[k]["median_s"]
            limit_s = counted["real_pixel"] / (ceiling_gflops * 1e9)
            rows[k] = {
                "median_s": t,
                "stats": stats[k],
                "speedup_vs_torchvision_nchw": stats["torchvision_nchw"]["median_s"] / t,
                "speedup_vs_torchvision_channels_last": stats["torchvision_channels_last"]["median_s"] / t,
                "gflops_nominal": counted["nominal"] / 1e9,
                "gflops_real_pixel": counted["real_pixel"] / 1e9,
                "achieved_gflops_real": counted["real_pixel"] / t / 1e9,
                "limit_s": limit_s,
                "ratio_to_limit": t / limit_s,
                "peak_memory_mib": memory[k]["peak_mib"] if k in memory else None,
                "peak_memory_mib_runs": memory[k]["peak_mib_runs"] if k in memory else None,
                "output_vs_torchvision": None if k.endswith("os16") else rel_diff(outputs[k], ref),
            }
        if compile_s is not None:
            rows["atrous_compiled"]["compile_s"] = compile_s
        mem_ref = rows["torchvision_nchw"]["peak_memory_mib"]
        for row in rows.values():
            if row["peak_memory_mib"] is not None:
                row["memory_vs_torchvision_nchw"] = row["peak_memory_mib"] / mem_ref
        out["pairs"][tv_name] = rows
        log(_inference_table(tv_name, rows))
    return out


def _inference_table(name: str, rows: dict) -> str:
    lines = [
        f"== {name}",
        f"{'variant':<27} {'median s':>8} {'x tv':>5} {'x tv-cl':>7} {'GFLOP':>6} {'real':>6} {'GF/s':>6}"
        f" {'x limit':>7} {'mem MiB':>8} {'out rel diff':>12}",
    ]
    for k, r in rows.items():
        mem = "-" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        diff = "-" if r["output_vs_torchvision"] is None else f"{r['output_vs_torchvision']['relative']:.1e}"
        lines.append(
            f"{k:<27} {r['median_s']:>8.3f} {r['speedup_vs_torchvision_nchw']:>5.2f}"
            f" {r['speedup_vs_torchvision_channels_last']:>7.2f} {r['gflops_nominal']:>6.1f}"
            f" {r['gflops_real_pixel']:>6.1f} {r['achieved_gflops_real']:>6.1f} {r['ratio_to_limit']:>7.2f}"
            f" {mem:>8} {diff:>12}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# 3. training steps
# ----------------------------------------------------------------------------------------------------------
def _train_step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def training(*, quick: bool, log=print) -> dict:
    cfg = QUICK if quick else FULL
    batch, size = 2, cfg["train_size"]
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, NUM_CLASSES, (batch, size, size))
    out = {"batch": batch, "input_shape": [batch, 3, size, size], "pairs": {}}
    out["amp"] = "bf16 autocast not measured: " + _amp_note()
    for tv_name in ("deeplabv3_resnet50", "fcn_resnet50"):
        tv, ours = torchvision_pair(tv_name)
        fns = {
            "torchvision_nchw": _train_step_fn(copy.deepcopy(tv), x, y),
            "torchvision_channels_last": _train_step_fn(
                copy.deepcopy(tv).to(memory_format=CL), x.contiguous(memory_format=CL), y
            ),
            "atrous": _train_step_fn(prepare_training(copy.deepcopy(ours)), x, y),
        }
        stats = perf.interleave(fns, warmup=1, repeats=cfg["train_repeats"])
        rows = {
            k: {
                "median_s": s["median_s"],
                "images_per_s": batch / s["median_s"],
                "speedup_vs_torchvision_nchw": stats["torchvision_nchw"]["median_s"] / s["median_s"],
                "stats": s,
            }
            for k, s in stats.items()
        }
        out["pairs"][tv_name] = rows
        lines = [
            f"== training {tv_name} (batch {batch}, {size}x{size})",
            f"{'variant':<27} {'step s':>7} {'img/s':>6} {'x tv':>5}",
        ]
        lines += [
            f"{k:<27} {r['median_s']:>7.3f} {r['images_per_s']:>6.2f} {r['speedup_vs_torchvision_nchw']:>5.2f}"
            for k, r in rows.items()
        ]
        log("\n".join(lines))
        if quick:
            break  # one pair is enough to exercise the path
    return out


def _amp_note() -> str:
    if torch.cuda.is_available():
        return "CUDA present: use --amp (fp16 autocast) there"
    capability = torch.backends.cpu.get_cpu_capability()
    return (
        f"this CPU's vector capability is {capability}; without AVX512-BF16/AMX, bf16 is emulated and slower"
    )


# ----------------------------------------------------------------------------------------------------------
# 4. scaling with the input size
# ----------------------------------------------------------------------------------------------------------
def scaling(*, quick: bool, log=print) -> dict:
    cfg = QUICK if quick else FULL
    _, ours = torchvision_pair("deeplabv3_resnet50")
    model = atrous.optimize(ours)
    inputs = {s: torch.randn(1, 3, s, s) for s in cfg["scaling"]}
    with torch.inference_mode():
        stats = perf.interleave(
            {str(s): (lambda x=x: model(x)) for s, x in inputs.items()},
            warmup=1,
            repeats=cfg["repeats"] - 1 or 1,
        )
    memory = (
        {}
        if quick
        else _memory_jobs(  # --quick: no subprocesses here
            {str(s): _mem_job("", ours.build_args, [1, 3, s, s], optimize={}) for s in cfg["scaling"]}
        )
    )
    rows = []
    for s in cfg["scaling"]:
        counted = flops(ours, (1, 3, s, s))
        t = stats[str(s)]["median_s"]
        rows.append(
            {
                "size": s,
                "pixels": s * s,
                "median_s": t,
                "peak_memory_mib": memory[str(s)]["peak_mib"] if memory else None,
                "gflops_real_pixel": counted["real_pixel"] / 1e9,
                "ns_per_real_flop": t / counted["real_pixel"] * 1e9,
                "bytes_per_real_flop": memory[str(s)]["peak_bytes"] / counted["real_pixel"]
                if memory
                else None,
            }
        )
    px = [math.log(r["pixels"]) for r in rows]
    res = {
        "model": "deeplabv3 ResNet-50 OS8 (atrous.optimize)",
        "rows": rows,
        "time_exponent": _slope(px, [math.log(r["median_s"]) for r in rows]),
        "memory_exponent": _slope(px, [math.log(r["peak_memory_mib"]) for r in rows]) if memory else None,
        "real_flops_exponent": _slope(px, [math.log(r["gflops_real_pixel"]) for r in rows]),
    }
    for key in ("ns_per_real_flop", "bytes_per_real_flop"):
        values = [r[key] for r in rows if r[key] is not None]
        res[key + "_spread"] = max(values) / min(values) - 1 if values else None  # target: within 10 %
    lines = [
        f"== scaling {res['model']}",
        f"{'size':>5} {'median s':>8} {'mem MiB':>8} {'real GFLOP':>10} {'ns/FLOP':>9}",
    ]
    lines += [
        f"{r['size']:>5} {r['median_s']:>8.3f} {_fmt(r['peak_memory_mib'], '.0f'):>8}"
        f" {r['gflops_real_pixel']:>10.1f} {r['ns_per_real_flop']:>9.4f}"
        for r in rows
    ]
    lines.append(
        f"fitted exponents vs pixel count: time {res['time_exponent']:.3f}, memory"
        f" {_fmt(res['memory_exponent'], '.3f')}, real FLOPs {res['real_flops_exponent']:.3f}; spread of"
        f" time/FLOP {res['ns_per_real_flop_spread']:.1%}, memory/FLOP {_fmt(res['bytes_per_real_flop_spread'], '.1%')}"
    )
    log("\n".join(lines))
    return res


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys against xs (the exponent of a power law on log-log axes)."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sum((a - mx) ** 2 for a in xs)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)
