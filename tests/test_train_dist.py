"""Data-parallel training: `torchrun --standalone --nproc_per_node 2 -m atrous train` on the CPU (gloo) reaches
the weights of a single-process run with the same global batch.

Tolerance: the two runs do the same arithmetic except for the order of floating-point sums. With one
process the gradient of a weight is one sum over the 4 images of the global batch; with two, each process
sums over its 2 images and gloo adds the two partial sums (the all-reduced loss denominator is an integer
count, exact in float32). Reordering a float32 sum changes it by a few units in the last place (about 1e-7
relative), so after 8 SGD steps of lr <= 0.05 on weights of magnitude ~0.1-0.4 the weights may differ by
~1e-8 (measured: at most 1.5e-8; a per-process mean loss instead gives 4e-3). `atol=1e-6` allows 100 times that, and is still 10,000 times smaller than
what training moves the weights (> 1e-2, checked below), so a wrong shard or a missing gradient average
cannot pass, nor a per-process loss normalisation (crop padding gives the two halves of a batch different
numbers of labelled pixels, so a per-process mean weights the images differently).
`dilated_net` with `norm=none` has no batch statistics (BatchNorm statistics are per process on the CPU,
where SyncBatchNorm does not run).
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from atrous.checkpoint import load_checkpoint
from atrous.cli import main
from atrous.models import build
from atrous.train import seed_from

ARGS = [
    "train", "--model", "dilated_net", "--opt", "channels=8", "--opt", "norm=none",
    "--data", "synthetic:shapes?n=16&size=32", "--val-data", "synthetic:shapes?n=6&size=32",
    "--epochs", "2", "--batch-size", "4", "--crop", "32", "--lr", "0.05", "--threads", "1",
    "--set", "log.progress=false", "--set", "log.tensorboard=false",
]  # fmt: skip


def _rows(out: Path) -> list[dict]:
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_two_cpu_processes_match_one_process(tmp_path):
    single = tmp_path / "single"
    assert main([*ARGS, "--out", str(single)]) == 0
    double = tmp_path / "ddp"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "atrous", *ARGS, "--out", str(double)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 process(es) on cpu" in proc.stdout

    a, b = load_checkpoint(single / "last.pt"), load_checkpoint(double / "last.pt")
    assert a["train_state"]["step"] == b["train_state"]["step"] == 8
    assert b["train_state"]["world_size"] == 2
    torch.manual_seed(seed_from(0, 0))  # the run's initialisation (seed 0)
    init = build("dilated_net", 4, channels=8, norm="none").state_dict()
    moved = max((a["state_dict"][k] - init[k]).abs().max().item() for k in init)
    assert moved > 1e-2, "training must move the weights far more than the tolerance"
    for key in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][key], a["state_dict"][key], rtol=0, atol=1e-6)
    # Validation is sharded over the processes and the confusion matrices are all-reduced: same metrics.
    ra, rb = _rows(single), _rows(double)
    assert [r["val_miou"] for r in ra] == [r["val_miou"] for r in rb]
    for x, y in zip(ra, rb):
        assert float(x["train_loss"]) == pytest.approx(float(y["train_loss"]), rel=1e-5)


def test_a_data_parallel_run_without_out_gets_one_fresh_folder(tmp_path):
    # Rank 0 names the folder (runs/<model>-<timestamp>) and broadcasts it: both processes write one run.
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    args = [a if a != "2" or i != ARGS.index("--epochs") + 1 else "1" for i, a in enumerate(ARGS)]
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "atrous", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("dilated_net-")
    ck = load_checkpoint(run / "last.pt")
    assert ck["train_state"]["world_size"] == 2 and ck["train_state"]["step"] == 4
