"""The training loop: `fit(config)` builds a `Run` (setup.py) and drives it epoch by epoch.

The loops follow torchvision's segmentation references (`train_one_epoch` / `evaluate` / `main`) and
detectron2's plain training loop: one short loop, each concern a small function or object (the run
folder, the data, the criterion). `fit` below is the whole story: per epoch, train over the epoch's
remaining batches, then validate, log, keep the best checkpoint and write last.pt.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from atrous.config import Config
from atrous.errors import AtrousError
from atrous.evaluate import evaluate
from atrous.train.dist import Dist, init_distributed, shutdown
from atrous.train.loss import TrainingLoss
from atrous.train.run_folder import BEST, LAST
from atrous.train.sampling import seed_from
from atrous.train.setup import Run, build_run


class NonFiniteLoss(AtrousError):
    """The loss became NaN or infinite (raised before the step changes any weight)."""


def fit(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run the training described by `config` (what `atrous train` calls); returns a summary dict:
    out, step, epoch, best_miou, history (metrics.csv rows), metrics (the last validation), num_classes.

    `resume=True` continues from the run folder's newest intact checkpoint (or starts afresh when there is
    none); `overwrite=True` replaces a finished run in `train.out` (refused otherwise). Started by torchrun
    (WORLD_SIZE > 1) it runs data-parallel with torch.distributed.
    """
    config = copy.deepcopy(config)  # resolved in build_run; the caller's stays as given
    dist, device = init_distributed(config.train.device)
    if log is None:
        log = (lambda m: print(f"atrous train: {m}", flush=True)) if dist.main else (lambda m: None)
    threads = torch.get_num_threads()
    if config.train.threads is not None:
        torch.set_num_threads(config.train.threads)
    try:
        config.train.out = _run_folder_name(config, resume=resume, dist=dist)
        run = build_run(config, resume=resume, overwrite=overwrite, dist=dist, device=device, log=log)
        try:
            return _fit(run)
        finally:
            run.folder.close()
    finally:
        torch.set_num_threads(threads)  # a library call leaves the process as it found it
        shutdown(dist)


def _fit(run: Run) -> dict:
    state, out = run.state, run.folder.path
    _log_start(run)
    progress = _progress_bar(run)
    started = time.perf_counter()
    metrics: dict = {}
    try:
        while state.epoch < run.epochs and state.step < run.total_steps:
            train_epoch(run, progress)
            metrics = end_of_epoch(run)
    except NonFiniteLoss as e:
        kept = (
            f"the last good checkpoint {out / LAST} (step {run.folder.saved_step}) is kept"
            if run.folder.saved_step is not None
            else "no checkpoint was written yet"
        )
        raise AtrousError(f"{e}; {kept}") from None
    finally:
        if progress is not None:
            progress.close()
    elapsed = time.perf_counter() - started
    run.log(f"done: {state.step} steps in {elapsed:.1f} s; best val mIoU {state.best_miou}; {out / LAST}")
    return {
        "out": str(out),
        "step": state.step,
        "epoch": state.epoch,
        "best_miou": state.best_miou,
        "history": state.history,
        "metrics": metrics,
        "num_classes": run.num_classes,
    }


def train_epoch(run: Run, progress) -> None:
    """The rest of the current epoch (or up to the run's last step), with mid-epoch checkpoints."""
    state, t = run.state, run.config.train
    steps = train_one_epoch(
        run.net,
        run.data.loader(state.epoch, start=state.batch),
        run.optimizer,
        run.scheduler,
        run.criterion,
        device=run.device,
        step=state.step,
        seed=t.seed,
        autocast=run.autocast,
        scaler=run.scaler,
        dist=run.dist,
    )
    for step, loss in steps:
        state.step, state.batch = step, state.batch + 1
        state.loss_sum += loss
        lr = run.optimizer.param_groups[0]["lr"]
        run.folder.scalars(step, {"train/loss": loss, "train/lr": lr})
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", epoch=state.epoch + 1, refresh=False)
        if step >= run.total_steps:
            break
        if t.checkpoint_every and step % t.checkpoint_every == 0 and state.batch < run.data.steps_per_epoch:
            save_last(run)
    steps.close()  # ends the epoch's DataLoader (and its workers) now, also after a break


def end_of_epoch(run: Run) -> dict:
    """Validate (every `eval_every` epochs and at the end), log a metrics.csv row, keep best.pt, save
    last.pt; returns the validation metrics ({} when not validated)."""
    state, t = run.state, run.config.train
    epoch = state.epoch
    row = {
        "epoch": epoch + 1,
        "step": state.step,
        "train_loss": state.loss_sum / max(state.batch, 1),
        "lr": run.optimizer.param_groups[0]["lr"],
    }
    last_epoch = epoch + 1 >= run.epochs or state.step >= run.total_steps
    metrics: dict = {}
    if run.data.val_loader is not None and ((epoch + 1) % t.eval_every == 0 or last_epoch):
        metrics = validate(run)
        row.update(validation_row(metrics, run.data.classes))
    state.history.append(row)
    if state.batch >= run.data.steps_per_epoch:
        state.epoch, state.batch, state.loss_sum = epoch + 1, 0, 0.0
    # else: --iters ended the run inside this epoch; a resumed, longer run continues it.
    run.folder.scalars(state.step, {f"epoch/{k}": v for k, v in row.items() if k not in ("epoch", "step")})
    run.folder.metrics(state.history)
    summary = ", ".join(
        f"{k} {v:.4g}" if v is not None else f"{k} -"
        for k, v in row.items()
        if k not in ("epoch", "step") and not k.startswith("val_iou_")
    )
    run.log(f"epoch {epoch + 1}/{run.epochs} step {state.step}: {summary}")
    keep_best(run, metrics)
    save_last(run)
    run.dist.barrier()
    return metrics


