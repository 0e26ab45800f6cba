"""The training step against independent computations: the training loss (torch's weighted mean), the aux
loss and one SGD step (autograd on a hand-written loss), the non-finite stop."""

import pytest
import torch
import torch.nn.functional as F

from _fixed_model import Fixed as _Fixed
from atrous.config import Config, LossConfig, from_dict
from atrous.train import Dist, NonFiniteLoss, build_loss, build_optimizer, train_one_epoch


def test_global_batch_loss_equals_weighted_mean():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 5, 6)
    target = torch.randint(0, 3, (4, 5, 6))
    target[0, :2] = 255
    target[3, 1:] = 255  # the halves have different numbers of labelled pixels
    weight = [0.5, 2.0, 1.0]
    expected = F.cross_entropy(logits, target, weight=torch.tensor(weight), ignore_index=255)
    loss = build_loss(LossConfig(class_weights=weight), num_classes=3)
    full = loss(logits, None, target, Dist())
    torch.testing.assert_close(full, expected)
    # Two processes' shares of the global batch add up to this loss: tests/test_losses_ddp.py (T6's
    # criterion, under torch.distributed) and tests/test_train_dist.py (whole runs).


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
        build_loss(LossConfig(aux_weight=0.4), num_classes=3),
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
                model,
                loader,
                optimizer,
                scheduler,
                build_loss(LossConfig(), 2),
                device=torch.device("cpu"),
                step=7,
                seed=0,
            )
        )
    assert float(model.scale.detach()) == 1.0
