"""Segmentation metrics from one confusion matrix, and object recall by size.

Every pixel metric (pixel accuracy, mean accuracy, per-class IoU, mIoU, frequency-weighted IoU) is read
off a single (K, K) confusion matrix filled with `torch.bincount`, as in torchvision's segmentation
references and the definitions of Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic
Segmentation" (CVPR 2015, section 5). The matrix is a plain sum, so data-parallel evaluation reduces it
with one `all_reduce`.

The same matrix gives the Dice coefficient (F1 score) per class, 2 TP / (2 TP + FP + FN).

Object recall by size is the small-object metric of this project: every 8-connected ground-truth
component of an *object class* is an object; its recall is the fraction of its pixels predicted as its
class; objects are grouped by sqrt(area) into `SIZE_BUCKETS` and a bucket's recall is the mean over its
objects. Which classes hold objects is explicit (`object_classes`); `default_object_classes` gives the
documented default, every class except the ignore index and a class named "background". mIoU is dominated
by large regions, so this is where the loss of small objects to coarse output strides and gridding shows
up (Yu & Koltun 2016; Wang et al., "Understanding Convolution for Semantic Segmentation", WACV 2018).

Boundary IoU (Cheng, Girshick, Dollar, Berg & Kirillov, "Boundary IoU: Improving Object-Centric Image
Segmentation Evaluation", CVPR 2021) scores only the pixels near each mask's contour, which is what a coarse
output stride costs first and what mIoU barely sees. See `BoundaryIoU`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

# sqrt(area) buckets in pixels: [min, max), max None = open-ended.
SIZE_BUCKETS: tuple[tuple[int, int | None], ...] = ((0, 4), (4, 8), (8, 16), (16, 32), (32, None))

# 8-connectivity: diagonal neighbours belong to the same object.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError("pred and target must be integer tensors of class indices (take logits.argmax(1))")


def _check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")


def _check_labels(target: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    # A label outside [0, K) that is not the ignore index would be dropped silently by every count.
    valid = target != ignore_index
    if not bool(valid.any()):
        return
    t_min, t_max = target[valid].aminmax()
    if int(t_min) < 0 or int(t_max) >= num_classes:
        bad = int(t_min) if int(t_min) < 0 else int(t_max)
        raise ValueError(
            f"target holds label {bad}, outside 0..{num_classes - 1} and not ignore_index {ignore_index}"
        )


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """`values` summed over all processes when torch.distributed is initialised (else `values` itself), on
    `values`' device. The one reduction of the metrics and of `atrous.evaluate`: the tensor travels on the
    backend's device (NCCL reduces CUDA tensors only; gloo, the CPU backend, CPU tensors)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    moved = values.to(device, copy=True)  # a copy: the caller's tensor is never reduced in place
    dist.all_reduce(moved, op=dist.ReduceOp.SUM)
    return moved.to(values.device)


