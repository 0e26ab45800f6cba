"""The run folder and the other "nothing silently wrong" rules of training, each case reproducing the old
failure: a finished run overwritten without a word, two runs without --out in one folder, a lock of a
running run, --resume without --out, --resume --model OTHER, an extended run's learning rate, checkpoints
tied to the pretrained file, an ignore index other than 255, validation at a batch size above one."""

import csv
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from atrous.checkpoint import build_model_from_checkpoint, load_checkpoint
from atrous.cli import main
from atrous.evaluate import SameSizeBatches, evaluate
from atrous.models import build

QUICK = [
    "train", "--model", "dilated_net", "--opt", "channels=4", "--opt", "rates=1,2",
    "--data", "synthetic:shapes?n=8&size=24", "--val-data", "synthetic:shapes?n=2&size=24",
    "--batch-size", "4", "--crop", "24", "--threads", "1", "--iters", "1",
    "--set", "log.progress=false", "--set", "log.tensorboard=false",
]  # fmt: skip


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_finished_run_is_not_overwritten_without_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    tb = [a for a in QUICK if a != "log.tensorboard=false"][:-1]  # TensorBoard on: events to remove
    assert main([*tb, "--out", str(out)]) == 0
    old_events = sorted((out / "tensorboard").glob("events.out.tfevents.*"))
    assert old_events
    best = (out / "best.pt").read_bytes()
    # Before: a second run replaced best.pt, last.pt, metrics.csv and config.yaml without a word.
    assert main([*QUICK, "--lr", "0.5", "--out", str(out)]) == 2
    err = _one_line(capsys)
    assert f"{out} already holds a run" in err and "another --out" in err and "--overwrite" in err
    assert (out / "best.pt").read_bytes() == best
    assert load_config_lr(out) == 0.01 and not (out / ".lock").exists()
    # --overwrite: the old run's files go, TensorBoard events included.
    assert main([*QUICK, "--lr", "0.5", "--overwrite", "--out", str(out)]) == 0
    assert load_config_lr(out) == 0.5
    assert not any(p.exists() for p in old_events)
    assert load_checkpoint(out / "last.pt")["train_state"]["step"] == 1


def load_config_lr(out) -> float:
    return yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"]


def test_runs_without_out_get_fresh_folders(tmp_path, monkeypatch, capsys):
    # Before: the default --out was runs/train, so two runs started without --out overwrote each other.
    monkeypatch.chdir(tmp_path)
    assert main(QUICK) == 0
    assert main(QUICK) == 0
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(r.name.startswith("dilated_net-") for r in runs)
    assert all((r / "last.pt").is_file() for r in runs)
    assert f"out {runs[0].relative_to(tmp_path)}" in capsys.readouterr().out


def test_resume_needs_out_and_keeps_its_model(tmp_path, capsys):
    assert main([*QUICK, "--resume"]) == 2
    assert "--resume needs --out" in _one_line(capsys)
    assert main([*QUICK, "--resume", "--overwrite", "--out", str(tmp_path / "x")]) == 2
    assert "give one of them" in _one_line(capsys)
    out = tmp_path / "run"
    assert main([*QUICK, "--out", str(out)]) == 0
    capsys.readouterr()
    # Before: "unknown option(s) ['channels', 'rates']" (the saved run's options met the other model).
    assert main(["train", "--out", str(out), "--resume", "--model", "fcn_resnet", "--iters", "2"]) == 2
    err = _one_line(capsys)
    assert "holds a dilated_net run" in err and "drop --model" in err and "unknown option" not in err
    # With a config naming another model as well, the run folder's checkpoint decides.
    assert main([*QUICK, "--model", "fcn_resnet", "--resume", "--out", str(out)]) == 2
    assert "holds a dilated_net run" in _one_line(capsys)


