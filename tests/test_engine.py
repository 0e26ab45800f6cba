"""Engine pieces against independent computations: data order and sharding, per-sample seeded augmentation,
the learning-rate schedule, the global-batch loss, the aux loss, the non-finite stop and evaluate()."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atrous.config import Config, from_dict
from atrous.engine import (
    EpochBatches,
    NonFiniteLoss,
    SeededSamples,
    build_optimizer,
    evaluate,
    lr_factor,
    segmentation_loss,
    train_one_epoch,
)


def test_epoch_batches_shard_the_same_global_batches():
    one = list(EpochBatches(num_samples=23, batch_size=4, epoch=3, seed=7))
    assert len(one) == 5  # 23 // 4, the incomplete batch dropped
    indices = [i for batch in one for _, i in batch]
    assert len(set(indices)) == 20 and all(0 <= i < 23 for i in indices)
    assert all(e == 3 for batch in one for e, _ in batch)
    ranks = [
        list(EpochBatches(num_samples=23, batch_size=4, epoch=3, seed=7, rank=r, world=2)) for r in (0, 1)
    ]
    assert [a + b for a, b in zip(*ranks)] == one  # rank 0 takes the first half of each global batch
    # Resuming at batch 2 yields exactly the remaining batches.
    assert list(EpochBatches(num_samples=23, batch_size=4, epoch=3, seed=7, start=2)) == one[2:]
    # Another epoch or seed: another order.
    other = [i for b in EpochBatches(num_samples=23, batch_size=4, epoch=4, seed=7) for _, i in b]
    assert other != indices


def test_seeded_samples_are_a_function_of_the_key_and_leave_the_global_rng_alone():
    def augment(image, mask):
        return image + torch.rand(()), mask

    data = [(torch.zeros(1), torch.zeros(1))] * 5
    samples = SeededSamples(data, augment, seed=11)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = samples[(2, 4)][0]
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)  # the caller's RNG does not matter
    assert torch.equal(samples[(2, 4)][0], a)
    assert not torch.equal(samples[(2, 3)][0], a) and not torch.equal(samples[(1, 4)][0], a)
    assert not torch.equal(SeededSamples(data, augment, seed=12)[(2, 4)][0], a)


def test_lr_schedules():
    kw = {"total": 100, "power": 0.9, "warmup_iters": 0, "warmup_factor": 0.1}
    assert lr_factor(0, schedule="poly", **kw) == 1.0
    assert lr_factor(50, schedule="poly", **kw) == pytest.approx(0.5**0.9)
    assert lr_factor(100, schedule="poly", **kw) == 0.0
    assert lr_factor(25, schedule="cosine", **kw) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert lr_factor(70, schedule="constant", **kw) == 1.0
    warm = {**kw, "warmup_iters": 10}
    assert lr_factor(0, schedule="constant", **warm) == pytest.approx(0.1)
    assert lr_factor(5, schedule="constant", **warm) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(5, schedule="poly", **warm) == pytest.approx(0.55 * 0.95**0.9)


def test_global_batch_loss_equals_weighted_mean_and_splits_exactly():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 5, 6)
    target = torch.randint(0, 3, (4, 5, 6))
    target[0, :2] = 255
    target[3, 1:] = 255  # the halves have different numbers of labelled pixels
    weight = torch.tensor([0.5, 2.0, 1.0])
    expected = F.cross_entropy(logits, target, weight=weight, ignore_index=255)
    valid = target[target != 255]
    denominator = weight[valid].sum()
    full = segmentation_loss(logits, target, weight=weight, ignore_index=255, denominator=denominator)
    torch.testing.assert_close(full, expected)
    # Two processes with the global denominator: their losses add up to the single-process loss.
    halves = [
        segmentation_loss(logits[s], target[s], weight=weight, ignore_index=255, denominator=denominator)
        for s in (slice(0, 2), slice(2, 4))
    ]
    torch.testing.assert_close(halves[0] + halves[1], expected)


class _Fixed(nn.Module):
    """Logits = scale * (stored logits) for each index: a model whose outputs are known exactly."""

    def __init__(self, logits, aux_logits=None):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.logits, self.aux_logits = logits, aux_logits

    def forward(self, x, aux=False):
        out = self.scale * self.logits[x.long().flatten()]
        if not aux:
            return out
        return out, (None if self.aux_logits is None else self.scale * self.aux_logits[x.long().flatten()])


def _config(**optim):
    return from_dict(
        {"optim": {"name": "sgd", "lr": 0.1, "weight_decay": 0.0, "momentum": 0.0, **optim}}, Config
    )


def test_aux_loss_and_one_step():
    torch.manual_seed(1)
    logits, aux = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    masks = torch.randint(0, 3, (2, 4, 4))
    model = _Fixed(logits, aux)
    optimizer = build_optimizer(model, _config())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    loader = [(torch.tensor([[0.0], [1.0]]), masks)]
    ((step, loss),) = train_one_epoch(
        model, loader, optimizer, scheduler, device=torch.device("cpu"), step=0, seed=0, aux_weight=0.4
    )
    expected = F.cross_entropy(logits, masks) + 0.4 * F.cross_entropy(aux, masks)
    assert step == 1 and loss == pytest.approx(float(expected), rel=1e-6)
    # d loss / d scale by autograd on the hand-written loss, then one SGD step of lr 0.1.
    scale = torch.ones((), requires_grad=True)
    (F.cross_entropy(scale * logits, masks) + 0.4 * F.cross_entropy(scale * aux, masks)).backward()
    assert float(model.scale.detach()) == pytest.approx(1.0 - 0.1 * float(scale.grad), rel=1e-6)


def test_non_finite_loss_stops_before_the_step():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 0, 0, 0] = float("nan")
    model = _Fixed(logits)
    optimizer = build_optimizer(model, _config())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    loader = [(torch.tensor([[0.0]]), torch.zeros(1, 2, 2, dtype=torch.long))]
    with pytest.raises(NonFiniteLoss, match="the loss is nan at step 8"):
        list(train_one_epoch(model, loader, optimizer, scheduler, device=torch.device("cpu"), step=7, seed=0))
    assert float(model.scale.detach()) == 1.0


def test_evaluate_matches_a_hand_computed_confusion_matrix():
    # Ground truth and prediction of two 2x3 images (255 = ignore), class count 3.
    gt = torch.tensor([[[0, 0, 1], [1, 2, 255]], [[2, 2, 2], [0, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]], [[2, 2, 0], [0, 1, 2]]])
    logits = F.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    model = _Fixed(logits)
    loader = [(torch.tensor([[0.0]]), gt[:1]), (torch.tensor([[1.0]]), gt[1:])]
    result = evaluate(model, loader, num_classes=3)
    # Counted pixels (11): class 0: gt 3, pred-hit 2; class 1: gt 4, hit 3; class 2: gt 4, hit 3.
    # Predictions on counted pixels: class 0 predicted 2+1(gt2->0)=3, class 1: 3+1(gt0->1)=4, class 2: 3+1=4.
    iou = [2 / (3 + 3 - 2), 3 / (4 + 4 - 3), 3 / (4 + 4 - 3)]
    assert result["pixel_acc"] == pytest.approx(8 / 11)
    assert result["per_class_iou"] == pytest.approx(iou)
    assert result["miou"] == pytest.approx(sum(iou) / 3)
    # Objects (8-connected, per image and class), all with sqrt(area) < 4: image 1: class 0 {(0,0),(0,1)}
    # recall 1/2, class 1 {(0,2)} 1 and {(1,0)} 1 (not adjacent), class 2 {(1,1)} 1; image 2: class 2 the
    # top row 2/3, class 0 {(1,0)} 1, class 1 {(1,1),(1,2)} 1/2.
    buckets = result["object_recall_by_size"]
    assert buckets[0]["min"] == 0 and buckets[0]["objects"] == 7
    assert buckets[0]["recall"] == pytest.approx((0.5 + 1 + 1 + 1 + 2 / 3 + 1 + 0.5) / 7)
    assert all(b["objects"] == 0 and b["recall"] is None for b in buckets[1:])
