"""Dilated ResNet against independent references: torchvision's ResNet with the same weights (OS 32 for
all depths, and its `replace_stride_with_dilation` at OS 8/16 for Bottleneck nets), and the rate tables of
DeepLab v3 (multi-grid) and HDC."""

import pytest
import torch
import torchvision

from atrous.errors import AtrousError
from atrous.models.backbones.resnet import ResNet, stage_schedule
from atrous.ops import AtrousConv2d


def _tv_features(tv, x):
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    out = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(tv, name)(x)
        out[name] = x
    return out


@pytest.mark.parametrize(
    "depth, output_stride, dilate",
    [(18, 32, [False, False, False]), (50, 16, [False, False, True]), (50, 8, [False, True, True])],
)
def test_features_equal_torchvision(depth, output_stride, dilate, tmp_path):
    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None, replace_stride_with_dilation=dilate)
    # random BN statistics so that eval-mode BN is not the identity
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    if depth == 18:  # through a torchvision-format file (fc included)
        path = tmp_path / "tv.pth"
        torch.save(tv.state_dict(), path)
        ours = ResNet(depth=depth, output_stride=output_stride, pretrained=path).eval()
    else:  # the same keys, copied directly (skips writing and reading 100 MB)
        with torch.device("meta"):
            ours = ResNet(depth=depth, output_stride=output_stride)
        state = {k: v.clone() for k, v in tv.state_dict().items() if not k.startswith("fc.")}
        ours.load_state_dict(state, assign=True)
        ours.eval()
    tv.eval()
    x = torch.randn(1, 3, 37, 29)
    with torch.no_grad():
        a, b = ours(x), _tv_features(tv, x)
    for name in b:
        assert a[name].shape == b[name].shape
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-4)


def test_feature_contract_matches_tensors():
    for depth in (18, 34, 50, 101):
        for os_ in (8, 16, 32):
            if depth in (34, 101) and os_ != 8:
                continue  # the same rule as 18/50; one stride per deep net keeps the test short
            net = ResNet(depth=depth, output_stride=os_, width=0.0625).eval()
            with torch.no_grad():
                feats = net(torch.randn(1, 3, 67, 45))
            assert list(feats) == list(net.feature_info)
            for name, info in net.feature_info.items():
                assert feats[name].shape[1] == info.channels
                assert feats[name].shape[-2:] == (-(-67 // info.stride), -(-45 // info.stride)), name
                stage = getattr(net, name)
                assert stage[-1].conv2.dilation[0] == info.dilation
            assert net.feature_info["layer4"].stride == os_


def _rates(net, stage):
    return [block.conv2.dilation[0] for block in getattr(net, stage)]


def test_output_stride_rates_like_torchvision_make_layer():
    # the first block of a newly dilated stage keeps the previous rate
    net = ResNet(depth=50, output_stride=8, width=0.0625)
    assert _rates(net, "layer3") == [1, 2, 2, 2, 2, 2]
    assert _rates(net, "layer4") == [2, 4, 4]
    net = ResNet(depth=18, output_stride=8, width=0.0625)  # BasicBlock dilates too (both convs)
    assert _rates(net, "layer4") == [2, 4]
    assert [b.conv1.dilation[0] for b in net.layer4] == [2, 4]
    assert net.layer3[0].conv1.stride == (1, 1) and net.layer2[0].conv1.stride == (2, 2)


def test_multi_grid_deeplab_v3():
    # DeepLab v3 section 3.2: Multi_Grid = (1, 2, 4) at output stride 16 gives rates 2 * (1, 2, 4) = (2, 4, 8)
    with torch.device("meta"):
        net = ResNet(depth=101, output_stride=16, multi_grid=(1, 2, 4))
    assert _rates(net, "layer4") == [2, 4, 8]
    schedule = stage_schedule(blocks=(3, 4, 23, 3), output_stride=8, multi_grid=(1, 2, 4))
    assert schedule["layer4"] == (1, (4, 8, 16))
    assert schedule["layer3"] == (1, (1,) + (2,) * 22)


def test_hdc_block_rates():
    # TuSimple-DUC's ResNet-101: res4 (23 blocks) cycles 1, 2, 5, 9; res5 (3 blocks) 5, 9, 17
    with torch.device("meta"):
        net = ResNet(depth=101, output_stride=8, block_rates={"layer3": (1, 2, 5, 9), "layer4": (5, 9, 17)})
    assert _rates(net, "layer3") == [1, 2, 5, 9] * 5 + [1, 2, 5]
    assert _rates(net, "layer4") == [5, 9, 17]
    with pytest.raises(ValueError, match="not dilated"):
        stage_schedule(blocks=(3, 4, 6, 3), output_stride=16, block_rates={"layer3": (1, 2)})


def test_dilated_convs_are_atrous():
    net = ResNet(depth=50, output_stride=8, width=0.0625)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d) and m.dilation[0] > 1:
            assert isinstance(m, AtrousConv2d)


def test_pretrained_errors_name_the_file(tmp_path):
    with pytest.raises(AtrousError, match="no such file"):
        ResNet(depth=18, pretrained=tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(AtrousError, match=r"bad\.pth"):
        ResNet(depth=18, pretrained=bad)
    wrong = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)
    with pytest.raises(AtrousError, match=r"r18\.pth.*(missing|unexpected) keys"):
        ResNet(depth=50, pretrained=wrong)
    with pytest.raises(AtrousError, match=r"r18\.pth.*shape"):
        ResNet(depth=18, width=0.5, pretrained=wrong)