class ConfusionMatrix:
    """A (K, K) int64 confusion matrix; rows are ground truth, columns prediction.

    Pixels whose target is `ignore_index` are not counted. A target value outside [0, K) other than
    `ignore_index`, or a prediction outside [0, K), raises ValueError instead of being dropped silently
    (a dropped pixel would make every metric quietly wrong).
    """

    def __init__(self, num_classes: int, *, ignore_index: int = 255) -> None:
        _check_num_classes(num_classes)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros((num_classes, num_classes), dtype=torch.int64)

    def reset(self) -> None:
        self.mat = torch.zeros_like(self.mat)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch; `pred` and `target` are integer tensors of any (equal) shape."""
        _check_pair(pred, target)
        k = self.num_classes
        # int32 halves the memory traffic of these full-size passes (labels and K * K fit easily).
        target = target.reshape(-1).to(torch.int32)
        pred = pred.reshape(-1).to(device=target.device, dtype=torch.int32)
        valid = target != self.ignore_index
        if target.numel() == 0:
            return
        t_min, t_max = torch.where(valid, target, 0).aminmax()
        if int(t_min) < 0 or int(t_max) >= k:
            bad = target[valid & ((target < 0) | (target >= k))][0].item()
            raise ValueError(
                f"target holds label {bad}, outside 0..{k - 1} and not ignore_index {self.ignore_index}"
            )
        p_min, p_max = pred.aminmax()
        if int(p_min) < 0 or int(p_max) >= k:
            bad = pred[(pred < 0) | (pred >= k)][0].item()
            raise ValueError(f"pred holds class {bad}, outside 0..{k - 1}")
        # Row-major index gt * K + pred; ignored pixels go to one extra bin that is dropped. bincount runs
        # on the inputs' device and yields one (K, K) block per batch.
        index = torch.where(valid, target * k + pred, k * k)
        counts = torch.bincount(index, minlength=k * k + 1)[: k * k].reshape(k, k)
        if self.mat.device != counts.device:
            self.mat = self.mat.to(counts.device)
        self.mat += counts

    def all_reduce(self) -> None:
        """Sum the matrix over all processes when torch.distributed is initialised (else a no-op)."""
        self.mat = all_reduce_sum(self.mat)

    def compute(self) -> dict:
        """Metrics as plain Python values (JSON-able).

        `per_class_iou[c]` and `per_class_dice[c]` are None for a class absent from both ground truth and
        prediction; `miou` and `dice` are the means over the other classes. Mean accuracy averages over classes present in the ground truth.
        With no counted pixel at all every value is None.
        """
        h = self.mat.detach().cpu().to(torch.float64)
        tp = torch.diag(h)
        gt = h.sum(1)  # pixels of each class in the ground truth
        pr = h.sum(0)  # pixels predicted as each class
        union = gt + pr - tp
        total = float(h.sum())
        per_class = [float(tp[c] / union[c]) if union[c] > 0 else None for c in range(self.num_classes)]
        # Dice / F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (gt + pred); defined where IoU is (union > 0).
        per_class_dice = [
            float(2 * tp[c] / (gt[c] + pr[c])) if union[c] > 0 else None for c in range(self.num_classes)
        ]
        if total == 0:
            return {
                "miou": None,
                "pixel_acc": None,
                "mean_acc": None,
                "per_class_iou": per_class,
                "fw_iou": None,
                "dice": None,
                "per_class_dice": per_class_dice,
            }
        present = union > 0
        in_gt = gt > 0
        iou = torch.where(present, tp / union.clamp(min=1), torch.zeros_like(tp))
        return {
            "miou": float(iou[present].mean()),
            "pixel_acc": float(tp.sum() / total),
            "mean_acc": float((tp[in_gt] / gt[in_gt]).mean()),
            "per_class_iou": per_class,
            "fw_iou": float(((gt / total) * iou).sum()),
            "dice": sum(d for d in per_class_dice if d is not None) / int(present.sum()),
            "per_class_dice": per_class_dice,
        }


def default_object_classes(
    class_names: list[str] | tuple[str, ...] | None, num_classes: int, ignore_index: int = 255
) -> tuple[int, ...]:
    """The documented default object population: every class id in [0, num_classes) except the ignore
    index and a class named "background" (case-insensitive; VOC's class 0 is named so, Cityscapes has
    none). Without class names (None) every class except the ignore index counts."""
    _check_num_classes(num_classes)
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"{len(class_names)} class names for {num_classes} classes: give one name per class, or None"
        )
    return tuple(
        c
        for c in range(num_classes)
        if c != ignore_index and (class_names is None or class_names[c].strip().lower() != "background")
    )


class ObjectRecall:
    """Recall of ground-truth objects grouped by size (see the module docstring).

    `object_classes` is the set of class ids whose connected regions are objects. None counts every class
    (the background's regions too: the behaviour before the population was explicit); pass
    `default_object_classes(class_names, num_classes, ignore_index)` for the documented default that
    leaves out a class named "background". Regions of the other classes are not counted as objects.

    `buckets` are the sqrt(area) groups, contiguous [min, max) pairs, the last open-ended (max None):
    `SIZE_BUCKETS` by default; the demo's octaves [1, 2) ... [64, 128) are another choice of the same metric.

    `update(pred, target)` takes one image (H, W) or a batch (N, H, W); components never cross images.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_index: int = 255,
        object_classes: Iterable[int] | None = None,
        buckets: Iterable[tuple[int, int | None]] = SIZE_BUCKETS,
    ) -> None:
        _check_num_classes(num_classes)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        if object_classes is None:
            object_classes = range(num_classes)
        self.object_classes = tuple(sorted({int(c) for c in object_classes}))
        bad = [c for c in self.object_classes if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"object_classes holds {bad[0]}, outside the class ids 0..{num_classes - 1}")
        self.buckets = _check_buckets(buckets)
        self.recall_sum = torch.zeros(len(self.buckets), dtype=torch.float64)
        self.objects = torch.zeros(len(self.buckets), dtype=torch.int64)
        # Upper edges of the closed buckets: np.digitize(side, edges) is the bucket index.
        self._edges = np.array([hi for _, hi in self.buckets[:-1]], dtype=np.float64)

    def reset(self) -> None:
        self.recall_sum.zero_()
        self.objects.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        _check_pair(pred, target)
        if target.dim() == 3:
            for p, t in zip(pred, target):
                self.update(p, t)
            return
        if target.dim() != 2:
            raise ValueError(
                f"ObjectRecall.update expects (H, W) or (N, H, W), got shape {tuple(target.shape)}"
            )
        _check_labels(target, self.num_classes, self.ignore_index)
        t = target.detach().cpu().numpy()
        p = pred.detach().cpu().numpy()
        valid = t != self.ignore_index
        if not valid.any():
            return
        # One pass finds each class's bounding box (labels shifted by one: 0 = ignored), so the per-class
        # work below runs on that box only instead of the whole image.
        boxes = ndimage.find_objects(np.where(valid, t + 1, 0), max_label=self.num_classes)
        for c, box in enumerate(boxes):
            if box is None or c not in self.object_classes:
                continue
            labels, n = ndimage.label(t[box] == c, structure=_EIGHT_CONNECTED)
            flat = labels.ravel()
            # Per component (index 0 = not this class, dropped): area and correctly predicted pixels.
            area = np.bincount(flat, minlength=n + 1)[1:]
            hit = np.bincount(flat, weights=(p[box] == c).ravel(), minlength=n + 1)[1:]
            bucket = np.digitize(np.sqrt(area), self._edges)
            self.recall_sum += torch.from_numpy(
                np.bincount(bucket, weights=hit / area, minlength=len(self.buckets))
            )
            self.objects += torch.from_numpy(np.bincount(bucket, minlength=len(self.buckets)))

    def all_reduce(self) -> None:
        """Sum object counts and recall sums over all processes when torch.distributed is initialised."""
        packed = all_reduce_sum(torch.cat([self.recall_sum, self.objects.to(torch.float64)]))
        nb = len(self.buckets)
        self.recall_sum = packed[:nb].clone()
        self.objects = packed[nb:].round().to(torch.int64)

    def compute(self) -> list[dict]:
        out = []
        for (lo, hi), s, n in zip(self.buckets, self.recall_sum.tolist(), self.objects.tolist()):
            out.append({"min": lo, "max": hi, "objects": int(n), "recall": (s / n) if n else None})
        return out


