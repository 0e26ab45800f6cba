"""Receptive field: checked against brute force (the support of the input gradient of one output pixel of
the same network with positive weights) on hand-made graphs and atrous models, and against Yu & Koltun's
Table 1."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atrous.analysis import receptive_field, small_object_limit
from atrous.analysis.receptive_field import trace
from atrous.ops import DUC, AtrousConv2d, BilinearUpsample, DilatedReparam, SmoothedAtrousConv2d


def _positive(model: nn.Module) -> nn.Module:
    """A float64 copy with every parameter in [0.1, 1], identity batch statistics and max pooling replaced by
    average pooling of the same window: every activation is positive, so ReLU passes everything and the
    gradient of one output pixel is non-zero exactly on the input pixels some path reaches."""
    m = copy.deepcopy(model).double().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) * 0.9 + 0.1)
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.zero_()
            elif name.endswith("running_var"):
                b.fill_(1.0)
    for mod in list(m.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(
                    mod,
                    child_name,
                    nn.AvgPool2d(child.kernel_size, child.stride, child.padding, ceil_mode=child.ceil_mode),
                )
    return m


def _support_box(model, size, point, in_channels=3):
    """Bounding box ((top, bottom), (left, right)) of the input-gradient support of output pixel `point`."""
    x = (torch.rand(1, in_channels, *size, dtype=torch.float64) + 0.5).requires_grad_(True)
    y = model(x)
    if isinstance(y, dict):
        y = y["out"]
    y[0, :, point[0], point[1]].sum().backward()
    support = x.grad.abs().sum(1)[0] > 0
    rows = support.any(1).nonzero().flatten()
    cols = support.any(0).nonzero().flatten()
    return (int(rows.min()), int(rows.max())), (int(cols.min()), int(cols.max()))


def _check_against_brute_force(model, size, points, in_channels=3):
    """Every point's support box equals the traced interval (points chosen so that it lies inside the image)."""
    tracer = trace(model, size, in_channels=in_channels)
    meta = tracer.meta[tracer.output]
    pos = _positive(model)
    for py, px in points:
        want = []
        for axis, o, n in zip(meta.axes, (py, px), size):
            lo, hi = axis.interval(o)
            assert lo >= 0 and hi <= n - 1, f"test point {o} too close to the border: RF [{lo}, {hi}]"
            want.append((int(lo), int(hi)))
        assert _support_box(pos, size, (py, px), in_channels) == tuple(want), (py, px)
    return receptive_field(model, size, in_channels=in_channels)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.a = AtrousConv2d(4, 4, 3, dilation=2)
        self.b = AtrousConv2d(4, 4, 3, dilation=3)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.up = nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1)

    def forward(self, x):
        x = F.relu(self.stem(x))  # (N, 4, H/2, W/2)
        x = x + self.b(F.relu(self.a(x)))  # residual
        x = self.pool(x)  # (N, 4, H/4, W/4)
        x = self.up(x)  # (N, 4, H/2, W/2)
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class ASPPLike(nn.Module):
    def __init__(self, pooling=True):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.branches = nn.ModuleList(
            [nn.Conv2d(4, 4, 1)] + [AtrousConv2d(4, 4, 3, dilation=r) for r in (2, 4)]
        )
        self.image = nn.Conv2d(4, 4, 1) if pooling else None
        self.project = nn.Conv2d(12 + 4 * pooling, 2, 1)

    def forward(self, x):
        size = x.shape[-2:]
        x = self.stem(x)
        feats = [b(x) for b in self.branches]
        if self.image is not None:
            pooled = self.image(F.adaptive_avg_pool2d(x, 1))
            feats.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False))
        y = self.project(torch.cat(feats, 1))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class CropPadShuffle(nn.Module):
    """FCN-style crop, explicit padding, DUC pixel shuffle and a depthwise bilinear deconvolution."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 5, stride=2)  # no padding: the map shrinks
        self.duc = DUC(4, 2, factor=2)
        self.down = nn.Conv2d(2, 2, 3, stride=3)
        self.up = BilinearUpsample(2, factor=3)

    def forward(self, x):
        y = F.pad(self.conv(x), (2, 2, 2, 2))
        y = self.duc(y)[:, :, 1:-1, 1:-1]
        return self.up(self.down(y))


def test_residual_graph_matches_brute_force():
    r = _check_against_brute_force(Residual(), (64, 64), [(32 + i, 30 + 3 * i) for i in range(4)])
    assert r["output_stride"] == 4 and not r["global"]
    # by hand (rows): stem 3 -> a (+2*2*2) 11 -> b (+2*3*2) 23 -> pool (+2*2) 27 -> deconv / interp vary
    names = [row["name"] for row in r["layers"]]
    assert names[:4] == ["stem", "a", "b", "pool"]
    assert [row["rf"][0] for row in r["layers"][:4]] == [3, 11, 23, 27]


def test_aspp_like_is_global_and_local_part_matches_brute_force():
    r = receptive_field(ASPPLike(), (64, 64))
    assert r["global"] and r["rf"] == [64, 64]
    # the same graph without the pooling branch gives the local receptive field
    local = _check_against_brute_force(ASPPLike(pooling=False), (64, 64), [(31, 31), (32, 33)])
    assert r["rf_local"] == local["rf"] and not local["global"]
    # brute force on the real graph: a global branch reaches every pixel
    pos = _positive(ASPPLike())
    assert _support_box(pos, (64, 64), (5, 5)) == ((0, 63), (0, 63))


def test_crop_pad_shuffle_transposed_match_brute_force():
    model = CropPadShuffle()
    points = [(30 + i, 29 + 2 * i) for i in range(6)]
    r = _check_against_brute_force(model, (72, 72), points)
    assert r["output_stride"] == 3


@pytest.mark.parametrize("method", ["shared_separable", "group_interaction"])
def test_smoothed_atrous_conv_matches_brute_force(method):
    model = nn.Sequential(
        nn.Conv2d(3, 3, 3, padding=1), SmoothedAtrousConv2d(3, 3, 3, dilation=3, method=method)
    )
    _check_against_brute_force(model, (40, 40), [(18, 18), (19, 20), (20, 22)])


@pytest.mark.parametrize(
    "name, options",
    [
        ("dilated_net", {"rates": (1, 2, 5, 9), "channels": 4}),
        ("dilated_net", {"rates": (1, 2, 5), "channels": 4, "block": "reparam"}),
        ("drn_d_22", {"width": 0.125}),
        # DUC's pixel shuffle is covered by test_crop_pad_shuffle_transposed_match_brute_force
        pytest.param("hdc_duc", {"width": 0.0625, "backbone": "resnet18"}, marks=pytest.mark.slow),
        ("deeplabv3plus", {"width": 0.0625, "backbone": "resnet18", "output_stride": 8}),
    ],
)
def test_atrous_models_match_brute_force_along_rows(name, options):
    """Tall, narrow inputs (taller than the receptive field): the row interval lies inside the image, the
    column one is clipped, so rows are compared, for a few output rows of different phases."""
    from atrous import models

    model = models.build(name, 2, **options)
    rf = receptive_field(model, (64, 64))["rf_local"][0]
    size = (8 * ((rf + 40) // 8), 12)
    tracer = trace(model, size)
    meta = tracer.meta[tracer.output]
    pos = _positive(model)
    if name.startswith("deeplab"):  # the image-pooling branch reaches every pixel: silence it
        with torch.no_grad():
            pos.head.aspp.convs[-1][1].weight.zero_()  # (pool, conv, bn, relu)
    for py in (size[0] // 2 - 3, size[0] // 2 + 2):
        lo, hi = meta.axes[0].interval(py)
        assert lo >= 0 and hi < size[0]
        assert _support_box(pos, size, (py, 6))[0] == (int(lo), int(hi)), py


def test_context_module_matches_yu_koltun_table_1():
    from atrous.models.context import ContextModule

    r = receptive_field(ContextModule(classes=3), (128, 128))
    rows = [row["rf"] for row in r["layers"]]
    assert rows == [[v, v] for v in (3, 5, 9, 17, 33, 65, 67, 67)]


def test_every_registered_model_traces_to_its_real_shape_and_stride():
    from atrous import models

    for name in models.available():
        model = models.build(name, 3, **({"width": 0.125} if "width" in models.options(name) else {}))
        tracer = trace(model, (37, 45))
        assert tracer.to_meta, name  # shape-only run, no arithmetic
        assert tuple(tracer.output.shape) == (1, 3, 37, 45), name  # the logits contract, from shapes alone
        r = receptive_field(model, (37, 45))
        # the coarsest map on the way; FCN-16s/8s call their fused prediction's stride their output stride
        coarsest = 32 if name in ("fcn16s", "fcn8s") else model.output_stride
        assert r["output_stride"] == coarsest, name
        # image-level pooling (ASPP's and WASP's pooled branch) or squeeze-and-excitation (RegSeg's blocks)
        assert r["global"] == (name in ("deeplabv3", "deeplabv3plus", "wasp", "regseg")), name
        # every op has a rule (FCN / DUC crops x[..., :h, :w] included); only decoders that add a coarse map
        # resized to a finer one's odd size (a 3x3 map resized to 10x12 beside the stride-4 one) are
        # approximate: DeepLab v3+ and RegSeg
        assert not r["notes"] or name in ("deeplabv3plus", "regseg"), (name, r["notes"])


def test_small_object_limit_follows_skips_and_learned_upsampling():
    from atrous import models

    def build(name, **kw):
        return models.build(name, 2, width=0.125, **kw)

    assert small_object_limit(build("fcn32s"), (96, 96)) == 32
    assert small_object_limit(build("fcn8s"), (96, 96)) == 8  # the pool3 skip restores stride 8 detail
    assert small_object_limit(build("deeplabv3", backbone="resnet18"), (96, 96)) == 16
    assert small_object_limit(build("deeplabv3plus", backbone="resnet18"), (96, 96)) == 4  # decoder skip
    assert small_object_limit(build("hdc_duc", backbone="resnet18"), (96, 96)) == 1  # DUC: own sub-pixels


def test_untracked_ops_are_reported_or_treated_as_global():
    class Transpose(nn.Module):
        def forward(self, x):
            return x.transpose(2, 3)  # no receptive-field rule: the spatial size changes

    r = receptive_field(Transpose(), (10, 12), in_channels=1)
    assert r["notes"] and "approximate" in r["notes"][0]

    class Unfold(nn.Module):
        def forward(self, x):  # flattening the map (attention-like): every output may see every input
            return F.unfold(x, 3).view(1, -1, x.shape[2] - 2, x.shape[3] - 2)

    assert receptive_field(Unfold(), (10, 10), in_channels=1)["global"]


def test_models_that_need_real_values_are_traced_by_a_real_run():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = AtrousConv2d(1, 1, 3, dilation=4)

        def forward(self, x):
            scale = float(x.abs().amax().item()) + 1.0  # .item() has no meaning on meta tensors
            return self.conv(x) * scale

    tracer = trace(DataDependent(), (20, 20))
    assert not tracer.to_meta
    assert receptive_field(DataDependent(), (20, 20))["rf"] == [9, 9]


def test_maps_with_different_jumps_merge_into_a_superset():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 1, 3, stride=2, padding=1)  # 41 -> 21, jump 2
            self.b = nn.Conv2d(1, 1, 3, stride=4, padding=1)  # 41 -> 11, resized to 21: jump 44/21

        def forward(self, x):
            b = F.interpolate(self.b(x), size=(21, 21), mode="bilinear", align_corners=False)
            return self.a(x) + b

    model = Mixed()
    r = receptive_field(model, (41, 41), in_channels=1)
    assert r["notes"]  # flagged as approximate
    tracer = trace(model, (41, 41), in_channels=1)
    meta = tracer.meta[tracer.output]
    pos = _positive(model)
    for o in range(4, 17, 3):
        box = _support_box(pos, (41, 41), (o, o), in_channels=1)
        for axis, (first, last) in zip(meta.axes, box):
            lo, hi = axis.interval(o)
            assert lo <= first and last <= hi, o


class _Forward(nn.Module):
    """Calls `layer.forward` directly: no module hook fires, so the tracer sees only the functional calls."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return type(self.layer).forward(self.layer, x)


