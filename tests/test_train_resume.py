"""Exact resume: a run killed with SIGKILL at random moments (also in the middle of a checkpoint write) and
restarted with --resume ends bit-identical to an uninterrupted run: weights, BatchNorm statistics,
optimiser and scheduler state, step, metrics.csv. Training runs in subprocesses (a kill needs a process
boundary); the product code has no test hooks: the test watches the run folder from outside."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from atrous.checkpoint import load_checkpoint
from atrous.cli import main

# 24 items in batches of 4: 6 steps per epoch (3 epochs in the kill test), a checkpoint after every step
# (most moments of the run are then near a checkpoint write). Default augmentation (scale, crop, flip,
# colour jitter) and BatchNorm, so that augmentation RNG, data order and running statistics all have to be
# restored.
ARGS = [
    "train", "--model", "dilated_net", "--opt", "channels=8", "--opt", "rates=1,2,3",
    "--data", "synthetic:shapes?n=24&size=32", "--val-data", "synthetic:shapes?n=4&size=32",
    "--batch-size", "4", "--crop", "28", "--lr", "0.02", "--seed", "5", "--threads", "1",
    "--set", "train.checkpoint_every=1", "--set", "log.progress=false", "--set", "log.tensorboard=false",
]  # fmt: skip
TOTAL_STEPS = 18


def _start(out: Path, *, resume: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "atrous", *ARGS, "--epochs", "3", "--out", str(out)]
    cmd += ["--resume"] if resume else []
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, text
    return text


def _temp_files(out: Path) -> list[str]:
    try:
        return [n for n in os.listdir(out) if n.startswith(".last.pt.") and n.endswith(".tmp")]
    except FileNotFoundError:
        return []


def _kill_during_write(proc: subprocess.Popen, out: Path) -> bool:
    """SIGKILL `proc` as soon as a temporary last.pt appears; True if it was still there after the kill
    (the kill landed inside the write), False if the run ended first."""
    while proc.poll() is None:
        if _temp_files(out):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return bool(_temp_files(out))
    return False


def _kill_after(proc: subprocess.Popen, out: Path, delay: float) -> None:
    """SIGKILL `proc` `delay` seconds after its first checkpoint exists (or when it ends)."""
    while proc.poll() is None and not (out / "last.pt").exists():
        time.sleep(0.01)
    deadline = time.monotonic() + delay
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _assert_same_run(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ca["train_state"]["step"] == cb["train_state"]["step"] == TOTAL_STEPS
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for key in ca["state_dict"]:  # weights and BatchNorm running statistics, bit for bit
        assert torch.equal(ca["state_dict"][key], cb["state_dict"][key]), key
    oa, ob = ca["train_state"]["optimizer"], cb["train_state"]["optimizer"]
    assert oa["param_groups"] == ob["param_groups"]
    for index, state in oa["state"].items():
        assert torch.equal(state["momentum_buffer"], ob["state"][index]["momentum_buffer"])
    assert ca["train_state"]["scheduler"] == cb["train_state"]["scheduler"]
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
    sa, sb = load_checkpoint(a / "best.pt")["state_dict"], load_checkpoint(b / "best.pt")["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    # The reference runs in-process: same code, same single thread, so the same arithmetic.
    reference = tmp_path / "reference"
    assert main([*ARGS, "--epochs", "3", "--out", str(reference)]) == 0

    out = tmp_path / "killed"
    rng = random.Random(1234)
    # 1) killed while writing a checkpoint
    caught = _kill_during_write(_start(out), out)
    # 2) killed at a random moment
    _kill_after(_start(out, resume=True), out, rng.uniform(0.0, 1.5))
    # 3) killed while writing a checkpoint again (unless 1 landed inside a write already)
    if not caught:
        caught = _kill_during_write(_start(out, resume=True), out)
    assert caught, "no kill landed inside a checkpoint write"
    # 4) run to the end
    text = _finish(_start(out, resume=True))
    assert "resumed at step" in text
    assert not _temp_files(out), "a resumed run cleans up temporary files of killed writes"
    _assert_same_run(reference, out)


def test_resume_with_worker_processes_continues_at_the_saved_step(tmp_path, capsys):
    # Augmentation is seeded per sample inside the data set wrapper, so worker processes compute exactly what
    # the main process would: a run resumed with workers matches the uninterrupted run without them. A
    # constant learning rate makes a run stopped by --iters 2 an interruption after step 2 of the same run.
    args = [*ARGS, "--set", "optim.schedule=constant"]
    reference = tmp_path / "reference"
    assert main([*args, "--epochs", "1", "--out", str(reference)]) == 0
    out = tmp_path / "workers"
    assert main([*args, "--iters", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main([*args, "--iters", "6", "--workers", "2", "--resume", "--out", str(out)]) == 0
    assert "resumed at step 2 (epoch 1, batch 2)" in capsys.readouterr().out
    a, b = load_checkpoint(reference / "last.pt"), load_checkpoint(out / "last.pt")
    assert a["train_state"]["step"] == b["train_state"]["step"] == 6
    assert b["train_state"]["epoch"] == 1 and b["train_state"]["batch"] == 0
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