def _check_buckets(buckets) -> tuple[tuple[int, int | None], ...]:
    # Contiguous [min, max) with the last open: np.digitize on the closed upper edges then puts every object
    # (sqrt(area) >= 1) in exactly one bucket.
    buckets = tuple((lo, hi) for lo, hi in buckets)
    lows = [lo for lo, _ in buckets]
    ok = (
        len(buckets) >= 1
        and lows[0] in (0, 1)
        and buckets[-1][1] is None
        and [hi for _, hi in buckets[:-1]] == lows[1:]  # contiguous
        and all(a < b for a, b in itertools.pairwise(lows))
    )
    if not ok:
        raise ValueError(
            f"buckets must be contiguous [min, max) pairs, increasing, from 0 or 1, the last open-ended "
            f"(max None), e.g. ((0, 4), (4, 8), (8, None)); got {buckets!r}"
        )
    return buckets


def boundary_width(height: int, width: int, dilation_ratio: float) -> int:
    """Boundary IoU's d in pixels: round(dilation_ratio * image diagonal), at least 1 (Python's round, as
    the reference implementation, bowenc0221/boundary-iou-api)."""
    return max(1, round(dilation_ratio * math.hypot(height, width)))


def _box_sum(x: torch.Tensor, d: int) -> torch.Tensor:
    """Sums over every (2d+1) x (2d+1) window of x (N, H + 2d, W + 2d) -> (N, H, W), by cumulative sums:
    O(1) per pixel whatever d (integer dtype, so exact)."""
    k = 2 * d + 1
    c = F.pad(x.cumsum(1), (0, 0, 1, 0))
    rows = c[:, k:] - c[:, :-k]  # (N, H, W + 2d)
    c = F.pad(rows.cumsum(2), (1, 0))
    return c[:, :, k:] - c[:, :, :-k]


