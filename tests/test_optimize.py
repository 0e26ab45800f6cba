"""atrous.optimize: BN folding, fused forms, channels_last and compile keep every registered model's outputs,
and the optimised copy runs under torch.autocast."""

import pytest
import torch
from torch import nn

import atrous
from _optimize_helpers import randomise_bn, tiny
from atrous import models
from atrous.optimize import optimize


@pytest.mark.parametrize("name", models.available())
def test_optimize_keeps_outputs_of_every_registered_model(name):
    model = tiny(name)
    randomise_bn(model)
    model.train()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(1, 3, 37, 29)  # odd sizes: the crop and padding paths
    opt = atrous.optimize(model, example_input=x)
    # all folded (if any), except DenseASPP's pre-activation BatchNorms: they read a concatenation of
    # several layers' outputs, not one convolution's
    left = [n for n, m in opt.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(".dense_aspp.layers." in n for n in left), left
    assert not opt.training and all(not p.requires_grad for p in opt.parameters())
    assert opt.build_args == model.build_args and opt.output_stride == model.output_stride
    # the original is untouched: still in training mode, BatchNorms still there
    assert model.training and sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn
    x2 = torch.randn(2, 3, 41, 35)  # another input than the one used for pairing
    model.eval()
    with torch.no_grad():
        ref = model(x2).double()
        got = opt(x2)
    assert got.shape == ref.shape
    scale = max(1.0, float(ref.abs().max()))
    assert float((got.double() - ref).abs().max()) <= 1e-4 * scale


@pytest.mark.parametrize("name", models.available())
def test_bf16_autocast_forward_of_every_registered_model_agrees_with_eager(name):
    """The optimised copy under CPU bf16 autocast (the fused blocks run their float forward there, autocast
    casting each convolution) against the eager float32 model: the same labels on >= 98 % of pixels."""
    model = tiny(name)
    randomise_bn(model)
    opt = atrous.optimize(model, example_input=torch.randn(1, 3, 37, 29))
    x = torch.randn(2, 3, 41, 35)
    with torch.no_grad():
        ref = model.eval()(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = opt(x)
    assert got.dtype == torch.bfloat16  # autocast did run the convolutions in bf16
    assert got.shape == ref.shape
    agreement = float((got.argmax(dim=1) == ref.argmax(dim=1)).float().mean())
    assert agreement >= 0.98, f"{name}: {agreement:.3f}"


def test_options_off_and_compile_wiring():
    model = tiny("dilated_net")
    plain = optimize(model, channels_last=False, fold_bn=False)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules()) > 0
    assert all(p.is_contiguous() for p in plain.parameters())
    compiled = optimize(model, compile=True)  # compiled lazily: the run itself is the slow test below
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.build_args == model.build_args


@pytest.mark.slow
def test_compiled_copy_keeps_outputs():
    model = models.build("dilated_net", 3, rates=[1, 2], channels=8)
    randomise_bn(model)
    x = torch.randn(1, 3, 33, 29)
    compiled = optimize(model, compile=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model.eval()(x), rtol=1e-4, atol=1e-4)


def test_every_dilated_reparam_is_merged_into_one_convolution():
    """dilated_net's re-parameterised layers (UniRepLKNet): the optimised copy holds no DilatedReparam, one
    depthwise conv per block instead (kernel 2r+1 for rate r), and gives the eval-mode training form's
    outputs; the model itself keeps its training form."""
    from atrous.ops import DilatedReparam

    rates = (1, 2, 3)
    model = models.build("dilated_net", 3, rates=list(rates), channels=8, block="reparam")
    randomise_bn(model)
    blocks = [m for m in model.modules() if isinstance(m, DilatedReparam)]
    assert len(blocks) == len(rates)
    opt = optimize(model, channels_last=False)
    assert not any(isinstance(m, DilatedReparam) for m in opt.modules())
    assert sum(isinstance(m, DilatedReparam) for m in model.modules()) == len(rates)  # untouched
    merged = [m for m in opt.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert [m.kernel_size for m in merged] == [(b.kernel_size, b.kernel_size) for b in blocks]
    x = torch.randn(2, 3, 23, 19)
    with torch.no_grad():
        ref = model.eval()(x).double()
        got = opt(x).double()
    assert float((got - ref).abs().max()) <= 1e-4 * max(1.0, float(ref.abs().max()))
