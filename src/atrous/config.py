"""Configuration: typed dataclass configs <-> YAML, dotted overrides, and the `key=value` parsers.

A training run is described by one `Config` (sections `model`, `data`, `optim`, `loss`, `train`, `log`).
It is read from YAML (`load_config`), overridden by flags and `--set section.key=value` (`apply_overrides`),
checked field by field against the dataclasses (`from_dict`: an unknown key or a wrong type is an
`AtrousError` naming the key and listing the valid ones) and saved back as YAML with every run
(`dump_config`).

`key=value` values (`--opt`, `--set`) are read as YAML scalars (`3` -> int, `0.5` -> float, `true` -> bool,
`null` -> None, anything else a string); a value with a comma outside brackets is a tuple of such scalars
(`rates=1,2,5` -> (1, 2, 5)), and a bracketed YAML list (`rates=[1,2,5]`) is a tuple too.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from atrous.errors import AtrousError

# ImageNet statistics (the backbones' pre-training normalisation), repeated here so that reading a config
# does not import torchvision.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_value(text: str) -> Any:
    """Parse one option value (see the module docstring)."""
    text = text.strip()
    if "," in text and not text.startswith(("[", "{", "'", '"')):
        return tuple(parse_value(part) for part in text.split(","))
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return text
    except RecursionError:
        raise AtrousError(
            f"value {text[:40]!r}... is nested too deeply: write key=1,2,3 or key=[1,2,3]"
        ) from None
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        raise AtrousError(f"value {text!r} is a mapping: write key=value, key=1,2,3 or key=[1,2,3]")
    if value is not None and not isinstance(value, (int, float, str, bool)):
        return text  # e.g. a date: keep what the user wrote
    return value


def parse_kv(item: str, flag: str = "--opt") -> tuple[str, Any]:
    """Parse `key=value` (as given to `flag`) into (key, parsed value)."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise AtrousError(f"{flag} expects key=value, got {item!r}")
    if not all(part.isidentifier() for part in key.split(".")):
        raise AtrousError(f"{flag} {item!r}: {key!r} is not a valid key (letters, digits, _ and dots)")
    return key, parse_value(value)


def parse_kv_list(items: list[str] | None, flag: str = "--opt") -> dict[str, Any]:
    """Parse repeated `key=value` flags into a dict; a key given twice keeps the last value."""
    return dict(parse_kv(item, flag) for item in items or [])


# --------------------------------------------------------------------------------------------- the config


@dataclass
class ModelConfig:
    name: str = "dilated_net"
    # None: the number of classes of the training data.
    num_classes: int | None = None
    # Keyword options of `atrous.models.build` (e.g. rates, width, output_stride); checked by the builder.
    options: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    # Dataset specs (`folder:ROOT`, `voc:ROOT`, `cityscapes:ROOT`, `synthetic:NAME?k=v`). `val` None: the
    # training spec's `val_split`, when it has one.
    train: str | None = None
    val: str | None = None
    train_split: str | None = "train"
    val_split: str | None = "val"
    # Square training crop; None: derived from the training images (their median short side, capped at
    # 321: atrous.train.data).
    crop_size: int | None = None
    # Random rescaling range of the training images (DeepLab's 0.5-2.0).
    scale: tuple[float, float] = (0.5, 2.0)
    hflip: bool = True
    color_jitter: float = 0.2
    mean: tuple[float, float, float] = _IMAGENET_MEAN
    std: tuple[float, float, float] = _IMAGENET_STD
    # The global batch: split evenly over the processes of a distributed run.
    batch_size: int = 8
    val_batch_size: int = 1
    workers: int = 0
    skip_bad: bool = False


@dataclass
class OptimConfig:
    name: str = "sgd"  # "sgd" | "adamw"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    # "poly": lr * (1 - step / total) ** power (DeepLab); "constant"; "cosine".
    schedule: str = "poly"
    power: float = 0.9
    # Linear warm-up from lr * warmup_factor over the first warmup_iters steps.
    warmup_iters: int = 0
    warmup_factor: float = 0.1


@dataclass
class LossConfig:
    # Weighted sum of loss terms, each [name, weight] or [name, weight, {options}]; names: ce, dice,
    # focal, lovasz, ohem (atrous.losses.build_criterion checks them).
    terms: list = field(default_factory=lambda: [["ce", 1.0]])
    # Per-class weights of the ce and focal terms (length num_classes); None: unweighted.
    class_weights: list[float] | None = None
    # Weight of the auxiliary head's loss where the model has one (torchvision's references use 0.5).
    aux_weight: float = 0.5
    ignore_index: int = 255


@dataclass
class TrainConfig:
    # Exactly one of epochs / iters (None for both: 10 epochs).
    epochs: int | None = None
    iters: int | None = None
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1"
    threads: int | None = None
    amp: bool = False
    # The run folder; None: a fresh runs/<model>-<YYYYmmdd-HHMMSS>.
    out: str | None = None
    # Save DIR/last.pt every this many steps as well as at the end of every epoch (0: epochs only).
    checkpoint_every: int = 0
    # Validate (and update best.pt) every this many epochs; the last epoch is always validated.
    eval_every: int = 1
    init_from: str | None = None
    # What chooses best.pt: "miou" (validation mIoU, higher is better) or "val_loss" (lower is better).
    best_metric: str = "miou"


