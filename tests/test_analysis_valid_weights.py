"""Valid weights of a dilated kernel on a finite map against brute-force enumeration and DeepLab v3's
Fig. 4."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise, product

import pytest

from atrous.analysis import valid_weights


def _brute_valid(size, rate, k):
    c = (k - 1) // 2
    counts = Counter()
    for y, x in product(range(size), repeat=2):
        n = sum(
            0 <= y + (ty - c) * rate < size and 0 <= x + (tx - c) * rate < size
            for ty in range(k)
            for tx in range(k)
        )
        counts[n] += 1
    return {n: v / size**2 for n, v in counts.items()}


@pytest.mark.parametrize("rate, k", [(1, 3), (3, 3), (6, 3), (12, 3), (13, 3), (2, 5), (4, 5)])
def test_valid_weights_equal_brute_enumeration(rate, k):
    got = valid_weights(13, rate, k)
    brute = _brute_valid(13, rate, k)
    assert got["histogram"].keys() == brute.keys()
    for n, v in brute.items():
        assert got["histogram"][n] == pytest.approx(v)
    assert got["mean_fraction"] == pytest.approx(sum(n * v for n, v in brute.items()) / k**2)


def test_valid_weights_deeplab_v3_fig4_endpoints():
    # rate 1 on 65x65: all 9 taps valid everywhere except the one-pixel border
    assert valid_weights(65, 1)["all_valid"] == pytest.approx(63**2 / 65**2)
    # rate >= 65: the 3x3 filter degenerates to its centre tap at every position
    for r in (65, 80):
        v = valid_weights(65, r)
        assert v["only_centre"] == 1.0 and v["mean_fraction"] == pytest.approx(1 / 9)
    curve = [valid_weights(65, r)["mean_fraction"] for r in range(1, 70)]
    assert all(a >= b for a, b in pairwise(curve))  # monotone decay as in the figure
