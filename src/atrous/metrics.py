"""Segmentation metrics from one confusion matrix, and object recall by size.

Every pixel metric (pixel accuracy, mean accuracy, per-class IoU, mIoU, frequency-weighted IoU) is read
off a single (K, K) confusion matrix filled with `torch.bincount`, as in torchvision's segmentation
references and the definitions of Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic
Segmentation" (CVPR 2015, section 5). The matrix is a plain sum, so data-parallel evaluation reduces it
with one `all_reduce`.

Object recall by size is the small-object metric of this project: every 8-connected ground-truth
component of every class is an object; its recall is the fraction of its pixels predicted as its class;
objects are grouped by sqrt(area) into `SIZE_BUCKETS` and a bucket's recall is the mean over its objects.
mIoU is dominated by large regions, so this is where the loss of small objects to coarse output strides
and gridding shows up (Yu & Koltun 2016; Wang et al., "Understanding Convolution for Semantic
Segmentation", WACV 2018).
"""

from __future__ import annotations

import numpy as np
import torch
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


def _dist_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo (the CPU backend) reduces CPU tensors.
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _dist_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


class ConfusionMatrix:
    """A (K, K) int64 confusion matrix; rows are ground truth, columns prediction.

    Pixels whose target is `ignore_index` are not counted. A target value outside [0, K) other than
    `ignore_index`, or a prediction outside [0, K), raises ValueError instead of being dropped silently
    (a dropped pixel would make every metric quietly wrong).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
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
        if not _dist_ready():
            return
        import torch.distributed as dist

        mat = self.mat.to(_dist_device())
        dist.all_reduce(mat, op=dist.ReduceOp.SUM)
        self.mat = mat.to(self.mat.device)

    def compute(self) -> dict:
        """Metrics as plain Python values (JSON-able).

        `per_class_iou[c]` is None for a class absent from both ground truth and prediction; mIoU is the
        mean over the other classes. Mean accuracy averages over classes present in the ground truth.
        With no counted pixel at all every value is None.
        """
        h = self.mat.detach().cpu().to(torch.float64)
        tp = torch.diag(h)
        gt = h.sum(1)  # pixels of each class in the ground truth
        pr = h.sum(0)  # pixels predicted as each class
        union = gt + pr - tp
        total = float(h.sum())
        per_class = [float(tp[c] / union[c]) if union[c] > 0 else None for c in range(self.num_classes)]
        if total == 0:
            return {
                "miou": None,
                "pixel_acc": None,
                "mean_acc": None,
                "per_class_iou": per_class,
                "fw_iou": None,
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
        }


class ObjectRecall:
    """Recall of ground-truth objects grouped by size (see the module docstring).

    `update(pred, target)` takes one image (H, W) or a batch (N, H, W); components never cross images.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.recall_sum = torch.zeros(len(SIZE_BUCKETS), dtype=torch.float64)
        self.objects = torch.zeros(len(SIZE_BUCKETS), dtype=torch.int64)
        # Upper edges of the closed buckets: np.digitize(side, edges) is the bucket index.
        self._edges = np.array([hi for _, hi in SIZE_BUCKETS if hi is not None], dtype=np.float64)

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
        t = target.detach().cpu().numpy()
        p = pred.detach().cpu().numpy()
        valid = t != self.ignore_index
        if not valid.any():
            return
        t_min, t_max = int(t[valid].min()), int(t[valid].max())
        if t_min < 0 or t_max >= self.num_classes:
            bad = t_min if t_min < 0 else t_max
            raise ValueError(
                f"target holds label {bad}, outside 0..{self.num_classes - 1} "
                f"and not ignore_index {self.ignore_index}"
            )
        # One pass finds each class's bounding box (labels shifted by one: 0 = ignored), so the per-class
        # work below runs on that box only instead of the whole image.
        boxes = ndimage.find_objects(np.where(valid, t + 1, 0), max_label=self.num_classes)
        for c, box in enumerate(boxes):
            if box is None:
                continue
            labels, n = ndimage.label(t[box] == c, structure=_EIGHT_CONNECTED)
            flat = labels.ravel()
            # Per component (index 0 = not this class, dropped): area and correctly predicted pixels.
            area = np.bincount(flat, minlength=n + 1)[1:]
            hit = np.bincount(flat, weights=(p[box] == c).ravel(), minlength=n + 1)[1:]
            bucket = np.digitize(np.sqrt(area), self._edges)
            self.recall_sum += torch.from_numpy(
                np.bincount(bucket, weights=hit / area, minlength=len(SIZE_BUCKETS))
            )
            self.objects += torch.from_numpy(np.bincount(bucket, minlength=len(SIZE_BUCKETS)))

    def all_reduce(self) -> None:
        """Sum object counts and recall sums over all processes when torch.distributed is initialised."""
        if not _dist_ready():
            return
        import torch.distributed as dist

        packed = torch.cat([self.recall_sum, self.objects.to(torch.float64)]).to(_dist_device())
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        packed = packed.cpu()
        nb = len(SIZE_BUCKETS)
        self.recall_sum = packed[:nb].clone()
        self.objects = packed[nb:].round().to(torch.int64)

    def compute(self) -> list[dict]:
        out = []
        for (lo, hi), s, n in zip(SIZE_BUCKETS, self.recall_sum.tolist(), self.objects.tolist()):
            out.append({"min": lo, "max": hi, "objects": int(n), "recall": (s / n) if n else None})
        return out
