"""The training loss: `loss.terms` (atrous.losses.build_criterion) on the main logits, plus `aux_weight`
times the same sum on the aux head's logits.

Under data parallelism the criterion gives each process its share of the global-batch loss (sums divided
by global counts, times the world size because DDP averages gradients), so the averaged gradient is the
single-process gradient (a per-process mean would weight the images of a process with fewer labelled
pixels more).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atrous import losses
from atrous.config import LossConfig
from atrous.errors import AtrousError
from atrous.train.dist import Dist


@dataclass(frozen=True, kw_only=True)
class TrainingLoss:
    """`loss(logits, aux_logits, masks, dist)`: this process's share of the global-batch loss;
    `aux_logits` (None for models without an aux head) adds `aux_weight` times the same sum of terms."""

    criterion: losses.Criterion
    aux_weight: float = 0.5

    def __call__(
        self, logits: torch.Tensor, aux_logits: torch.Tensor | None, masks: torch.Tensor, dist: Dist
    ) -> torch.Tensor:
        loss = self.criterion(logits, masks, dist=dist)
        if aux_logits is not None:
            loss = loss + self.aux_weight * self.criterion(aux_logits, masks, dist=dist)
        return loss


def build_loss(config: LossConfig, num_classes: int) -> TrainingLoss:
    """The loss of `config` (terms, class weights for ce and focal, ignore index, aux weight)."""
    weights = config.class_weights
    if weights is not None and len(weights) != num_classes:
        raise AtrousError(f"loss.class_weights has {len(weights)} values but there are {num_classes} classes")
    criterion = losses.build_criterion(config.terms, class_weights=weights, ignore_index=config.ignore_index)
    return TrainingLoss(criterion=criterion, aux_weight=config.aux_weight)
