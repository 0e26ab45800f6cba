"""The training loss: pixel-wise cross-entropy over the global batch, plus the aux head's share.

Under data parallelism each process sums its pixels' loss and divides by the labelled-pixel count of the
whole global batch (all-reduced), times the world size because DDP averages gradients: the averaged
gradient is then the single-process gradient (a per-process mean would weight the images of a process
with fewer labelled pixels more).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from atrous.train.dist import Dist


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None,
    ignore_index: int,
    denominator: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy summed over labelled pixels, divided by `denominator` (the weighted labelled-pixel
    count of the global batch): with one process this is torch's weighted mean."""
    total = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index, reduction="sum")
    return total / denominator


def labelled_weight(target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int) -> torch.Tensor:
    """The denominator torch's mean reduction would use: sum of weight[target] over non-ignored pixels."""
    valid = target[target != ignore_index]
    if weight is None:
        return torch.tensor(float(valid.numel()), device=target.device)
    return weight[valid].sum().float()


@dataclass(frozen=True, kw_only=True)
class Criterion:
    """`criterion(logits, aux_logits, masks, dist)`: the global-batch loss of one process's share.

    `aux_logits` (None for models without an aux head) adds `aux_weight` times the same loss."""

    class_weights: torch.Tensor | None = None
    ignore_index: int = 255
    aux_weight: float = 0.5

    def __call__(
        self, logits: torch.Tensor, aux_logits: torch.Tensor | None, masks: torch.Tensor, dist: Dist
    ) -> torch.Tensor:
        denominator = dist.all_reduce_sum(labelled_weight(masks, self.class_weights, self.ignore_index))
        # DDP averages gradients over processes; scaling by world size makes that average the gradient of
        # (sum over the global batch) / (global denominator): the single-process loss.
        # (A batch without any labelled pixel has a zero loss sum: divide it by 1 instead of 0.)
        denominator = torch.where(denominator > 0, denominator, 1.0) / dist.world
        kw = {"weight": self.class_weights, "ignore_index": self.ignore_index, "denominator": denominator}
        loss = segmentation_loss(logits, masks, **kw)
        if aux_logits is not None:
            loss = loss + self.aux_weight * segmentation_loss(aux_logits, masks, **kw)
        return loss
