"""Everything a training run needs, built once from its Config: the typed `Run` that `loop.py` drives.

`build_run` resolves what the config leaves open (class count from the data, epochs from iters, the crop
from the training images), finds the checkpoint to resume or the one to fine-tune from, builds data,
model, optimiser, schedule, loss and mixed precision, and claims the run folder. Every user error
surfaces here, before the first step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from atrous import losses
from atrous.checkpoint import (
    check_state_dict,
    load_checkpoint,
    load_matching,
    model_payload,
    without_provenance,
)
from atrous.config import Config, dump_config, to_dict
from atrous.errors import AtrousError
from atrous.optimize import prepare_training
from atrous.train.data import TrainData, build_data
from atrous.train.dist import Dist
from atrous.train.loss import TrainingLoss, build_loss
from atrous.train.optim import amp_context, build_optimizer, build_scheduler, set_schedule_position
from atrous.train.run_folder import LAST, RunFolder
from atrous.train.sampling import seed_from


@dataclass
class TrainState:
    """Where the run stands; saved in last.pt (`train_state`) for exact resume."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # global batches of the current epoch completed
    step: int = 0  # optimiser steps completed
    best: float | None = None  # best value of train.best_metric so far
    best_miou: float | None = None  # validation mIoU of best.pt
    history: list[dict] = field(default_factory=list)  # metrics.csv rows
    loss_sum: float = 0.0  # training loss summed over the current epoch's steps

    @classmethod
    def from_checkpoint(cls, ts: dict) -> TrainState:
        state = cls(**{k: ts[k] for k in ("epoch", "batch", "step", "best_miou", "history", "loss_sum")})
        # Checkpoints from before train.best_metric chose best.pt by mIoU.
        state.best = ts.get("best", state.best_miou)
        return state


@dataclass(kw_only=True)
class Run:
    """One training run: what `fit` reads and updates. `model` is the plain module (saved, evaluated);
    `net` is what the step calls (`model`, or its DistributedDataParallel wrapper)."""

    config: Config  # resolved: class count, epochs, crop filled in
    dist: Dist
    device: torch.device
    folder: RunFolder
    data: TrainData
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    criterion: TrainingLoss
    autocast: Callable[[], Any]
    scaler: torch.amp.GradScaler | None
    epochs: int
    total_steps: int
    state: TrainState
    log: Callable[[str], None]

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def payload(self, metrics: dict | None = None, *, with_state: bool) -> dict:
        """A checkpoint of the current weights (and, `with_state`, of everything exact resume needs)."""
        resolved = to_dict(self.config)
        ck = model_payload(
            name=self.config.model.name,
            num_classes=self.num_classes,
            options=resolved["model"]["options"],
            state_dict=self.model.state_dict(),
        )
        ck.update(
            classes=self.data.classes,
            palette=self.data.palette,
            normalize={"mean": list(self.config.data.mean), "std": list(self.config.data.std)},
            config=resolved,
        )
        if self.data.label_convention is not None:  # atrous predict writes masks back this way
            ck["label_convention"] = self.data.label_convention
        if metrics is not None:
            ck["metrics"] = metrics
        if with_state:
            ck["train_state"] = {
                **asdict(self.state),
                "total_steps": self.total_steps,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "world_size": self.dist.world,
            }
        return ck


def build_run(
    config: Config,
    *,
    resume: bool,
    overwrite: bool,
    dist: Dist,
    device: torch.device,
    log: Callable[[str], None],
) -> Run:
    """Resolve `config` (in place: the caller passes its own copy) and build the run it describes.

    The run folder is claimed first (refused when it holds another run and neither `resume` nor
    `overwrite` is given) and released again when anything else fails."""
    d = config.data
    if d.batch_size % dist.world:
        raise AtrousError(
            f"data.batch_size {d.batch_size} (the global batch) must be divisible by the {dist.world} processes"
        )
    # loss.terms checked before the data scan (which can take a while); built with the class count later.
    losses.build_criterion(config.loss.terms, ignore_index=config.loss.ignore_index)
    folder = RunFolder(config.train.out, enabled=dist.main)
    folder.claim(resume=resume, overwrite=overwrite)
    try:
        return _build(config, folder, resume=resume, dist=dist, device=device, log=log)
    except BaseException:
        folder.close()
        raise


