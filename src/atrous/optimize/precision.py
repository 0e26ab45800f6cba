"""Inference precision: run a model in bfloat16 or float16 and hand back float32 logits.

A 16-bit float model can run two ways, and which is faster depends on the hardware, not on a rule:
- "autocast": float32 weights; `torch.autocast` casts each convolution's input and weight per call;
- "weights": the weights cast once (`Module.to(dtype)`), the input cast at the model's entry.
`with_precision` measures both on an example input and keeps the faster of those whose labels agree with
float32's as well as the other's (to `LABEL_TOLERANCE`); its measurements are in `precision_timings`. On a CPU without native bfloat16
(AVX-512-BF16 or AMX) both are emulated and slower than float32; `benchmarks/precision.py` measures it.

float16 runs on CUDA only: PyTorch's CPU convolutions have no fast float16 path.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from atrous.errors import AtrousError

# the names `--precision` takes, and the dtypes they mean
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("autocast", "weights")
LABEL_TOLERANCE = 0.005  # share of pixels by which a form's labels may agree less with float32's


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """`None`, a torch float dtype or a name of `PRECISIONS` as a torch dtype (None -> float32)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str) and dtype in PRECISIONS:
        return PRECISIONS[dtype]
    if isinstance(dtype, torch.dtype) and dtype in PRECISIONS.values():
        return dtype
    raise AtrousError(f"dtype {dtype!r} is not supported: use one of {', '.join(PRECISIONS)} (or None)")


def check_supported(dtype: torch.dtype, device: torch.device | str) -> None:
    """Raise `AtrousError` (one line, with the fix) where `dtype` cannot run on `device`."""
    device = torch.device(device)
    if dtype == torch.float16 and device.type != "cuda":
        raise AtrousError(
            f"fp16 runs on CUDA GPUs only, not on {device.type}: use bf16 or fp32 there, or a CUDA device"
        )
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise AtrousError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16: use fp16 or fp32")


def _to_float32(out):
    """Logits (a tensor, or a tuple/dict of them as `aux=True` gives) back in float32."""
    if isinstance(out, dict):
        return {k: _to_float32(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(_to_float32(o) for o in out)
    return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out


class Precision(nn.Module):
    """`model` run in `dtype` ("autocast" or "weights" `mode`, see the module docstring), returning
    float32 outputs. Attributes it does not have itself (`meta`, `build_args`, `output_stride`) are the
    model's, as with a `torch.compile` wrapper. The "weights" mode casts `model` in place."""

    def __init__(self, model: nn.Module, *, dtype: torch.dtype, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        super().__init__()
        self.model, self.dtype, self.mode = model, dtype, mode
        if mode == "weights":
            model.to(dtype)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if self.mode == "weights":
            return _to_float32(self.model(x.to(self.dtype), *args, **kwargs))
        with torch.autocast(x.device.type, dtype=self.dtype):
            return _to_float32(self.model(x, *args, **kwargs))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("model")  # absent while copy/pickle rebuild it
            if inner is None:
                raise
            return getattr(inner, name)


def _seconds(model: nn.Module, x: torch.Tensor, repeats: int = 3) -> tuple[float, torch.Tensor]:
    """Median seconds of a forward after one warm-up, and the (N, H, W) labels it gives."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        labels = model(x).argmax(dim=1)  # warm-up (oneDNN primitives, cuDNN autotune)
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], labels


def with_precision(model: nn.Module, dtype: str | torch.dtype | None, *, example_input: torch.Tensor):
    """`model` itself for float32, else a `Precision` copy in the faster of the two modes with the same
    labels, measured on `example_input` (the model is not changed). The copy's `precision_timings` holds, per mode, the median
    seconds and the share of pixels whose label equals float32's."""
    dtype = resolve_dtype(dtype)
    if dtype == torch.float32:
        return model
    device = example_input.device
    check_supported(dtype, device)
    with torch.inference_mode():
        reference = model(example_input).argmax(dim=1)
    timings, candidates = {}, {}
    for mode in MODES:
        candidate = Precision(copy.deepcopy(model), dtype=dtype, mode=mode)
        seconds, labels = _seconds(candidate, example_input)
        agreement = float((labels == reference).float().mean())
        timings[mode] = {"seconds": seconds, "label_agreement": agreement}
        candidates[mode] = candidate
    # the faster of the forms whose labels match float32's as well as the best one's (within 0.5 %)
    best_agreement = max(t["label_agreement"] for t in timings.values())
    same_labels = [m for m in MODES if timings[m]["label_agreement"] >= best_agreement - LABEL_TOLERANCE]
    best = min(same_labels, key=lambda m: timings[m]["seconds"])
    chosen = candidates[best]
    chosen.precision_timings = timings
    return chosen
