"""WASP (Artacho & Savakis 2019): the waterfall's structure and rates, its cascaded receptive fields, and the
forward against a functional recomputation."""

import pytest
import torch
import torch.nn.functional as F

from atrous.analysis import receptive_field
from atrous.models import build
from atrous.models.wasp import WASP, wasp_rates


def test_rates_and_channels():
    assert wasp_rates(16) == (6, 12, 18, 24) and wasp_rates(8) == (12, 24, 36, 48)
    with pytest.raises(ValueError, match="8, 16"):
        wasp_rates(32)
    with torch.device("meta"):
        module = WASP(in_channels=2048)
    # the first waterfall layer reads the backbone, the others 256 channels; each branch two 1x1 256->256
    assert [layer[0].in_channels for layer in module.waterfall] == [2048, 256, 256, 256]
    assert [layer[0].dilation[0] for layer in module.waterfall] == [6, 12, 18, 24]
    assert all([c.kernel_size for c in b] == [(1, 1), (1, 1)] for b in module.branches)
    assert module.project[0].in_channels == 5 * 256
    # the waterfall layers after the first read 256 channels: 3 * 9 * 256 * 256 weights, where ASPP's 3x3
    # branches read 2048 each
    assert sum(layer[0].weight.numel() for layer in module.waterfall[1:]) == 3 * 9 * 256 * 256
    model = build("wasp", 3, backbone="resnet18", width=0.125)
    assert model.head[0].rates == (6, 12, 18, 24) and model.output_stride == 16


def test_cascade_receptive_fields():
    """Without the pooling branch the head's field is the cascade's: 1 + 2 * (6 + 12 + 18 + 24) = 121."""
    module = WASP(in_channels=3, out_channels=4).eval()
    module.pool = torch.nn.Identity()  # tracer: leave out the global branch (shape (N, 3, h, w) is discarded)

    class Cascade(torch.nn.Module):
        def __init__(self, wasp):
            super().__init__()
            self.wasp = wasp

        def forward(self, x):
            y = x
            for layer in self.wasp.waterfall:
                y = layer(y)
            return y

    assert receptive_field(Cascade(module), (301, 301), in_channels=3)["rf_local"] == [121, 121]


def test_forward_equals_a_functional_recomputation():
    torch.manual_seed(0)
    module = WASP(in_channels=5, out_channels=4, rates=(1, 2, 3)).double().train()
    with torch.no_grad():
        module(torch.randn(4, 5, 9, 11, dtype=torch.float64))
    module.eval()
    x = torch.randn(2, 5, 9, 11, dtype=torch.float64)

    def bn(t, m):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    outs, y = [], x
    for layer, branch, rate in zip(module.waterfall, module.branches, (1, 2, 3)):
        y = F.relu(bn(F.conv2d(y, layer[0].weight, padding=rate, dilation=rate), layer[1]))
        outs.append(F.conv2d(F.conv2d(y, branch[0].weight), branch[1].weight))
    pool = module.pool
    g = F.relu(bn(F.conv2d(x.mean((2, 3), keepdim=True), pool[1].weight), pool[2]))
    outs.append(g.expand(-1, -1, 9, 11))
    expected = F.relu(bn(F.conv2d(torch.cat(outs, 1), module.project[0].weight), module.project[1]))
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected, rtol=0, atol=1e-12)
