"""Training and evaluation: plain loops, one metrics implementation, exact resume, data-parallel runs.

The recipe is the one of the DeepLab papers (Chen et al., "Rethinking Atrous Convolution for Semantic
Image Segmentation", arXiv 1706.05587, section 4): SGD with momentum and the "poly" learning rate
`lr * (1 - step / total) ** 0.9`, random scale 0.5-2.0, crop and flip, pixel-wise cross-entropy ignoring
label 255; AdamW, cosine and warm-up are options. The loops follow torchvision's segmentation references
and detectron2's plain training loop: no callbacks, one function per phase.

Exact resume by construction (no RNG state has to be captured mid-stream):
- the sample order of epoch `e` is a permutation drawn from a generator seeded with (seed, e);
- the augmentation of sample `i` in epoch `e` runs under `torch.random.fork_rng`, seeded with (seed, e, i),
  inside the dataset wrapper, so it does not depend on which process or worker computes it;
- torch's global generator (dropout) is seeded with (seed, step, rank) before every step.
A checkpoint therefore needs only the weights, the optimiser, the scheduler and (epoch, batch in epoch,
step): resuming skips the consumed batches of the epoch and continues bit-identically.

Data-parallel runs (`torchrun`) split every global batch of `data.batch_size` samples evenly over the
processes (the same samples as a single process would use) and normalise the loss by the number of
labelled pixels of the whole global batch, so the averaged gradient equals the single-process gradient up
to floating-point summation order.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from atrous._io import atomic_write_text
from atrous.checkpoint import check_state_dict, load_checkpoint, load_matching, save_checkpoint
from atrous.config import Config, dump_config, to_dict
from atrous.errors import AtrousError
from atrous.metrics import ConfusionMatrix, ObjectRecall
from atrous.optimize import prepare_training

LAST = "last.pt"
# The checkpoint before last.pt: renamed aside just before a new last.pt is written, so that one intact
# checkpoint survives even a damaged last.pt (a disk that lies about fsync, a copy cut short).
PREVIOUS = "previous.pt"
BEST = "best.pt"
METRICS_CSV = "metrics.csv"
CONFIG_YAML = "config.yaml"


def seed_from(*values: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence hash): (seed, epoch, index) -> seed."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


# ------------------------------------------------------------------------------------------------- data


class SeededSamples(torch.utils.data.Dataset):
    """Items keyed by (epoch, index): `transform(*dataset[index])` under an RNG seeded with (seed, epoch,
    index), so an item's augmentation is a pure function of its key, in any process or worker."""

    def __init__(self, dataset: torch.utils.data.Dataset, transform: Callable, *, seed: int) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        image, mask = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_from(self.seed, epoch, index))
            return self.transform(image, mask)


