"""ONNX export of a trained atrous model, checked against PyTorch with onnxruntime.

Uses PyTorch's TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`), which traces one forward
pass. Two facts shape it:
- `padding="same"` would export as SAME_UPPER, which onnxruntime refuses for dilated convolutions; atrous
  convolutions use explicit integer padding, so they export as plain ONNX `Conv` nodes.
- `AtrousConv2d`'s native path crops the kernel taps that can only read padding for the traced input size
  (exact, and cheaper for large rates on small maps). That is a decision on the input size, so a graph with
  dynamic height/width cannot keep it: for `dynamic=True` every `AtrousConv2d` is exported as the uncropped
  `nn.Conv2d` with the same weights and padding (exact at every size). A fixed-size export keeps the cropped
  kernels, which are exact at the size it is exported for.

The ONNX graph takes the normalised image `image` (N, 3, H, W) float32 and returns `logits` (N, K, H, W); the
class names, palette and normalisation are stored in the model's metadata (`metadata_props`, JSON values).
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from atrous._io import atomic_path
from atrous.errors import AtrousError
from atrous.ops import AtrousConv2d, reparameterize


def with_plain_convs(model: nn.Module) -> nn.Module:
    """A copy of `model` with every `AtrousConv2d` replaced by `nn.Conv2d` with the same weights, stride,
    padding and dilation: the same function at every input size, with no size-dependent kernel cropping."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, AtrousConv2d):
                conv = nn.Conv2d(
                    child.in_channels,
                    child.out_channels,
                    child.kernel_size,
                    stride=child.stride,
                    padding=child.padding,
                    dilation=child.dilation,
                    groups=child.groups,
                    bias=child.bias is not None,
                )
                conv.load_state_dict(child.state_dict())
                setattr(parent, name, conv)
    return model


def random_images(meta, batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Normalised images of uniform random pixels: (batch, 3, height, width), the input the check uses."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 3, height, width, generator=g)
    mean = torch.tensor(meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(meta.std).view(1, 3, 1, 1)
    return (pixels - mean) / std


def onnx_max_abs_diff(path: str | os.PathLike, model: nn.Module, images: torch.Tensor) -> float:
    """Largest |onnxruntime - PyTorch| over the logits of `images`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = model(images).numpy()
    got = session.run(["logits"], {"image": images.numpy()})[0]
    if got.shape != expected.shape:
        raise AtrousError(
            f"{path}: onnxruntime returned logits of shape {got.shape}, PyTorch {expected.shape}; "
            "the export is wrong: report this with the model name and options"
        )
    return float(np.abs(got - expected).max())


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    height: int = 512,
    width: int = 512,
    dynamic: bool = False,
    opset: int = 17,
    atol: float = 1e-3,
) -> list[tuple[tuple[int, ...], float]]:
    """Export `model` (from `atrous.load`) to ONNX at `path` and check it with onnxruntime.

    The graph is traced at (1, 3, height, width); with `dynamic` the batch, height and width axes are free
    and the check runs at a second size and batch too. Returns `[(input shape, max |ORT - PyTorch|), ...]`.
    If a difference exceeds `atol`, raises `AtrousError` and leaves no file at `path` (the file is written
    to a temporary name and renamed only once the check passed).
    """
    import onnx

    model = model.eval().to("cpu")
    traced = copy.deepcopy(model)
    reparameterize(traced)  # the inference form of every DilatedReparam; the check compares with `model`
    traced = with_plain_convs(traced) if dynamic else traced
    example = random_images(model.meta, 1, height, width)
    shapes = [(1, height, width)]
    if dynamic:  # a second batch size and odd sizes unlike the traced ones
        shapes.append((2, height + height // 2 + 1, max(1, width - width // 4) + 2))
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
    results = []
    with atomic_path(path) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            # the exporter warns that it is the legacy one and that size-dependent Python branches are traced
            warnings.simplefilter("ignore")
            torch.onnx.export(
                traced,
                (example,),
                str(tmp),
                dynamo=False,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes=axes if dynamic else None,
                opset_version=opset,
            )
        proto = onnx.load(str(tmp))
        meta = model.meta
        for key, value in {
            "atrous_model": meta.name,
            "atrous_options": meta.options,
            "classes": meta.classes,
            "palette": [list(rgb) for rgb in meta.palette],
            "mean": list(meta.mean),
            "std": list(meta.std),
        }.items():
            proto.metadata_props.add(key=key, value=json.dumps(value))
        onnx.save(proto, str(tmp))
        for i, (n, h, w) in enumerate(shapes):
            images = random_images(meta, n, h, w, seed=i + 1)
            diff = onnx_max_abs_diff(tmp, model, images)
            results.append(((n, 3, h, w), diff))
            if not diff <= atol:  # also catches NaN
                raise AtrousError(
                    f"{Path(path)}: onnxruntime differs from PyTorch by {diff:.3g} (> {atol:g}) at input "
                    f"{(n, 3, h, w)}; not written. Try another --opset, or report it with the model name"
                )
    return results
