"""`from_torchvision` against torchvision's own segmentation models (independent reference)."""

import pytest
import torch
from torchvision.models import segmentation

from atrous.models import from_torchvision


def _randomize_bn(model):
    """Random BN statistics and affine terms (so eval-mode BN is not the identity); each residual branch's
    last BN is scaled down so that activations stay O(1) through 100 layers and 1e-4 stays meaningful."""
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.05, 0.2) if name.endswith("bn3") else m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)


@pytest.mark.parametrize(
    "factory, num_classes, aux",
    [
        ("deeplabv3_resnet50", 4, True),
        ("fcn_resnet50", 2, False),
        ("fcn_resnet101", 3, True),
    ],
)
def test_outputs_equal_torchvision(factory, num_classes, aux):
    tv = getattr(segmentation, factory)(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux
    )
    _randomize_bn(tv)
    tv.eval()
    ours = from_torchvision(tv)
    assert not ours.training
    assert ours.build_args["name"] == ("deeplabv3" if "deeplab" in factory else "fcn_resnet")
    x = torch.randn(1, 3, 35, 27)
    with torch.no_grad():
        expected = tv(x)
        logits, aux_logits = ours(x, aux=True)
    assert 0.1 < expected["out"].abs().max() < 100  # a scale at which 1e-4 is a tight tolerance
    assert (logits - expected["out"]).abs().max() <= 1e-4
    if aux:
        assert (aux_logits - expected["aux"]).abs().max() <= 1e-4
    else:
        assert aux_logits is None
    assert all(p.device.type == "cpu" for p in ours.parameters())
    assert all(b.device.type == "cpu" for b in ours.buffers())
    # the converted model owns its weights
    with torch.no_grad():
        next(ours.parameters()).add_(1.0)
    assert not torch.equal(next(ours.parameters()), next(tv.parameters()))


def test_rejects_other_models():
    with pytest.raises(ValueError, match="fcn_resnet50/101"):
        from_torchvision(torch.nn.Conv2d(3, 3, 1))


def test_training_gradients_equal_torchvision():
    """Train mode (batch statistics), main and aux losses: every parameter's gradient equals torchvision's,
    so the in-place residual sums and ReLUs leave autograd's answer unchanged."""
    tv = segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=3, aux_loss=True)
    _randomize_bn(tv)
    ours = from_torchvision(tv)
    tv.train()
    ours.train()
    for m in (tv, ours):
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0  # the same masks cannot be drawn in both: no dropout
    x = torch.randn(2, 3, 35, 27)
    out = tv(x)
    (out["out"].square().mean() + 0.4 * out["aux"].square().mean()).backward()
    logits, aux_logits = ours(x, aux=True)
    (logits.square().mean() + 0.4 * aux_logits.square().mean()).backward()
    renames = {"classifier.": "head.", "aux_classifier.": "aux_head."}
    ours_params = dict(ours.named_parameters())
    for name, p in tv.named_parameters():
        for a, b in renames.items():
            name = name.replace(a, b) if name.startswith(a) else name
        name = name.removeprefix("backbone.")
        mine = ours_params.get(name, ours_params.get(f"backbone.{name}"))
        scale = max(float(p.grad.abs().max()), 1e-12)
        assert float((mine.grad - p.grad).abs().max()) <= 1e-4 * scale, name