def _build(
    config: Config,
    folder: RunFolder,
    *,
    resume: bool,
    dist: Dist,
    device: torch.device,
    log: Callable[[str], None],
) -> Run:
    t = config.train
    ck = _resume_checkpoint(folder, config, resume=resume, log=log)
    init = _init_checkpoint(config) if ck is None else None  # a resumed run has its own weights
    data = build_data(config, dist=dist, log=log)
    criterion = build_loss(config.loss, data.num_classes)
    epochs = (
        t.epochs if t.epochs is not None else (math.ceil(t.iters / data.steps_per_epoch) if t.iters else 10)
    )
    total_steps = t.iters if t.iters is not None else epochs * data.steps_per_epoch
    # The resolved config: what this run does, saved in the run folder and in every checkpoint.
    config.model.num_classes = data.num_classes
    if t.epochs is None and t.iters is None:
        t.epochs = epochs

    torch.manual_seed(seed_from(t.seed, 0))  # weight initialisation
    model = _build_model(config, data.num_classes, rebuild=ck is not None)
    if ck is not None:
        check_state_dict(model, ck["state_dict"], source=f"resume checkpoint in {folder.path}")
        model.load_state_dict(ck["state_dict"])
    elif init is not None:
        _init_from(model, init, t.init_from, log)
    model.to(device)
    if dist.active and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if device.type == "cpu":
        # channels_last weights and batches: oneDNN's faster layout on the CPU (benchmarks/models.py,
        # training); the convolutions whose channels_last backward crashes torch 2.14.1 stay NCHW inside.
        # Same loss and gradients up to float rounding; checkpoints are stored NCHW (checkpoint.model_payload).
        prepare_training(model)

    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config.optim, total_steps)
    autocast, scaler = amp_context(device, t.amp)
    state = TrainState()
    if ck is not None:
        state = _restore(ck["train_state"], optimizer, scheduler, scaler, total_steps=total_steps, log=log)
    net = model
    if dist.active:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    folder.start(
        dump_config(config),
        tensorboard=config.log.tensorboard,
        purge_step=state.step or None,
        last_is_ours=ck is not None and ck["resumed_from"] == LAST,
    )
    if ck is not None:
        folder.saved_step = state.step
    return Run(
        config=config,
        dist=dist,
        device=device,
        folder=folder,
        data=data,
        model=model,
        net=net,
        optimizer=optimizer,
        scheduler=scheduler,
        criterion=criterion,
        autocast=autocast,
        scaler=scaler,
        epochs=epochs,
        total_steps=total_steps,
        state=state,
        log=log,
    )


def _resume_checkpoint(
    folder: RunFolder, config: Config, *, resume: bool, log: Callable[[str], None]
) -> dict | None:
    if not resume:
        return None
    ck = folder.find_resume_checkpoint(log)
    if ck is None:
        log(f"nothing to resume in {folder.path}: starting from scratch")
        return None
    held = ck["model"]["name"]
    if held != config.model.name:
        raise AtrousError(
            f"{folder.path} holds a {held} run, not {config.model.name}: --resume continues a run with its own "
            f"model (drop --model), or start a new {config.model.name} run with another --out"
        )
    return ck


def _init_checkpoint(config: Config) -> dict | None:
    t = config.train
    if t.init_from is None:
        return None
    init = load_checkpoint(t.init_from)
    if init["model"]["name"] != config.model.name:
        raise AtrousError(
            f"--init-from {t.init_from} holds a {init['model']['name']} model, not {config.model.name}: "
            f"fine-tune from a {config.model.name} checkpoint"
        )
    return init


def _restore(
    ts: dict,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler | None,
    *,
    total_steps: int,
    log: Callable[[str], None],
) -> TrainState:
    optimizer.load_state_dict(ts["optimizer"])
    scheduler.load_state_dict(ts["scheduler"])
    if scaler is not None and ts.get("scaler") is not None:
        scaler.load_state_dict(ts["scaler"])
    state = TrainState.from_checkpoint(ts)
    log(f"resumed at step {state.step} (epoch {state.epoch + 1}, batch {state.batch})")
    old_total = ts.get("total_steps")
    if old_total is not None and old_total != total_steps:
        # A longer (or shorter) run: the schedule is recomputed for the new total from the current step on.
        old_lr = optimizer.param_groups[0]["lr"]
        set_schedule_position(optimizer, scheduler, state.step)
        log(
            f"the schedule now ends at step {total_steps} (was {old_total}): learning rate at step "
            f"{state.step} {old_lr:.4g} -> {optimizer.param_groups[0]['lr']:.4g}"
        )
    return state


def _build_model(config: Config, num_classes: int, *, rebuild: bool) -> nn.Module:
    """The model of `config`; `rebuild` (resume: the weights come from the checkpoint) leaves out the
    options that only say where initial weights come from, so a moved pretrained file does not matter."""
    from atrous import models

    m = config.model
    options = without_provenance(m.options) if rebuild else m.options
    # The registry's ModelError (an AtrousError) names the model, the option and what is valid.
    return models.build(m.name, num_classes, **options)


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
