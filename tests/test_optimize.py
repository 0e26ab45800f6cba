"""atrous.optimize: BN folding, channels_last and compile keep every registered model's outputs."""

import pytest
import torch
from torch import nn

import atrous
from atrous import models
from atrous.optimize import fold_batchnorm, optimize


def _randomise_bn(model: nn.Module, seed: int = 1) -> None:
    """Non-trivial BN statistics and affine parameters, so that folding has something to get wrong."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.2)


def _tiny(name: str) -> nn.Module:
    opts = {"width": 0.0625}
    if name != "dilated_net" and "backbone" in models.options(name):
        opts["backbone"] = "resnet18"
    return models.build(name, 3, **opts)


@pytest.mark.parametrize("name", models.available())
def test_optimize_keeps_outputs_of_every_registered_model(name):
    model = _tiny(name)
    _randomise_bn(model)
    model.train()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(1, 3, 37, 29)  # odd sizes: the crop and padding paths
    opt = atrous.optimize(model, example_input=x)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in opt.modules()) == 0  # all folded (if any)
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


def test_fold_matches_hand_computed_affine_map():
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    bn = nn.BatchNorm2d(3)
    model = nn.Sequential(conv, bn).eval()
    _randomise_bn(model)
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
    _randomise_bn(model)
    x = torch.randn(1, 3, 6, 7)
    opt = optimize(model, example_input=x)
    assert isinstance(opt.bn, nn.BatchNorm2d)
    with torch.no_grad():
        torch.testing.assert_close(opt(x), model.eval()(x))


def test_options_off_and_compile_wiring():
    model = _tiny("dilated_net")
    plain = optimize(model, channels_last=False, fold_bn=False)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules()) > 0
    assert all(p.is_contiguous() for p in plain.parameters())
    compiled = optimize(model, compile=True)  # compiled lazily: the run itself is the slow test below
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.build_args == model.build_args


@pytest.mark.slow
def test_compiled_copy_keeps_outputs():
    model = models.build("dilated_net", 3, rates=[1, 2], channels=8)
    _randomise_bn(model)
    x = torch.randn(1, 3, 33, 29)
    compiled = optimize(model, compile=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model.eval()(x), rtol=1e-4, atol=1e-4)


def test_prepare_training_keeps_parameters_gradients_and_loss():
    from atrous.optimize import prepare_training

    ref = _tiny("dilated_net")
    model = prepare_training(_tiny("dilated_net"))
    model.load_state_dict(ref.state_dict())
    params_before = list(model.parameters())
    x, y = torch.randn(2, 3, 17, 15), torch.randint(0, 3, (2, 17, 15))
    losses = []
    for m in (ref, model):
        m.train()
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        losses.append(loss)
    assert list(model.parameters()) == params_before  # same Parameter objects: optimizers stay valid
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(ref.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_fused_bottlenecks_and_aspp_keep_outputs():
    """ResNet-50 blocks and ASPP in their fused inference form (oneDNN conv + sum + ReLU into the shortcut,
    ASPP projected branch by branch) against the unoptimised model, main and aux logits."""
    from atrous.models.backbones.resnet import FusedBottleneck
    from atrous.models.heads import FusedASPP

    model = models.build("deeplabv3", 3, backbone="resnet50", width=0.0625, aux=True)
    _randomise_bn(model)
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
    from atrous.models.backbones.resnet import Bottleneck, FusedBottleneck

    block = Bottleneck(inplanes=16, planes=4, stride=1, dilation=2)
    _randomise_bn(block)
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
