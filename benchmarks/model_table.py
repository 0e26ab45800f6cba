"""The docs' model table: every registered model with its default (paper) options and 21 classes (and the
variants in `VARIANTS`), parameters, FLOPs of one 1x3x512x512 forward pass, theoretical receptive field
and small-object limit.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (2 x multiply-adds; every kernel tap at
every output position, convolutions, transposed convolutions and matmuls) on the meta device: shapes
only, so the whole table takes seconds and needs no memory for activations. The receptive field (the
largest local one, unclipped by the image; "+ global" where an image-pooling or SE path reaches the output)
and the small-object limit come from `atrous.analysis.receptive_field` on the same meta-device model.

    python benchmarks/model_table.py            # prints the Markdown table
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from atrous.analysis import receptive_field
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
    "dilated_net (block=reparam)": "6 x DilatedReparam (k = 2r+1) + 1x1, 146 ch, rates 1,2,5,1,2,5",
    "poolnet": "6 x 3x3 conv, 16 ch, 3 x 2x2 max pooling",
    "regseg": "RegSeg D-block body (exp48 dilations)",
}
# registered models built with other options than their defaults, each a row of its own: name, options,
# the paper the variant follows
VARIANTS = [("dilated_net", {"block": "reparam"}, "Ding et al. CVPR 2024 (UniRepLKNet)")]


def measure(name: str, size: int, opts: dict | None = None, paper: str | None = None) -> dict:
    opts = opts or {}
    label = name + "".join(f" ({k}={v})" for k, v in opts.items())
    with torch.device("meta"):
        model = build(name, NUM_CLASSES, **opts).eval()
        x = torch.empty(1, 3, size, size)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            y = model(x)
    assert y.shape == (1, NUM_CLASSES, size, size)
    rf = receptive_field(model, (size, size))
    return {
        "name": label,
        "paper": paper or MODELS[name].paper,
        "backbone": BACKBONES.get(label) or BACKBONES.get(name) or BACKBONES[options(name)["backbone"]],
        "output_stride": model.output_stride,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflops": counter.get_total_flops() / 1e9,
        "rf": rf["rf_local"][0],
        "global": rf["global"],
        "small_object_limit": rf["small_object_limit"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="input height and width")
    args = parser.parse_args()
    print(
        f"| model | paper | backbone | output stride | params (M) | GFLOPs at {args.size}x{args.size} | "
        "RF (px) | small-object limit (px) |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, opts, paper in [(n, {}, None) for n in available()] + VARIANTS:
        r = measure(name, args.size, opts, paper)
        rf = f"{r['rf']}{' + global' if r['global'] else ''}"
        print(
            f"| `{r['name']}` | {r['paper']} | {r['backbone']} | {r['output_stride']} | "
            f"{r['params_m']:.2f} | {r['gflops']:.1f} | {rf} | {r['small_object_limit']} |"
        )


if __name__ == "__main__":
    main()
