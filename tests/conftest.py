"""Shared test set-up. Expensive artefacts (a tiny trained checkpoint, one quick demo run) are session
fixtures here so that every test that needs one reuses it."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# A few training steps of a tiny dilated_net (8 channels, rates 1,2,5,1,2,5) on 32 synthetic `shapes` items of
# 32x32 px: a real atrous checkpoint (4 classes, validation metrics in best.pt) in a few seconds.
TINY_TRAIN_ARGS = [
    "train",
    "--model", "dilated_net", "--opt", "channels=8",
    "--data", "synthetic:shapes?n=32&size=32", "--val-data", "synthetic:shapes?n=8&size=32",
    "--epochs", "2", "--batch-size", "4", "--crop", "32", "--lr", "0.01", "--threads", "1",
    "--set", "optim.name=adamw", "--set", "log.progress=false",
]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Path of `last.pt` of the tiny training run above; its run folder (best.pt, config.yaml, metrics.csv,
    tensorboard/) is the parent. Treat it as read-only."""
    import contextlib
    import io

    from atrous.cli import main

    out = tmp_path_factory.mktemp("tiny_run")
    # Its log must not land in the output a test that requests it (with capsys) checks.
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = main([*TINY_TRAIN_ARGS, "--out", str(out)])
    assert code == 0, log.getvalue()
    return out / "last.pt"


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """Folder written by one in-process `atrous demo --quick` (index.html, results.json, PNGs); what it
    printed is in `stdout.txt` beside the folder. Treat it as read-only."""
    import contextlib
    import io

    from atrous.cli import main

    root = tmp_path_factory.mktemp("quick_demo")
    out = root / "report"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--quick", "--seed", "0", "--out", str(out)]) == 0
    (root / "stdout.txt").write_text(printed.getvalue())
    return out
