"""The Python entry points for using a trained model: `atrous.load(checkpoint)` and `atrous.predict`.

`load` rebuilds the model named in a checkpoint (validated before any weight is copied, loaded with
`torch.load(weights_only=True)`) and attaches what prediction needs as `model.meta`: class names, palette
and the normalisation the model was trained with. `predict` takes a PIL image, an image file or a uint8
`(H, W, 3)` array and returns class indices at the image's size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from atrous._io import atomic_path
from atrous.data import LabelConvention, encode_prediction, standard_palette
from atrous.data.io import IMAGE_SUFFIXES as IMAGE_SUFFIXES  # re-exported (the one list: atrous.data.io)
from atrous.data.io import as_rgb_array, find_images, read_image, without_skip_hint
from atrous.data.spec import intensity_of
from atrous.data.transforms import normalize
from atrous.errors import AtrousError
from atrous.inference import Infer, whole_image


@dataclass(frozen=True)
class ModelMeta:
    """What a checkpoint says about its model beyond the weights."""

    name: str
    options: dict[str, Any]
    num_classes: int
    classes: list[str]
    palette: list[tuple[int, int, int]]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # How the training data's mask files store the classes (`atrous.data.LabelConvention.to_dict`), so that
    # `predict_files` writes masks back the same way; None (checkpoints without it): class indices.
    label_convention: dict | None = None
    ignore_index: int = 255  # the mask value the run did not score (its loss.ignore_index)
    # The 16-bit grey image rule the training data was read with (its spec's ?intensity=), used by default.
    intensity: str = "auto"


def meta_from_checkpoint(ck: dict) -> ModelMeta:
    model = ck["model"]
    num_classes = int(model["num_classes"])
    classes = [str(c) for c in ck.get("classes") or [f"class_{i}" for i in range(num_classes)]]
    palette = [tuple(int(v) for v in rgb) for rgb in ck.get("palette") or []]
    palette += standard_palette(num_classes)[len(palette) :]  # one colour per class (VOC colour map)
    normalize = ck["normalize"]
    return ModelMeta(
        name=str(model["name"]),
        options=dict(model.get("options") or {}),
        num_classes=num_classes,
        classes=classes,
        palette=palette,
        mean=tuple(float(v) for v in normalize["mean"]),
        std=tuple(float(v) for v in normalize["std"]),
        label_convention=ck.get("label_convention"),
        ignore_index=int(((ck.get("config") or {}).get("loss") or {}).get("ignore_index", 255)),
        intensity=_training_intensity(ck),
    )


def _training_intensity(ck: dict) -> str:
    """The `?intensity=` rule of the checkpoint's training data spec ("auto" when none or unreadable)."""
    spec = ((ck.get("config") or {}).get("data") or {}).get("train")
    try:
        return intensity_of(spec) if isinstance(spec, str) else "auto"
    except AtrousError:  # a spec this version cannot parse: the default rule
        return "auto"


def _refuse_folder(path: Path) -> None:
    """A run folder given where its checkpoint file is meant: say so, naming the file to give instead."""
    if not path.is_dir():
        return
    found = [path / n for n in ("best.pt", "last.pt") if (path / n).is_file()] or sorted(path.glob("*.pt"))
    if found:
        raise AtrousError(f"checkpoint {path} is a folder: give a checkpoint file in it, e.g. {found[0]}")
    raise AtrousError(
        f"checkpoint {path} is a folder with no .pt file: give a checkpoint file (RUN/best.pt or RUN/last.pt "
        "written by atrous train)"
    )


def load(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, dtype: str | torch.dtype | None = None
) -> nn.Module:
    """Load an atrous checkpoint: the model in eval mode on `device`, with `model.meta` (a `ModelMeta`).

    `dtype` ("fp32", "bf16", "fp16" or a torch dtype; default float32) runs the model in that precision:
    a 16-bit dtype gives an `atrous.optimize.Precision` wrapper (float32 logits; `.meta` and the model's
    other attributes reach through it) in whichever of autocast and cast weights measured faster here.
    fp16 needs a CUDA device. A missing, corrupt or code-carrying file, or a checkpoint whose weights do not
    fit its model, raises `AtrousError` naming the file.
    """
    from atrous.checkpoint import build_model_from_checkpoint, load_checkpoint
    from atrous.optimize.pipeline import random_example
    from atrous.optimize.precision import check_supported, resolve_dtype, with_precision

    dtype = resolve_dtype(dtype)
    check_supported(dtype, device)  # before the file is read: a wrong choice fails at once
    _refuse_folder(Path(path))
    ck = load_checkpoint(path)
    try:
        meta = meta_from_checkpoint(ck)
    except (KeyError, TypeError, ValueError) as e:
        raise AtrousError(
            f"{path}: not an atrous model checkpoint ({type(e).__name__}: {e}); "
            "give a last.pt or best.pt written by `atrous train`"
        ) from None
    model = build_model_from_checkpoint(ck, source=f"checkpoint {path}")
    model.meta = meta
    model = model.eval().to(device)
    if dtype == torch.float32:
        return model
    return with_precision(model, dtype, example_input=random_example(model))


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _meta(model: nn.Module) -> ModelMeta:
    meta = getattr(model, "meta", None)
    if not isinstance(meta, ModelMeta):
        raise ValueError("model has no .meta: load it with atrous.load(checkpoint)")
    return meta


def to_input(rgb: np.ndarray, meta: ModelMeta, device: torch.device) -> torch.Tensor:
    """uint8 `(H, W, 3)` -> normalised float32 `(1, 3, H, W)` on `device`."""
    x = torch.from_numpy(np.array(rgb, dtype=np.uint8)).to(device)  # a writable copy, (H, W, 3)
    x = x.permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W)
    return normalize(x, mean=meta.mean, std=meta.std)


