"""atrous.optimize.fold: BatchNorm folded into its convolution, only where it is exact."""

import pytest
import torch
from torch import nn

from _optimize_helpers import randomise_bn
from atrous.optimize import fold_batchnorm, optimize


def test_fold_matches_hand_computed_affine_map():
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    bn = nn.BatchNorm2d(3)
    model = nn.Sequential(conv, bn).eval()
    randomise_bn(model)
    w = conv.weight.detach().clone()
    assert fold_batchnorm(model, torch.randn(1, 2, 5, 5)) == 1
    assert isinstance(model[1], nn.Identity)
    s = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(model[0].weight.detach(), w * s[:, None, None, None])
    torch.testing.assert_close(model[0].bias.detach(), bn.bias.detach() - bn.running_mean * s)


class _ConvOutputUsedTwice(nn.Module):
    """The conv output feeds the BN and a residual sum: folding would change the sum, so it must not fold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _SharedBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 1)
        self.b = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.a(x)) + self.bn(self.b(x))


@pytest.mark.parametrize("cls", [_ConvOutputUsedTwice, _SharedBN])
def test_unsafe_pairs_are_left_alone(cls):
    model = cls()
    randomise_bn(model)
    x = torch.randn(1, 3, 6, 7)
    opt = optimize(model, example_input=x)
    assert isinstance(opt.bn, nn.BatchNorm2d)
    with torch.no_grad():
        torch.testing.assert_close(opt(x), model.eval()(x))
