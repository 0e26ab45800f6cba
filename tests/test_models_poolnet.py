"""poolnet: the conv stack of dilated_net with 2x2 pooling after its first k layers. Checked against
dilated_net itself (same weights -> same output at k = 0), hand-computed map sizes and parameter counts, and
FCN's bilinear deconvolution equal to interpolation at initialisation."""

import pytest
import torch
import torch.nn.functional as F

from atrous import models, perf
from atrous.errors import BadModelOption


def test_no_pooling_is_dilated_net_with_the_same_weights():
    rates = [1, 2, 3, 1, 2, 3]
    pool = models.build("poolnet", 3, rates=rates, channels=8, poolings=0).eval()
    dil = models.build("dilated_net", 3, rates=rates, channels=8).eval()
    assert perf.param_count(pool) == perf.param_count(dil)
    # same tensors in the same order: copy dilated_net's weights over and compare outputs
    with torch.no_grad():
        for p, d in zip(pool.state_dict().values(), dil.state_dict().values()):
            p.copy_(d)
    x = torch.randn(2, 3, 21, 19)
    assert torch.allclose(pool(x), dil(x), atol=1e-6)


@pytest.mark.parametrize("k", range(6))
def test_pooling_sets_the_output_stride_and_keeps_the_parameters(k):
    net = models.build("poolnet", 4, channels=8, poolings=k).eval()
    x = torch.randn(1, 3, 37, 50)
    feats = net.backbone(x)["out"]
    h, w = 37, 50
    for _ in range(k):  # ceil mode: every input pixel lies in some window
        h, w = -(-h // 2), -(-w // 2)
    assert feats.shape == (1, 8, h, w) and net.output_stride == 2**k
    assert net(x).shape == (1, 4, 37, 50)
    # 6 convs: 3*8*9 + 5*8*8*9 weights, 6 BatchNorms of 2*8, classifier 8*4 + 4
    assert perf.param_count(net) == 3 * 8 * 9 + 5 * 8 * 8 * 9 + 6 * 16 + 8 * 4 + 4


def test_learned_deconvolution_starts_as_bilinear_and_duc_predicts_at_stride_one():
    net = models.build("poolnet", 2, channels=4, poolings=2, upsample="deconv").eval()
    up = net.upsample
    assert up.weight.requires_grad and up.factor == 4
    scores = torch.randn(1, 2, 8, 8)
    ours = up(scores, (32, 32))
    ref = F.interpolate(scores, scale_factor=4, mode="bilinear", align_corners=False)
    assert torch.allclose(ours[..., 4:-4, 4:-4], ref[..., 4:-4, 4:-4], atol=1e-5)  # away from the border
    duc = models.build("poolnet", 2, channels=4, poolings=2, upsample="duc").eval()
    assert duc(torch.randn(1, 3, 30, 30)).shape == (1, 2, 30, 30)


def test_context_heads_and_errors():
    for opts in (
        {"context": "aspp", "context_rates": [1, 2], "context_channels": 6},
        {"context": "denseaspp", "context_rates": [1, 2, 3], "context_channels": 4},
        {"context": "stack", "context_rates": [1, 2, 3]},
    ):
        net = models.build("poolnet", 3, channels=8, poolings=3, **opts).eval()
        assert net(torch.randn(1, 3, 40, 40)).shape == (1, 3, 40, 40) and net.output_stride == 8
    for bad, match in (
        ({"poolings": 7}, "poolings"),
        ({"upsample": "nearest"}, "upsample"),
        ({"context": "aspp"}, "context_rates"),
        ({"poolings": 0, "upsample": "deconv"}, "poolings >= 1"),
        ({"context_channels": 4}, "context"),
    ):
        with pytest.raises(BadModelOption, match=match):
            models.build("poolnet", 3, channels=8, **bad)
