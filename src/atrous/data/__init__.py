"""Data sets and paired transforms: `build_dataset("folder:ROOT" | "voc:ROOT" | "cityscapes:ROOT" |
"synthetic:NAME?key=value", split)`; see the README's Data section."""

from atrous.data.datasets import (
    IGNORE_INDEX,
    KINDS,
    DataError,
    SegmentationDataset,
    available_splits,
    build_dataset,
    parse_spec,
)
from atrous.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform

__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KINDS",
    "DataError",
    "SegmentationDataset",
    "available_splits",
    "build_dataset",
    "eval_transform",
    "parse_spec",
    "train_transform",
]
