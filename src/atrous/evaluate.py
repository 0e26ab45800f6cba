"""The one evaluation loop: training's validation, `atrous eval` and the demo all call `evaluate`.

Metrics come from `atrous.metrics` (one confusion matrix for every pixel metric, Boundary IoU, object
recall by size); under torch.distributed each process evaluates its shard and the counts are summed
before `compute()`.

Which classes count as objects for object recall is explicit (`object_classes`): the callers pass
`default_object_classes(class_names, num_classes, ignore_index)`, every class except the ignore index
and a class named "background" (VOC's class 0 is named so; Cityscapes has none). None counts every class.
`SameSizeBatches` batches a data set whose images differ in size without padding them: padding would
change what the model sees near the borders, so batched metrics would differ from one image at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from atrous.metrics import BoundaryIoU, ConfusionMatrix, ObjectRecall, all_reduce_sum, default_object_classes


def evaluate(
    model: nn.Module,
    loader,
    *,
    num_classes: int,
    device: str | torch.device = "cpu",
    infer: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    ignore_index: int = 255,
    object_classes: Iterable[int] | None = None,
    boundary: bool = True,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Metrics of `model` over `loader` ((images (N, 3, H, W), masks (N, H, W)) batches of equal-sized
    images): everything `ConfusionMatrix.compute()` gives (miou, pixel_acc, mean_acc, fw_iou,
    per_class_iou, dice, per_class_dice), `boundary_iou` and `per_class_boundary_iou` (when `boundary`;
    Boundary IoU costs two integer box sums per label map, whatever the classes), and `object_recall_by_size` over the
    regions of `object_classes` (None: every class). `loss(logits (1, K, H, W), mask (1, H, W)) -> scalar`
    (the training criterion) adds `loss`: its mean over images, one image at a time so that it does not
    depend on the batch size (Dice and OHEM are not sums over pixels).

    `infer(model, images) -> logits` replaces `model(images)` (sliding window, test-time augmentation).
    Under torch.distributed the counts are summed over processes first."""
    was_training = model.training
    model.eval()
    metrics = [
        ConfusionMatrix(num_classes, ignore_index=ignore_index),
        ObjectRecall(num_classes, ignore_index=ignore_index, object_classes=object_classes),
    ]
    if boundary:
        metrics.append(BoundaryIoU(num_classes, ignore_index=ignore_index))
    loss_sum = torch.zeros(2, dtype=torch.float64)  # (sum of per-image losses, images)
    with torch.inference_mode():
        for images, masks in loader:
            images = images.to(device, non_blocking=True)
            logits = infer(model, images) if infer is not None else model(images)
            pred = logits.argmax(1).cpu()  # (N, H, W)
            for metric in metrics:
                metric.update(pred, masks)
            if loss is not None:
                targets = masks.to(logits.device)
                for i in range(len(images)):
                    loss_sum[0] += float(loss(logits[i : i + 1], targets[i : i + 1]))
                loss_sum[1] += len(images)
    model.train(was_training)
    for metric in metrics:
        metric.all_reduce()
    matrix, objects, *rest = metrics
    result = matrix.compute()
    for metric in rest:
        result.update(metric.compute())
    result["object_recall_by_size"] = objects.compute()
    if loss is not None:
        total, images = all_reduce_sum(loss_sum).tolist()
        result["loss"] = total / images if images else None
    return result


__all__ = ["SameSizeBatches", "default_object_classes", "evaluate"]


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
