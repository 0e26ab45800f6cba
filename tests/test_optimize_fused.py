"""atrous.optimize.fused: the oneDNN inference forms of ResNet bottlenecks and ASPP keep every output, and run
their float block's forward under torch.autocast."""

import pytest
import torch

from _optimize_helpers import randomise_bn
from atrous import models
from atrous.models.backbones.resnet import Bottleneck
from atrous.models.heads import ASPP
from atrous.optimize import FusedASPP, FusedBottleneck, fold_batchnorm, optimize


def test_fused_bottlenecks_and_aspp_keep_outputs():
    """ResNet-50 blocks and ASPP in their fused inference form (oneDNN conv + sum + ReLU into the shortcut,
    ASPP projected branch by branch) against the unoptimised model, main and aux logits."""
    model = models.build("deeplabv3", 3, backbone="resnet50", width=0.0625, aux=True)
    randomise_bn(model)
    opt = optimize(model, example_input=torch.randn(1, 3, 37, 29))
    assert sum(isinstance(m, FusedBottleneck) for m in opt.modules()) == 16
    assert sum(isinstance(m, FusedASPP) for m in opt.modules()) == 1
    x = torch.randn(2, 3, 45, 39)
    x_before = x.clone()
    model.eval()
    with torch.no_grad():
        ref, ref_aux = (t.double() for t in model(x, aux=True))
        got, got_aux = opt(x, aux=True)
    assert torch.equal(x, x_before)  # the caller's input is never written into
    for a, b in ((got, ref), (got_aux, ref_aux)):
        assert float((a.double() - b).abs().max()) <= 1e-4 * max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("consume_input", [False, True])
def test_fused_bottleneck_without_downsample(consume_input):
    """A block whose shortcut is its input: a new map, or the sum written into the input when allowed."""
    block = Bottleneck(inplanes=16, planes=4, stride=1, dilation=2)
    randomise_bn(block)
    x = torch.randn(1, 16, 13, 11)
    fold_batchnorm(block.eval(), x)
    fused = FusedBottleneck(block, consume_input=consume_input)
    with torch.no_grad():
        ref = block(x.clone())
        x_in = x.clone()
        got = fused(x_in)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert (got.data_ptr() == x_in.data_ptr()) == consume_input
    if not consume_input:
        assert torch.equal(x_in, x)


def test_fused_forms_are_the_float_blocks_with_the_same_state_dict_keys():
    """torchvision's quantization pattern: the fused form subclasses the float block and adopts its modules."""
    model = models.build("deeplabv3", 3, backbone="resnet50", width=0.0625)
    opt = optimize(model, channels_last=False)
    fused = [m for m in opt.modules() if isinstance(m, (FusedBottleneck, FusedASPP))]
    assert fused and all(isinstance(m, (Bottleneck, ASPP)) for m in fused)
    block = opt.backbone.layer1[0]
    assert isinstance(block, FusedBottleneck)
    # the float block's names; its BatchNorms folded into the convolutions' new biases
    assert sorted(block.state_dict()) == [
        f"{conv}.{p}" for conv in ("conv1", "conv2", "conv3", "downsample.0") for p in ("bias", "weight")
    ]


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_fused_blocks_under_autocast_run_the_float_forward(dtype):
    """Under CPU autocast a fused block gives exactly what its float block gives under autocast (which
    raised a dtype error when the fused operators were called with autocast's bf16 activations)."""
    block = Bottleneck(inplanes=16, planes=4, stride=1, dilation=2)
    randomise_bn(block)
    x = torch.randn(1, 16, 13, 11)
    fold_batchnorm(block.eval(), x)
    aspp = ASPP(in_channels=16, out_channels=8, rates=(1, 2, 3), dropout=0.1)
    randomise_bn(aspp)
    aspp = optimize(torch.nn.Sequential(aspp), channels_last=False, example_input=x)[0]
    assert isinstance(aspp, FusedASPP)
    fused = FusedBottleneck(block, consume_input=False)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        for fused_module, float_forward in ((fused, Bottleneck.forward), (aspp, ASPP.forward)):
            got = fused_module(x)
            expected = float_forward(fused_module, x)
            assert got.dtype == dtype
            assert torch.equal(got, expected)
    with torch.no_grad():  # and in float32 the fused path agrees with the float forward
        torch.testing.assert_close(fused(x), Bottleneck.forward(fused, x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(aspp(x), ASPP.forward(aspp, x), rtol=1e-5, atol=1e-5)