class EpochBatches(torch.utils.data.Sampler):
    """Batches of (epoch, index) keys for one process: epoch `epoch` of a shuffled order seeded with
    (seed, epoch), global batches of `batch_size` (the incomplete last one dropped), this process's
    contiguous share `batch_size // world` of each, starting at global batch `start`."""

    def __init__(
        self,
        *,
        num_samples: int,
        batch_size: int,
        epoch: int,
        seed: int,
        start: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.epoch = epoch
        self.seed = seed
        self.start = start
        self.rank = rank
        self.per_rank = batch_size // world

    def __len__(self) -> int:
        return self.num_samples // self.batch_size - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        generator = torch.Generator().manual_seed(seed_from(self.seed, self.epoch))
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        for b in range(self.start, self.num_samples // self.batch_size):
            lo = b * self.batch_size + self.rank * self.per_rank
            yield [(self.epoch, i) for i in order[lo : lo + self.per_rank]]


# ------------------------------------------------------------------------------------------- evaluation


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


# ----------------------------------------------------------------------------------------- optimisation


def lr_factor(
    step: int, *, total: int, schedule: str, power: float, warmup_iters: int, warmup_factor: float
) -> float:
    """The learning-rate multiplier after `step` optimiser steps (poly / cosine / constant, linear warm-up)."""
    progress = min(step, total) / total
    if schedule == "poly":
        factor = (1.0 - progress) ** power
    elif schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        factor = 1.0
    if step < warmup_iters:
        factor *= warmup_factor + (1.0 - warmup_factor) * step / warmup_iters
    return factor


def build_optimizer(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    o = config.optim
    # No weight decay on norm layers' scales and biases (1-d parameters), as in torchvision's references.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernels update every parameter in one pass (CPU time of a step over ResNet-50's 25.6 M
    # parameters, one thread: AdamW 25 ms fused against 166 ms foreach, SGD 17 against 32 ms).
    fused = {"fused": True} if decay and decay[0].device.type in ("cpu", "cuda") else {}
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, **fused)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, **fused)


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


def _labelled_weight(target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int) -> torch.Tensor:
    # The denominator torch's mean reduction would use: sum of weight[target] over non-ignored pixels.
    valid = target[target != ignore_index]
    if weight is None:
        return torch.tensor(float(valid.numel()), device=target.device)
    return weight[valid].sum().float()


# ------------------------------------------------------------------------------------------- processes


class NonFiniteLoss(AtrousError):
    """The loss became NaN or infinite (raised before the step changes any weight)."""


@dataclass
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


def _init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), _resolve_device(device_name, 0)
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size()), device


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AtrousError(f"train.device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AtrousError(f"train.device is {name!r} but CUDA is not available here: use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise AtrousError(f"train.device {name!r} is not supported: use auto, cpu, cuda or cuda:N")
    return device


def _all_reduce_sum(value: torch.Tensor, dist_info: Dist) -> torch.Tensor:
    if dist_info.active:
        import torch.distributed as dist

        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def _barrier(dist_info: Dist) -> None:
    if dist_info.active:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------------------------------------- training


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    device: torch.device,
    step: int,
    seed: int,
    class_weights: torch.Tensor | None = None,
    ignore_index: int = 255,
    aux_weight: float = 0.5,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    scaler: torch.amp.GradScaler | None = None,
    dist_info: Dist = Dist(),  # noqa: B008 - an immutable default
) -> Iterator[tuple[int, float]]:
    """Train over `loader`, yielding (step, global-batch loss) after every optimiser step.

    A non-finite loss raises AtrousError naming the step before the weights are touched.
    """
    model.train()
    for images, masks in loader:
        # Dropout and any other randomness inside the model: a pure function of (seed, step, rank).
        torch.manual_seed(seed_from(seed, 1, step, dist_info.rank))
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        denominator = _all_reduce_sum(_labelled_weight(masks, class_weights, ignore_index), dist_info)
        # DDP averages gradients over processes; scaling by world size makes that average the gradient of
        # (sum over the global batch) / (global denominator): the single-process loss.
        # (A batch without any labelled pixel has a zero loss sum: divide it by 1 instead of 0.)
        denominator = torch.where(denominator > 0, denominator, 1.0) / dist_info.world
        with autocast():
            logits, aux_logits = model(images, aux=True)
        loss = segmentation_loss(
            logits, masks, weight=class_weights, ignore_index=ignore_index, denominator=denominator
        )
        if aux_logits is not None:
            loss = loss + aux_weight * segmentation_loss(
                aux_logits, masks, weight=class_weights, ignore_index=ignore_index, denominator=denominator
            )
        # The global-batch loss (one scalar reduced), also what decides the finite check on every process.
        reported = _all_reduce_sum(loss.detach().clone(), dist_info) / dist_info.world
        value = float(reported)
        if not math.isfinite(value):
            raise NonFiniteLoss(
                f"the loss is {value} at step {step + 1}: training stopped before that step changed the weights; "
                "lower optim.lr (or add warm-up), or check the data for bad labels"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        step += 1
        yield step, value


def _amp_context(
    device: torch.device, enabled: bool
) -> tuple[Callable[[], Any], torch.amp.GradScaler | None]:
    """Mixed precision: bfloat16 autocast on the CPU and on GPUs that support it (no loss scaling needed),
    float16 with a GradScaler on older GPUs."""
    if not enabled:
        return contextlib.nullcontext, None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), None


def _split_for(spec: str, wanted: str | None, *, role: str) -> str | None:
    from atrous.data import available_splits

    splits = available_splits(spec)
    if not splits:
        return None
    if wanted is None or wanted not in splits:
        raise AtrousError(
            f"data {spec!r} has splits {', '.join(splits)} but data.{role}_split is {wanted!r}: choose one"
        )
    return wanted


