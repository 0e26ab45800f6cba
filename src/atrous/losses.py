"""Segmentation losses over labelled pixels, and their weighted sums for training.

Each loss takes logits (N, K, H, W) and a target (N, H, W) of class ids, skips pixels whose target is
`ignore_index`, computes in float32 (also under autocast) and returns a scalar:

- `dice_loss`: 1 - mean over the classes present in the target of the soft Dice of the softmax
  probabilities, with sums over every labelled pixel of the batch (Milletari et al., "V-Net", 3DV 2016;
  Sudre et al. 2017 for the multi-class form); smoothing 1 in numerator and denominator.
- `focal_loss`: mean of -(1 - p_t)^gamma log p_t over labelled pixels, the softmax form of Lin et al.,
  "Focal Loss for Dense Object Detection", ICCV 2017; gamma 2; optional per-class alpha (a weighted mean).
- `lovasz_softmax`: the Lovasz extension of the per-class Jaccard loss on the softmax probabilities, mean
  over the classes present (Berman, Rannen Triki & Blaschko, "The Lovasz-Softmax loss", CVPR 2018).
- `ohem_cross_entropy`: cross-entropy averaged over the hard pixels only, those whose probability of the
  true class is below `thresh`, and at least `min_kept` per image (mmsegmentation's OHEMPixelSampler).

`build_criterion` makes the training loss, a weighted sum of these and plain cross-entropy. Under data
parallelism (`criterion(..., dist=info)` with `info.world` processes) every term is the term of the whole
global batch, so the gradient DDP averages is the single-process gradient: sums and counts are all-reduced
over processes, Dice's sums with autograd, OHEM's selection and Lovasz's sort are made over the global
batch.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

from atrous.errors import AtrousError

__all__ = [
    "TERM_NAMES",
    "Criterion",
    "build_criterion",
    "dice_loss",
    "focal_loss",
    "lovasz_softmax",
    "ohem_cross_entropy",
]


class _World(Protocol):
    """The run's place in data parallelism (`atrous.train.dist.Dist` is one): `world` processes."""

    world: int