def validation_row(metrics: dict, classes: list[str]) -> dict:
    """The metrics.csv (and TensorBoard) columns of one validation."""
    row = {f"val_{k}": metrics[k] for k in ("loss", "miou", "pixel_acc", "mean_acc", "fw_iou", "dice")}
    row["val_boundary_iou"] = metrics["boundary_iou"]
    row.update({f"val_iou_{name}": iou for name, iou in zip(classes, metrics["per_class_iou"])})
    return row


def validate(run: Run) -> dict:
    """Validation metrics and loss (the training criterion on the main head, per image); on the main
    process with TensorBoard on, a few predictions as images."""
    from atrous.metrics import default_object_classes

    d, ignore = run.config.data, run.config.loss.ignore_index
    metrics = evaluate(
        run.model,
        run.data.val_loader,
        num_classes=run.num_classes,
        device=run.device,
        ignore_index=ignore,
        object_classes=default_object_classes(run.data.classes, run.num_classes, ignore),
        loss=run.criterion.criterion,
    )
    if run.folder.tb is not None:
        from atrous.train.preview import previews

        panels = previews(
            run.model,
            run.data.val_loader,
            palette=run.data.palette,
            mean=d.mean,
            std=d.std,
            device=run.device,
        )
        for i, panel in enumerate(panels):
            run.folder.image(run.state.step, f"val/{i}", panel)
    return metrics


def keep_best(run: Run, metrics: dict) -> None:
    """Write best.pt when this validation is the best so far by `train.best_metric` (mIoU: higher is
    better; val_loss: lower)."""
    state = run.state
    key = "loss" if run.config.train.best_metric == "val_loss" else "miou"
    value = metrics.get(key)  # None when not validated, or no labelled pixel
    if value is None:
        return
    sign = -1.0 if key == "loss" else 1.0
    if state.best is not None and sign * value <= sign * state.best:
        return
    state.best, state.best_miou = value, metrics["miou"]
    if run.dist.main:
        stored = {
            **{k: metrics[k] for k in ("miou", "pixel_acc", "mean_acc", "fw_iou", "per_class_iou")},
            **{
                k: metrics[k]
                for k in ("loss", "dice", "per_class_dice", "boundary_iou", "per_class_boundary_iou")
            },
            "object_recall_by_size": metrics["object_recall_by_size"],
            "best_metric": run.config.train.best_metric,
            "data": run.data.val_name,
            "epoch": state.epoch,
            "step": state.step,
        }
        run.folder.checkpoint(BEST, run.payload(stored, with_state=False))


def save_last(run: Run) -> None:
    # Every process checks (their weights are equal), so that all stop together.
    if not all(
        bool(torch.isfinite(p).all()) for p in run.model.state_dict().values() if p.is_floating_point()
    ):
        raise AtrousError(
            f"the weights became non-finite by step {run.state.step}: training stopped, "
            f"{run.folder.path / LAST} keeps the last good state; lower optim.lr"
        )
    run.folder.checkpoint(LAST, run.payload(with_state=True))
    run.folder.saved_step = run.state.step


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    criterion: TrainingLoss,
    *,
    device: torch.device,
    step: int,
    seed: int,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    scaler: torch.amp.GradScaler | None = None,
    dist: Dist = Dist(),  # noqa: B008 - an immutable default
) -> Iterator[tuple[int, float]]:
    """Train over `loader`, yielding (step, global-batch loss) after every optimiser step.

    A non-finite loss raises NonFiniteLoss naming the step before the weights are touched.
    """
    model.train()
    for images, masks in loader:
        # Dropout and any other randomness inside the model: a pure function of (seed, step, rank).
        torch.manual_seed(seed_from(seed, 1, step, dist.rank))
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        with autocast():
            logits, aux_logits = model(images, aux=True)
        loss = criterion(logits, aux_logits, masks, dist)
        # The global-batch loss (one scalar reduced), also what decides the finite check on every process.
        value = float(dist.all_reduce_sum(loss.detach().clone()) / dist.world)
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


def _run_folder_name(config: Config, *, resume: bool, dist: Dist) -> str:
    """`train.out`, or a fresh `runs/<model>-<timestamp>` chosen by rank 0 for every process."""
    if config.train.out is not None:
        return config.train.out
    if resume:
        raise AtrousError("--resume needs --out DIR: the run folder to continue (train.out)")
    from atrous.train.run_folder import fresh_run_folder

    return dist.broadcast(str(fresh_run_folder(config.model.name)) if dist.main else None)


def _log_start(run: Run) -> None:
    d = run.config.data
    run.log(
        f"{run.config.model.name} ({run.num_classes} classes) on {d.train}, {len(run.data.samples)} samples, "
        f"{run.data.steps_per_epoch} steps/epoch, {run.total_steps} steps, {run.dist.world} process(es) on "
        f"{run.device}; out {run.folder.path}"
    )
    if run.data.val_name is not None:
        run.log(f"validation on {run.data.val_name}, {run.data.val_size} samples")


def _progress_bar(run: Run):
    if not (run.dist.main and run.config.log.progress):
        return None
    from tqdm import tqdm

    return tqdm(
        total=run.total_steps,
        initial=run.state.step,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        file=sys.stderr,
    )
