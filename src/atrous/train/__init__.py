"""Training: `fit(config)` runs what `atrous train` runs.

setup.py       build_run(config) -> Run: data, model, optimiser, schedule, loss, device, run folder
loop.py        fit, train_one_epoch, end_of_epoch: the loop
data.py        training samples, validation batches, classes, the derived crop
sampling.py    seed_from, SeededSamples, EpochBatches: exact resume by construction
optim.py       lr_factor, build_optimizer, schedule, mixed precision
loss.py        the global-batch loss (DDP gives the single-process gradient)
dist.py        Dist, device, torch.distributed set-up
run_folder.py  RunFolder: last/previous/best, metrics.csv, TensorBoard, resume lookup, lock
"""

from atrous.train.dist import Dist
from atrous.train.loop import NonFiniteLoss, fit, train_one_epoch
from atrous.train.loss import TrainingLoss, build_loss
from atrous.train.optim import build_optimizer, lr_factor
from atrous.train.run_folder import BEST, CONFIG_YAML, LAST, METRICS_CSV, PREVIOUS, RunFolder
from atrous.train.sampling import EpochBatches, SeededSamples, seed_from
from atrous.train.setup import Run, TrainState, build_run

__all__ = [
    "BEST",
    "CONFIG_YAML",
    "LAST",
    "METRICS_CSV",
    "PREVIOUS",
    "Dist",
    "EpochBatches",
    "NonFiniteLoss",
    "Run",
    "RunFolder",
    "SeededSamples",
    "TrainState",
    "TrainingLoss",
    "build_loss",
    "build_optimizer",
    "build_run",
    "fit",
    "lr_factor",
    "seed_from",
    "train_one_epoch",
]
