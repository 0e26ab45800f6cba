"""atrous.optimize.precision: bf16/fp16 inference copies, the faster of autocast and cast weights chosen by
measurement, float32 logits with the labels of the float32 model."""

import copy
import importlib

import pytest
import torch

import atrous
from _optimize_helpers import randomise_bn, tiny
from atrous import models
from atrous.errors import AtrousError
from atrous.optimize import Precision, optimize, resolve_dtype, with_precision
from atrous.optimize.precision import LABEL_TOLERANCE, check_supported


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(dim=1) == b.argmax(dim=1)).float().mean())


def test_dtype_names_and_errors():
    assert resolve_dtype(None) is torch.float32
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("fp16") is torch.float16
    assert resolve_dtype(torch.bfloat16) is torch.bfloat16
    with pytest.raises(AtrousError, match=r"'int8' is not supported: use one of fp32, bf16, fp16"):
        resolve_dtype("int8")
    with pytest.raises(AtrousError, match="fp16 runs on CUDA GPUs only, not on cpu") as e:
        check_supported(torch.float16, "cpu")
    assert "\n" not in str(e.value)
    with pytest.raises(AtrousError, match="fp16 runs on CUDA GPUs only"):
        optimize(tiny("dilated_net"), dtype="fp16")


@pytest.mark.parametrize("mode", ["autocast", "weights"])
def test_both_modes_give_float32_logits_with_float32_labels(mode):
    """Each mode on a fused ResNet-50 DeepLab copy (the fused blocks fall back to their float forward in
    bf16) against the eager float32 model."""
    model = models.build("deeplabv3", 3, backbone="resnet50", width=0.0625)
    randomise_bn(model)
    fp32 = optimize(model)
    low = Precision(copy.deepcopy(fp32), dtype=torch.bfloat16, mode=mode)
    weights = [p.dtype for p in low.parameters()]
    assert set(weights) == ({torch.bfloat16} if mode == "weights" else {torch.float32})
    assert low.build_args == model.build_args and low.output_stride == model.output_stride
    x = torch.randn(2, 3, 45, 39)
    with torch.no_grad():
        ref = model.eval()(x)
        got = low(x)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert _agreement(got, ref) >= 0.98
    # the bf16 logits differ from float32 by bf16's rounding (8 bits of mantissa), not more
    assert float((got - ref).abs().max()) <= 0.1 * max(1.0, float(ref.abs().max()))


def test_with_precision_measures_both_modes_and_keeps_the_faster():
    model = tiny("dilated_net")
    randomise_bn(model)
    model.eval()
    x = torch.randn(1, 3, 33, 31)
    assert with_precision(model, "fp32", example_input=x) is model  # float32: nothing to wrap
    chosen = with_precision(model, "bf16", example_input=x)
    assert isinstance(chosen, Precision) and chosen.dtype is torch.bfloat16
    timings = chosen.precision_timings
    assert set(timings) == {"autocast", "weights"}
    best = max(t["label_agreement"] for t in timings.values())
    same_labels = [m for m in timings if timings[m]["label_agreement"] >= best - LABEL_TOLERANCE]
    assert chosen.mode == min(same_labels, key=lambda m: timings[m]["seconds"])
    assert all(t["seconds"] > 0 and 0.0 <= t["label_agreement"] <= 1.0 for t in timings.values())
    assert all(p.dtype is torch.float32 for p in model.parameters())  # the model itself is not cast
    with torch.no_grad():
        assert _agreement(chosen(x), model(x)) >= 0.98


def test_optimize_with_dtype_keeps_attributes():
    model = tiny("fcn8s")
    opt = atrous.optimize(model, dtype="bf16")
    assert isinstance(opt, Precision)
    assert opt.build_args == model.build_args
    with torch.no_grad():
        out = opt(torch.randn(1, 3, 37, 29))
    assert out.dtype == torch.float32 and out.shape == (1, 3, 37, 29)


def test_the_faster_form_is_kept_only_with_the_same_labels(monkeypatch):
    """Measurements injected: a faster form whose labels agree less with float32's loses to the slower one
    with the float32 labels; with equal labels the faster one wins."""
    # (`atrous.optimize` is also the function's name on the package `atrous`: import the module by path)
    precision = importlib.import_module("atrous.optimize.precision")
    model = tiny("dilated_net").eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        fp32_labels = model(x).argmax(dim=1)
    for autocast_wrong, expected in ((0.02, "weights"), (0.0, "autocast")):
        wrong = fp32_labels.clone()
        wrong.view(-1)[: round(autocast_wrong * wrong.numel())] += 1  # that share of pixels disagrees
        measured = {"autocast": (0.1, wrong), "weights": (0.2, fp32_labels)}
        monkeypatch.setattr(precision, "_seconds", lambda m, _x, measured=measured: measured[m.mode])
        chosen = with_precision(model, "bf16", example_input=x)
        assert chosen.mode == expected
        assert chosen.precision_timings["autocast"]["label_agreement"] == pytest.approx(
            1 - autocast_wrong, abs=1e-3
        )
