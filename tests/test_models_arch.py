"""VGG-16 / front-end, context module, DRN, FCN and the heads against independent references: torchvision's
VGG-16 and DeepLab head, the papers' layer tables (Yu & Koltun Table 1 and section 4, DRN Figure/Table 1,
fyu/drn's published parameter counts), bilinear interpolation, and torchvision's key names."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from atrous.errors import AtrousError
from atrous.models import build
from atrous.models.backbones.drn import ARCHS, DRN
from atrous.models.backbones.vgg import VGG16
from atrous.models.context import ContextModule
from atrous.ops import AtrousConv2d


def _check_contract(net, h=67, w=45):
    with torch.no_grad():
        feats = net.eval()(torch.randn(1, 3, h, w))
    assert list(feats) == list(net.feature_info)
    for name, info in net.feature_info.items():
        assert feats[name].shape[1:] == (info.channels, -(-h // info.stride), -(-w // info.stride)), name


# ----------------------------------------------------------------------------------------------------------
# VGG-16 and the Yu & Koltun front-end
# ----------------------------------------------------------------------------------------------------------
def test_vgg_features_equal_torchvision():
    tv = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"]).eval()  # vgg16().features
    ours = VGG16(width=1.0).eval()
    missing = ours.load_state_dict({f"features.{k}": v for k, v in tv.state_dict().items()}, strict=False)
    assert set(missing.missing_keys) == {"fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"}
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = ours(x)
        torch.testing.assert_close(feats["pool3"], tv[:17](x))
        torch.testing.assert_close(feats["pool4"], tv[:24](x))


def test_vgg_pretrained_convolutionalizes_the_classifier(tmp_path):
    """fc6/fc7 loaded from a torchvision-format file compute what torchvision's Linear layers compute on the
    flattened 7x7 pool5 map (checked at width 1/16 so the file stays small)."""
    width = 0.0625
    ref = VGG16(width=width).eval()
    c, f = ref.feature_info["pool4"].channels, ref.feature_info["fc7"].channels
    lin6, lin7 = torch.nn.Linear(c * 49, f), torch.nn.Linear(f, f)
    state = {k: v for k, v in ref.state_dict().items() if k.startswith("features.")}
    state |= {"classifier.0.weight": lin6.weight, "classifier.0.bias": lin6.bias}
    state |= {"classifier.3.weight": lin7.weight, "classifier.3.bias": lin7.bias}
    state |= {"classifier.6.weight": torch.randn(10, f), "classifier.6.bias": torch.randn(10)}
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    ours = VGG16(width=width, pretrained=path).eval()
    pool5 = torch.randn(1, c, 7, 7)
    with torch.no_grad():
        conv = ours.fc7(F.relu(ours.fc6(pool5)))[0, :, 3, 3]  # the centre sees the whole 7x7 map
        linear = lin7(F.relu(lin6(pool5.flatten(1))))[0]
    torch.testing.assert_close(conv, linear, atol=1e-5, rtol=1e-5)
    del state["classifier.0.weight"]
    torch.save(state, path)
    with pytest.raises(AtrousError, match=r"vgg16\.pth.*missing keys.*fc6\.weight"):
        VGG16(width=width, pretrained=path)


def test_vgg_parameter_count_equals_torchvision_without_the_last_layer():
    with torch.device("meta"):
        tv = torchvision.models.vgg16(weights=None)
        ours = VGG16()
    count = sum(p.numel() for p in tv.parameters()) - sum(p.numel() for p in tv.classifier[6].parameters())
    assert sum(p.numel() for p in ours.parameters()) == count  # 134,260,544


def test_frontend_structure_yu_koltun():
    """Section 4: pool4 and pool5 removed; conv5 at rate 2, fc6 (7x7) at rate 4; output stride 8."""
    with torch.device("meta"):
        net = VGG16(dilated=True)
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [m.dilation[0] for m in convs] == [1] * 10 + [2] * 3
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in net.features) == 3
    assert net.fc6.kernel_size == (7, 7) and net.fc6.dilation == (4, 4) and isinstance(net.fc6, AtrousConv2d)
    assert build("frontend", 3, width=0.0625).output_stride == 8


@pytest.mark.parametrize("dilated", [False, True])
def test_vgg_feature_contract(dilated):
    _check_contract(VGG16(dilated=dilated, width=0.0625))


# ----------------------------------------------------------------------------------------------------------
# context module (Yu & Koltun Table 1)
# ----------------------------------------------------------------------------------------------------------
def test_context_table_1():
    c = 5
    for kind, widths in (
        ("basic", [c] * 8),
        ("large", [2 * c, 2 * c, 4 * c, 8 * c, 16 * c, 32 * c, 32 * c, c]),
    ):
        convs = [m for m in ContextModule(classes=c, kind=kind) if isinstance(m, torch.nn.Conv2d)]
        assert [m.dilation[0] for m in convs] == [1, 1, 2, 4, 8, 16, 1, 1]
        assert [m.kernel_size[0] for m in convs] == [3] * 7 + [1]
        assert [m.out_channels for m in convs] == widths
    # truncation (ReLU) after layers 1-7, none after layer 8
    module = ContextModule(classes=c)
    kinds = [type(m).__name__ for m in module]
    assert kinds == ["AtrousConv2d", "ReLU"] * 7 + ["Conv2d"]


def test_context_basic_is_identity_at_init():
    module = ContextModule(classes=4, kind="basic").eval()
    x = torch.rand(2, 4, 23, 17) * 5  # non-negative scores
    with torch.no_grad():
        assert torch.equal(module(x), x)
        assert not torch.equal(module(x - 1), x - 1)  # negative inputs are truncated at layer 1


def test_context_large_is_identity_up_to_its_noise():
    x = torch.rand(1, 3, 19, 21) + 0.5
    exact = ContextModule(classes=3, kind="large", noise=0.0).eval()
    noisy = ContextModule(classes=3, kind="large").eval()
    with torch.no_grad():
        torch.testing.assert_close(exact(x), x, atol=1e-5, rtol=1e-5)
        err = (noisy(x) - x).abs().max()
    assert 0 < err < 0.05


def test_context_model_keeps_frontend_scores_at_init():
    torch.manual_seed(0)
    model = build("context", 3, width=0.0625).eval()
    x = torch.randn(1, 3, 41, 37)
    with torch.no_grad():
        scores = model.head[0](model.backbone(x))
        expected = F.interpolate(scores.clamp(min=0), size=(41, 37), mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(x), expected)


# ----------------------------------------------------------------------------------------------------------
# DRN
# ----------------------------------------------------------------------------------------------------------
def _level_rates(net, level):
    return [
        m.dilation[0]
        for m in getattr(net, f"layer{level}").modules()
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] == 3
    ]


@pytest.mark.parametrize("name, params_m", [("drn_c_26", 21.1), ("drn_d_22", 16.4), ("drn_d_38", 26.5)])
def test_drn_tables(name, params_m):
    arch, layers = ARCHS[name]
    with torch.device("meta"):
        net = DRN(arch=arch, layers=layers)
    # fyu/drn's README counts include the 1000-class 1x1 classifier on 512 channels
    total = sum(p.numel() for p in net.parameters()) + 512 * 1000 + 1000
    assert round(total / 1e6, 1) == params_m
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    # rates per level: 1 in levels 1-4, 2 and 4 in levels 5-6, degridding 2 then 1 in levels 7-8
    for level, rate in zip(range(1, 9), [1, 1, 1, 1, 2, 4, 2, 1]):
        residual_blocks = arch == "C" or 3 <= level <= 6  # two 3x3 convs per block, else one per layer
        n = layers[level - 1] * (2 if residual_blocks else 1)
        assert _level_rates(net, level) == [rate] * n, level
    assert [info.stride for info in net.feature_info.values()] == [1, 2, 4, 8, 8, 8, 8, 8]
    # no residual connections in the degridding levels
    if arch == "C":
        assert all(not block.residual for level in (7, 8) for block in getattr(net, f"layer{level}"))
        assert all(block.residual for level in range(1, 7) for block in getattr(net, f"layer{level}"))
    else:
        assert all(isinstance(m, torch.nn.Sequential) for m in (net.layer7, net.layer8))
        assert not any(hasattr(m, "residual") for m in net.layer7.modules())


def test_drn_fyu_key_names():
    c26 = DRN(arch="C", layers=ARCHS["drn_c_26"][1], width=0.125).state_dict()
    for key in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer5.0.downsample.1.weight",
        "layer6.1.conv2.weight",
        "layer7.0.bn2.bias",
        "layer8.0.conv2.weight",
    ]:
        assert key in c26, key
    assert not any(k.startswith("layer7.0.downsample") for k in c26)
    d22 = DRN(arch="D", layers=ARCHS["drn_d_22"][1], width=0.125).state_dict()
    for key in [
        "layer0.0.weight",
        "layer0.1.running_mean",
        "layer1.0.weight",
        "layer2.1.weight",
        "layer3.0.conv1.weight",
        "layer7.0.weight",
        "layer7.1.bias",
        "layer8.0.weight",
    ]:
        assert key in d22, key


@pytest.mark.parametrize("name", list(ARCHS))
def test_drn_feature_contract(name):
    arch, layers = ARCHS[name]
    _check_contract(DRN(arch=arch, layers=layers, width=0.125))


def test_drn_loads_fyu_classification_and_drnseg_files(tmp_path):
    src = DRN(arch="D", layers=ARCHS["drn_d_22"][1], width=0.125).eval()
    fc = {"fc.weight": torch.randn(1000, 64, 1, 1), "fc.bias": torch.randn(1000)}
    torch.save(src.state_dict() | fc, tmp_path / "drn_d_22.pth")
    # DRNSeg: trunk = Sequential(*children[:-2]) = layer0..layer8 -> base.0..base.8, saved under DataParallel
    children = [f"layer{i}" for i in range(9)]
    seg = {}
    for key, value in src.state_dict().items():
        head, _, rest = key.partition(".")
        seg[f"module.base.{children.index(head)}.{rest}"] = value
    seg |= {"module.seg.weight": torch.randn(19, 64, 1, 1), "module.up.weight": torch.randn(19, 1, 16, 16)}
    torch.save(seg, tmp_path / "drnseg.pth")
    x = torch.randn(1, 3, 29, 31)
    with torch.no_grad():
        expected = src(x)["layer8"]
        for file in ("drn_d_22.pth", "drnseg.pth"):
            model = build("drn_d_22", 19, width=0.125, pretrained_backbone=str(tmp_path / file)).eval()
            torch.testing.assert_close(model.backbone(x)["layer8"], expected)
    with pytest.raises(AtrousError, match=r"drn_d_22\.pth.*keys"):
        build("drn_c_26", 19, width=0.125, pretrained_backbone=str(tmp_path / "drn_d_22.pth"))


# ----------------------------------------------------------------------------------------------------------
# FCN
# ----------------------------------------------------------------------------------------------------------
def test_fcn32s_upsampling_is_bilinear_and_aligned():
    """Away from the border, FCN-32s's output equals bilinear interpolation (align_corners=False) of its
    stride-32 score map: the deconvolution and the crop keep pixel centres aligned."""
    model = build("fcn32s", 2, width=0.0625).eval()
    torch.nn.init.normal_(model.head.score.weight)
    x = torch.randn(1, 3, 150, 130)
    with torch.no_grad():
        score = model.head(model.backbone(x))  # (1, 2, 5, 5)
        out = model(x)
        ref = F.interpolate(score, scale_factor=32, mode="bilinear", align_corners=False)[..., :150, :130]
    assert score.shape[-2:] == (5, 5)
    torch.testing.assert_close(out[..., 16:-16, 16:-16], ref[..., 16:-16, 16:-16], atol=1e-5, rtol=1e-5)


def test_fcn_skips_and_strides():
    for name, skips, stride in (
        ("fcn32s", (), 32),
        ("fcn16s", ("pool4",), 16),
        ("fcn8s", ("pool4", "pool3"), 8),
    ):
        model = build(name, 3, width=0.0625)
        assert model.head.skips == skips and model.output_stride == stride
        assert model.upsample.factor == stride and not model.upsample.weight.requires_grad
        assert all(up.weight.requires_grad for up in model.head.upscores.values())
        assert all(not s.weight.any() for s in model.head.skip_scores.values())  # zero-initialised (paper)
    assert build("fcn8s", 3, backbone="resnet18", width=0.125).head.skips == ("layer3", "layer2")


# ----------------------------------------------------------------------------------------------------------
# DeepLab v3 / v3+ / HDC-DUC heads
# ----------------------------------------------------------------------------------------------------------
def test_deeplabv3_rates_follow_output_stride():
    with torch.device("meta"):
        assert build("deeplabv3", 3, output_stride=16).head[0].rates == (6, 12, 18)
        assert build("deeplabv3", 3, output_stride=8).head[0].rates == (12, 24, 36)
        assert build("deeplabv3", 3, output_stride=8, rates=[3, 5]).head[0].rates == (3, 5)
        model = build("deeplabv3", 3)
    assert [b.conv2.dilation[0] for b in model.backbone.layer4] == [2, 4, 8]  # multi-grid (1, 2, 4) at OS 16
    assert model.output_stride == 16 and len(model.backbone.layer3) == 23  # ResNet-101 by default


def test_deeplabv3_heads_match_torchvision_and_paper():
    with torch.device("meta"):
        tv = DeepLabHead(2048, 21)
        ours = build("deeplabv3", 21, output_stride=8, head="torchvision").head
        paper = build("deeplabv3", 21, output_stride=8).head
    shapes = {k: v.shape for k, v in tv.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == shapes
    # the paper's head is ASPP followed directly by the 1x1 classifier (no extra 3x3 conv)
    aspp = {k: v for k, v in shapes.items() if k.startswith("0.")}
    assert {k: v.shape for k, v in paper.state_dict().items()} == aspp | {
        "1.weight": torch.Size([21, 256, 1, 1]),
        "1.bias": torch.Size([21]),
    }


def test_deeplabv3plus_decoder():
    with torch.device("meta"):
        model = build("deeplabv3plus", 21)
    head = model.head
    assert model.output_stride == 16 and head.aspp.rates == (6, 12, 18)
    assert head.low_level_feature == "layer1" and model.backbone.feature_info["layer1"].stride == 4
    assert head.project[0].in_channels == 256 and head.project[0].out_channels == 48
    convs = [m for m in head.fuse if isinstance(m, torch.nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in convs] == [
        (304, 256, (3, 3)),
        (256, 256, (3, 3)),
    ]


def test_hdc_duc():
    with torch.device("meta"):
        model = build("hdc_duc", 19)
    assert [b.conv2.dilation[0] for b in model.backbone.layer3] == [1, 2, 5, 9] * 5 + [1, 2, 5]
    assert [b.conv2.dilation[0] for b in model.backbone.layer4] == [5, 9, 17]
    assert model.head.duc.conv.out_channels == 19 * 64 and model.output_stride == 8
