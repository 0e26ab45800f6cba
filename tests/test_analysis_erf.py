"""Effective receptive field: a linear model's ERF is its |kernel| (Luo et al. 2016)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from atrous.analysis import erf


def test_erf_of_a_linear_model_is_its_kernel():
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 0, -1.0], [0, 4.0, 0], [1.0, 0, 1.0]]]]))
    got = erf(conv, (9, 9), samples=3)
    want = np.zeros((9, 9))
    want[3:6, 3:6] = np.abs(conv.weight.detach().numpy()[0, 0]) / 4  # flipped |kernel| is symmetric here
    np.testing.assert_allclose(got["heatmap"], want, atol=1e-12)
    # mass: centre 4 of 8 -> 50 % at radius 0; the corners at sqrt(2) complete 95 %
    assert got["radius50"] == 0.0 and got["radius95"] == pytest.approx(math.sqrt(2))
    assert got["rf"] == [3, 3]
    # the same from an image iterable (a data loader), resized to the input size
    images = [torch.rand(1, 12, 12) for _ in range(2)]
    np.testing.assert_allclose(erf(conv, (9, 9), images=images)["heatmap"], want, atol=1e-12)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.rand(3, 1, 9, 9), torch.zeros(3, 9, 9)), batch_size=2
    )
    got = erf(conv, (9, 9), images=loader)
    assert got["samples"] == 3
    np.testing.assert_allclose(got["heatmap"], want, atol=1e-12)