def test_a_running_run_holds_a_lock_and_a_dead_ones_lock_is_stale(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(f"{alive.pid}\n")
        assert main([*QUICK, "--out", str(out)]) == 2
        err = _one_line(capsys)
        assert f"in use by a running training (process {alive.pid}" in err
        assert not (out / "config.yaml").exists()
    finally:
        alive.kill()
        alive.wait()
    # The same lock once its process is gone (a killed run): taken over, and released at the end.
    assert main([*QUICK, "--out", str(out)]) == 0
    assert not (out / ".lock").exists()


def test_extending_a_finished_run_recomputes_the_schedule(tmp_path, capsys):
    out = tmp_path / "run"
    iters = QUICK.index("--iters")
    args = [*QUICK[:iters], *QUICK[iters + 2 :], "--set", "train.checkpoint_every=1", "--lr", "0.01"]
    assert main([*args, "--iters", "2", "--out", str(out)]) == 0
    finished = load_checkpoint(out / "last.pt")
    assert finished["train_state"]["optimizer"]["param_groups"][0]["lr"] == 0.0  # poly ends at 0
    capsys.readouterr()
    assert main([*args, "--iters", "4", "--resume", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    new_lr = 0.01 * (1 - 2 / 4) ** 0.9  # poly at step 2 of 4
    assert f"the schedule now ends at step 4 (was 2): learning rate at step 2 0 -> {new_lr:.4g}" in text
    # Before: step 3 ran at the finished schedule's rate 0 and left the weights where they were.
    step3 = load_checkpoint(out / "previous.pt")
    assert step3["train_state"]["step"] == 3
    moved = max(
        (step3["state_dict"][k] - finished["state_dict"][k]).abs().max().item() for k in step3["state_dict"]
    )
    assert moved > 1e-4
    assert step3["train_state"]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01 * (1 / 4) ** 0.9)


def test_checkpoints_do_not_need_the_pretrained_file(tmp_path, capsys):
    # Before: pretrained_backbone=PATH was stored in the checkpoint's options; once PATH moved, eval,
    # predict, export and atrous.load failed with "no such file" although the weights were in the file.
    torch.manual_seed(3)
    weights = tmp_path / "backbone.pt"
    torch.save(build("fcn_resnet", 3, backbone="resnet18", width=0.125).backbone.state_dict(), weights)
    out = tmp_path / "run"
    args = [
        *QUICK[:1], "--model", "fcn_resnet", "--opt", "backbone=resnet18", "--opt", "width=0.125",
        "--opt", f"pretrained_backbone={weights}", *QUICK[7:],
    ]  # fmt: skip
    assert main([*args, "--out", str(out)]) == 0
    weights.rename(tmp_path / "moved.pt")
    ck = load_checkpoint(out / "last.pt")
    assert ck["model"]["options"] == {"backbone": "resnet18", "width": 0.125}
    assert ck["provenance"] == {"pretrained_backbone": str(weights)}
    model = build_model_from_checkpoint(ck)
    for key, value in model.state_dict().items():
        assert torch.equal(value, ck["state_dict"][key])
    # An older checkpoint that still names the file in its options rebuilds too.
    old = {
        **ck,
        "model": {**ck["model"], "options": {**ck["model"]["options"], "pretrained_backbone": str(weights)}},
    }
    build_model_from_checkpoint(old)
    # Resuming the run (its config.yaml names the moved file) rebuilds without it.
    assert main(["train", "--out", str(out), "--resume", "--iters", "2"]) == 0
    assert load_checkpoint(out / "last.pt")["train_state"]["step"] == 2


def test_another_ignore_index_pads_crops_with_it(tmp_path):
    # Before: --set loss.ignore_index=0 crashed ("Target 255 is out of bounds"): crops were padded with 255.
    out = tmp_path / "run"
    args = [*QUICK, "--crop", "40", "--set", "loss.ignore_index=0", "--out", str(out)]  # 24 px images: padded
    assert main(args) == 0
    with open(out / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    assert math.isfinite(float(row["train_loss"])) and float(row["val_iou_background"] or 0) == 0.0


def _mixed_folder(root):
    for split, sizes in (("train", [(12, 14)] * 4), ("val", [(12, 14), (12, 14), (9, 16), (12, 14), (7, 7)])):
        for i, (h, w) in enumerate(sizes):
            rng = np.random.default_rng(i)
            mask = rng.integers(0, 3, (h, w)).astype(np.uint8)
            image = (mask[..., None] * 80 + rng.integers(0, 30, (h, w, 3))).astype(np.uint8)
            for sub, array in (("images", image), ("masks", mask)):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / split / sub / f"{i}.png")


def test_validation_at_any_batch_size_equals_batch_size_one(tmp_path):
    # Before: data.val_batch_size > 1 crashed at the first validation on images of different sizes.
    root = tmp_path / "data"
    _mixed_folder(root)
    rows = {}
    for batch in (1, 3):
        out = tmp_path / f"b{batch}"
        args = [*QUICK[:5], "--data", f"folder:{root}", "--crop", "12", "--batch-size", "2", "--iters", "2"]
        args += ["--threads", "1", "--set", "log.tensorboard=false", "--set", "log.progress=false"]
        assert main([*args, "--set", f"data.val_batch_size={batch}", "--out", str(out)]) == 0
        with open(out / "metrics.csv") as f:
            rows[batch] = list(csv.DictReader(f))
    assert rows[1] == rows[3]

    from atrous.data import build_dataset, eval_transform

    data = build_dataset(f"folder:{root}", "val", transform=eval_transform(mean=(0.5,) * 3, std=(0.25,) * 3))
    batches = list(SameSizeBatches(data, batch_size=3))
    assert [len(m) for _, m in batches] == [2, 1, 1, 1]  # split where the size changes
    torch.manual_seed(0)
    model = build("dilated_net", 3, channels=4, rates=(1, 2))
    one = evaluate(model, SameSizeBatches(data, batch_size=1), num_classes=3)
    many = evaluate(model, batches, num_classes=3)
    assert one == many


def test_a_validation_split_that_does_not_exist_stops_the_run(tmp_path, capsys):
    # Before: a misspelt data.val_split switched validation off (the log said "no val split") although the
    # data has a validation split under another name.
    _mixed_folder(tmp_path / "data")
    (tmp_path / "data" / "val").rename(tmp_path / "data" / "holdout")
    base = [
        "train", "--model", "dilated_net", "--opt", "channels=4", "--opt", "rates=1,2",
        "--data", f"folder:{tmp_path / 'data'}", "--batch-size", "4", "--crop", "7", "--threads", "1",
        "--iters", "1", "--set", "log.progress=false", "--set", "log.tensorboard=false",
    ]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "a")]) == 2
    err = _one_line(capsys)
    assert "has no split 'val' (its splits: holdout, train)" in err and "data.val_split=null" in err
    assert not (tmp_path / "a" / "last.pt").exists()
    # Saying which split validates, or that none does, trains.
    assert main([*base, "--set", "data.val_split=holdout", "--out", str(tmp_path / "b")]) == 0
    assert "validation on folder:" in capsys.readouterr().out
    assert main([*base, "--set", "data.val_split=null", "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "last.pt").exists()
