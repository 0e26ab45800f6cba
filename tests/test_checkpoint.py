"""Checkpoints: atomic save, safe load (code-carrying pickles refused, nothing of them runs), and checks
that refuse a mismatched model before any weight is copied."""

import os

import pytest
import torch
from torch import nn

from atrous.checkpoint import (
    FORMAT,
    VERSION,
    check_state_dict,
    load_checkpoint,
    load_matching,
    save_checkpoint,
)
from atrous.errors import AtrousError


def _payload(model: nn.Module) -> dict:
    return {
        "model": {"name": "toy", "num_classes": 3, "options": {"channels": 4}},
        "state_dict": model.state_dict(),
        "classes": ["a", "b", "c"],
        "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]],
        "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "config": {"train": {"seed": 0}},
        "train_state": {"step": 7, "rng": torch.get_rng_state(), "order": (1, 2, 3)},
    }


def _toy(num_classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, num_classes, 1))


def test_round_trip_is_exact_and_weights_only_loadable(tmp_path):
    model = _toy()
    path = tmp_path / "ck.pt"
    payload = _payload(model)
    save_checkpoint(path, payload)
    ck = load_checkpoint(path)
    assert ck["format"] == FORMAT and ck["version"] == VERSION
    for key, value in model.state_dict().items():
        assert torch.equal(ck["state_dict"][key], value)
    assert ck["train_state"]["step"] == 7 and ck["classes"] == ["a", "b", "c"]
    # Independently of atrous: plain torch.load with the restricted unpickler accepts it.
    raw = torch.load(path, weights_only=True)
    assert torch.equal(raw["train_state"]["rng"], payload["train_state"]["rng"])
    assert raw["train_state"]["order"] == (1, 2, 3)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_save_is_atomic_when_serialisation_fails(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _payload(_toy()))
    before = path.read_bytes()
    bad = _payload(_toy())
    bad["config"] = {"f": lambda: 0}  # torch.save cannot pickle a lambda: the write fails half-way
    with pytest.raises(Exception):  # noqa: B017 - any pickling error
        save_checkpoint(path, bad)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_truncated_corrupt_empty_and_foreign_files_are_one_line_errors(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _payload(_toy()))
    data = path.read_bytes()
    cases = {
        "trunc.pt": data[: len(data) // 2],
        "empty.pt": b"",
        "garbage.pt": bytes(range(256)) * 8,
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(AtrousError, match=r"truncated or corrupt") as info:
            load_checkpoint(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)
    torch.save({"weights": torch.ones(2)}, tmp_path / "plain.pt")
    with pytest.raises(AtrousError, match="not an atrous checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    torch.save({"format": FORMAT, "version": VERSION + 1}, tmp_path / "future.pt")
    with pytest.raises(AtrousError, match="upgrade atrous"):
        load_checkpoint(tmp_path / "future.pt")
    with pytest.raises(AtrousError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class _Touch:
    """Unpickling this runs a shell command that creates `marker` (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _Opener:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_code_carrying_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    header = {"format": FORMAT, "version": VERSION, "model": {"name": "x", "num_classes": 2, "options": {}}}
    torch.save({**header, "state_dict": {"w": torch.ones(1)}, "config": {"hook": _Touch(marker)}}, evil)
    torch.save({**header, "payload": _Opener(marker)}, tmp_path / "evil2.pt")
    # Control: the files are live (the unrestricted unpickler runs their code).
    torch.load(evil, weights_only=False)
    assert marker.exists()
    marker.unlink()
    for path, name in ((evil, "system"), (tmp_path / "evil2.pt", "open")):
        with pytest.raises(AtrousError, match="could run code") as info:
            load_checkpoint(path)
        assert name in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_check_state_dict_refuses_other_class_count_before_copying(tmp_path):
    source = _toy(num_classes=5)
    target = _toy(num_classes=3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(
        AtrousError, match=r"2\.weight has shape \(5, 4, 1, 1\) but the model expects \(3, 4, 1, 1\)"
    ):
        check_state_dict(target, source.state_dict())
    with pytest.raises(AtrousError, match=r"missing 2\.bias"):
        check_state_dict(target, {k: v for k, v in target.state_dict().items() if k != "2.bias"})
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key])


def test_load_matching_keeps_classifier_at_init():
    torch.manual_seed(1)
    source = _toy(num_classes=5)
    target = _toy(num_classes=3)
    init_classifier = target[2].weight.detach().clone()
    loaded, kept = load_matching(target, source.state_dict())
    assert kept == ["2.weight", "2.bias"]
    assert "0.weight" in loaded and "1.running_mean" in loaded
    assert torch.equal(target[0].weight, source[0].weight)
    assert torch.equal(target[2].weight, init_classifier)


def test_build_model_from_checkpoint_round_trip_and_refusals(tiny_checkpoint, monkeypatch):
    from atrous.checkpoint import build_model_from_checkpoint

    ck = load_checkpoint(tiny_checkpoint)
    model = build_model_from_checkpoint(ck, expect_name="dilated_net", expect_num_classes=4)
    for key, value in model.state_dict().items():
        assert torch.equal(value, ck["state_dict"][key])
    with pytest.raises(AtrousError, match="has 4 classes, not 5"):
        build_model_from_checkpoint(ck, expect_num_classes=5)
    with pytest.raises(AtrousError, match="holds a 'dilated_net' model, not 'deeplabv3'"):
        build_model_from_checkpoint(ck, expect_name="deeplabv3")
    # A state_dict that does not fit the model its header names: refused before load_state_dict runs.
    calls = []
    monkeypatch.setattr(nn.Module, "load_state_dict", lambda self, *a, **k: calls.append(1))
    forged = {**ck, "model": {**ck["model"], "num_classes": 5}}
    with pytest.raises(
        AtrousError, match=r"head\.weight has shape \(4, 8, 1, 1\) but the model expects \(5, 8, 1, 1\)"
    ):
        build_model_from_checkpoint(forged)
    forged = {**ck, "model": {**ck["model"], "options": {"channels": 8, "rates": [1, 2]}}}
    with pytest.raises(AtrousError, match="does not fit this model: missing none, unexpected backbone"):
        build_model_from_checkpoint(forged)
    assert calls == []
