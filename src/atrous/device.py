"""The one rule that turns a device name from the user into a `torch.device` (training, eval, predict)."""

from __future__ import annotations

import torch

from atrous.errors import AtrousError


def resolve_device(name: str, *, what: str, local_rank: int = 0) -> torch.device:
    """`name` ("auto", "cpu", "cuda", "cuda:N") as a torch.device; "auto" is CUDA when available, and a bare
    "cuda" takes the GPU of `local_rank` (a data-parallel process's own). `what` names the setting in errors
    (`train.device`, `--device`)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise AtrousError(f"{what} {name!r} is not a torch device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AtrousError(f"{what} is {name!r} but no CUDA GPU is available here: use cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise AtrousError(f"{what} {name!r} is not supported: use auto, cpu, cuda or cuda:N")
    return device
