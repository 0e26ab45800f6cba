"""The learning-rate schedule against hand values."""

import math

import pytest

from atrous.train import lr_factor


def test_lr_schedules():
    kw = {"total": 100, "power": 0.9, "warmup_iters": 0, "warmup_factor": 0.1}
    assert lr_factor(0, schedule="poly", **kw) == 1.0
    assert lr_factor(50, schedule="poly", **kw) == pytest.approx(0.5**0.9)
    assert lr_factor(100, schedule="poly", **kw) == 0.0
    assert lr_factor(25, schedule="cosine", **kw) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert lr_factor(70, schedule="constant", **kw) == 1.0
    warm = {**kw, "warmup_iters": 10}
    assert lr_factor(0, schedule="constant", **warm) == pytest.approx(0.1)
    assert lr_factor(5, schedule="constant", **warm) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(5, schedule="poly", **warm) == pytest.approx(0.55 * 0.95**0.9)