def _datasets(config: Config) -> tuple[Any, Any | None, str | None]:
    """(training data set without transform, validation data set with eval transform or None, val name)."""
    from atrous.data import available_splits, build_dataset, eval_transform

    d = config.data
    if d.train is None:
        raise AtrousError(
            "no training data: give --data SPEC (e.g. folder:PATH, synthetic:shapes) or data.train"
        )
    train_ds = build_dataset(
        d.train, _split_for(d.train, d.train_split, role="train"), skip_bad=d.skip_bad, num_classes=None
    )
    val_transform = eval_transform(mean=d.mean, std=d.std)
    if d.val is not None:
        split = _split_for(d.val, d.val_split, role="val") if d.val_split is not None else None
        spec = d.val
    elif d.val_split is not None and d.val_split in available_splits(d.train):
        spec, split = d.train, d.val_split
    else:
        return train_ds, None, None
    # The validation data must have the training data's classes (a folder's count comes from its masks).
    val_ds = build_dataset(
        spec, split, transform=val_transform, skip_bad=d.skip_bad, num_classes=train_ds.num_classes
    )
    return train_ds, val_ds, f"{spec}" + (f" split {split!r}" if split else "")


def _num_classes(config: Config, train_ds) -> int:
    given = config.model.num_classes
    if given is None:
        return train_ds.num_classes
    if given < train_ds.num_classes:
        raise AtrousError(
            f"model.num_classes is {given} but the training data has {train_ds.num_classes} classes: "
            "drop model.num_classes (it comes from the data) or raise it"
        )
    return given


def _class_meta(train_ds, num_classes: int) -> tuple[list[str], list[list[int]]]:
    classes = list(train_ds.classes)
    palette = [list(map(int, c)) for c in train_ds.palette]
    # Extra output classes beyond the data's (model.num_classes larger than the data's) get plain names.
    from atrous.data.datasets import standard_palette

    extra = standard_palette(num_classes)
    for k in range(len(classes), num_classes):
        classes.append(f"class_{k}")
        palette.append(list(extra[k]))
    return classes, palette


def _build_model(config: Config, num_classes: int) -> nn.Module:
    from atrous import models

    m = config.model
    if m.name not in models.available():
        raise AtrousError(
            f"unknown model {m.name!r} (model.name / --model); valid names: {', '.join(models.available())}"
        )
    try:
        return models.build(m.name, num_classes, **m.options)
    except (TypeError, ValueError) as e:
        raise AtrousError(f"model {m.name} (--opt / model.options): {e}") from None


def _finite_weights(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.state_dict().values() if p.is_floating_point())


def find_resume_checkpoint(out: Path, log: Callable[[str], None]) -> dict | None:
    """The newest intact checkpoint of the run in `out` (last.pt, else previous.pt), or None if there is none.

    A damaged last.pt is reported in one line and skipped. The checkpoint's `resumed_from` entry names the file."""
    for name in (LAST, PREVIOUS):
        path = out / name
        if not path.exists():
            continue
        try:
            ck = load_checkpoint(path)
        except AtrousError as e:
            log(f"warning: {e}")
            continue
        if "train_state" not in ck:
            log(f"warning: {path} has no training state (not a resumable checkpoint); skipped")
            continue
        if name != LAST:
            log(f"resuming from the older intact checkpoint {path} (step {ck['train_state']['step']})")
        ck["resumed_from"] = name
        return ck
    return None


