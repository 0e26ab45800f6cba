"""The one evaluation loop: training's validation, `atrous eval` and the demo all call `evaluate`.

Metrics come from `atrous.metrics` (one confusion matrix for every pixel metric; object recall by size);
under torch.distributed each process evaluates its shard and the counts are summed before `compute()`.
`SameSizeBatches` batches a data set whose images differ in size without padding them: padding would
change what the model sees near the borders, so batched metrics would differ from one image at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from atrous.metrics import ConfusionMatrix, ObjectRecall


def evaluate(
    model: nn.Module,
    loader,
    *,
    num_classes: int,
    device: str | torch.device = "cpu",
    infer: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    ignore_index: int = 255,
) -> dict:
    """Confusion-matrix metrics (`ConfusionMatrix.compute()`) plus `object_recall_by_size` over `loader`
    ((image, mask) batches). `infer(model, images) -> logits` replaces `model(images)` (sliding window,
    test-time augmentation). Under torch.distributed the counts are summed over processes first."""
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    objects = ObjectRecall(num_classes, ignore_index=ignore_index)
    with torch.inference_mode():
        for images, masks in loader:
            images = images.to(device, non_blocking=True)
            logits = infer(model, images) if infer is not None else model(images)
            pred = logits.argmax(1).cpu()  # (N, H, W)
            matrix.update(pred, masks)
            objects.update(pred, masks)
    model.train(was_training)
    matrix.all_reduce()
    objects.all_reduce()
    result = matrix.compute()
    result["object_recall_by_size"] = objects.compute()
    return result


def _group_by_size(items: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    # Consecutive runs of one (H, W): the data set's order is kept; each run is stacked into one batch.
    groups: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    for image, mask in items:
        if groups and groups[-1][0][0].shape == image.shape:
            groups[-1].append((image, mask))
        else:
            groups.append([(image, mask)])
    return [(torch.stack([i for i, _ in g]), torch.stack([m for _, m in g])) for g in groups]


class SameSizeBatches:
    """(images (N, 3, H, W), masks (N, H, W)) batches of up to `batch_size` consecutive items of `dataset`,
    split where the image size changes: metrics equal those of one image at a time at any batch size."""

    def __init__(self, dataset, *, batch_size: int, workers: int = 0) -> None:
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_group_by_size
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for groups in self.loader:
            yield from groups
