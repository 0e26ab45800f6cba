"""RegSeg (Gao 2021): the D block against a functional recomputation, the paper's rate bound (by hand and
against the receptive-field tracer), the exp48 schedule, and the parameter count the paper reports."""

import pytest
import torch
import torch.nn.functional as F

from atrous.analysis import receptive_field
from atrous.models import build
from atrous.models.regseg import EXP48, DBlock, RegSegBody, check_rate_bound


def _bn(t, m):
    return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


@pytest.mark.parametrize("stride, cin", [(1, 8), (2, 4)])
def test_d_block_equals_a_functional_recomputation(stride, cin):
    """Rates (1, 3) on two 4-channel halves, groups of 2 channels; brute force: each group of each half
    convolved on its own with F.conv2d at the half's rate, SE and shortcut written out."""
    torch.manual_seed(0)
    block = DBlock(cin, 8, (1, 3), stride=stride, group_width=2).double().train()
    with torch.no_grad():
        block(torch.randn(4, cin, 11, 9, dtype=torch.float64))
    block.eval()
    x = torch.randn(2, cin, 11, 9, dtype=torch.float64)
    y = F.relu(_bn(F.conv2d(x, block.conv1[0].weight), block.conv1[1]))
    outs = []
    for half, (conv, rate) in enumerate(zip(block.conv2.convs, (1, 3))):
        for g in range(2):  # two groups of 2 channels in each 4-channel half
            lo = 4 * half + 2 * g
            w = conv.weight[2 * g : 2 * g + 2]  # (2, 2, 3, 3)
            outs.append(F.conv2d(y[:, lo : lo + 2], w, stride=stride, padding=rate, dilation=rate))
    # the official block's one BatchNorm over the concatenation, with the per-slice statistics joined
    bns = block.conv2.bns
    joined = torch.nn.BatchNorm2d(8).double().eval()
    for name in ("running_mean", "running_var", "weight", "bias"):
        getattr(joined, name).data = torch.cat([getattr(bn, name).data for bn in bns])
    y = F.relu(_bn(torch.cat(outs, 1), joined))
    s = y.mean((2, 3), keepdim=True)
    se = block.se
    s = torch.sigmoid(
        F.conv2d(F.relu(F.conv2d(s, se.reduce.weight, se.reduce.bias)), se.expand.weight, se.expand.bias)
    )
    y = _bn(F.conv2d(y * s, block.conv3[0].weight), block.conv3[1])
    short = x
    if stride == 2:  # 2x2 mean over the pixels inside the map (ceil mode: the last row/column alone)
        pad = (0, 1, 0, 1)
        short = F.avg_pool2d(F.pad(x, pad), 2) / F.avg_pool2d(F.pad(torch.ones_like(x), pad), 2)
    if block.shortcut is not None:
        short = _bn(F.conv2d(short, block.shortcut[-2].weight), block.shortcut[-1])
    assert (block.shortcut is None) == (stride == 1 and cin == 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), F.relu(y + short), rtol=0, atol=1e-12)
    assert block.se.reduce.out_channels == max(1, cin // 4)


def test_exp48_schedule_and_its_rate_bound():
    assert ((1,), (1, 2), (1, 4), (1, 4), (1, 4), (1, 4), *[(1, 14)] * 7) == EXP48
    # by hand: stage16 starts at 63 px (stem 3, +4, +8, +16, +16, +16); each block adds 2 * d * 16
    fields = [63]
    for rates in EXP48:
        fields.append(fields[-1] + 32 * max(rates))
    bounds = check_rate_bound(EXP48, field=63, stride=16)
    assert bounds == [f / 16 for f in fields[:-1]]
    assert bounds[6] == 671 / 16  # where the rate-14 blocks start: 41.9 >= 14
    with pytest.raises(ValueError, match="block 0 of the dilated stage has rate 14"):
        check_rate_bound([(1, 14)], field=63, stride=16)
    with pytest.raises(ValueError, match="rate bound"):
        build("regseg", 3, width=0.125, dilations=[[1], [1, 8]])  # 8 * 16 > 63 + 32 = 95
    # the tracer, following the real graph, reaches the field the bound's arithmetic ends with
    body = RegSegBody(width=0.125).eval()

    class Stage16(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = body

        def forward(self, x):
            return self.body(x)["stage16"]

    assert receptive_field(Stage16(), (1024, 1024))["rf_local"] == [fields[-1]] * 2 == [3807, 3807]


def test_parameters_as_the_paper():
    """The paper's Table: RegSeg has 3.34 M parameters (19 Cityscapes classes); this one 3,334,951 (0.15 %
    fewer: the paper's figure is rounded, or counts something the code does not show)."""
    with torch.device("meta"):
        model = build("regseg", 19)
    count = sum(p.numel() for p in model.parameters())
    assert count == 3_334_951 and abs(count / 3.34e6 - 1) < 0.002
    body = model.backbone
    assert [len(body.stage4), len(body.stage8), len(body.stage16)] == [1, 3, 14]
    assert [b.rates for b in body.stage16[1:]] == list(EXP48)
    assert {k: (v.channels, v.stride) for k, v in body.feature_info.items()} == {
        "stage4": (48, 4),
        "stage8": (128, 8),
        "stage16": (320, 16),
    }
    split = body.stage16[-1].conv2
    assert [(c.in_channels, c.groups, c.dilation[0]) for c in split.convs] == [(160, 10, 1), (160, 10, 14)]
