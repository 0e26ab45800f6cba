"""Checkpoints: atomic save, safe load, and model rebuilding that checks before it copies.

A checkpoint is a plain dict of Python values and tensors (format below), written with `torch.save` through
`atrous._io.atomic_path` (temporary file + fsync + rename: a reader, or a run killed half-way, sees the old
complete file or the new one) and read with `torch.load(weights_only=True)`, PyTorch's restricted unpickler
that rebuilds only tensors and plain containers. A file that carries any other pickled object (which could
run code when unpickled) is refused; atrous never writes one.

Format version 1:

    {"format": "atrous-checkpoint", "version": 1,
     "model": {"name": str, "num_classes": int, "options": dict},
     "state_dict": {str: Tensor}, "classes": [str], "palette": [[r, g, b]],
     "normalize": {"mean": [float] * 3, "std": [float] * 3},
     "config": dict (the resolved training config),
     "metrics": dict (optional), "train_state": dict (optional, for exact resume),
     "provenance": dict (optional: where the initial weights came from, e.g. pretrained_backbone),
     "label_convention": dict (optional: how the training masks store the classes, e.g. 0/255 or 1-based;
                               atrous.data.LabelConvention.to_dict, so atrous predict writes masks that way)}

Checkpoints are self-contained: model options that only say where initial weights came from
(`PROVENANCE_OPTIONS`, e.g. `pretrained_backbone=PATH`) are moved out of `model.options` into `provenance`
when a checkpoint is written, and left out when a model is rebuilt, so a moved or deleted pretrained file
never stops `eval`, `predict`, `export` or `atrous.load`.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atrous._io import atomic_path
from atrous.errors import AtrousError, ModelError

FORMAT = "atrous-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("model", "state_dict", "classes", "palette", "normalize", "config")
# Model options that name a source of initial weights: recorded, never needed to rebuild the model.
PROVENANCE_OPTIONS = ("pretrained_backbone",)


def without_provenance(options: dict[str, Any]) -> dict[str, Any]:
    """`options` less the ones that only say where initial weights came from."""
    return {k: v for k, v in options.items() if k not in PROVENANCE_OPTIONS}


def model_payload(
    *, name: str, num_classes: int, options: dict[str, Any], state_dict: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """The model part of a checkpoint: rebuild spec (provenance options split off) and NCHW CPU weights."""
    payload: dict[str, Any] = {
        "model": {"name": name, "num_classes": num_classes, "options": without_provenance(options)},
        # contiguous(): channels_last training weights are stored in the plain NCHW layout.
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
    }
    provenance = {k: v for k, v in options.items() if k in PROVENANCE_OPTIONS}
    if provenance:
        payload["provenance"] = provenance
    return payload


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` atomically; `format` and `version` are filled in."""
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise ValueError(f"checkpoint payload lacks {missing}; required keys: {list(REQUIRED_KEYS)}")
    payload = {"format": FORMAT, "version": VERSION, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint safely (tensors on the CPU). Every problem is an AtrousError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise AtrousError(f"checkpoint {path} does not exist: give the path of a .pt file written by atrous")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        name = _refused_global(str(e))
        if name is not None:
            # The restricted unpickler met a class or function (which could run code when unpickled).
            raise AtrousError(
                f"checkpoint {path} carries a pickled Python object ({name}) that could run code when "
                "loaded; refused (atrous checkpoints hold only tensors and plain values): use a checkpoint "
                "written by atrous from a source you trust"
            ) from None
        raise AtrousError(
            f"checkpoint {path} is truncated or corrupt (invalid pickle data); use another"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError, IndexError) as e:
        raise AtrousError(
            f"checkpoint {path} is truncated or corrupt ({_first_line(e)}); use another"
        ) from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise AtrousError(f"{path} is not an atrous checkpoint (no 'format': '{FORMAT}' entry)")
    version = ck.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise AtrousError(
            f"checkpoint {path} has format version {version!r}; this atrous reads versions <= {VERSION}: "
            "upgrade atrous"
        )
    missing = [key for key in REQUIRED_KEYS if key not in ck]
    model = ck.get("model")
    if missing or not isinstance(model, dict) or not {"name", "num_classes", "options"} <= set(model):
        raise AtrousError(
            f"checkpoint {path} is incomplete (missing {missing or 'model fields'}); use another"
        )
    if not isinstance(ck["state_dict"], dict):
        raise AtrousError(f"checkpoint {path} has no state_dict mapping; use another")
    return ck


def _first_line(error: BaseException) -> str:
    # The first sentence of the error (torch's messages continue with advice that does not apply here).
    text = str(error).strip().split(". ")[0].splitlines()
    return text[0][:200] if text and text[0] else type(error).__name__


def _refused_global(message: str) -> str | None:
    # torch names the refused global: "... unsupported GLOBAL posix.system whose module ..." or
    # "Unsupported global: GLOBAL pkg.mod.Name was not an allowed global ..."; None when it names none.
    match = re.search(r"GLOBAL\s+([\w.]+)", message)
    return match.group(1) if match else None


def check_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str = "checkpoint"
) -> None:
    """Raise AtrousError unless `state_dict` has exactly the model's keys with the same shapes."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected:
        raise AtrousError(
            f"{source} does not fit this model: missing {_few(missing)}, unexpected {_few(unexpected)}; "
            "use a checkpoint of the same model and options"
        )
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected[key].shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise AtrousError(
                f"{source}: {key} has shape {got} but the model expects {tuple(expected[key].shape)}; "
                "use a checkpoint of the same model, options and number of classes"
            )


def _few(keys: list[str], n: int = 3) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def build_model_from_checkpoint(
    ck: dict[str, Any],
    *,
    expect_name: str | None = None,
    expect_num_classes: int | None = None,
    source: str = "checkpoint",
) -> nn.Module:
    """Build the checkpoint's model and load its weights, refusing a mismatch before copying any weight.

    `expect_name` / `expect_num_classes` (when given) must match the checkpoint's model; then the rebuilt
    model's state_dict keys and shapes must match the stored ones exactly.
    """
    from atrous import models

    spec = ck["model"]
    # Older checkpoints kept provenance options in model.options: the weights are in the file anyway.
    name, num_classes, options = spec["name"], spec["num_classes"], without_provenance(spec["options"])
    if expect_name is not None and name != expect_name:
        raise AtrousError(
            f"{source} holds a {name!r} model, not {expect_name!r}: use a {expect_name} checkpoint"
        )
    if expect_num_classes is not None and num_classes != expect_num_classes:
        raise AtrousError(
            f"{source} has {num_classes} classes, not {expect_num_classes}: use a checkpoint trained on "
            "these classes (or fine-tune with `atrous train --init-from`)"
        )
    try:
        model = models.build(name, num_classes, **options)
    except ModelError as e:
        # The registry's error (model, option, what is valid), prefixed with the file it came from.
        raise type(e)(f"{source} cannot be rebuilt: {e}") from None
    check_state_dict(model, ck["state_dict"], source=source)
    model.load_state_dict(ck["state_dict"], strict=True)
    return model


def load_matching(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Copy the tensors whose key and shape match (for fine-tuning); return (loaded, kept_at_init) keys.

    Used by `--init-from`: a classifier for another number of classes keeps its fresh initialisation.
    """
    own = model.state_dict()
    matching = {
        k: v
        for k, v in state_dict.items()
        if k in own and isinstance(v, torch.Tensor) and v.shape == own[k].shape
    }
    model.load_state_dict(matching, strict=False)
    kept = [k for k in own if k not in matching]
    return list(matching), kept
