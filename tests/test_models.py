"""Contract tests over the model registry: every name builds, runs forward/backward on odd sizes, has the
interface-1 attributes; unknown names/options are rejected with the valid ones listed."""

import json

import pytest
import torch

import atrous
from atrous.cli import main
from atrous.models import available, build, describe, options
from atrous.ops import AtrousConv2d

# the smallest configuration of each model that still exercises its structure
TINY = {
    "dilated_net": {"rates": [1, 2, 5], "channels": 8},
    "deeplabv3": {"backbone": "resnet18", "width": 0.125, "aux": True},
    "deeplabv3plus": {"backbone": "resnet18", "width": 0.125},
    "fcn_resnet": {"backbone": "resnet18", "width": 0.125, "aux": True},
    "hdc_duc": {"backbone": "resnet18", "width": 0.125},
    "fcn32s": {"width": 0.0625},
    "fcn16s": {"width": 0.0625},
    "fcn8s": {"width": 0.0625},
    "frontend": {"width": 0.0625},
    "context": {"width": 0.0625, "context": "large"},
    "drn_c_26": {"width": 0.125},
    "drn_d_22": {"width": 0.125},
    "drn_d_38": {"width": 0.125},
    "poolnet": {"channels": 4, "context": "aspp", "context_rates": [1, 2]},
    "denseaspp": {"backbone": "resnet18", "width": 0.125},
    "wasp": {"backbone": "resnet18", "width": 0.125},
    "regseg": {"width": 0.125},
}


def test_every_registered_name_has_a_tiny_configuration():
    assert set(available()) <= set(TINY), set(available()) - set(TINY)


