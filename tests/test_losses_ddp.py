"""The training criterion over 2 gloo processes equals 1 process on the global batch: value and gradient.

Each process takes half of a global batch of 4 images whose halves hold different numbers of labelled
pixels (so a per-process normalisation would weight pixels differently, and the Lovasz padding path runs).
For every term, the mean over processes of the criterion's value must equal the single-process value on
the global batch, and each process's logits gradient divided by the world size (DDP averages gradients)
must equal the single-process gradient of its half. Tolerances: the same float32 arithmetic up to the
order of sums (about 1e-7 relative), checked at 1e-5 relative on the value and 1e-6 absolute on gradients
of magnitude ~1e-2; the test also checks that per-process losses (no `dist`) miss by over 100 times that.
"""

import pytest
import torch

from _procs import run_in_processes
from atrous.losses import build_criterion

WORLD = 2
TERMS = {
    "ce": [["ce", 1.0]],
    "dice": [["dice", 1.0]],
    "dice_all": [["dice", 1.0, {"classes": "all", "smooth": 0.0}]],
    "focal": [["focal", 1.0]],
    "lovasz": [["lovasz", 1.0]],
    "ohem_thresh": [["ohem", 1.0, {"thresh": 0.7, "min_kept": 1}]],  # the threshold selects
    "ohem_min_kept": [["ohem", 1.0, {"thresh": 0.05, "min_kept": 20}]],  # the global 40 hardest
    "sum": [["ce", 1.0], ["dice", 0.5], ["focal", 0.5], ["lovasz", 0.3], ["ohem", 1.0, {"min_kept": 20}]],
}
WEIGHTS = [1.0, 2.0, 0.5, 1.5]


def _global_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 4, 9, 10, generator=g) * 2
    target = torch.randint(0, 3, (4, 9, 10), generator=g)  # class 3 never in the target
    target[2:, :4] = 255  # the second half has fewer labelled pixels
    target[0, 0, 0] = 255
    return logits, target


class _Dist:
    world = WORLD


def _worker(rank, init_file, queue):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    logits, target = _global_batch()
    half = slice(2 * rank, 2 * rank + 2)
    out = {}
    for name, terms in TERMS.items():
        criterion = build_criterion(terms, class_weights=WEIGHTS)
        x = logits[half].clone().requires_grad_(True)
        loss = criterion(x, target[half], dist=_Dist())
        loss.backward()
        out[name] = (loss.item(), x.grad.tolist())  # plain lists: no shared-memory handles
    queue.put((rank, out))
    dist.destroy_process_group()


def test_two_processes_give_the_single_process_loss_and_gradient(tmp_path):
    results = dict(run_in_processes(_worker, WORLD, tmp_path / "init"))
    logits, target = _global_batch()
    for name, terms in TERMS.items():
        criterion = build_criterion(terms, class_weights=WEIGHTS)
        x = logits.clone().requires_grad_(True)
        single = criterion(x, target)
        single.backward()
        values = [results[r][name][0] for r in range(WORLD)]
        assert sum(values) / WORLD == pytest.approx(single.item(), rel=1e-5), name
        for r in range(WORLD):
            grad = torch.tensor(results[r][name][1]) / WORLD  # what DDP's average makes of it
            torch.testing.assert_close(grad, x.grad[2 * r : 2 * r + 2], rtol=0, atol=1e-6, msg=name)
        # Each process's own loss (no `dist`), averaged by DDP, gives another gradient: the test can fail.
        miss = 0.0
        for r in range(WORLD):
            xr = logits[2 * r : 2 * r + 2].clone().requires_grad_(True)
            criterion(xr, target[2 * r : 2 * r + 2]).backward()
            miss = max(miss, (xr.grad / WORLD - x.grad[2 * r : 2 * r + 2]).abs().max().item())
        assert miss > 1e-4, name