# ----------------------------------------------------------------------------------------------------------
# prediction
# ----------------------------------------------------------------------------------------------------------
@torch.inference_mode()
def predict(
    model: nn.Module,
    image: Image.Image | np.ndarray | str | os.PathLike,
    *,
    probabilities: bool = False,
    infer: Infer = whole_image,
    intensity: str | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Segment one image with a model from `atrous.load`.

    Returns int64 `(H, W)` class indices at the image's size; with `probabilities=True` also the float32
    `(K, H, W)` softmax probabilities. `infer` picks the strategy (`atrous.inference.SlidingWindow`,
    `MultiScaleFlip`, or the default whole-image pass); `intensity` the rule for 16-bit grey images
    (`atrous.data.io`: auto, full, minmax, percentile; default: the rule the model was trained with).
    """
    meta = _meta(model)
    rgb = as_rgb_array(image, intensity=intensity or meta.intensity)
    was_training = model.training
    model.eval()  # BatchNorm's running statistics and no dropout, whatever mode the caller left it in
    try:
        logits = infer(model, to_input(rgb, meta, _model_device(model)))  # (1, K, H, W)
    finally:
        model.train(was_training)
    labels = logits.argmax(dim=1)[0].to("cpu", torch.int64).numpy()
    if not probabilities:
        return labels
    probs = logits.float().softmax(dim=1)[0].cpu().numpy()
    return labels, probs


# ----------------------------------------------------------------------------------------------------------
# images out
# ----------------------------------------------------------------------------------------------------------
def label_image(labels: np.ndarray, palette: list[tuple[int, int, int]]) -> Image.Image:
    """Class indices as a PNG-ready image: an 8-bit palette image (pixel value = class index, shown in the
    class colours, as Pascal VOC's masks) up to 256 classes, 16-bit greyscale beyond."""
    if len(palette) <= 256:
        im = Image.fromarray(labels.astype(np.uint8))  # "L"; putpalette makes it "P"
        flat = [v for rgb in palette for v in rgb]
        im.putpalette(flat + [0] * (768 - len(flat)))
        return im
    return Image.fromarray(labels.astype(np.uint16))


def mask_image(labels: np.ndarray, meta: ModelMeta) -> Image.Image:
    """The predicted mask as the training data stored its masks (e.g. 0/255 for `map=0:0,255:1`, k+1 for
    `reduce_zero_label`, colours for a palette file: `atrous.data.encode_prediction`), or `label_image`
    when the data stored class indices."""
    convention = meta.label_convention
    if convention is None or LabelConvention.from_dict(convention).identity:
        return label_image(labels, meta.palette)
    return Image.fromarray(encode_prediction(labels, convention))


def overlay_image(
    rgb: np.ndarray, labels: np.ndarray, palette: list[tuple[int, int, int]], alpha: float = 0.5
) -> Image.Image:
    """The image blended with its class colours: `(1 - alpha) * image + alpha * palette[label]`."""
    colours = np.asarray(palette, dtype=np.float32)[labels]  # (H, W, 3)
    blend = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colours
    return Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------------------------------------
# many files: the loop behind `atrous predict`
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileResult:
    """What happened to one input: `status` is "written", "existing" (kept, --skip-existing) or "bad"
    (unreadable, skipped with --skip-bad; `detail` says why)."""

    source: Path
    status: str
    detail: str = ""


def output_paths(out: str | os.PathLike, name: Path) -> tuple[Path, Path]:
    """`(class-index PNG, colour overlay PNG)` for output name `name`: `out/masks/name`, `out/overlays/name`.

    The masks folder holds 8-bit class indices, as the `folder:` data format's masks, or the training data's
    own mask values when its checkpoint records a label convention (`mask_image`)."""
    return Path(out) / "masks" / name, Path(out) / "overlays" / name


def predict_files(
    model: nn.Module,
    inputs: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    skip_existing: bool = False,
    skip_bad: bool = False,
    infer: Infer = whole_image,
    alpha: float = 0.5,
    intensity: str | None = None,
):
    """Predict every image in `inputs` (files or folders) into `out`, one image at a time.

    Yields a `FileResult` per image, in order; memory use does not grow with the number of images (nothing
    is kept between images). Each output PNG is written atomically, the class-index PNG first and the
    overlay last, so an image is finished exactly when both exist: `skip_existing` skips those. An
    unreadable image raises `AtrousError`, or with `skip_bad` is yielded as "bad" and skipped. `intensity`:
    the 16-bit grey image rule of `atrous.data.io.read_image` (default: the model's training rule).
    """
    meta = _meta(model)
    intensity = intensity or meta.intensity
    for source, name in find_images(inputs, out):
        mask_path, overlay_path = output_paths(out, name)
        if skip_existing and mask_path.is_file() and overlay_path.is_file():
            yield FileResult(source, "existing")
            continue
        try:
            rgb = read_image(source, intensity=intensity)
        except AtrousError as e:
            if not skip_bad:
                raise
            yield FileResult(source, "bad", without_skip_hint(str(e)))  # it is being skipped
            continue
        labels = predict(model, rgb, infer=infer)  # rgb is already 8-bit: intensity applied by read_image
        for path, image in (
            (mask_path, mask_image(labels, meta)),
            (overlay_path, overlay_image(rgb, labels, meta.palette, alpha)),
        ):
            with atomic_path(path) as tmp:
                image.save(tmp, format="PNG")
        yield FileResult(source, "written")