@pytest.mark.parametrize("name", available())
def test_contract(name):
    model = build(name, 5, **TINY[name])
    assert model.build_args["name"] == name and model.build_args["num_classes"] == 5
    assert json.loads(json.dumps(model.build_args)) == model.build_args
    assert isinstance(model.output_stride, int) and model.output_stride >= 1
    # train mode, batch 2, odd size: shape, finite, every trainable parameter gets a finite gradient
    model.train()
    x = torch.randn(2, 3, 67, 45)
    logits, aux = model(x, aux=True)
    assert logits.shape == (2, 5, 67, 45)
    assert torch.isfinite(logits).all()
    loss = logits.square().mean()
    if aux is not None:
        assert aux.shape == (2, 5, 67, 45)
        loss = loss + aux.square().mean()
    loss.backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: {pname} received no gradient"
            assert torch.isfinite(p.grad).all(), pname
    # eval mode, batch 1, another odd size; rebuilt from build_args gives the same architecture
    model.eval()
    x = torch.randn(1, 3, 33, 51)
    with torch.no_grad():
        y = model(x)
        features = model.backbone(x)
    assert y.shape == (1, 5, 33, 51) and torch.isfinite(y).all()
    # the backbone's declared feature contract holds on real tensors
    assert list(features) == list(model.backbone.feature_info)
    for fname, info in model.backbone.feature_info.items():
        assert features[fname].shape[1:] == (info.channels, -(-33 // info.stride), -(-51 // info.stride))
    # asked for one feature, the backbone returns just it, with the same values; unknown names are refused
    for fname in model.backbone.feature_info:
        with torch.no_grad():
            only = model.backbone(x, features=[fname])
        assert list(only) == [fname] and torch.equal(only[fname], features[fname])
    with pytest.raises(ValueError, match="unknown feature"):
        model.backbone(x, features=["nope"])
    # every dilated convolution is an AtrousConv2d
    for mname, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.dilation[0] > 1:
            assert isinstance(m, AtrousConv2d), mname
    again = build(name, 5, **model.build_args["options"])
    assert again.load_state_dict(model.state_dict()) is not None


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="deeplabv3") as e:
        build("deeplab_v9", 3)
    assert all(n in str(e.value) for n in available())


def test_unknown_option_lists_valid_options():
    with pytest.raises(ValueError, match="output_stride") as e:
        build("deeplabv3", 3, outputstride=8)
    assert "outputstride" in str(e.value) and "multi_grid" in str(e.value)


@pytest.mark.parametrize(
    "name, opts, match",
    [
        ("deeplabv3", {"backbone": "resnet7"}, "resnet101"),
        ("deeplabv3", {"output_stride": 4}, "8, 16, 32"),
        ("deeplabv3", {"head": "fancy"}, "torchvision"),
        ("dilated_net", {"rates": [1, 0]}, "integers >= 1"),
        ("dilated_net", {"norm": "group"}, "none"),
        ("deeplabv3", {"width": 0}, "width"),
    ],
)
def test_bad_option_values(name, opts, match):
    with pytest.raises(ValueError, match=match):
        build(name, 3, **opts)


def test_registry_raises_one_error_class():
    """Every refusal of `build` is a ModelError: an AtrousError (one line for the CLI) and a ValueError;
    a value the builder or a module rejects names the model and the options given."""
    from atrous.errors import AtrousError, BadModelOption, ModelError, UnknownModel

    with pytest.raises(UnknownModel) as unknown:
        build("deeplab_v9", 3)
    with pytest.raises(BadModelOption) as option:
        build("deeplabv3", 3, outputstride=8)
    with pytest.raises(BadModelOption) as value:
        build("dilated_net", 3, rates=[1, 0])
    with pytest.raises(BadModelOption) as kind:
        build("dilated_net", 3, rates=5)  # tuple(5): a TypeError inside the builder
    with pytest.raises(BadModelOption, match="num_classes"):
        build("dilated_net", 0)
    for e in (unknown, option, value, kind):
        assert isinstance(e.value, ModelError) and isinstance(e.value, AtrousError)
        assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
    assert str(value.value).startswith("model dilated_net (rates=[1, 0]): ")
    assert "integers >= 1" in str(value.value)


def test_describe_and_options():
    for name in available():
        line = describe(name)
        assert line and "\n" not in line
    assert options("deeplabv3")["output_stride"] == 16
    assert atrous.build is build and atrous.available is available


def test_cli_lists_every_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == available()
    from atrous.models.zoo import MODELS

    assert all(line.endswith(f"({MODELS[line.split()[0]].paper})") for line in out)
    assert main(["models", "deeplabv3"]) == 0
    assert "multi_grid" in capsys.readouterr().out
    assert main(["models", "nope"]) == 2
    assert "valid names" in capsys.readouterr().err


def test_build_args_omit_pretrained_path_and_are_json():
    model = build("dilated_net", 2, rates=(1, 2), channels=4, norm="none")
    assert model.build_args == {
        "name": "dilated_net",
        "num_classes": 2,
        "options": {"rates": [1, 2], "channels": 4, "norm": "none"},
    }
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_dilated_net_reparam_matches_the_plain_stack():
    """block="reparam": parameters (counted on the built models) within 10 % of the plain stack's, the
    documented numbers, the same receptive field as the plain stack and no holes in it."""
    from atrous.analysis import receptive_field
    from atrous.ops import DilatedReparam

    def count(m):
        return sum(p.numel() for p in m.parameters())

    for channels in (64, 32, 16):
        plain = build("dilated_net", 21, channels=channels)
        reparam = build("dilated_net", 21, channels=channels, block="reparam")
        assert abs(count(reparam) / count(plain) - 1) <= 0.10, (channels, count(reparam), count(plain))
    assert (count(plain), count(reparam)) == (12501, 12594)  # channels 16 -> 19
    assert (count(build("dilated_net", 21)), count(build("dilated_net", 21, block="reparam"))) == (
        188181,
        189124,
    )
    model = build("dilated_net", 2, rates=[1, 2, 5], channels=4, block="reparam")
    blocks = [m for m in model.modules() if isinstance(m, DilatedReparam)]
    assert [b.kernel_size for b in blocks] == [3, 5, 11]  # 2r + 1: the plain layer's field
    assert [b.branches for b in blocks] == [(), ((3, 1), (3, 2)), ((5, 1), (5, 2), (3, 3), (3, 4), (3, 5))]
    assert receptive_field(model, (41, 41))["rf"] == [1 + 2 * (1 + 2 + 5)] * 2
    with pytest.raises(ValueError, match="norm='batch'"):
        build("dilated_net", 2, block="reparam", norm="none")
    with pytest.raises(ValueError, match=r"1\.\.8"):
        build("dilated_net", 2, block="reparam", rates=[9])


def test_dilated_net_is_exactly_its_rates():
    """Nothing but the given 3x3 convs has a spatial extent: the response to one pixel spreads exactly to
    the offsets reachable with the rates (checkerboard for rates 2,2)."""
    model = build("dilated_net", 1, rates=[2, 2], channels=1, norm="none").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0 if name.endswith("weight") else 0.0)
    x = torch.zeros(1, 3, 21, 21)
    x[0, :, 10, 10] = 1.0
    with torch.no_grad():
        y = model(x)[0, 0]
    support = (y != 0).nonzero().tolist()
    expected = sorted([10 + a, 10 + b] for a in range(-4, 5, 2) for b in range(-4, 5, 2))
    assert sorted(support) == expected


@pytest.mark.parametrize("aux", [False, True])
def test_segmenter_asks_the_backbone_only_for_what_its_heads_read(aux):
    """The maps no head reads are not returned (so they are freed during the forward); the aux head's
    feature only when aux logits are asked for. Logits are those computed from the full feature dict."""
    model = build("deeplabv3", 3, backbone="resnet18", width=0.125, aux=True).eval()
    returned = []
    model.backbone.register_forward_hook(lambda m, args, out: returned.append(sorted(out)))
    x = torch.randn(1, 3, 29, 31)
    with torch.no_grad():
        out = model(x, aux=aux)
        features = model.backbone(x)  # all four stages
        head = model.head(features)
        expected = torch.nn.functional.interpolate(head, size=(29, 31), mode="bilinear", align_corners=False)
    assert returned[0] == (["layer3", "layer4"] if aux else ["layer4"])
    torch.testing.assert_close(out[0] if aux else out, expected, rtol=0, atol=0)