class _Procs:
    """Reductions over the processes of a data-parallel run; identities with one process."""

    def __init__(self, world: int) -> None:
        self.world = world

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        # A constant of the graph (counts, denominators): summed without autograd.
        x = x.detach().clone()
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def sum_grad(self, x: torch.Tensor) -> torch.Tensor:
        # Summed with autograd: the backward all-reduces the gradient, so every process gets the gradient of
        # the loss of all processes (world times the single-process gradient, which DDP's mean undoes).
        if self.world == 1:
            return x
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(x)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Tensors of equal shape from every process, concatenated along dim 0 in rank order (no autograd)."""
        if self.world == 1:
            return x.detach()
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.detach().contiguous())
        return torch.cat(parts)

    def rank(self) -> int:
        if self.world == 1:
            return 0
        import torch.distributed as dist

        return dist.get_rank()


_ONE = _Procs(1)


def _check(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> None:
    if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"losses take logits (N, K, H, W) and target (N, H, W), got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}"
        )
    valid = target != ignore_index
    if bool(valid.any()):
        lo, hi = target[valid].aminmax()
        if int(lo) < 0 or int(hi) >= logits.shape[1]:
            bad = int(lo) if int(lo) < 0 else int(hi)
            raise ValueError(
                f"target holds label {bad}, outside 0..{logits.shape[1] - 1} and not ignore_index "
                f"{ignore_index}: set the model's classes or the ignore index to match the masks"
            )


def _true_class_log_prob(logits: torch.Tensor, target: torch.Tensor, ignore_index: int):
    """(log p_t (P,), t (P,)) over the P labelled pixels, in float32 (no (P, K) copy of the logits)."""
    valid = target != ignore_index  # (N, H, W)
    t = torch.where(valid, target, 0).long()
    logp = F.log_softmax(logits.float(), dim=1).gather(1, t[:, None])[:, 0]  # (N, H, W)
    return logp[valid], t[valid]


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(valid)}, got {value!r}")


def _alpha_t(alpha: torch.Tensor | Sequence[float] | None, t: torch.Tensor) -> torch.Tensor | None:
    if alpha is None:
        return None
    return torch.as_tensor(alpha, dtype=torch.float32, device=t.device)[t]


# ------------------------------------------------------------------------------------------------ Dice


def _dice_sums(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """(3, K): per class, sum of p_c over pixels of class c; sum of p_c; pixels of class c (labelled only)."""
    k = logits.shape[1]
    valid = target != ignore_index  # (N, H, W)
    t = torch.where(valid, target, 0).long()
    probs = F.softmax(logits.float(), dim=1)  # (N, K, H, W)
    prob_sum = (probs * valid[:, None]).sum((0, 2, 3))
    # p of the true class, added into its class's slot: no (N, K, H, W) one-hot.
    p_t = probs.gather(1, t[:, None])[:, 0][valid]  # (P,)
    inter = torch.zeros(k, device=logits.device).index_add(0, t[valid], p_t)
    count = torch.bincount(t[valid], minlength=k).float()
    return torch.stack([inter, prob_sum, count])


def _dice_from_sums(sums: torch.Tensor, *, smooth: float, classes: str) -> torch.Tensor:
    inter, prob_sum, count = sums
    if float(count.detach().sum()) == 0:
        return sums.sum() * 0.0  # no labelled pixel: zero, still part of the graph
    # (With smooth 0, a class absent from the target whose probabilities all underflow to 0 scores 0, not NaN.)
    dice = (2 * inter + smooth) / (prob_sum + count + smooth).clamp(min=torch.finfo(torch.float32).tiny)
    keep = count > 0 if classes == "present" else torch.ones_like(count, dtype=torch.bool)
    return 1.0 - dice[keep].mean()


def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = 255,
    smooth: float = 1.0,
    classes: str = "present",
) -> torch.Tensor:
    """1 - mean_c (2 sum_i p_ic g_ic + smooth) / (sum_i p_ic + sum_i g_ic + smooth), i over every labelled
    pixel of the batch, p the softmax probabilities, g the one-hot target. `classes="present"` averages over
    the classes present in the target (an absent class would add a constant-ish term that only pushes its
    probabilities to 0); `"all"` over every class."""
    _check(logits, target, ignore_index)
    _check_choice("classes", classes, ("present", "all"))
    return _dice_from_sums(_dice_sums(logits, target, ignore_index), smooth=smooth, classes=classes)


# ----------------------------------------------------------------------------------------------- Focal


def _focal_parts(logits, target, ignore_index, gamma, alpha) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over labelled pixels of alpha_t (1 - p_t)^gamma (-log p_t), sum of alpha_t or the count)."""
    logpt, t = _true_class_log_prob(logits, target, ignore_index)
    # (1 - p_t)^gamma with gamma = 0 is 1 even where p_t = 1 (torch: 0 ** 0 = 1).
    loss = (1.0 - logpt.exp()).clamp(min=0.0) ** gamma * -logpt
    a = _alpha_t(alpha, t)
    if a is None:
        return loss.sum(), torch.tensor(float(t.numel()), device=logits.device)
    return (a * loss).sum(), a.sum()


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = 255,
    gamma: float = 2.0,
    alpha: torch.Tensor | Sequence[float] | None = None,
) -> torch.Tensor:
    """sum_i alpha_t (1 - p_t)^gamma (-log p_t) / sum_i alpha_t over labelled pixels i (p_t the softmax
    probability of the true class; alpha_t = 1 without `alpha`, making this the plain mean). `alpha` (K,)
    weighs classes, normalised as torch's weighted cross-entropy is, so gamma = 0 is exactly
    `F.cross_entropy(weight=alpha)`. Lin et al. normalise by the count instead; with alpha None they agree."""
    _check(logits, target, ignore_index)
    total, denominator = _focal_parts(logits, target, ignore_index, gamma, alpha)
    return total / denominator.clamp(min=torch.finfo(torch.float32).tiny)


