"""The README's model table: every registered model with its default (paper) options and 21 classes,
parameters and FLOPs of one 1x3x512x512 forward pass.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (2 x multiply-adds; every kernel tap at
every output position, convolutions, transposed convolutions and matmuls) on the meta device: shapes
only, so the whole table takes seconds and needs no memory for activations.

    python benchmarks/model_table.py            # prints the Markdown table
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from atrous.models import available, build, options
from atrous.models.zoo import MODELS

NUM_CLASSES = 21
BACKBONES = {
    "vgg16": "VGG-16",
    "resnet50": "ResNet-50",
    "resnet101": "ResNet-101",
    "frontend": "VGG-16 (dilated)",
    "context": "VGG-16 (dilated) + basic context",
    "drn_c_26": "DRN-C-26",
    "drn_d_22": "DRN-D-22",
    "drn_d_38": "DRN-D-38",
    "dilated_net": "6 x 3x3 conv, 64 ch, rates 1,2,5,1,2,5",
}


def measure(name: str, size: int) -> dict:
    with torch.device("meta"):
        model = build(name, NUM_CLASSES).eval()
        x = torch.empty(1, 3, size, size)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            y = model(x)
    assert y.shape == (1, NUM_CLASSES, size, size)
    return {
        "name": name,
        "paper": MODELS[name].paper,
        "backbone": BACKBONES.get(name) or BACKBONES[options(name)["backbone"]],
        "output_stride": model.output_stride,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflops": counter.get_total_flops() / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="input height and width")
    args = parser.parse_args()
    print(f"| model | paper | backbone | output stride | params (M) | GFLOPs at {args.size}x{args.size} |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for name in available():
        r = measure(name, args.size)
        print(
            f"| `{r['name']}` | {r['paper']} | {r['backbone']} | {r['output_stride']} | "
            f"{r['params_m']:.1f} | {r['gflops']:.1f} |"
        )


if __name__ == "__main__":
    main()