@dataclass
class LogConfig:
    tensorboard: bool = True
    progress: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


# Free-form mappings (model options) are plain YAML data; these bound hostile input (deep nesting,
# alias bombs) before it is copied.
_MAX_DEPTH = 8
_MAX_ITEMS = 10_000


def from_dict(data: Any, cls: type = Config, *, where: str = "config") -> Any:
    """Build the dataclass `cls` from a nested mapping, checking every key and value type.

    Missing keys keep their defaults. `where` names the source in errors (a file or "config").
    """
    return _build(cls, data, prefix="", where=where)


def _build(cls: type, data: Any, *, prefix: str, where: str) -> Any:
    section = prefix.rstrip(".") or "the top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise AtrousError(
            f"{where}: {section} must be a mapping of keys, got {_describe(data)}; valid keys: {_keys(cls)}"
        )
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in names:
            raise AtrousError(
                f"{where}: unknown key {prefix}{_short(key)}; valid keys"
                f"{' under ' + section if prefix else ''}: {', '.join(names)}"
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value, prefix=f"{prefix}{key}.", where=where)
        else:
            values[key] = _coerce(value, hint, name=f"{prefix}{key}", where=where)
    return cls(**values)


def _keys(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def _short(value: Any, n: int = 60) -> str:
    # repr() for anything but a printable string, so that a message stays on one line.
    text = value if isinstance(value, str) and value.isprintable() else repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {_short(repr(value))}"


def _coerce(value: Any, hint: Any, *, name: str, where: str) -> Any:
    """Check `value` against the type `hint` (int, float, str, bool, X | None, tuple/list of X, dict)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, name=name, where=where)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
            if math.isfinite(value):
                return value
            raise AtrousError(f"{where}: {name} must be a finite number, got {value}")
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is dict:
        if isinstance(value, dict):
            return _plain(value, name=name, where=where, depth=0, budget=[_MAX_ITEMS])
    elif hint is list:  # free-form list (loss.terms): plain data, checked by its consumer
        if isinstance(value, (list, tuple)):
            return _plain(value, name=name, where=where, depth=0, budget=[_MAX_ITEMS])
    elif origin in (tuple, list):
        if isinstance(value, (list, tuple)):
            fixed = origin is tuple and Ellipsis not in args
            if fixed and len(value) != len(args):
                raise AtrousError(
                    f"{where}: {name} must be a list of {len(args)} values, got {_short(value)}"
                )
            items = [
                _coerce(v, args[i] if fixed else args[0], name=f"{name}[{i}]", where=where)
                for i, v in enumerate(value)
            ]
            return tuple(items) if origin is tuple else items
        kind = f"a list of {len(args)}" if origin is tuple else "a list"
        raise AtrousError(f"{where}: {name} must be {kind} (e.g. [1, 2]), got {_describe(value)}")
    else:  # pragma: no cover - a field type this loader does not know is a bug in the dataclasses
        raise TypeError(f"config field {name} has unsupported type {hint}")
    expected = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        dict: "a mapping",
        list: "a list (e.g. [[ce, 1.0], [dice, 0.5]])",
    }
    raise AtrousError(f"{where}: {name} must be {expected[hint]}, got {_describe(value)}")


def _plain(value: Any, *, name: str, where: str, depth: int, budget: list[int]) -> Any:
    """Copy free-form YAML data (model options) as plain JSON-able values: str keys, lists for sequences."""
    budget[0] -= 1
    if depth > _MAX_DEPTH or budget[0] < 0:
        raise AtrousError(f"{where}: {name} is nested too deeply or too large for an option value")
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or not k.isidentifier():
                raise AtrousError(f"{where}: {name} has key {_short(repr(k))}; option names are identifiers")
            out[k] = _plain(v, name=f"{name}.{k}", where=where, depth=depth + 1, budget=budget)
        return out
    if isinstance(value, (list, tuple)):
        return [
            _plain(v, name=f"{name}[{i}]", where=where, depth=depth + 1, budget=budget)
            for i, v in enumerate(value)
        ]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        raise AtrousError(f"{where}: {name} must be a finite number, got {value}")
    raise AtrousError(
        f"{where}: {name} has a value of type {type(value).__name__}; use numbers, strings or lists"
    )


def to_dict(config: Any) -> dict:
    """The config as plain YAML/JSON-able data (tuples become lists)."""
    return _lists(dataclasses.asdict(config))


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


def dump_config(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping; every problem (missing, unreadable, invalid, hostile) is one AtrousError line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AtrousError(f"config {path} does not exist: give the path of a YAML file") from None
    except UnicodeDecodeError:
        raise AtrousError(f"config {path} is not UTF-8 text: save it as UTF-8 YAML") from None
    except OSError as e:
        raise AtrousError(
            f"config {path} cannot be read ({e.strerror or e}): give a readable YAML file"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise AtrousError(f"config {path} is not valid YAML{at}: {problem}; fix the syntax") from None
    except RecursionError:
        raise AtrousError(f"config {path} is nested too deeply; a config has two levels of keys") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AtrousError(
            f"config {path} must be a mapping of sections ({_keys(Config)}), got {type(data).__name__}"
        )
    return data


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read `path` (YAML; None: defaults), apply dotted `overrides`, and check everything."""
    data = read_yaml(path) if path is not None else {}
    where = str(path) if path is not None else "config"
    data = apply_overrides(data, overrides or {})
    try:
        config = from_dict(data, where=where)
    except RecursionError:
        raise AtrousError(f"{where} is nested too deeply; a config has two levels of keys") from None
    check_config(config, where=where)
    return config


_CHOICES = {
    "optim.name": ("sgd", "adamw"),
    "optim.schedule": ("poly", "constant", "cosine"),
    "train.best_metric": ("miou", "val_loss"),
}


def check_config(config: Config, *, where: str = "config") -> None:
    """Check the values' ranges and choices (types were checked by `from_dict`)."""
    for dotted, allowed in _CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if value not in allowed:
            raise AtrousError(f"{where}: {dotted} is {value!r}; choose one of {', '.join(allowed)}")
    d, o, t = config.data, config.optim, config.train
    positive = {
        "data.crop_size": d.crop_size,
        "data.batch_size": d.batch_size,
        "data.val_batch_size": d.val_batch_size,
        "optim.lr": o.lr,
        "train.eval_every": t.eval_every,
        "train.epochs": t.epochs,
        "train.iters": t.iters,
        "train.threads": t.threads,
        "model.num_classes": config.model.num_classes,
    }
    for name, value in positive.items():
        if value is not None and value <= 0:
            raise AtrousError(f"{where}: {name} must be positive, got {value}")
    non_negative = {
        "data.workers": d.workers,
        "data.color_jitter": d.color_jitter,
        "optim.momentum": o.momentum,
        "optim.weight_decay": o.weight_decay,
        "optim.power": o.power,
        "optim.warmup_iters": o.warmup_iters,
        "optim.warmup_factor": o.warmup_factor,
        "loss.aux_weight": config.loss.aux_weight,
        "train.checkpoint_every": t.checkpoint_every,
    }
    for name, value in non_negative.items():
        if value < 0:
            raise AtrousError(f"{where}: {name} must be >= 0, got {value}")
    if t.epochs is not None and t.iters is not None:
        raise AtrousError(
            f"{where}: give train.epochs or train.iters, not both (epochs={t.epochs}, iters={t.iters})"
        )
    if not 0 < d.scale[0] <= d.scale[1]:
        raise AtrousError(
            f"{where}: data.scale must be [low, high] with 0 < low <= high, got {list(d.scale)}"
        )
    if min(d.std) <= 0:
        raise AtrousError(f"{where}: data.std must be positive, got {list(d.std)}")
    weights = config.loss.class_weights
    if weights is not None and (min(weights, default=0) < 0 or sum(weights) <= 0):
        raise AtrousError(f"{where}: loss.class_weights must be >= 0 with a positive sum, got {weights}")


def apply_overrides(data: dict, overrides: dict[str, Any], *, where: str = "--set") -> dict:
    """Return a copy of `data` with each dotted key (`optim.lr`, `model.options.rates`) set to its value.

    The key path is checked against the dataclasses as it is walked (free-form `model.options` accepts
    any identifier below it), so `--set optim.lrr=1` names `optim.lrr` and lists the valid keys.
    """
    data = _copy_mapping(data)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node, cls = data, Config
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            prefix = ".".join(parts[:depth])
            if cls is not None:
                names = {f.name: f for f in dataclasses.fields(cls)}
                if part not in names:
                    section = prefix or "the top level"
                    raise AtrousError(
                        f"{where}: unknown key {dotted!r} ({part!r} is not in {section}); valid keys"
                        f"{' under ' + prefix if prefix else ''}: {', '.join(names)}"
                    )
                hint = typing.get_type_hints(cls)[part]
                nested = hint if dataclasses.is_dataclass(hint) else None
                if nested is None and not last and hint is not dict:
                    raise AtrousError(
                        f"{where}: {'.'.join(parts[: depth + 1])} is a value, not a section: {dotted!r}"
                    )
            else:
                nested = None
            if last:
                if nested is not None:
                    raise AtrousError(
                        f"{where}: {dotted} is a section; set one of its keys ({_keys(nested)})"
                    )
                node[part] = list(value) if isinstance(value, tuple) else value
                break
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise AtrousError(
                    f"{where}: {'.'.join(parts[: depth + 1])} is not a mapping; cannot set {dotted}"
                )
            node[part] = child = dict(child)
            node, cls = child, nested
    return data


def _copy_mapping(data: dict) -> dict:
    # Copy the two section levels that overrides write into (values themselves are not modified).
    return {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