class _Writer:
    """What the main process writes into the run folder: checkpoints, metrics.csv, TensorBoard."""

    def __init__(
        self, out: Path, *, enabled: bool, tensorboard: bool, purge_step: int | None, last_is_ours: bool
    ) -> None:
        self.out = out
        self.enabled = enabled
        # Whether last.pt is an intact checkpoint of this run (else it must not replace previous.pt: it may be
        # the damaged file a resume fell back from, or a leftover of another run).
        self.last_is_ours = last_is_ours
        self.tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run wrote after its last checkpoint.
            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=purge_step)

    def checkpoint(self, name: str, payload: dict) -> None:
        if not self.enabled:
            return
        path = self.out / name
        if name == LAST and self.last_is_ours and path.exists():
            # Keep the previous checkpoint until the new one is complete (and after, as a fallback).
            os.replace(path, self.out / PREVIOUS)
        save_checkpoint(path, payload)
        if name == LAST:
            self.last_is_ours = True

    def metrics(self, history: list[dict]) -> None:
        if not self.enabled:
            return
        columns = list(dict.fromkeys(key for row in history for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(self.out / METRICS_CSV, buffer.getvalue())

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def train(config: Config, *, resume: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Run the training described by `config` (what `atrous train` calls); returns a summary dict.

    `resume=True` continues from the run folder's newest intact checkpoint (or starts afresh when there is
    none). Started by torchrun (WORLD_SIZE > 1) it runs data-parallel with torch.distributed.
    """
    config = copy.deepcopy(config)  # resolved below (num_classes, epochs); the caller's stays as given
    dist_info, device = _init_distributed(config.train.device)
    if log is None:
        log = (
            (lambda message: print(f"atrous train: {message}", flush=True))
            if dist_info.main
            else (lambda m: None)
        )
    threads = torch.get_num_threads()
    if config.train.threads is not None:
        torch.set_num_threads(config.train.threads)
    try:
        return _train(config, resume=resume, dist_info=dist_info, device=device, log=log)
    finally:
        torch.set_num_threads(threads)  # a library call leaves the process as it found it
        if dist_info.active:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(
    config: Config, *, resume: bool, dist_info: Dist, device: torch.device, log: Callable[[str], None]
) -> dict:
    from atrous.data import train_transform

    t, d, o = config.train, config.data, config.optim
    if d.batch_size % dist_info.world:
        raise AtrousError(
            f"data.batch_size {d.batch_size} (the global batch) must be divisible by the {dist_info.world} processes"
        )
    out = Path(t.out)
    ck = None
    if resume:
        ck = find_resume_checkpoint(out, log)
        if ck is None:
            log(f"nothing to resume in {out}: starting from scratch")
    init = None
    if t.init_from is not None and ck is None:  # a resumed run has its own weights
        init = load_checkpoint(t.init_from)
        if init["model"]["name"] != config.model.name:
            raise AtrousError(
                f"--init-from {t.init_from} holds a {init['model']['name']} model, not {config.model.name}: "
                f"fine-tune from a {config.model.name} checkpoint"
            )
    train_ds, val_ds, val_name = _datasets(config)
    num_classes = _num_classes(config, train_ds)
    classes, palette = _class_meta(train_ds, num_classes)
    steps_per_epoch = len(train_ds) // d.batch_size
    if steps_per_epoch == 0:
        raise AtrousError(
            f"the training data has {len(train_ds)} samples, fewer than one batch of {d.batch_size}: "
            "lower --batch-size or add data"
        )
    weights = None
    if config.loss.class_weights is not None:
        if len(config.loss.class_weights) != num_classes:
            raise AtrousError(
                f"loss.class_weights has {len(config.loss.class_weights)} values but there are {num_classes} classes"
            )
        weights = torch.tensor(config.loss.class_weights, dtype=torch.float32, device=device)
    epochs = t.epochs if t.epochs is not None else (math.ceil(t.iters / steps_per_epoch) if t.iters else 10)
    total_steps = t.iters if t.iters is not None else epochs * steps_per_epoch

    # The resolved config: what this run does, saved in the run folder and in every checkpoint.
    config.model.num_classes = num_classes
    if t.epochs is None and t.iters is None:
        t.epochs = epochs
    resolved = to_dict(config)

    torch.manual_seed(seed_from(t.seed, 0))  # weight initialisation
    model = _build_model(config, num_classes)

    if ck is not None:
        if ck["model"]["name"] != config.model.name:
            raise AtrousError(
                f"{out} holds a {ck['model']['name']} run, not {config.model.name}: use another --out"
            )
        check_state_dict(model, ck["state_dict"], source=f"resume checkpoint in {out}")
        model.load_state_dict(ck["state_dict"])
    elif init is not None:
        _init_from(model, init, t.init_from, log)
    model.to(device)
    if dist_info.active and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if device.type == "cpu":
        # channels_last weights and batches: oneDNN's faster layout on the CPU (benchmarks/models.py,
        # training); the convolutions whose channels_last backward crashes torch 2.14.1 stay NCHW inside.
        # Same loss and gradients up to float rounding; checkpoints are stored NCHW (see payload).
        prepare_training(model)

    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step,
            total=total_steps,
            schedule=o.schedule,
            power=o.power,
            warmup_iters=o.warmup_iters,
            warmup_factor=o.warmup_factor,
        ),
    )
    autocast, scaler = _amp_context(device, t.amp)
    state = {"epoch": 0, "batch": 0, "step": 0, "best_miou": None, "history": [], "loss_sum": 0.0}
    if ck is not None:
        ts = ck["train_state"]
        optimizer.load_state_dict(ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        if scaler is not None and ts.get("scaler") is not None:
            scaler.load_state_dict(ts["scaler"])
        state = {k: ts[k] for k in state}
        log(f"resumed at step {state['step']} (epoch {state['epoch'] + 1}, batch {state['batch']})")

    net = model
    if dist_info.active:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    if dist_info.main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AtrousError(
                f"cannot create the run folder {out} ({e.strerror or e}): choose another --out"
            ) from None
        # Temporary files of writes a killed run left behind (never read: the rename did not happen).
        for name in (LAST, PREVIOUS, BEST, METRICS_CSV, CONFIG_YAML):
            for stale in out.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)
        atomic_write_text(out / CONFIG_YAML, dump_config(config))
    writer = _Writer(
        out,
        enabled=dist_info.main,
        tensorboard=config.log.tensorboard,
        purge_step=state["step"] or None,
        last_is_ours=ck is not None and ck["resumed_from"] == LAST,
    )
    samples = SeededSamples(
        train_ds,
        train_transform(
            crop_size=d.crop_size,
            scale=d.scale,
            hflip=d.hflip,
            color_jitter=d.color_jitter,
            mean=d.mean,
            std=d.std,
        ),
        seed=t.seed,
    )
    val_loader = None
    if val_ds is not None:
        shard = torch.utils.data.Subset(val_ds, range(dist_info.rank, len(val_ds), dist_info.world))
        val_loader = torch.utils.data.DataLoader(shard, batch_size=d.val_batch_size, num_workers=d.workers)
    else:
        log("no validation data (no val split, no --val-data): best.pt is not written")

    def payload(metrics: dict | None, with_state: bool) -> dict:
        ck = {
            "model": {
                "name": config.model.name,
                "num_classes": num_classes,
                "options": resolved["model"]["options"],
            },
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            "classes": classes,
            "palette": palette,
            "normalize": {"mean": list(d.mean), "std": list(d.std)},
            "config": resolved,
        }
        if metrics is not None:
            ck["metrics"] = metrics
        if with_state:
            ck["train_state"] = {
                **state,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "world_size": dist_info.world,
            }
        return ck

    def save_last() -> None:
        # Every process checks (their weights are equal), so that all stop together.
        if not _finite_weights(model):
            raise AtrousError(
                f"the weights became non-finite by step {state['step']}: training stopped, {out / LAST} "
                "keeps the last good state; lower optim.lr"
            )
        if dist_info.main:
            writer.checkpoint(LAST, payload(None, with_state=True))
        saved_step.append(state["step"])

    progress = None
    if dist_info.main and config.log.progress:
        from tqdm import tqdm

        progress = tqdm(
            total=total_steps,
            initial=state["step"],
            desc="train",
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
        )
    log(
        f"{config.model.name} ({num_classes} classes) on {d.train}, {len(train_ds)} samples, "
        f"{steps_per_epoch} steps/epoch, {total_steps} steps, {dist_info.world} process(es) on {device}; out {out}"
    )
    if val_name is not None:
        log(f"validation on {val_name}, {len(val_ds)} samples")
    started = time.perf_counter()
    metrics: dict = {}
    # Steps of the checkpoints in the run folder, for the non-finite-loss message.
    saved_step: list[int] = [state["step"]] if ck is not None else []
    try:
        while state["epoch"] < epochs and state["step"] < total_steps:
            epoch = state["epoch"]
            batches = EpochBatches(
                num_samples=len(train_ds),
                batch_size=d.batch_size,
                epoch=epoch,
                seed=t.seed,
                start=state["batch"],
                rank=dist_info.rank,
                world=dist_info.world,
            )
            loader = torch.utils.data.DataLoader(samples, batch_sampler=batches, num_workers=d.workers)
            steps = train_one_epoch(
                net,
                loader,
                optimizer,
                scheduler,
                device=device,
                step=state["step"],
                seed=t.seed,
                class_weights=weights,
                ignore_index=config.loss.ignore_index,
                aux_weight=config.loss.aux_weight,
                autocast=autocast,
                scaler=scaler,
                dist_info=dist_info,
            )
            for step, loss in steps:
                state["step"], state["batch"] = step, state["batch"] + 1
                state["loss_sum"] += loss
                lr = optimizer.param_groups[0]["lr"]
                writer.scalars(step, {"train/loss": loss, "train/lr": lr})
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", epoch=epoch + 1, refresh=False)
                if step >= total_steps:
                    break
                if t.checkpoint_every and step % t.checkpoint_every == 0 and state["batch"] < steps_per_epoch:
                    save_last()
            steps.close()  # ends the epoch's DataLoader (and its workers) now, also after a break
            # End of the epoch (or of the run): validate, log, checkpoint.
            row = {
                "epoch": epoch + 1,
                "step": state["step"],
                "train_loss": state["loss_sum"] / max(state["batch"], 1),
                "lr": optimizer.param_groups[0]["lr"],
            }
            last_epoch = epoch + 1 >= epochs or state["step"] >= total_steps
            metrics = {}
            if val_loader is not None and ((epoch + 1) % t.eval_every == 0 or last_epoch):
                metrics = evaluate(
                    model,
                    val_loader,
                    num_classes=num_classes,
                    device=device,
                    ignore_index=config.loss.ignore_index,
                )
                row.update(
                    val_miou=metrics["miou"],
                    val_pixel_acc=metrics["pixel_acc"],
                    val_mean_acc=metrics["mean_acc"],
                    val_fw_iou=metrics["fw_iou"],
                )
            state["history"].append(row)
            if state["batch"] >= steps_per_epoch:
                state["epoch"], state["batch"], state["loss_sum"] = epoch + 1, 0, 0.0
            # else: --iters ended the run inside this epoch; a resumed, longer run continues it.
            writer.scalars(
                state["step"],
                {f"epoch/{k}": v for k, v in row.items() if k not in ("epoch", "step") and v is not None},
            )
            writer.metrics(state["history"])
            summary = ", ".join(
                f"{k} {v:.4g}" if v is not None else f"{k} -"
                for k, v in row.items()
                if k not in ("epoch", "step")
            )
            log(f"epoch {epoch + 1}/{epochs} step {state['step']}: {summary}")
            miou = metrics.get("miou")  # None when the validation data has no labelled pixel
            if miou is not None and (state["best_miou"] is None or miou > state["best_miou"]):
                state["best_miou"] = miou
                if dist_info.main:
                    writer.checkpoint(
                        BEST, payload(_plain_metrics(metrics, val_name, state), with_state=False)
                    )
            save_last()
            _barrier(dist_info)
    except NonFiniteLoss as e:
        kept = (
            f"the last good checkpoint {out / LAST} (step {saved_step[-1]}) is kept"
            if saved_step
            else "no checkpoint was written yet"
        )
        raise AtrousError(f"{e}; {kept}") from None
    finally:
        if progress is not None:
            progress.close()
        writer.close()
    elapsed = time.perf_counter() - started
    log(f"done: {state['step']} steps in {elapsed:.1f} s; best val mIoU {state['best_miou']}; {out / LAST}")
    return {
        "out": str(out),
        "step": state["step"],
        "epoch": state["epoch"],
        "best_miou": state["best_miou"],
        "history": state["history"],
        "metrics": metrics,
        "num_classes": num_classes,
    }


def _plain_metrics(metrics: dict, val_name: str | None, state: dict) -> dict:
    return {
        **{k: metrics[k] for k in ("miou", "pixel_acc", "mean_acc", "fw_iou", "per_class_iou")},
        "object_recall_by_size": metrics["object_recall_by_size"],
        "data": val_name,
        "epoch": state["epoch"],
        "step": state["step"],
    }


def _init_from(model: nn.Module, ck: dict, path: str, log: Callable[[str], None]) -> None:
    loaded, kept = load_matching(model, ck["state_dict"])
    if not loaded:
        raise AtrousError(
            f"--init-from {path}: no tensor matches this model's shapes; use a checkpoint of the same model"
        )
    message = f"initialised {len(loaded)} tensors from {path}"
    if kept:
        shown = ", ".join(kept[:6]) + (f" and {len(kept) - 6} more" if len(kept) > 6 else "")
        message += f"; kept at initialisation (absent or another shape, e.g. another class count): {shown}"
    log(message)
