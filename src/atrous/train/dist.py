"""This process's place in a data-parallel run (`torchrun`), its device, and the few collectives training uses.

Data-parallel runs split every global batch of `data.batch_size` samples evenly over the processes (the
same samples a single process would use); the loss is normalised over the whole global batch
(`atrous.train.loss`), so the averaged gradient equals the single-process gradient up to the order of
floating-point sums.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from atrous.device import resolve_device as _resolve


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        """`value` summed over the processes, in place (itself with one process)."""
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every process (a picklable object, e.g. the run folder's name)."""
        if not self.active:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """(Dist, device) of this process: torch.distributed is initialised when torchrun set WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device_name, 0)
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size()), device


def shutdown(info: Dist) -> None:
    if info.active:
        import torch.distributed as dist

        dist.destroy_process_group()


def resolve_device(name: str, local_rank: int) -> torch.device:
    """`train.device` as a torch.device (`atrous.device.resolve_device`: the one rule, also eval's)."""
    return _resolve(name, what="train.device", local_rank=local_rank)