def label_boundary(labels: torch.Tensor, d: int) -> torch.Tensor:
    """Bool (N, H, W): the pixels whose (2d+1) x (2d+1) window holds another label or reaches past the
    image. For every class c, `(labels == c) & label_boundary(labels, d)` is that class's boundary region
    in Boundary IoU: the mask pixels within chessboard distance d of a pixel outside the mask, the image
    border counting as outside (the reference's `mask - erode(pad(mask, 1, 0), 3x3, d iterations)`), for
    all classes in one pass. A window is uniform iff its labels' variance is 0: n sum(l^2) == (sum l)^2,
    in exact integers; positions past the border hold -1, which no label equals."""
    x = F.pad(labels.to(torch.int64), (d, d, d, d), value=-1)  # (N, H + 2d, W + 2d)
    n = (2 * d + 1) ** 2
    s1, s2 = _box_sum(x, d), _box_sum(x * x, d)
    return n * s2 != s1 * s1


class BoundaryIoU:
    """Boundary IoU per class, summed over the data set like mIoU (Cheng et al., CVPR 2021).

    For class c in each image, G = (target == c) and P = (pred == c); their boundary regions G_d and P_d
    are the pixels of the mask within d = max(1, round(dilation_ratio * image diagonal)) pixels of its
    contour (`label_boundary`; the image border is a contour). The class's intersection |G_d & P_d| and
    union |G_d | P_d| are counted over pixels whose target is not `ignore_index` and summed over every
    image; `per_class_boundary_iou[c]` = intersection / union (None when the union is empty) and
    `boundary_iou` is the mean over the other classes. The default ratio 0.02 is the paper's.
    """

    def __init__(self, num_classes: int, *, ignore_index: int = 255, dilation_ratio: float = 0.02) -> None:
        _check_num_classes(num_classes)
        if not dilation_ratio > 0:
            raise ValueError(f"dilation_ratio must be positive (the paper uses 0.02), got {dilation_ratio!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.dilation_ratio = dilation_ratio
        # Row 0: intersections, row 1: unions, per class (pixel counts).
        self.counts = torch.zeros((2, num_classes), dtype=torch.int64)

    def reset(self) -> None:
        self.counts = torch.zeros_like(self.counts)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one image (H, W) or a batch (N, H, W) of equal-sized images (d follows their size)."""
        _check_pair(pred, target)
        if target.dim() == 2:
            pred, target = pred.unsqueeze(0), target.unsqueeze(0)
        if target.dim() != 3:
            raise ValueError(
                f"BoundaryIoU.update expects (H, W) or (N, H, W), got shape {tuple(target.shape)}"
            )
        _check_labels(target, self.num_classes, self.ignore_index)
        pred = pred.to(target.device)
        k = self.num_classes
        if pred.numel() and not 0 <= int(pred.min()) <= int(pred.max()) < k:
            bad = int(pred.min()) if int(pred.min()) < 0 else int(pred.max())
            raise ValueError(f"pred holds class {bad}, outside 0..{k - 1}")
        d = boundary_width(target.shape[1], target.shape[2], self.dilation_ratio)
        valid = target != self.ignore_index
        gt_edge = label_boundary(target, d) & valid  # pixels in the boundary region of their gt class
        pr_edge = label_boundary(pred, d) & valid  # ... of their predicted class
        both = gt_edge & pr_edge & (target == pred)  # in both regions of one class
        inter = torch.bincount(target[both].long(), minlength=k)
        gt_count = torch.bincount(target[gt_edge].long(), minlength=k)
        pr_count = torch.bincount(pred[pr_edge].long(), minlength=k)
        self.counts += torch.stack([inter, gt_count + pr_count - inter]).cpu()

    def all_reduce(self) -> None:
        """Sum the counts over all processes when torch.distributed is initialised (else a no-op)."""
        self.counts = all_reduce_sum(self.counts)

    def compute(self) -> dict:
        inter, union = self.counts.tolist()
        per_class = [i / u if u > 0 else None for i, u in zip(inter, union)]
        present = [v for v in per_class if v is not None]
        return {
            "boundary_iou": sum(present) / len(present) if present else None,
            "per_class_boundary_iou": per_class,
        }
