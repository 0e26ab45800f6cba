"""The run's data: training samples keyed for exact resume, validation batches, classes, the crop.

When `data.crop_size` is None (no `--crop`) the crop is derived from the training images: the median short
side of (up to 256 evenly spaced) training images, capped at 321 (DeepLab's crop). A folder of 64 px
images then trains on 64 px crops instead of 321 px crops that are 96 % padding; on a folder of mixed
sizes, half of the images are at least the crop on both sides (only cropped) and the others are padded
with the ignore label (which the loss and metrics skip).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from atrous.config import Config
from atrous.errors import AtrousError
from atrous.evaluate import SameSizeBatches
from atrous.train.dist import Dist
from atrous.train.sampling import EpochBatches, SeededSamples

MAX_DERIVED_CROP = 321
_CROP_SAMPLE = 256


@dataclass(kw_only=True)
class TrainData:
    """Training samples (augmented per (epoch, index) key), validation batches and class metadata."""

    samples: SeededSamples
    val_loader: Any | None  # iterable of (images, masks) batches of this process's validation shard
    val_name: str | None
    val_size: int
    classes: list[str]
    palette: list[list[int]]
    num_classes: int
    batch_size: int
    workers: int
    seed: int
    dist: Dist
    # How the training masks store the classes (atrous.data.LabelConvention.to_dict); None for generated data.
    label_convention: dict | None = None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.samples) // self.batch_size

    def loader(self, epoch: int, *, start: int) -> torch.utils.data.DataLoader:
        """This process's batches of `epoch`, from global batch `start` on."""
        batches = EpochBatches(
            num_samples=len(self.samples),
            batch_size=self.batch_size,
            epoch=epoch,
            seed=self.seed,
            start=start,
            rank=self.dist.rank,
            world=self.dist.world,
        )
        return torch.utils.data.DataLoader(self.samples, batch_sampler=batches, num_workers=self.workers)


def image_sizes(dataset, limit: int = _CROP_SAMPLE) -> list[tuple[int, int]]:
    """(height, width) of up to `limit` evenly spaced items; file data sets read only the image headers."""
    n = len(dataset)
    k = min(n, limit)
    indices = sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})  # all of them when n <= limit
    pairs = getattr(dataset, "pairs", None)
    if pairs is not None:
        from atrous.data.io import open_image, oriented_size

        sizes = []
        for i in indices:
            with open_image(pairs[i][0]) as img:
                w, h = oriented_size(img)  # as shown: after the EXIF orientation the reader applies
            sizes.append((h, w))
        return sizes
    if isinstance(getattr(dataset, "size", None), int):  # generated data (synthetic:): square items of `size`
        return [(dataset.size, dataset.size)]
    return [tuple(dataset[i][1].shape[-2:]) for i in indices]


def derive_crop(dataset) -> int:
    """The default crop (module docstring): median short side of the training images, capped at 321."""
    short = [min(h, w) for h, w in image_sizes(dataset)]
    return int(min(MAX_DERIVED_CROP, statistics.median_low(short)))


def build_data(config: Config, *, dist: Dist, log: Callable[[str], None]) -> TrainData:
    """The data of `config`; fills in `data.crop_size` when it is None (derived, and said in the log)."""
    from atrous.data import train_transform

    d, t = config.data, config.train
    _check_data(config, log)
    train_ds, val_ds, val_name = _datasets(config)
    num_classes = _num_classes(config, train_ds)
    classes, palette = _class_meta(train_ds, num_classes)
    if len(train_ds) < d.batch_size:
        raise AtrousError(
            f"the training data has {len(train_ds)} samples, fewer than one batch of {d.batch_size}: "
            "lower --batch-size or add data"
        )
    if d.crop_size is None:
        d.crop_size = derive_crop(train_ds)
        log(
            f"crop {d.crop_size} px: the median short side of the training images, capped at "
            f"{MAX_DERIVED_CROP} (--crop S to choose another)"
        )
    transform = train_transform(
        crop_size=d.crop_size,
        scale=d.scale,
        hflip=d.hflip,
        color_jitter=d.color_jitter,
        mean=d.mean,
        std=d.std,
        ignore_index=config.loss.ignore_index,
    )
    val_loader = None
    if val_ds is not None:
        shard = torch.utils.data.Subset(val_ds, range(dist.rank, len(val_ds), dist.world))
        val_loader = SameSizeBatches(shard, batch_size=d.val_batch_size, workers=d.workers)
    else:
        log("no validation data (no val split, no --val-data): best.pt is not written")
    return TrainData(
        samples=SeededSamples(train_ds, transform, seed=t.seed),
        val_loader=val_loader,
        val_name=val_name,
        val_size=len(val_ds) if val_ds is not None else 0,
        classes=classes,
        palette=palette,
        num_classes=num_classes,
        batch_size=d.batch_size,
        workers=d.workers,
        seed=t.seed,
        dist=dist,
        label_convention=getattr(train_ds, "label_convention", None),
    )


def _check_data(config: Config, log: Callable[[str], None]) -> None:
    """`atrous.data.check_data` on the training split and the validation split (when there is one, or a
    likely one under another name): its errors stop the run before anything is built, its warnings are
    logged."""
    from atrous.data import available_splits, check_data, likely_split

    d = config.data
    if d.train is None:
        return  # _datasets says what to give
    checks = [(d.train, _split_for(d.train, d.train_split, role="train"))]
    if d.val is not None:
        checks.append((d.val, d.val_split if available_splits(d.val) else None))
    elif d.val_split is not None:
        splits = available_splits(d.train)
        if d.val_split in splits or (splits and likely_split(d.val_split, splits) is not None):
            checks.append((d.train, d.val_split))
        elif [s for s in splits if s != d.train_split]:
            # Another split is there: validating on nothing because of a misspelt name would be silent.
            raise AtrousError(
                f"data {d.train!r} has no split {d.val_split!r} (its splits: {', '.join(splits)}): set "
                "data.val_split to the validation split, or data.val_split=null to train without validation"
            )
    for spec, split in checks:
        # as _datasets builds them: classes from the data
        report = check_data(spec, split, ignore_index=config.loss.ignore_index)
        report.raise_for_errors()
        for warning in report.warnings():
            log(f"warning: {spec}{f' split {split!r}' if split else ''}: {warning}")


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
        d.train,
        _split_for(d.train, d.train_split, role="train"),
        skip_bad=d.skip_bad,
        num_classes=None,
        ignore_index=config.loss.ignore_index,
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
        spec,
        split,
        transform=val_transform,
        skip_bad=d.skip_bad,
        num_classes=train_ds.num_classes,
        ignore_index=config.loss.ignore_index,
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
    from atrous.data import standard_palette

    extra = standard_palette(num_classes)
    for k in range(len(classes), num_classes):
        classes.append(f"class_{k}")
        palette.append(list(extra[k]))
    return classes, palette
