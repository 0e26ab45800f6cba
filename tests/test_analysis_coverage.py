"""Coverage maps (rate stacks, models, dilated re-parameterisation blocks) and the HDC rules against
brute-force enumeration, hand computations and the papers' published examples."""

from __future__ import annotations

import math
from collections import Counter
from itertools import product

import numpy as np
import pytest
import torch
from torch import nn

from atrous.analysis import (
    coverage,
    coverage_model,
    coverage_reparam,
    hdc_check,
    hdc_plan,
    merge_reparam,
)


def _brute_paths(rates, k):
    """2-D path counts by enumerating every choice of one tap per layer (independent of the code)."""
    c = (k - 1) // 2
    taps = [(dy, dx) for dy in range(-c, c + 1) for dx in range(-c, c + 1)]
    counts = Counter()
    for choice in product(taps, repeat=len(rates)):
        y = sum(t[0] * r for t, r in zip(choice, rates))
        x = sum(t[1] * r for t, r in zip(choice, rates))
        counts[(y, x)] += 1
    return counts


@pytest.mark.parametrize("rates, k", [((2, 2, 2), 3), ((1, 2, 5), 3), ((1, 2, 9), 3), ((2, 3), 5), ((3,), 3)])
def test_coverage_equals_brute_enumeration(rates, k):
    cov = coverage(rates, k)
    brute = _brute_paths(rates, k)
    half = (k - 1) // 2 * sum(rates)
    n = 2 * half + 1
    assert cov["rf"] == [n, n]
    grid = [[brute.get((y - half, x - half), 0) for x in range(n)] for y in range(n)]
    assert cov["coverage"] == grid
    covered = [v for row in grid for v in row if v]
    assert cov["holes"] == n * n - len(covered)
    assert cov["gridding_ratio"] == pytest.approx((n * n - len(covered)) / (n * n))
    assert cov["spread"] == pytest.approx(max(covered) / min(covered))


def test_gridding_of_222_and_exponential_spread():
    cov = coverage((2, 2, 2))
    assert cov["holes"] == 13 * 13 - 7 * 7  # only even offsets are reached: 7 of 13 per axis
    assert coverage((1, 2, 5))["holes"] == 0
    # an exponential schedule covers everything but unevenly (Yu & Koltun's context rates)
    ctx = coverage((1, 1, 2, 4, 8, 16, 1))
    assert ctx["holes"] == 0 and ctx["rf"] == [67, 67] and ctx["spread"] > 1000


def test_coverage_model_of_a_plain_stack_equals_the_exact_counts():
    from atrous import models

    for rates in ((2, 2, 2), (1, 2, 5)):
        model = models.build("dilated_net", 2, rates=rates, channels=3)
        got = coverage_model(model, (41, 41))
        exact = coverage(rates)
        top, left, bottom, right = got["box"]
        box = np.array(got["coverage"])[top : bottom + 1, left : right + 1]
        assert got["rf"] == exact["rf"] and got["holes"] == exact["holes"]
        np.testing.assert_allclose(box, np.array(exact["coverage"], dtype=float), rtol=1e-12)


def test_coverage_model_counts_max_pool_windows_and_skips_global_pooling():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=2, dilation=2)
            self.pool = nn.MaxPool2d(2, 2)
            self.fc = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            y = self.pool(torch.relu(self.conv(x)))  # (N, 2, H/2, W/2)
            return self.fc(y) + y.mean((2, 3), keepdim=True)

    got = coverage_model(Net(), (16, 16), point=(4, 4))
    # by hand: output (4, 4) sums pool window rows/cols 8..9, each reading offsets -2, 0, 2: rows 6..11
    grid = np.array(got["coverage"])
    want_axis = np.zeros(16)
    for p in (8, 9):
        for t in (-2, 0, 2):
            want_axis[p + t] += 1
    np.testing.assert_allclose(grid, np.outer(want_axis, want_axis))
    assert got["holes"] == 0 and got["rf"] == [6, 6]


UNIREP_13 = ((5, 1), (7, 2), (3, 3), (3, 4), (3, 5))  # the paper's k=13 block, written out again
UNIREP_5 = ((3, 1), (3, 2))  # and its k=5 block (dilated_net's rate-2 layer)


def _block_taps(kernel_size, branches, large):
    """{(dy, dx): how many branches read that offset}, by listing each branch's taps (independent)."""
    counts = Counter()
    c = kernel_size // 2
    if large:
        counts.update(product(range(-c, c + 1), repeat=2))
    for k, r in branches:
        h = k // 2
        counts.update((i * r, j * r) for i, j in product(range(-h, h + 1), repeat=2))
    return counts


def _convolve(a: Counter, b: Counter) -> Counter:
    out = Counter()
    for (ya, xa), va in a.items():
        for (yb, xb), vb in b.items():
            out[(ya + yb, xa + xb)] += va * vb
    return out


@pytest.mark.parametrize("large", [True, False])
@pytest.mark.parametrize(
    "kernel_size, branches", [(13, None), (9, ((5, 1), (5, 2), (3, 3), (3, 4))), (7, ((3, 3),))]
)
def test_reparam_block_counts_equal_brute_enumeration(kernel_size, branches, large):
    cov = coverage_reparam(kernel_size, branches, large=large)
    brute = _block_taps(kernel_size, branches or UNIREP_13, large)
    c = kernel_size // 2
    assert cov["coverage"] == [
        [brute.get((y - c, x - c), 0) for x in range(kernel_size)] for y in range(kernel_size)
    ]
    reach = max(max(abs(y), abs(x)) for y, x in brute)
    n = 2 * reach + 1
    assert cov["rf"] == [n, n] and cov["holes"] == n * n - len(brute)
    assert cov["spread"] == max(brute.values()) / min(brute.values())


