"""Inference strategies against independent computations: explicit window lists and pixel loops, a
flip-equivariant model, and a hand-written multi-scale loop using torchvision's resize."""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from atrous.errors import AtrousError
from atrous.inference import (
    MultiScaleFlip,
    SlidingWindow,
    build_infer,
    parse_tta,
    whole_image,
    window_starts,
)


def context_net(k: int = 4) -> nn.Module:
    """A small net whose output at a pixel depends on a 7x7 neighbourhood, so tiling changes it."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, k, 5, padding=4, dilation=2)
    ).eval()


@pytest.mark.parametrize(
    ("size", "window", "stride", "expected"),
    [(10, 4, 3, [0, 3, 6]), (11, 4, 3, [0, 3, 6, 7]), (4, 4, 1, [0]), (3, 8, 2, [0]), (9, 3, 3, [0, 3, 6])],
)
def test_window_starts_by_hand(size, window, stride, expected):
    assert window_starts(size, window, stride) == expected


def test_sliding_window_covering_image_equals_whole_image():
    model = context_net()
    x = torch.randn(2, 3, 13, 17)
    with torch.no_grad():
        whole = model(x)
        assert torch.equal(SlidingWindow(size=(13, 17))(model, x), whole)
        assert torch.equal(SlidingWindow(size=64)(model, x), whole)  # windows clip to the image


def test_sliding_window_of_pointwise_model_equals_whole_image():
    # 1x1 convolutions: each window's logits at a pixel equal the whole image's, so the overlap average
    # must reproduce them exactly wherever (and however often) a pixel is covered
    model = nn.Sequential(nn.Conv2d(3, 5, 1), nn.ReLU(), nn.Conv2d(5, 4, 1)).eval()
    x = torch.randn(1, 3, 23, 19)
    with torch.no_grad():
        torch.testing.assert_close(SlidingWindow(size=8, stride=5)(model, x), model(x))


def test_sliding_window_against_pixel_loop():
    model = context_net()
    x = torch.randn(1, 3, 11, 10)
    # windows 4 x 5 every 3 x 4: rows start at 0, 3, 6, 7 and columns at 0, 4, 5 (worked out by hand)
    rows, cols = [0, 3, 6, 7], [0, 4, 5]
    with torch.no_grad():
        tiles = {(r, c): model(x[:, :, r : r + 4, c : c + 5])[0].numpy() for r in rows for c in cols}
        got = SlidingWindow(size=(4, 5), stride=(3, 4))(model, x)[0].numpy()
    expected = np.zeros_like(got)
    for i in range(11):
        for j in range(10):
            covering = [
                t[:, i - r, j - c] for (r, c), t in tiles.items() if r <= i < r + 4 and c <= j < c + 5
            ]
            expected[:, i, j] = np.mean(covering, axis=0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # and the tiling really differs from one whole-image pass (the test can fail)
        assert not torch.allclose(torch.from_numpy(got), model(x)[0], atol=1e-3)


def test_flip_tta_of_flip_equivariant_model_equals_plain():
    # kernels symmetric under a left-right mirror (and a pointwise ReLU) make the net flip-equivariant:
    # model(flip(x)) == flip(model(x)), so averaging with the mirrored pass changes nothing
    model = context_net()
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Conv2d):
                m.weight.copy_((m.weight + m.weight.flip(-1)) / 2)
    x = torch.randn(2, 3, 12, 15)
    with torch.no_grad():
        plain = model(x)
        torch.testing.assert_close(model(x.flip(-1)), plain.flip(-1))
        tta = MultiScaleFlip(scales=(1.0,), flip=True)(model, x)
    torch.testing.assert_close(tta, plain.log_softmax(dim=1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tta.softmax(dim=1), plain.softmax(dim=1))


def test_flip_tta_of_ordinary_model_is_mean_of_mirrored_probabilities():
    model = context_net()
    x = torch.randn(1, 3, 12, 15)
    with torch.no_grad():
        expected = (model(x).softmax(1) + model(x.flip(-1)).flip(-1).softmax(1)) / 2
        got = MultiScaleFlip(scales=(1.0,), flip=True)(model, x).softmax(dim=1)
        torch.testing.assert_close(got, expected)
        assert not torch.allclose(got, model(x).softmax(1), atol=1e-3)


def test_multiscale_flip_against_hand_loop():
    model = context_net()
    x = torch.randn(2, 3, 18, 13)
    scales = (0.5, 0.75, 1.0, 1.5)
    expected = torch.zeros(2, 4, 18, 13)
    with torch.no_grad():
        for s in scales:
            # nearest pixel, halves up (13 * 0.5 = 6.5 -> 7)
            size = [int(np.floor(18 * s + 0.5)), int(np.floor(13 * s + 0.5))]
            xs = TF.resize(x, size, antialias=False)
            for mirror in (False, True):
                inp = xs.flip(-1) if mirror else xs
                out = model(inp)
                out = out.flip(-1) if mirror else out
                expected += TF.resize(out, [18, 13], antialias=False).softmax(dim=1)
        expected /= 2 * len(scales)
        got = MultiScaleFlip(scales=scales, flip=True)(model, x)
    torch.testing.assert_close(got.softmax(dim=1), expected)
    torch.testing.assert_close(got, expected.log())


def test_multiscale_over_sliding_windows():
    model = context_net()
    x = torch.randn(1, 3, 20, 14)
    sliding = SlidingWindow(size=8)
    with torch.no_grad():
        expected = (
            sliding(model, x).softmax(1)
            + TF.resize(
                sliding(model, TF.resize(x, [30, 21], antialias=False)), [20, 14], antialias=False
            ).softmax(1)
        ) / 2
        got = build_infer(sliding=8, scales=(1.0, 1.5))(model, x)
    torch.testing.assert_close(got.softmax(1), expected)


def test_parse_tta_and_build_infer():
    assert parse_tta("flip,0.75,1.0,1.25") == ((0.75, 1.0, 1.25), True)
    assert parse_tta("flip") == ((1.0,), True)
    assert parse_tta("0.5, 2") == ((0.5, 2.0), False)
    for bad in ("flop", "0", "-1", "nan", "1,,2"):
        with pytest.raises(AtrousError, match="--tta"):
            parse_tta(bad)
    assert build_infer() is whole_image
    assert isinstance(build_infer(sliding=32), SlidingWindow)
    tta = build_infer(sliding=32, stride=16, scales=(1.0,), flip=True)
    assert isinstance(tta, MultiScaleFlip) and tta.base.stride == (16, 16)
    with pytest.raises(ValueError, match="stride"):
        build_infer(stride=4)
    with pytest.raises(ValueError, match="size"):
        SlidingWindow(size=0)
    with pytest.raises(ValueError, match="must not exceed the window"):
        SlidingWindow(size=8, stride=(4, 9))  # a 1-pixel gap between windows
    with pytest.raises(ValueError, match="scales"):
        MultiScaleFlip(scales=())