# --------------------------------------------------------------------------------------------- Lovasz


def _lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """g_i = Delta(A_i) - Delta(A_(i-1)) for the prefixes A_i of the error-sorted pixels, where
    Delta(A) = |A| / |fg | A| is the Jaccard loss of mispredicting A (Berman et al., Algorithm 1)."""
    gts = fg_sorted.sum()
    intersection = gts - fg_sorted.cumsum(0)
    union = gts + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def _lovasz(logits, target, ignore_index, classes: str, procs: _Procs) -> tuple[torch.Tensor, torch.Tensor]:
    """(this process's share of the sum over classes of the Lovasz-Jaccard extension, number of classes).

    The extension sorts the errors of all pixels of the (global) batch; its value is sum_i e_i g_i with g
    fixed by the sorted order, so each process computes g for the gathered errors and keeps the dot product
    of its own errors with its own g: the shares add up to the global value and carry its gradient."""
    valid = target != ignore_index
    probs = F.softmax(logits.float(), dim=1).permute(0, 2, 3, 1)[valid]  # (P, K)
    labels = target[valid].long()  # (P,)
    k = logits.shape[1]
    errors = (F.one_hot(labels, k).float() - probs).abs()  # (P, K)
    # Processes hold different numbers of labelled pixels: pad each to the largest (label -1, error -1, so
    # the padding is no class's foreground and sorts after every real error).
    sizes = procs.gather(torch.tensor([labels.numel()], device=logits.device)).tolist()
    pad, start = max(sizes) - labels.numel(), max(sizes) * procs.rank()
    all_labels = procs.gather(F.pad(labels, (0, pad), value=-1))  # (world * Pmax,)
    all_errors = procs.gather(F.pad(errors.detach(), (0, 0, 0, pad), value=-1.0))  # (world * Pmax, K)
    total, counted = probs.sum() * 0.0, 0
    for c in range(k):
        fg = (all_labels == c).float()
        if classes == "present" and not bool(fg.any()):
            continue
        order = torch.sort(all_errors[:, c], descending=True, stable=True).indices
        g = torch.empty_like(fg)
        g[order] = _lovasz_grad(fg[order])
        total = total + torch.dot(errors[:, c], g[start : start + labels.numel()])
        counted += 1
    return total, torch.tensor(float(counted), device=logits.device)


def lovasz_softmax(
    logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = 255, classes: str = "present"
) -> torch.Tensor:
    """Mean over classes of the Lovasz extension of the Jaccard loss 1 - IoU_c, applied to the errors
    |1[t = c] - p_c| of every labelled pixel of the batch (Berman et al.'s default, not per image).
    `classes="present"` averages over the classes in the target, `"all"` over every class."""
    _check(logits, target, ignore_index)
    _check_choice("classes", classes, ("present", "all"))
    total, counted = _lovasz(logits, target, ignore_index, classes, _ONE)
    return total / counted.clamp(min=1.0)


# ----------------------------------------------------------------------------------------------- OHEM


def _ohem_kept(logpt: torch.Tensor, images: int, thresh: float, min_kept: int, procs: _Procs) -> torch.Tensor:
    """Bool (P,): the labelled pixels whose true-class probability is below `thresh`; when fewer than
    min_kept * (images of the global batch) are, those at or below the min_kept-th smallest probability
    (ties kept, so at least that many; every pixel when the batch has fewer)."""
    p = logpt.detach().exp()
    wanted = min_kept * int(procs.sum(torch.tensor(float(images), device=p.device)))
    below = p < thresh
    if int(procs.sum(below.sum().float())) >= wanted:
        return below
    n = int(procs.sum(torch.tensor(float(p.numel()), device=p.device)))
    k = min(wanted, n)
    if k == 0:
        return below
    # The k-th smallest of the global batch is the k-th smallest of the union of each process's k smallest.
    local = torch.sort(p).values[:k]
    smallest = procs.gather(F.pad(local, (0, k - local.numel()), value=math.inf))
    return p <= torch.sort(smallest).values[k - 1]