_LAYERS = [
    nn.Conv2d(4, 4, 3, padding="same", dilation=2),
    nn.Conv2d(4, 4, (3, 5), stride=(2, 1), padding=(1, 2)),
    nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1),  # channel-mixing: a learned upsampling
    nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1, groups=4),  # per-channel: interpolation only
    nn.MaxPool2d(3, 2, 1, ceil_mode=True),
    nn.AvgPool2d(2),
    nn.AdaptiveAvgPool2d((5, 7)),
    nn.Upsample(scale_factor=2, mode="bilinear"),
    nn.Upsample(size=(17, 19), mode="bicubic", align_corners=True),
    nn.PixelShuffle(2),
    nn.PixelUnshuffle(2),
]


def test_every_rule_with_both_forms_is_checked_below():
    """A rule that serves a functional call and a module is in the equivalence test below."""
    from atrous.analysis.receptive_field import RULES

    for rule in RULES:
        if rule.functions and rule.modules:
            assert any(isinstance(layer, rule.modules) for layer in _LAYERS), rule.name


@pytest.mark.parametrize(
    "layer",
    _LAYERS,
    ids=lambda layer: repr(layer),
)
def test_module_and_functional_forms_share_one_rule(layer):
    """The layer handled whole from its attributes (module hook) and its forward's functional calls give the
    same metadata and row, behind a strided stem (so periodic patterns and the detail are exercised); the
    module form matches brute force at the output's centre."""
    stem = nn.Conv2d(4, 4, 3, stride=2, padding=1)
    whole, functional = nn.Sequential(stem, layer), nn.Sequential(stem, _Forward(layer))
    a, b = trace(whole, (40, 44)), trace(functional, (40, 44))
    assert a.meta[a.output] == b.meta[b.output]
    row_a, row_b = a.rows[-1], b.rows[-1]
    assert row_a.pop("name") == "1" and row_b.pop("name").startswith("1:")  # "1:conv2d"
    assert row_a == row_b
    h, w = a.output.shape[-2:]
    _check_against_brute_force(whole, (40, 44), [(h // 2, w // 2)], in_channels=4)


@pytest.mark.parametrize("merged", [False, True])
def test_dilated_reparam_block_both_forms_match_brute_force(merged):
    """UniRepLKNet's k=13 block behind a strided stem: the training form (a 13x13 depthwise kernel beside
    5@1, 7@2, 3@3, 3@4, 3@5, summed) and its merged 13x13 kernel have the same receptive field, 3 + 2*12 =
    27 px, equal to the brute-force support; the rows show each branch's kernel and rate, or the one kernel."""
    from atrous.analysis import merge_reparam

    model = nn.Sequential(nn.Conv2d(2, 2, 3, stride=2, padding=1), DilatedReparam(2, 13))
    if merged:
        model = merge_reparam(model)
    r = _check_against_brute_force(model, (64, 64), [(16, 16), (15, 18)], in_channels=2)
    assert r["rf"] == [27, 27] and r["output_stride"] == 2
    taps = [(row["kernel"][0], row["dilation"][0]) for row in r["layers"][1:]]
    assert taps == ([(13, 1)] if merged else [(13, 1), (5, 1), (7, 2), (3, 3), (3, 4), (3, 5)])


def test_reparam_dilated_net_keeps_the_plain_receptive_field():
    """dilated_net's block=reparam layer at rate r is a (2r+1) dense kernel: the plain stack's field
    (3 + 2*(1+2+5+1+2+5) = 33 px), in both forms."""
    from atrous import models
    from atrous.analysis import merge_reparam

    plain = models.build("dilated_net", 2, channels=4)
    rep = models.build("dilated_net", 2, channels=4, block="reparam")
    want = [33, 33]
    assert receptive_field(plain, (64, 64))["rf"] == want
    assert receptive_field(rep, (64, 64))["rf"] == want
    assert receptive_field(merge_reparam(rep), (64, 64))["rf"] == want
