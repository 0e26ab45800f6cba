"""The training step against independent computations: the global-batch loss, the aux loss and one SGD step
(autograd on a hand-written loss), the non-finite stop."""

import pytest
import torch
import torch.nn.functional as F

from _fixed_model import Fixed as _Fixed
from atrous.config import Config, from_dict
from atrous.train import Criterion, NonFiniteLoss, build_optimizer, segmentation_loss, train_one_epoch


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
        model,
        loader,
        optimizer,
        scheduler,
        Criterion(aux_weight=0.4),
        device=torch.device("cpu"),
        step=0,
        seed=0,
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
        list(
            train_one_epoch(
                model, loader, optimizer, scheduler, Criterion(), device=torch.device("cpu"), step=7, seed=0
            )
        )
    assert float(model.scale.detach()) == 1.0
