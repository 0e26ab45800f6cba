"""Measuring speed, memory and work: the library side of `benchmarks/` and the demo's cost table.

FLOPs follow `torch.utils.flop_counter`: **FLOPs = 2 x multiply-adds** (a multiply and an add per kernel
tap, bias ignored). Three counts are kept apart because dilated networks make them differ:

- nominal (`count_flops`): every kernel tap at every output position, as in papers and torchvision
  (DeepLab v3 ResNet-50 at 512x512: about 327 GFLOPs);
- real-pixel (`real_pixel_flops`): only the taps that land on a real pixel, not on zero padding. A rate-24
  3x3 conv on a 64x64 map reads padding with 8 of its 9 taps almost everywhere (DeepLab v3's
  "degenerates to 1x1"), so this is the work a kernel that skips padding must do. Divided by the measured
  convolution ceiling (GFLOP/s) it gives the lower bound on latency that the benchmarks aim at;
- executed (`flop_breakdown()["executed"]`): what the operators actually called (atrous's native kernel
  crops the taps that can only read padding, so it lies between the two).

Times: `latency` (median over repeats after warm-up) and `compare` (two callables run alternately in the
same process, so that load from other processes hits both sides alike). Memory: `peak_memory` runs the
model in a fresh subprocess (`python -m atrous.perf memory ...`) and reports the peak resident memory
minus the resident memory after the model and its input are loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# ----------------------------------------------------------------------------------------------------------
# work: FLOPs and parameters
# ----------------------------------------------------------------------------------------------------------


def _axis_real_taps(size: int, out: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """Number of (output position, kernel tap) pairs along one axis whose input index is a real pixel."""
    o = torch.arange(out).unsqueeze(1) * stride - pad  # (out, 1): input index of tap 0
    idx = o + torch.arange(kernel).unsqueeze(0) * dilation  # (out, kernel)
    return int(((idx >= 0) & (idx < size)).sum())


def _conv_flops(module: nn.Conv2d, x: torch.Tensor, y: torch.Tensor, real_only: bool) -> int:
    """2 x multiply-adds of one Conv2d call, over all taps (nominal) or only those on real pixels."""
    n, c_in, h, w = x.shape
    _, c_out, ho, wo = y.shape
    k_h, k_w = module.kernel_size
    per_tap = 2 * n * c_out * (c_in // module.groups)
    if not real_only:
        return per_tap * ho * wo * k_h * k_w
    if isinstance(module.padding, str):  # "same" / "valid": F.conv2d's own rule, symmetric for odd kernels
        pad_h = module.dilation[0] * (k_h - 1) // 2 if module.padding == "same" else 0
        pad_w = module.dilation[1] * (k_w - 1) // 2 if module.padding == "same" else 0
    else:
        pad_h, pad_w = module.padding
    taps_h = _axis_real_taps(h, ho, k_h, module.stride[0], pad_h, module.dilation[0])
    taps_w = _axis_real_taps(w, wo, k_w, module.stride[1], pad_w, module.dilation[1])
    return per_tap * taps_h * taps_w  # the valid region is a product of the two axes' valid sets


def flop_breakdown(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """FLOPs (2 x multiply-adds) of one inference forward of `model` on a zero input of `input_shape`.

    Returns {"nominal", "real_pixel", "executed", "conv_nominal", "conv_real_pixel"}. Each `nn.Conv2d`
    (atrous's `AtrousConv2d` included) is re-counted exactly from its geometry by forward hooks; every other
    operator (matmul, transposed convolution, ...) keeps `torch.utils.flop_counter`'s count. The model runs
    in eval mode under `torch.no_grad()` (BatchNorm statistics are not touched) and its mode is restored.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = torch.zeros(tuple(input_shape), device=device, dtype=dtype)
    counter = FlopCounterMode(display=False)
    totals = {"executed_conv2d": 0, "conv_nominal": 0, "conv_real_pixel": 0}
    before: dict[int, int] = {}

    def pre_hook(module, args):
        before[id(module)] = counter.get_total_flops()

    def hook(module, args, output):
        executed = counter.get_total_flops() - before.pop(id(module))
        totals["executed_conv2d"] += executed
        x = args[0] if args else None
        if not (
            isinstance(x, torch.Tensor) and isinstance(output, torch.Tensor) and x.dim() == output.dim() == 4
        ):
            # a Conv2d subclass with another calling convention: keep what the counter saw
            totals["conv_nominal"] += executed
            totals["conv_real_pixel"] += executed
            return
        totals["conv_nominal"] += _conv_flops(module, x, output, real_only=False)
        totals["conv_real_pixel"] += _conv_flops(module, x, output, real_only=True)

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles += [m.register_forward_pre_hook(pre_hook), m.register_forward_hook(hook)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    executed = counter.get_total_flops()
    other = executed - totals["executed_conv2d"]  # operators outside Conv2d modules
    return {
        "nominal": other + totals["conv_nominal"],
        "real_pixel": other + totals["conv_real_pixel"],
        "executed": executed,
        "conv_nominal": totals["conv_nominal"],
        "conv_real_pixel": totals["conv_real_pixel"],
    }


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Nominal FLOPs (= 2 x multiply-adds, every kernel tap counted) of one forward on `input_shape`."""
    return flop_breakdown(model, input_shape)["nominal"]


def real_pixel_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs (2 x multiply-adds) of the convolution taps that land on real pixels, plus other operators."""
    return flop_breakdown(model, input_shape)["real_pixel"]


def param_count(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------------------------------------
# time
# ----------------------------------------------------------------------------------------------------------


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object]) -> float:
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def _stats(times: list[float]) -> dict:
    ordered = sorted(times)
    q1, _, q3 = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else (ordered[0],) * 3
    return {
        "median_s": statistics.median(ordered),
        "mean_s": statistics.fmean(ordered),
        "min_s": ordered[0],
        "max_s": ordered[-1],
        "iqr_s": q3 - q1,
        "repeats": len(ordered),
        "times_s": times,
    }


def _check_counts(warmup: int, repeats: int) -> None:
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")


def latency(fn: Callable[[], object], *, warmup: int = 2, repeats: int = 10) -> dict:
    """Run `fn()` `warmup` times untimed, then `repeats` times timed (CUDA synchronised when in use).

    Returns {"median_s", "mean_s", "min_s", "max_s", "iqr_s", "repeats", "times_s"}; the median is the
    number to report (robust to a repeat slowed down by another process).
    """
    _check_counts(warmup, repeats)
    for _ in range(warmup):
        fn()
    return _stats([_timed(fn) for _ in range(repeats)])


def interleave(fns: dict[str, Callable[[], object]], *, warmup: int = 2, repeats: int = 10) -> dict:
    """Time several callables round-robin in this process, the order rotating every repeat (A B C, B C A,
    C A B, ...), so that load from other processes and thermal drift hit all of them alike.

    Returns {name: stats} with stats as `latency` returns them.
    """
    _check_counts(warmup, repeats)
    if not fns:
        raise ValueError("interleave needs at least one callable")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(_timed(fns[name]))
    return {name: _stats(times[name]) for name in names}


def compare(
    fn_a: Callable[[], object],
    fn_b: Callable[[], object],
    *,
    warmup: int = 2,
    repeats: int = 10,
) -> dict:
    """Time two callables alternately in this process (A B, then B A, ...), so drift and load hit both.

    Returns {"a": stats, "b": stats, "ratio": median_a / median_b, "speedup": median_b / median_a}
    (speedup > 1: A is faster), with stats as `latency` returns them.
    """
    both = interleave({"a": fn_a, "b": fn_b}, warmup=warmup, repeats=repeats)
    a, b = both["a"], both["b"]
    return {"a": a, "b": b, "ratio": a["median_s"] / b["median_s"], "speedup": b["median_s"] / a["median_s"]}


# ----------------------------------------------------------------------------------------------------------
# memory: one fresh subprocess per measurement
# ----------------------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _release_free_memory() -> None:
    """Hand glibc's free heap memory back to the kernel (malloc_trim), so that memory freed before the
    baseline cannot hide the forward's allocations from the resident-memory peak."""
    import contextlib
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("VmHWM missing from /proc/self/status")


def build_spec_model(name: str, num_classes: int, options: dict | None = None, *, seed: int = 0) -> nn.Module:
    """Build a model from a spec: an atrous registry name, or `torchvision:NAME` for one of torchvision's
    segmentation models (`weights=None`, `aux_loss=False`: nothing is downloaded)."""
    torch.manual_seed(seed)
    options = dict(options or {})
    if name.startswith("torchvision:"):
        from torchvision.models import segmentation

        tv_name = name.split(":", 1)[1]
        builder = getattr(segmentation, tv_name, None)
        if builder is None or not callable(builder):
            raise ValueError(f"unknown torchvision segmentation model {tv_name!r}")
        options.setdefault("aux_loss", False)
        return builder(weights=None, weights_backbone=None, num_classes=num_classes, **options)
    from atrous import models

    return models.build(name, num_classes, **options)


class TorchvisionLogits(nn.Module):
    """torchvision's segmentation models return {"out": ...}: unwrap to the logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def _measure_memory(spec: dict) -> dict:
    """Inside the fresh process: load the model and input, reset the peak, run, report the difference."""
    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    model = build_spec_model(spec["name"], spec["num_classes"], spec.get("options"))
    if spec["name"].startswith("torchvision:"):
        model = TorchvisionLogits(model)
    mode = spec.get("mode", "inference")
    if mode not in ("inference", "train"):
        raise ValueError(f"mode must be 'inference' or 'train', got {mode!r}")
    if spec.get("optimize") is not None:
        from atrous.optimize import optimize

        model = optimize(model, **spec["optimize"])
    elif mode == "inference":
        model.eval()
    x = torch.randn(tuple(spec["input_shape"]))
    if spec.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    _release_free_memory()  # what loading (or optimize's check run) freed must not serve the forward
    baseline = _rss_bytes()
    exact = _reset_peak_rss()
    if mode == "inference":
        with torch.inference_mode():
            model(x)
    else:
        model.train()
        model(x).sum().backward()
    peak = _peak_rss_bytes() if exact else _ru_maxrss_bytes()
    return {
        "peak_bytes": peak - baseline,
        "peak_mib": (peak - baseline) / 2**20,
        "baseline_mib": baseline / 2**20,
        "exact_peak": exact,
        "spec": spec,
    }


def _ru_maxrss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def peak_memory(
    name: str,
    *,
    num_classes: int = 21,
    options: dict | None = None,
    input_shape: Sequence[int] = (1, 3, 512, 512),
    mode: str = "inference",
    channels_last: bool = False,
    optimize: dict | None = None,
    threads: int | None = None,
    timeout: float = 600.0,
) -> dict:
    """Peak activation memory of one forward (`mode="inference"`, under `torch.inference_mode`) or one
    forward+backward (`mode="train"`), measured in a fresh Python process: peak resident memory minus the
    resident memory after the model and its input are loaded.

    `name` is an atrous registry name or `torchvision:NAME`; `optimize` (a dict of `atrous.optimize`
    keyword arguments) runs the model through `atrous.optimize` first. Returns {"peak_bytes", "peak_mib",
    "baseline_mib", "exact_peak", "spec"} (`exact_peak` False: the peak mark could not be reset after
    loading, so the process-lifetime peak was used).
    """
    if mode not in ("inference", "train"):
        raise ValueError(f"mode must be 'inference' or 'train', got {mode!r}")
    if optimize is not None and mode == "train":
        raise ValueError("optimize= makes an inference copy: use it with mode='inference' only")
    spec = {
        "name": name,
        "num_classes": num_classes,
        "options": dict(options or {}),
        "input_shape": [int(s) for s in input_shape],
        "mode": mode,
        "channels_last": channels_last,
        "optimize": optimize,
        "threads": threads,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "atrous.perf", "memory", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"memory measurement of {name!r} failed: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atrous.perf", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    mem = sub.add_parser("memory", help="peak activation memory of one model spec (JSON), printed as JSON")
    mem.add_argument("spec", help='e.g. {"name": "fcn", "num_classes": 21, "input_shape": [1, 3, 512, 512]}')
    args = parser.parse_args(argv)
    print(json.dumps(_measure_memory(json.loads(args.spec))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