def test_reparam_k13_block_by_hand():
    train, alone = coverage_reparam(13), coverage_reparam(13, large=False)
    at = lambda cov, dy, dx: cov["coverage"][6 + dy][6 + dx]  # noqa: E731
    assert at(train, 0, 0) == 6  # the large kernel and all five branches read the centre
    assert at(train, 0, 6) == 2 and at(alone, 0, 6) == 1  # the large kernel and 7@2
    assert at(train, 1, 6) == 1 and at(alone, 1, 6) == 0  # only the 5x5 reads offset 1, only 7@2 offset 6
    assert train["holes"] == 0 and alone["holes"] > 0 and alone["rf"] == [13, 13]


def test_reparam_block_both_forms_through_coverage_model():
    """The real module: the training form's path counts are the exact tap counts (BatchNorm is linear in
    eval mode), the merged kernel reads every tap once: no hole."""
    from atrous.ops import DilatedReparam

    block = DilatedReparam(2, 13)
    train = coverage_model(block, (31, 31))
    merged = coverage_model(merge_reparam(block), (31, 31))
    top, left, bottom, right = train["box"]
    box = np.array(train["coverage"])[top : bottom + 1, left : right + 1]
    np.testing.assert_allclose(box, np.array(coverage_reparam(13)["coverage"], dtype=float), rtol=1e-12)
    assert merged["rf"] == train["rf"] == [13, 13] and merged["holes"] == 0
    top, left, bottom, right = merged["box"]
    assert np.all(np.array(merged["coverage"])[top : bottom + 1, left : right + 1] == 1.0)


def test_reparam_stack_closes_the_holes_of_the_plain_stack():
    """dilated_net at rates 2,2,2: the plain stack grids (120 holes); block=reparam (a 5x5 large kernel
    with 3@1 and 3@2 per layer) covers the same 13x13 field without a hole in both forms; the counts are
    the block's tap counts convolved three times (training form) or three 5x5 boxes (merged)."""
    from atrous import models

    plain = models.build("dilated_net", 2, rates=(2, 2, 2), channels=3)
    rep = models.build("dilated_net", 2, rates=(2, 2, 2), channels=3, block="reparam")
    merged_model = merge_reparam(rep)
    with torch.no_grad():  # the merged copy computes what the training form computes in eval mode
        x = torch.rand(1, 3, 21, 21)
        torch.testing.assert_close(merged_model(x), rep.eval()(x), rtol=1e-4, atol=1e-5)
    assert not any(type(m).__name__ == "DilatedReparam" for m in merged_model.modules())
    got = {
        name: coverage_model(m, (41, 41))
        for name, m in (("plain", plain), ("train", rep), ("merged", merged_model))
    }
    assert got["plain"]["holes"] == 120 and got["train"]["holes"] == got["merged"]["holes"] == 0
    block, box5 = _block_taps(5, UNIREP_5, True), _block_taps(5, (), True)
    for name, one in (("train", block), ("merged", box5)):
        want = _convolve(_convolve(one, one), one)
        assert got[name]["rf"] == [13, 13] and got[name]["box"] == [14, 14, 26, 26]
        grid = [[float(want.get((y - 6, x - 6), 0)) for x in range(13)] for y in range(13)]
        np.testing.assert_allclose(np.array(got[name]["coverage"])[14:27, 14:27], np.array(grid), rtol=1e-12)


def _recurrence(rates):  # Wang et al. eq. for M_i, written out again for the test
    m = rates[-1]
    for r in reversed(rates[1:-1]):
        m = max(m - 2 * r, m - 2 * (m - r), r)
    return m


def test_hdc_paper_examples():
    ok = hdc_check((1, 2, 5), 3)
    assert ok["valid"] and ok["recurrence"]["M_2"] == 2 and ok["reasons"] == []
    bad = hdc_check((1, 2, 9), 3)  # the paper: M_2 = 5 > 3
    assert not bad["valid"] and bad["recurrence"]["M_2"] == 5 and "M_2 = 5" in bad["reasons"][0]
    shared = hdc_check((2, 4, 8), 3)  # common factor 2: gridding
    assert not shared["valid"] and shared["common_factor"] == 2
    assert any("factor 2" in r for r in shared["reasons"])


def test_recurrence_alone_accepts_lists_with_holes():
    check = hdc_check((2, 2, 5), 3)
    assert check["recurrence"]["ok"] and check["common_factor"] == 1  # both rules pass...
    assert not check["valid"] and check["holes"] > 0  # ...but the exact coverage has holes
    assert "never reached" in check["reasons"][-1]


def test_planner_is_exactly_the_brute_valid_set_ranked():
    plan = hdc_plan(3, 3, 6)
    want = set()
    for rates in product(range(1, 7), repeat=3):
        reached = {sum(t * r for t, r in zip(ts, rates)) for ts in product((-1, 0, 1), repeat=3)}
        half = sum(rates)
        no_holes = reached == set(range(-half, half + 1))
        if _recurrence(rates) <= 3 and math.gcd(*rates) == 1 and no_holes:
            want.add(rates)
    assert {tuple(e["rates"]) for e in plan} == want
    keys = [(-e["rf"][0], e["spread"]) for e in plan]
    assert keys == sorted(keys)
    assert plan[0]["rf"][0] == 1 + 2 * max(sum(r) for r in want)
