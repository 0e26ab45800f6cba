"""atrous.perf: FLOP counts against independent computations, timing helpers, subprocess memory."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from atrous import perf
from atrous.ops import AtrousConv2d, atrous_conv2d


def _real_macs_brute(c_in, c_out, size, k, stride, pad, dilation, groups=1, n=1):
    """Multiply-adds on real pixels, counted by convolving an all-ones image with an all-ones kernel
    under the same zero padding: each output value is the number of taps that hit a real pixel."""
    ones = torch.ones(1, 1, *size, dtype=torch.float64)
    hits = F.conv2d(
        ones, torch.ones(1, 1, k, k, dtype=torch.float64), stride=stride, padding=pad, dilation=dilation
    )
    return int(hits.sum()) * n * c_out * (c_in // groups)


@pytest.mark.parametrize(
    ("size", "k", "stride", "dilation", "groups"),
    [((13, 9), 3, 1, 4, 1), ((16, 16), 3, 2, 1, 2), ((8, 11), 3, 1, 24, 1), ((7, 7), 5, 1, 2, 1)],
)
def test_conv_flops_match_independent_counts(size, k, stride, dilation, groups):
    c_in, c_out, n = 4, 6, 2
    pad = dilation * (k - 1) // 2
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, dilation=dilation, groups=groups)
    counts = perf.flop_breakdown(conv, (n, c_in, *size))
    # nominal: torch.utils.flop_counter on the plain conv (2 x multiply-adds, every tap)
    with FlopCounterMode(display=False) as counter:
        conv(torch.zeros(n, c_in, *size))
    assert counts["nominal"] == counter.get_total_flops()
    assert counts["real_pixel"] == 2 * _real_macs_brute(
        c_in, c_out, size, k, stride, pad, dilation, groups, n
    )
    assert counts["real_pixel"] < counts["nominal"]


def test_atrous_conv_counts_nominal_although_it_executes_fewer_taps():
    # rate 8 on a 6x6 map: only the centre tap can reach a real pixel, so the native kernel runs a 1x1
    conv = AtrousConv2d(8, 8, 3, dilation=8, bias=False)
    counts = perf.flop_breakdown(conv, (1, 8, 6, 6))
    assert counts["executed"] == 2 * 8 * 8 * 36  # the cropped 1x1 conv actually called
    assert counts["real_pixel"] == counts["executed"]
    assert counts["nominal"] == 9 * counts["executed"]
    assert perf.count_flops(conv, (1, 8, 6, 6)) == counts["nominal"]
    assert perf.real_pixel_flops(conv, (1, 8, 6, 6)) == counts["real_pixel"]


def test_non_conv_ops_and_model_state():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 25, 10)
    )
    model.train()
    stats_before = model[1].running_mean.clone()
    counts = perf.flop_breakdown(model, (2, 3, 5, 5))
    linear = 2 * 2 * 100 * 10
    assert counts["nominal"] - counts["conv_nominal"] == linear
    assert counts["real_pixel"] - counts["conv_real_pixel"] == linear
    assert model.training and torch.equal(model[1].running_mean, stats_before)  # no BN update


def test_param_count():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2, bias=False))
    model[1].weight.requires_grad_(False)
    assert perf.param_count(model) == 3 * 4 * 9 + 4 + 8
    assert perf.param_count(model, trainable_only=True) == 3 * 4 * 9 + 4


def test_latency_and_compare_call_counts_and_ratio():
    calls = {"a": 0, "b": 0}
    order = []

    def fa():
        calls["a"] += 1
        order.append("a")

    def fb():
        calls["b"] += 1
        order.append("b")

    stats = perf.latency(fa, warmup=2, repeats=5)
    assert calls["a"] == 7 and len(stats["times_s"]) == 5 and stats["repeats"] == 5
    assert stats["min_s"] <= stats["median_s"] <= stats["max_s"]
    order.clear()
    result = perf.compare(fa, fb, warmup=1, repeats=4)
    assert order == ["a", "b"] + ["a", "b", "b", "a"] * 2  # alternating after the warm-up
    assert result["ratio"] == pytest.approx(result["a"]["median_s"] / result["b"]["median_s"])
    assert result["speedup"] == pytest.approx(1 / result["ratio"])
    with pytest.raises(ValueError, match="repeats"):
        perf.latency(fa, warmup=0, repeats=0)


def test_peak_memory_in_a_fresh_process():
    shape = (1, 3, 96, 96)
    result = perf.peak_memory("torchvision:lraspp_mobilenet_v3_large", num_classes=5, input_shape=shape)
    assert result["exact_peak"] is True
    # at least the first conv's output must have been resident: (1, 16, 48, 48) float32
    assert result["peak_bytes"] >= 16 * 48 * 48 * 4
    assert result["spec"]["input_shape"] == list(shape)
    with pytest.raises(ValueError, match="inference"):
        perf.peak_memory("torchvision:fcn_resnet50", mode="train", optimize={})


def test_interleave_rotates_the_order():
    order = []
    fns = {k: (lambda k=k: order.append(k)) for k in "abc"}
    result = perf.interleave(fns, warmup=0, repeats=3)
    assert order == list("abcbcacab")
    assert set(result) == set("abc") and all(r["repeats"] == 3 for r in result.values())


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize(("channels", "rate"), [(8, 8), (256, 8), (256, 3)])
def test_auto_rule_keeps_layout_values_and_gradients(channels, rate, grad):
    """Whatever `impl="auto"` picks (implementation, layout switch), the result, its layout and the
    gradients equal the float64 F.conv2d reference."""
    from atrous.ops import choose_impl, choose_layout

    conv = AtrousConv2d(channels, 4, 3, dilation=rate)
    x = torch.randn(1, channels, 19, 17, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        y = conv(x)
        pick = (choose_impl(x, 3, rate), choose_layout(x, 3, rate))
    assert y.is_contiguous()  # NCHW in, NCHW out, even when channels_last ran inside
    x64, w64, b64 = (t.detach().double().requires_grad_(grad) for t in (x, conv.weight, conv.bias))
    ref = F.conv2d(x64, w64, b64, padding=rate, dilation=rate)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    if grad:
        g = torch.randn_like(ref)
        got = torch.autograd.grad(y, (x, conv.weight), g.float())
        want = torch.autograd.grad(ref, (x64, w64), g)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)
    # 19x17 at rate >= 3: sub-images under 8x8, so no space_to_batch; the layout switch as documented
    switch = (rate >= 8 and channels >= 256) or (rate >= 4 and not grad)
    assert pick == ("native", torch.channels_last if switch else None)


def test_space_to_batch_skips_taps_that_only_read_padding():
    # rate 8 on a 6x5 map: only the centre tap reaches a real pixel; both paths must run a 1x1 conv
    x, w = torch.randn(1, 4, 6, 5), torch.randn(3, 4, 3, 3)
    for impl in ("native", "space_to_batch"):
        with FlopCounterMode(display=False) as counter:
            y = atrous_conv2d(x, w, dilation=8, impl=impl)
        # space_to_batch convolves r*r = 64 phase images of 1x1 each: 64 positions, 1 tap each
        positions = 6 * 5 if impl == "native" else 64
        assert counter.get_total_flops() == 2 * 3 * 4 * positions, impl
        torch.testing.assert_close(y, F.conv2d(x, w, padding=8, dilation=8))
