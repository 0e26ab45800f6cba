"""Operators against independent references: F.conv2d / F.conv1d in float64, F.interpolate, brute loops."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from atrous.ops import (
    DUC,
    SPACE_TO_BATCH_MAX_CHANNELS,
    AtrousConv1d,
    AtrousConv2d,
    BilinearUpsample,
    SmoothedAtrousConv2d,
    atrous_conv2d,
    check_rates,
    choose_impl,
    choose_layout,
)

TOL = dict(rtol=1e-5, atol=1e-5)


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    return dict(
        n=draw(st.integers(1, 2)),
        groups=groups,
        cin=groups * draw(st.integers(1, 3)),
        cout=groups * draw(st.integers(1, 3)),
        h=draw(st.integers(1, 23)),
        w=draw(st.integers(1, 23)),
        k=draw(st.sampled_from([1, 3, 5])),
        rate=draw(st.integers(1, 9)),
        stride=draw(st.integers(1, 3)),
        bias=draw(st.booleans()),
        channels_last=draw(st.booleans()),
        impl=draw(st.sampled_from(["native", "space_to_batch"])),
    )


def _reference(x, w, b, rate, stride, groups):
    k = w.shape[-1]
    return F.conv2d(x, w, b, stride=stride, padding=rate * (k - 1) // 2, dilation=rate, groups=groups)


@settings(max_examples=60, deadline=None)
@given(conv_cases())
def test_atrous_conv2d_matches_float64_reference_forward_and_backward(case):
    g = torch.Generator().manual_seed(case["h"] * 100 + case["w"])

    def uniform(*shape):  # values in [-1, 1): fp32 sums over up to 3*23*23 products stay within 1e-5
        return torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1

    x64 = uniform(case["n"], case["cin"], case["h"], case["w"])
    w64 = uniform(case["cout"], case["cin"] // case["groups"], case["k"], case["k"])
    b64 = uniform(case["cout"]) if case["bias"] else None
    ref_in = [t.clone().requires_grad_() for t in (x64, w64) + ((b64,) if b64 is not None else ())]
    ref = _reference(
        *ref_in[:2], ref_in[2] if b64 is not None else None, case["rate"], case["stride"], case["groups"]
    )
    grad_out = uniform(*ref.shape)
    ref_grads = torch.autograd.grad(ref, ref_in, grad_out)

    x = x64.float()
    if case["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    ins = [t.float().requires_grad_() for t in (x64, w64) + ((b64,) if b64 is not None else ())]
    if case["channels_last"]:
        ins[0] = x.detach().requires_grad_()
    out = atrous_conv2d(
        ins[0],
        ins[1],
        ins[2] if b64 is not None else None,
        dilation=case["rate"],
        stride=case["stride"],
        groups=case["groups"],
        impl=case["impl"],
    )
    assert out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, **TOL)
    if (
        case["channels_last"]
        and not x.is_contiguous()
        and out.shape[1] > 1
        and out.shape[-1] * out.shape[-2] > 1
    ):
        # an input that is unambiguously channels_last keeps that layout (C=1 or H=W=1 is both layouts)
        assert out.is_contiguous(memory_format=torch.channels_last)
    grads = torch.autograd.grad(out, ins, grad_out.float())
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, **TOL)


def test_native_path_crops_dead_taps_exactly():
    # rate 16 on a 9x9 map: only the centre tap of a 3x3 kernel can reach a real pixel
    x = torch.randn(1, 4, 9, 9, dtype=torch.float64)
    w = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    got = atrous_conv2d(x, w, dilation=16)
    torch.testing.assert_close(got, F.conv2d(x, w[:, :, 1:2, 1:2]))
    torch.testing.assert_close(got, _reference(x, w, None, 16, 1, 1))


def test_space_to_batch_handles_sizes_not_divisible_by_rate():
    x = torch.randn(2, 3, 17, 10, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    for rate in (2, 3, 4, 7):
        got = atrous_conv2d(x, w, dilation=rate, impl="space_to_batch")
        torch.testing.assert_close(got, _reference(x, w, None, rate, 1, 1))


def test_atrous_conv2d_module_is_a_conv2d_with_same_padding_and_keys():
    m = AtrousConv2d(4, 6, 3, dilation=3, stride=2, groups=2)
    assert isinstance(m, nn.Conv2d)
    assert m.padding == (3, 3) and m.dilation == (3, 3) and m.stride == (2, 2)
    plain = nn.Conv2d(4, 6, 3, stride=2, padding=3, dilation=3, groups=2)
    assert m.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(m.state_dict())
    x = torch.randn(2, 4, 19, 14)
    for impl in ("auto", "native", "space_to_batch"):
        m.impl = impl
        torch.testing.assert_close(m(x), plain(x), **TOL)


def test_atrous_conv2d_arguments_after_kernel_size_are_keyword_only():
    with pytest.raises(TypeError):
        AtrousConv2d(4, 4, 3, 2)  # nn.Conv2d's 4th positional argument is the stride


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(dilation=0), "dilation must be an integer >= 1"),
        (dict(dilation=-2), "dilation must be an integer >= 1"),
        (dict(dilation=1.5), "dilation must be an integer >= 1"),
        (dict(stride=0), "stride must be an integer >= 1"),
        (dict(impl="fast"), "impl must be"),
    ],
)
def test_atrous_conv2d_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AtrousConv2d(4, 4, 3, **kwargs)


def test_bad_sizes_and_even_kernels_say_what_is_allowed():
    with pytest.raises(ValueError, match="in_channels must be an integer >= 1"):
        AtrousConv2d(-1, 4)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        AtrousConv2d(4, 4, 4, dilation=2)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        atrous_conv2d(torch.randn(1, 1, 5, 5), torch.randn(1, 1, 2, 2), dilation=2)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        AtrousConv1d(4, 4, 2, dilation=2)
    with pytest.raises(ValueError, match="impl must be one of"):
        atrous_conv2d(torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3), dilation=2, impl="x")


@pytest.mark.parametrize("rates", [(), [0], [1, -2], [2, 1.5], [True, 2], ["2"]])
def test_check_rates_refuses_what_is_not_a_list_of_positive_integers(rates):
    with pytest.raises(ValueError, match=r"^my rates must be a non-empty list of integers >= 1, got "):
        check_rates(rates, "my rates")


def test_check_rates_returns_a_tuple():
    assert check_rates([1, 2, 5]) == (1, 2, 5)
    assert check_rates(r for r in (3,)) == (3,)


def test_every_rate_list_is_checked_by_check_rates_with_its_own_name():
    # The models and the coverage analysis share one check (they each had a copy); each error names the
    # argument the caller gave.
    from atrous.analysis.coverage import hdc_check
    from atrous.models.backbones.dilated_stack import DilatedStack
    from atrous.models.backbones.resnet import stage_schedule
    from atrous.models.denseaspp import DenseASPP
    from atrous.models.heads import ASPP
    from atrous.models.poolnet import PoolStack
    from atrous.models.wasp import WASP

    calls = [
        (r"^ASPP rates", lambda: ASPP(in_channels=4, rates=[6, 0], dropout=0.1)),
        (r"^DenseASPP rates", lambda: DenseASPP(in_channels=4, rates=())),
        (r"^WASP rates", lambda: WASP(in_channels=4, rates=[True])),
        (r"^rates", lambda: DilatedStack(rates=[1, 2.0])),
        (r"^rates", lambda: PoolStack(rates=[0], channels=4, poolings=0)),
        (
            r"^block_rates\['layer3'\]",
            lambda: stage_schedule(blocks=(3, 4, 6, 3), output_stride=8, block_rates={"layer3": (1, 0)}),
        ),
        (r"^multi_grid", lambda: stage_schedule(blocks=(3, 4, 6, 3), output_stride=8, multi_grid=())),
        (r"^rates", lambda: hdc_check([2, -1])),
    ]
    for name, call in calls:
        with pytest.raises(ValueError, match=name + r" must be a non-empty list of integers >= 1, got \("):
            call()


def test_choose_impl_is_deterministic_and_valid():
    x = torch.randn(1, 8, 32, 32)
    picks = {choose_impl(x, 3, r) for _ in range(3) for r in (1, 2, 8, 16)}
    assert picks <= {"native", "space_to_batch"}
    assert [choose_impl(x, 3, r) for r in range(1, 17)] == [choose_impl(x, 3, r) for r in range(1, 17)]


def test_choose_impl_follows_the_documented_crossovers():
    nchw, cl = (
        torch.randn(1, 8, 16, 16),
        torch.randn(1, 8, 16, 16).contiguous(memory_format=torch.channels_last),
    )
    wide = torch.randn(1, SPACE_TO_BATCH_MAX_CHANNELS, 4, 4)
    assert choose_impl(nchw, 3, 2) == "space_to_batch"  # NCHW, narrow, grad recorded: dense kernels only
    assert choose_impl(nchw, 3, 1) == choose_impl(cl, 3, 2) == choose_impl(wide, 3, 8) == "native"
    assert choose_impl(nchw, 3, 2, stride=2) == "native"
    assert choose_impl(nchw, 3, 3) == "native"  # 6x6 sub-images: below SPACE_TO_BATCH_MIN_BLOCK
    assert choose_layout(wide, 3, 8) == torch.channels_last and choose_layout(nchw, 3, 8) is None
    with torch.no_grad():
        assert choose_impl(nchw, 3, 2) == "native"
        assert choose_layout(nchw, 3, 4) == torch.channels_last and choose_layout(nchw, 3, 3) is None
        assert choose_layout(cl, 3, 8) is None


@pytest.mark.parametrize("channels", [5, SPACE_TO_BATCH_MAX_CHANNELS])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("rate", [1, 2, 4, 8])
def test_auto_matches_float64_reference_with_and_without_grad(channels, channels_last, rate):
    # every branch of the rule: native, space_to_batch (narrow NCHW with grad), the channels_last switch
    # (wide NCHW at rate >= 8); sizes that no rate divides
    m = AtrousConv2d(channels, 3, 3, dilation=rate)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x64 = torch.randn(2, channels, 17, 19, dtype=torch.float64)
    w64 = m.weight.detach().double().requires_grad_()
    x64.requires_grad_()
    ref = _reference(x64, w64, m.bias.detach().double(), rate, 1, 1)
    g = torch.randn_like(ref)
    rx, rw = torch.autograd.grad(ref, (x64, w64), g)
    x = x64.detach().float().contiguous(memory_format=fmt).requires_grad_()
    with torch.no_grad():
        torch.testing.assert_close(m(x).double(), ref.detach(), **TOL)
    y = m(x)
    torch.testing.assert_close(y.double(), ref.detach(), **TOL)
    assert y.is_contiguous(memory_format=fmt)  # the caller's layout, whatever ran inside
    gx, gw = torch.autograd.grad(y, (x, m.weight), g.float())
    torch.testing.assert_close(gx.double(), rx, **TOL)
    torch.testing.assert_close(gw.double(), rw, rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# 1-D
# ----------------------------------------------------------------------------------------------------------
def _brute_conv1d(x, w, b, rate, left_pad):
    """y[n, o, t] = b[o] + sum_{c, j} w[o, c, j] * x[n, c, t - left_pad + j * rate] (zero outside)."""
    n, _, length = x.shape
    o, _, k = w.shape
    y = np.zeros((n, o, length))
    for t in range(length):
        for j in range(k):
            src = t - left_pad + j * rate
            if 0 <= src < length:
                y[:, :, t] += np.einsum("oc,nc->no", w[:, :, j], x[:, :, src])
    return y + b[None, :, None]


@settings(max_examples=30, deadline=None)
@given(
    k=st.integers(1, 5),
    rate=st.integers(1, 6),
    length=st.integers(1, 30),
    causal=st.booleans(),
)
def test_atrous_conv1d_matches_brute_force(k, rate, length, causal):
    if not causal and k % 2 == 0:
        k += 1
    m = AtrousConv1d(3, 2, k, dilation=rate, causal=causal).double()
    x = torch.randn(2, 3, length, dtype=torch.float64)
    y = m(x)
    assert y.shape == (2, 2, length)
    left = rate * (k - 1) if causal else rate * (k - 1) // 2
    want = _brute_conv1d(x.numpy(), m.weight.detach().numpy(), m.bias.detach().numpy(), rate, left)
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-10, atol=1e-10)
    if not causal:
        ref = F.conv1d(x, m.weight, m.bias, padding=left, dilation=rate)
        torch.testing.assert_close(y, ref)


def test_causal_conv1d_output_sees_only_the_past():
    m = AtrousConv1d(1, 1, 3, dilation=4, causal=True).double()
    x = torch.randn(1, 1, 40, dtype=torch.float64, requires_grad=True)
    t = 25
    m(x)[0, 0, t].backward()
    support = torch.nonzero(x.grad[0, 0]).flatten().tolist()
    assert support == [17, 21, 25]  # t - 8, t - 4, t: nothing after t


def test_conv1d_gradients_match_float64_reference():
    m = AtrousConv1d(3, 4, 3, dilation=5)
    x = torch.randn(2, 3, 33, requires_grad=True)
    y = m(x)
    x64 = x.detach().double().requires_grad_()
    w64 = m.weight.detach().double().requires_grad_()
    ref = F.conv1d(x64, w64, m.bias.detach().double(), padding=5, dilation=5)
    g = torch.randn_like(ref)
    gx, gw = torch.autograd.grad(y, (x, m.weight), g.float())
    rx, rw = torch.autograd.grad(ref, (x64, w64), g)
    torch.testing.assert_close(gx.double(), rx, **TOL)
    torch.testing.assert_close(gw.double(), rw, **TOL)


# ----------------------------------------------------------------------------------------------------------
# upsampling
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("factor", [2, 3, 4, 8])
def test_bilinear_upsample_equals_interpolate_away_from_border(factor):
    up = BilinearUpsample(3, factor).double()
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    y = up(x)
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert y.shape == ref.shape == (2, 3, 9 * factor, 7 * factor)
    b = factor  # the outermost input pixel's footprint sees zero padding in the deconvolution
    torch.testing.assert_close(y[..., b:-b, b:-b], ref[..., b:-b, b:-b], rtol=1e-6, atol=1e-6)
    assert (y - ref).abs().max() > 1e-3  # and the border differs: the comparison is not vacuous


def test_bilinear_upsample_learnable_flag():
    frozen = BilinearUpsample(2, 4, learnable=False)
    free = BilinearUpsample(2, 4)
    assert not frozen.weight.requires_grad and free.weight.requires_grad
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    frozen(x).sum().backward()
    assert frozen.weight.grad is None and x.grad is not None


def test_duc_is_conv_then_pixel_shuffle():
    duc = DUC(6, 3, factor=4)
    x = torch.randn(2, 6, 5, 7)
    y = duc(x)
    assert y.shape == (2, 3, 20, 28)
    z = duc.conv(x)  # (2, 3*16, 5, 7)
    for c in range(3):
        for i in range(4):
            for j in range(4):
                torch.testing.assert_close(y[:, c, i::4, j::4], z[:, c * 16 + i * 4 + j])


# ----------------------------------------------------------------------------------------------------------
# smoothed dilated convolutions
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", SmoothedAtrousConv2d.METHODS)
@pytest.mark.parametrize("shape", [(2, 4, 12, 12), (1, 4, 13, 9)])
def test_smoothed_atrous_equals_plain_dilated_conv_at_init(method, shape):
    m = SmoothedAtrousConv2d(4, 5, 3, dilation=3, method=method).double()
    x = torch.randn(shape, dtype=torch.float64)
    ref = F.conv2d(x, m.conv.weight, m.conv.bias, padding=3, dilation=3)
    torch.testing.assert_close(m(x), ref)


def test_shared_separable_smoothing_is_one_filter_for_all_channels():
    m = SmoothedAtrousConv2d(3, 2, 3, dilation=2, method="shared_separable").double()
    with torch.no_grad():
        m.smooth.copy_(torch.rand_like(m.smooth))
    x = torch.randn(1, 3, 11, 10, dtype=torch.float64)
    smoothed = F.conv2d(x, m.smooth.expand(3, 1, 3, 3), padding=1, groups=3)  # same filter per channel
    ref = F.conv2d(smoothed, m.conv.weight, m.conv.bias, padding=2, dilation=2)
    torch.testing.assert_close(m(x), ref)


def test_group_interaction_mixes_interleaved_groups():
    r = 2
    m = SmoothedAtrousConv2d(2, 3, 3, dilation=r, method="group_interaction").double()
    perm = [3, 2, 1, 0]  # output group j takes input group perm[j]
    with torch.no_grad():
        m.mix.copy_(torch.eye(r * r, dtype=torch.float64)[perm])
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    plain = F.conv2d(x, m.conv.weight, m.conv.bias, padding=r, dilation=r)
    want = torch.empty_like(plain)
    for j, i in enumerate(perm):  # group index g = a * r + b covers pixels (a::r, b::r)
        want[..., j // r :: r, j % r :: r] = plain[..., i // r :: r, i % r :: r]
    torch.testing.assert_close(m(x), want)
