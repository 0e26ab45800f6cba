"""The later answers to gridding (UniRepLKNet's dilated re-parameterisation, DenseASPP, WASP, RegSeg): each
registered configuration trains (a few steps on one fixed batch lower the loss) and exports to ONNX with
onnxruntime's logits equal to PyTorch's."""

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from atrous.models import build
from atrous.ops import DilatedReparam, reparameterize

# tiny configurations (name, options): fast on a CPU, every structural part present
CASES = {
    "dilated_net-reparam": ("dilated_net", {"rates": [1, 2, 5], "channels": 8, "block": "reparam"}),
    "denseaspp": ("denseaspp", {"backbone": "resnet18", "width": 0.125}),
    "denseaspp-os16": ("denseaspp", {"backbone": "resnet18", "width": 0.125, "output_stride": 16}),
    "wasp": ("wasp", {"backbone": "resnet18", "width": 0.125}),
    "regseg": ("regseg", {"width": 0.125}),
}


def _batch(seed: int = 0, size=(48, 40)):
    """Images whose three vertical stripes (the classes) shift the mean of one channel each: learnable at
    every output stride."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(size[1]) * 3 // size[1]).expand(2, *size)  # (2, H, W): classes 0, 1, 2 left to right
    x = torch.randn(2, 3, *size, generator=g) + 2 * F.one_hot(y, 3).permute(0, 3, 1, 2)
    return x, y


@pytest.mark.parametrize("case", list(CASES))
def test_a_few_training_steps_lower_the_loss(case):
    torch.manual_seed(0)
    name, opts = CASES[case]
    model = build(name, 3, **opts).train()
    x, y = _batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses


def _onnx_vs_torch(model: torch.nn.Module, tmp_path, size=(37, 41)) -> float:
    x = _batch(1, size)[0][:1]
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's notices
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["image"], opset_version=17)
        expected = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    assert got.shape == expected.shape
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-6))


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_export_matches_pytorch(case, tmp_path):
    torch.manual_seed(0)
    name, opts = CASES[case]
    model = build(name, 3, **opts)
    model.train()  # a few batches of statistics, so that BatchNorm is not the identity
    with torch.no_grad():
        for seed in range(3):
            model(_batch(seed)[0])
    assert _onnx_vs_torch(model.eval(), tmp_path) < 1e-4


def test_reparam_stack_exports_in_merged_form(tmp_path):
    """Every DilatedReparam replaced by its `reparameterize()` conv: the same logits, and an ONNX graph with
    one depthwise Conv per block instead of one per branch."""
    import onnx

    name, opts = CASES["dilated_net-reparam"]
    model = build(name, 3, **opts).train()
    with torch.no_grad():
        model(_batch()[0])
    model.eval()
    merged = build(name, 3, **opts)
    merged.load_state_dict(model.state_dict())
    merged.eval()
    blocks = [(n, m) for n, m in merged.named_modules() if isinstance(m, DilatedReparam)]
    assert reparameterize(merged) == len(blocks) == 3
    assert not any(isinstance(m, DilatedReparam) for m in merged.modules())
    x = _batch(2)[0]
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), rtol=1e-5, atol=1e-5)
    assert _onnx_vs_torch(merged, tmp_path) < 1e-4
    convs = [n for n in onnx.load(str(tmp_path / "model.onnx")).graph.node if n.op_type == "Conv"]
    # per layer: one merged depthwise conv and the 1x1; plus the classifier
    assert len(convs) == 2 * len(blocks) + 1


def test_model_table_rows(monkeypatch):
    """benchmarks/model_table.py's rows for these models (the numbers the docs' table states): parameters
    counted, FLOPs by torch's counter, RF and small-object limit by the tracer, at 21 classes, 512x512."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "model_table.py"
    spec = importlib.util.spec_from_file_location("model_table", path)
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    rows = {
        "regseg": table.measure("regseg", 512),
        "reparam": table.measure("dilated_net", 512, {"block": "reparam"}),
        "plain": table.measure("dilated_net", 512),
    }
    got = {
        k: (round(r["params_m"], 3), r["rf"], r["global"], r["small_object_limit"]) for k, r in rows.items()
    }
    assert got == {
        "regseg": (3.335, 3871, True, 4),
        "reparam": (0.189, 33, False, 1),
        "plain": (0.188, 33, False, 1),
    }
    assert rows["reparam"]["name"] == "dilated_net (block=reparam)"
    # RegSeg's FLOPs scale to the paper's 1024x2048 Cityscapes input: 8x the pixels of 512x512
    assert 38.0 < rows["regseg"]["gflops"] * 8 / 2 < 39.2  # GMACs; the paper reports 39.1 G
