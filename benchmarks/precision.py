"""Benchmark 6: bfloat16 against float32 inference of `atrous.optimize`'s copy, on this machine.

Two models, batch 1, each the float32 `atrous.optimize` copy against both bf16 forms that
`atrous.optimize(dtype="bf16")` chooses between (autocast, cast weights), timed round-robin in this process,
with the share of pixels whose predicted label equals float32's:
- `trained`: dilated_net trained here for a few epochs on `synthetic:shapes` (`atrous train`), labels
  compared on held-out synthetic images: the agreement a user's trained model sees;
- `resnet50`: DeepLab v3 ResNet-50 at output stride 8 (the scaling benchmark's model), for the speed of a
  large model. Its weights are untrained (BatchNorm statistics set from the images): a random 50-layer
  network amplifies bf16's rounding into near-ties, so its label agreement says little about trained ones.
Whether bf16 pays depends on the CPU: native bf16 needs AVX-512-BF16 or AMX (`cpu_flags` in the JSON); on
other CPUs PyTorch emulates it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
from pathlib import Path

import torch

import atrous
from atrous import perf
from atrous.optimize import Precision


def cpu_flags() -> list[str]:
    """The CPU's bf16-relevant feature flags (from /proc/cpuinfo; empty where it is not readable)."""
    wanted = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx_ne_convert", "avx2")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return [w for w in wanted if w in flags]


def _calibrated_model(images: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(0)
    model = atrous.build("deeplabv3", 21, backbone="resnet50", output_stride=8)
    for m in model.modules():  # cumulative statistics of one pass over the images
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
    return model.eval()


def _trained_model(root: Path, quick: bool) -> tuple[torch.nn.Module, torch.Tensor]:
    """A dilated_net trained by `atrous train` on synthetic shapes, and held-out images (N, 3, H, W)."""
    from atrous.cli import main
    from atrous.data import build_dataset, eval_transform

    n, epochs, size = (16, 1, 32) if quick else (96, 3, 64)
    spec = f"synthetic:shapes?n={n}&size={size}"
    args = [
        "train",
        "--model",
        "dilated_net",
        "--opt",
        "channels=16",
        "--data",
        spec,
        "--epochs",
        str(epochs),
    ]
    args += ["--batch-size", "8", "--crop", str(size), "--lr", "0.01", "--out", str(root / "run")]
    args += ["--set", "optim.name=adamw", "--set", "log.progress=false"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if main(args) != 0:
            raise RuntimeError(f"atrous {' '.join(args)} failed")
    model = atrous.load(root / "run" / "last.pt")
    held_out = build_dataset(
        f"synthetic:shapes?n=8&size={size}&seed=12345",
        None,
        transform=eval_transform(mean=model.meta.mean, std=model.meta.std),
    )
    return model, torch.stack([held_out[i][0] for i in range(len(held_out))])


def _compare(model: torch.nn.Module, images: torch.Tensor, *, repeats: int, atol: float) -> dict:
    """fp32 copy, bf16 autocast, bf16 weights: median seconds on images[:1], label agreement on all."""
    x = images[:1]
    fp32 = atrous.optimize(model, example_input=x, atol=atol)
    variants = {"fp32": fp32}
    for mode in ("autocast", "weights"):
        variants[f"bf16_{mode}"] = Precision(copy.deepcopy(fp32), dtype=torch.bfloat16, mode=mode)
    chosen = atrous.optimize(model, dtype="bf16", example_input=x, atol=atol)
    with torch.inference_mode():
        fns = {k: (lambda m=m: m(x)) for k, m in variants.items()}
        stats = perf.interleave(fns, warmup=1, repeats=repeats)
        labels = {k: torch.cat([m(im[None]).argmax(dim=1) for im in images]) for k, m in variants.items()}
    rows = {
        key: {
            "median_s": stats[key]["median_s"],
            "speedup_vs_fp32": stats["fp32"]["median_s"] / stats[key]["median_s"],
            "label_agreement_vs_fp32": float((labels[key] == labels["fp32"]).float().mean()),
        }
        for key in variants
    }
    return {
        "input_shape": list(x.shape),
        "agreement_images": len(images),
        "rows": rows,
        "optimize_bf16_chose": chosen.mode,
        "optimize_bf16_timings": chosen.precision_timings,
    }


def run(*, quick: bool, log=print) -> dict:
    # ResNet-50 at 192 px: on a CPU without native bf16 one emulated forward at 256 px takes seconds
    size, n_images, repeats = (64, 2, 2) if quick else (192, 3, 5)
    images = torch.randn(n_images, 3, size, size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        trained, held_out = _trained_model(Path(tmp), quick)
    result = {
        "cpu_flags": cpu_flags(),
        "trained": {
            "model": "dilated_net channels=16, trained by atrous train on synthetic:shapes",
            **_compare(trained, held_out, repeats=repeats, atol=1e-4),
        },
        "resnet50": {
            "model": "deeplabv3 ResNet-50 OS8, 21 classes, untrained (BatchNorm calibrated on the images)",
            # atol 1e-3: 50 layers of unit-scale activations reassociate float32 sums by ~3e-4
            **_compare(_calibrated_model(images), images, repeats=repeats, atol=1e-3),
        },
    }
    log(f"CPU flags {' '.join(result['cpu_flags']) or 'none'}")
    log(f"{'model':<9} {'variant':<14} {'median ms':>9} {'vs fp32':>7} {'labels = fp32':>13}")
    for name in ("trained", "resnet50"):
        for key, row in result[name]["rows"].items():
            log(
                f"{name:<9} {key:<14} {1e3 * row['median_s']:9.1f} {row['speedup_vs_fp32']:6.2f}x "
                f"{100 * row['label_agreement_vs_fp32']:12.2f}%"
            )
        log(f"{name}: atrous.optimize(dtype='bf16') measured and chose {result[name]['optimize_bf16_chose']}")
    return result
