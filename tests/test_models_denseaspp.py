"""DenseASPP (Yang et al. CVPR 2018): channel arithmetic against the official configurations, the rates
derived for output stride 16, the receptive field of the chain, and the forward against a functional
recomputation of the dense connections."""

import pytest
import torch
import torch.nn.functional as F

from atrous.analysis import receptive_field
from atrous.models import build
from atrous.models.denseaspp import DenseASPP, DenseASPPHead, dense_aspp_rates


@pytest.mark.parametrize(
    "config, c0, inter, growth, layer_inputs, out",
    [
        # DenseASPP-121: DenseNet-121's 1024 channels halved by its last transition; d_feature0 128, d_feature1 64
        ("121", 512, 128, 64, [512, 576, 640, 704, 768], 832),
        # DenseASPP-161: DenseNet-161's 2208 halved; d_feature0 512, d_feature1 128
        ("161", 1104, 512, 128, [1104, 1232, 1360, 1488, 1616], 1744),
    ],
)
def test_channel_arithmetic_of_the_official_configurations(config, c0, inter, growth, layer_inputs, out):
    with torch.device("meta"):
        head = DenseASPPHead(
            in_channels=c0, num_classes=19, feature="f", inter_channels=inter, growth_channels=growth
        )
    layers = head.dense_aspp.layers
    assert [
        layer[0].num_features if i else layer[1].in_channels for i, layer in enumerate(layers)
    ] == layer_inputs
    convs = [[m for m in layer if isinstance(m, torch.nn.Conv2d)] for layer in layers]
    assert [(c[0].out_channels, c[1].in_channels, c[1].out_channels) for c in convs] == [
        (inter, inter, growth)
    ] * 5
    assert [c[1].dilation[0] for c in convs] == [3, 6, 12, 18, 24]
    assert head.classifier.in_channels == out == c0 + 5 * growth
    assert not isinstance(layers[0][0], torch.nn.BatchNorm2d)  # the first layer reads a normalised feature


def test_rates_follow_the_output_stride():
    assert dense_aspp_rates(8) == (3, 6, 12, 18, 24)
    assert dense_aspp_rates(16) == (2, 3, 6, 9, 12)  # halved, 1.5 rounded up
    with pytest.raises(ValueError, match="8 or 16"):
        dense_aspp_rates(32)
    model = build("denseaspp", 3, backbone="resnet18", width=0.125, output_stride=16)
    assert model.head.dense_aspp.rates == (2, 3, 6, 9, 12) and model.output_stride == 16
    assert model.backbone.feature_info["layer4"].stride == 16


def test_receptive_field_of_the_chain():
    """The longest chain passes every rate: 1 + 2 * (3 + 6 + 12 + 18 + 24) = 127 feature pixels (the paper's
    "128"); ASPP's widest branch alone reaches 49."""
    module = DenseASPP(in_channels=4, inter_channels=4, growth_channels=2).eval()
    assert receptive_field(module, (301, 301), in_channels=4)["rf_local"] == [127, 127]


def test_forward_equals_a_functional_recomputation():
    torch.manual_seed(0)
    module = DenseASPP(in_channels=5, rates=(1, 2, 3), inter_channels=4, growth_channels=3).double().train()
    with torch.no_grad():  # statistics that are not the identity
        module(torch.randn(4, 5, 11, 13, dtype=torch.float64))
    module.eval()
    x = torch.randn(2, 5, 11, 13, dtype=torch.float64)

    def bn(t, m):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    feats = x
    for i, (layer, rate) in enumerate(zip(module.layers, (1, 2, 3))):
        mods = list(layer)
        y = bn(feats, mods.pop(0)) if i else feats  # the first layer has no leading BatchNorm
        conv1, bn2, conv2 = mods[1], mods[2], mods[4]
        y = F.conv2d(F.relu(y), conv1.weight, conv1.bias)
        y = F.conv2d(F.relu(bn(y, bn2)), conv2.weight, conv2.bias, padding=rate, dilation=rate)
        feats = torch.cat([y, feats], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(module(x), feats, rtol=0, atol=1e-12)
    assert feats.shape[1] == 5 + 3 * 3