def _ohem_parts(logits, target, ignore_index, thresh, min_kept, procs) -> tuple[torch.Tensor, torch.Tensor]:
    logpt, _ = _true_class_log_prob(logits, target, ignore_index)
    kept = _ohem_kept(logpt, logits.shape[0], thresh, min_kept, procs)
    return -(logpt * kept).sum(), kept.sum().float()


def ohem_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = 255,
    thresh: float = 0.7,
    min_kept: int = 100_000,
) -> torch.Tensor:
    """Cross-entropy averaged over the hard pixels only (online hard example mining, Shrivastava et al.
    2016, in mmsegmentation's pixel form): pixels whose softmax probability of the true class is below
    `thresh`, but at least `min_kept` per image (the lowest-probability ones; ties at the cut are kept).
    Defaults are mmsegmentation's (thresh 0.7, min_kept 100,000 for 512x1024 crops): on images with fewer
    labelled pixels than min_kept every pixel is kept and this is plain cross-entropy; lower min_kept there."""
    _check(logits, target, ignore_index)
    total, kept = _ohem_parts(logits, target, ignore_index, thresh, min_kept, _ONE)
    return total / kept.clamp(min=1.0)


# ------------------------------------------------------------------------------------------- criterion

# The names `loss.terms` accepts, and each one's public function: its keyword options (other than
# ignore_index, and focal's alpha, which the class weights give) are the options a term may set.
_TERM_FUNCTIONS: dict[str, Callable[..., torch.Tensor] | None] = {
    "ce": None,  # torch's cross-entropy; no options
    "dice": dice_loss,
    "focal": focal_loss,
    "lovasz": lovasz_softmax,
    "ohem": ohem_cross_entropy,
}
TERM_NAMES: tuple[str, ...] = tuple(_TERM_FUNCTIONS)

# What each option accepts: (test, words for the error message).
_OPTION_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "smooth": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "classes": (lambda v: v in ("present", "all"), "present or all"),
    "gamma": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "thresh": (lambda v: _is_number(v) and 0 < v <= 1, "a probability in (0, 1]"),
    "min_kept": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
}


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _term_options(name: str) -> tuple[str, ...]:
    fn = _TERM_FUNCTIONS[name]
    if fn is None:
        return ()
    params = inspect.signature(fn).parameters.values()
    return tuple(
        p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in ("ignore_index", "alpha")
    )


