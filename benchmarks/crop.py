"""Benchmark: the derived default crop against an explicit crop, epoch time and mIoU after the same steps.

With no `--crop`, `atrous train` crops to the median short side of the training images, capped at 321
(`atrous.train.data.derive_crop`). Before, the default was 321 whatever the images: a folder of 64 px
images was padded to 321 px crops that are 96 % ignore label. Three generated folders (synthetic `shapes`
images written as PNG, so the crop is derived from the files as for a user's folder):
- `small`: 64 px images (derived crop 64; against the explicit old default 321),
- `large`: 512 px images (derived crop 321 = the explicit 321: the ratio is the run-to-run spread),
- `mixed`: sides 48 to 512 px, half as many images (derived: their median short side; against 321).
Each pair trains the same model for the same steps (same seed, data and order), validates on the same
held-out images at full size, and is timed in this process one after the other. On `small` the default
crop also trains for the time the 321 crop took (`default_equal_time`: epochs scaled by the time ratio,
at most 80): the comparison a user with a time budget makes. The key `crop` of
benchmarks/results.json holds the numbers with the machine's name; other keys are left as they are.

    python benchmarks/crop.py [--quick] [--threads N] [--json benchmarks/results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from atrous.config import load_config
from atrous.data import build_dataset
from atrous.train import fit

KEY = "crop"


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def write_folder(root: Path, sizes: list[int], *, seed: int) -> None:
    """images/ + masks/ PNGs of synthetic shapes, one per size in `sizes` (square, side = size)."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        image, mask = build_dataset(f"synthetic:shapes?n=1&size={size}&seed={seed + i}", "train")[0]
        Image.fromarray(np.asarray(image.permute(1, 2, 0))).save(root / "images" / f"{i:04d}.png")
        Image.fromarray(np.asarray(mask, dtype=np.uint8)).save(root / "masks" / f"{i:04d}.png")


def folders(root: Path, quick: bool) -> dict[str, tuple[Path, Path]]:
    """name -> (train folder, val folder)."""
    rng = np.random.default_rng(0)
    n_small, n_large, n_val = (16, 4, 2) if quick else (64, 16, 8)
    n_mixed = n_small // 2
    layouts = {
        "small": ([64] * n_small, [64] * n_val),
        "large": ([512] * n_large, [512] * n_val),
        "mixed": (rng.integers(48, 513, n_mixed).tolist(), rng.integers(48, 513, n_val).tolist()),
    }
    out = {}
    for name, (train_sizes, val_sizes) in layouts.items():
        write_folder(root / name / "train", train_sizes, seed=0)
        write_folder(root / name / "val", val_sizes, seed=10_000)
        out[name] = (root / name / "train", root / name / "val")
    return out


def run(
    train: Path, val: Path, crop: int | None, *, out: Path, epochs: int, batch: int, threads: int
) -> dict:
    overrides = {
        "model.name": "dilated_net",
        "model.options.channels": 16,
        "data.train": f"folder:{train}",
        "data.val": f"folder:{val}",
        "data.batch_size": batch,
        "data.crop_size": crop,
        "optim.name": "adamw",
        "optim.lr": 0.003,
        "train.epochs": epochs,
        "train.threads": threads,
        "train.out": str(out),
        "log.progress": False,
        "log.tensorboard": False,
    }
    config = load_config(None, overrides)
    lines: list[str] = []
    started = time.perf_counter()
    result = fit(config, log=lines.append)
    seconds = time.perf_counter() - started
    used = load_config(out / "config.yaml").data.crop_size
    return {
        "crop": used,
        "steps": result["step"],
        "seconds_per_epoch": seconds / epochs,
        "val_miou": result["history"][-1]["val_miou"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny folders, one epoch (a smoke run)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()
    epochs, batch = (1, 4) if args.quick else (3, 8)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, (train, val) in folders(root, args.quick).items():
            derived = run(
                train,
                val,
                None,
                out=root / f"{name}-default",
                epochs=epochs,
                batch=batch // (1 + (name == "large")),
                threads=args.threads,
            )
            explicit = run(
                train,
                val,
                321,
                out=root / f"{name}-321",
                epochs=epochs,
                batch=batch // (1 + (name == "large")),
                threads=args.threads,
            )
            ratio = explicit["seconds_per_epoch"] / derived["seconds_per_epoch"]
            rows[name] = {"default": derived, "explicit_321": explicit, "time_ratio_321_over_default": ratio}
            print(
                f"{name:6s} default crop {derived['crop']:3d}: {derived['seconds_per_epoch']:7.2f} s/epoch, "
                f"mIoU {derived['val_miou']:.3f} | crop 321: {explicit['seconds_per_epoch']:7.2f} s/epoch, "
                f"mIoU {explicit['val_miou']:.3f} | {derived['steps']} steps each",
                flush=True,
            )
            if name == "small":
                longer = min(80, round(epochs * ratio))
                rows[name]["default_equal_time"] = run(
                    train,
                    val,
                    None,
                    out=root / "small-long",
                    epochs=longer,
                    batch=batch,
                    threads=args.threads,
                )
                print(
                    f"small  default crop, {longer} epochs: mIoU {rows[name]['default_equal_time']['val_miou']:.3f}"
                )
    record = {
        "machine": {
            "cpu": machine(),
            "cores": os.cpu_count(),
            "torch_threads": args.threads,
            "torch": torch.__version__,
        },
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "epochs": epochs,
        "model": "dilated_net channels=16, adamw lr 0.003",
        "load_average_at_start": list(os.getloadavg()),
        "folders": rows,
    }
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    results[KEY] = record  # only this key: the other benchmarks own the rest
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote key {KEY!r} of {args.json}")


if __name__ == "__main__":
    main()