class Criterion:
    """The training loss: sum of weight * term over `terms` ((name, weight, options) triples).

    `criterion(logits, target, *, dist=None)`: with `dist` (the run's `Dist`, anything with `world`, the
    number of processes) and world > 1, the value on each process is its share of the global-batch loss:
    the mean of the values over processes is the loss one process would compute on the global batch, and
    the gradient DDP averages is that process's gradient. Cross-entropy, Focal and OHEM are sums divided
    by the global (weighted) count of the pixels they average over, times the world size (DDP divides by
    it); Lovasz sorts the gathered errors; Dice all-reduces its sums with autograd, whose backward sums the
    processes' gradients (world times each share), so its value is the global Dice on every process.
    Every process must call it (collectives), with one `dist`, or none, for all.
    """

    def __init__(
        self,
        *,
        terms: Sequence[tuple[str, float, dict]],
        class_weights: torch.Tensor | None = None,
        ignore_index: int = 255,
    ) -> None:
        self.terms = tuple(terms)
        self.class_weights = class_weights
        self.ignore_index = ignore_index

    def __call__(
        self, logits: torch.Tensor, target: torch.Tensor, *, dist: _World | None = None
    ) -> torch.Tensor:
        _check(logits, target, self.ignore_index)
        procs = _ONE if dist is None else _Procs(dist.world)
        weight = None if self.class_weights is None else self.class_weights.to(logits.device, torch.float32)
        total = logits.sum() * 0.0
        for name, w, options in self.terms:
            total = total + w * self._term(name, options, logits, target, weight, procs)
        return total

    def _term(self, name, options, logits, target, weight, procs: _Procs) -> torch.Tensor:
        ignore = self.ignore_index
        if name == "dice":
            sums = procs.sum_grad(_dice_sums(logits, target, ignore))
            return _dice_from_sums(
                sums, smooth=options.get("smooth", 1.0), classes=options.get("classes", "present")
            )
        if name == "lovasz":
            share, counted = _lovasz(logits, target, ignore, options.get("classes", "present"), procs)
            return share * procs.world / counted.clamp(min=1.0)
        if name == "ce":
            share = F.cross_entropy(
                logits.float(), target.long(), weight=weight, ignore_index=ignore, reduction="sum"
            )
            count = _labelled_weight(target, weight, ignore)
        elif name == "focal":
            share, count = _focal_parts(logits, target, ignore, options.get("gamma", 2.0), weight)
        else:  # ohem
            thresh, min_kept = options.get("thresh", 0.7), options.get("min_kept", 100_000)
            share, count = _ohem_parts(logits, target, ignore, thresh, min_kept, procs)
        # Sum over this process's pixels / the count of the global batch; DDP's mean over processes divides
        # the gradient by the world size, which the factor restores. No counted pixel: the sum is 0, divide by 1.
        count = procs.sum(count)
        return share * procs.world / torch.where(count > 0, count, 1.0)


def _labelled_weight(target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int) -> torch.Tensor:
    # The denominator of torch's weighted mean: sum of weight[target] over labelled pixels (their count).
    labels = target[target != ignore_index].long()
    if weight is None:
        return torch.tensor(float(labels.numel()), device=target.device)
    return weight[labels].sum()


def build_criterion(
    terms: Sequence[Sequence],
    *,
    class_weights: torch.Tensor | Sequence[float] | None = None,
    ignore_index: int = 255,
) -> Criterion:
    """The training loss from config `loss.terms`: a list of [name, weight] or [name, weight, {options}],
    name one of ce, dice, focal, lovasz, ohem (e.g. [["ce", 1.0], ["dice", 0.5]]). `class_weights` (K,)
    weigh the ce and focal terms (focal's alpha). Raises AtrousError naming the entry at fault."""
    checked = []
    if not terms:
        raise AtrousError('loss.terms is empty: give at least one [name, weight], e.g. [["ce", 1.0]]')
    for i, entry in enumerate(terms):
        where = f"loss.terms[{i}] {list(entry) if isinstance(entry, (list, tuple)) else entry!r}"
        if not isinstance(entry, (list, tuple)) or len(entry) not in (2, 3):
            raise AtrousError(f"{where}: each term is [name, weight] or [name, weight, {{options}}]")
        name, w, options = entry[0], entry[1], (entry[2] if len(entry) == 3 else {})
        if name not in TERM_NAMES:
            raise AtrousError(f"{where}: unknown loss {name!r}; choose from {', '.join(TERM_NAMES)}")
        if not _is_number(w) or w < 0:
            raise AtrousError(f"{where}: the weight must be a finite number >= 0, got {w!r}")
        if not isinstance(options, dict):
            raise AtrousError(f"{where}: options must be a mapping such as {{gamma: 2.0}}, got {options!r}")
        allowed = _term_options(name)
        for key, value in options.items():
            if key not in allowed:
                valid = ", ".join(allowed) or "none"
                raise AtrousError(f"{where}: {name} has no option {key!r} (options: {valid})")
            test, words = _OPTION_RULES[key]
            if not test(value):
                raise AtrousError(f"{where}: option {key} must be {words}, got {value!r}")
        checked.append((name, float(w), dict(options)))
    weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    return Criterion(terms=checked, class_weights=weights, ignore_index=ignore_index)
