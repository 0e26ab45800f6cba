"""`atrous export`: ONNX files whose onnxruntime outputs match PyTorch, checked again here at sizes and
batch sizes the exporter never saw; a failing check leaves no file."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import atrous.export
from _inference_helpers import CLASSES, MEAN, PALETTE, STD, write_checkpoint
from atrous.api import load
from atrous.cli import main
from atrous.export import with_plain_convs
from atrous.ops import AtrousConv2d


def ort_logits(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x.numpy()})[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # DeepLab v3 at output stride 16 with ASPP rates 6, 12, 18: dilated convolutions whose kernels the
    # native path crops on small maps, plus image pooling and bilinear upsampling
    return write_checkpoint(tmp_path_factory.mktemp("ck") / "deeplab.pt")


def test_plain_convs_are_the_same_function():
    torch.manual_seed(0)
    conv = torch.nn.Sequential(AtrousConv2d(3, 4, 3, dilation=6), AtrousConv2d(4, 2, 3, dilation=2, stride=2))
    plain = with_plain_convs(conv)
    assert not any(isinstance(m, AtrousConv2d) for m in plain.modules())
    for size in [(5, 7), (13, 40)]:  # rate 6 on 5 rows: the native path crops the kernel to its centre
        x = torch.randn(1, 3, *size)
        torch.testing.assert_close(plain(x), conv(x), rtol=1e-5, atol=1e-6)


def test_export_fixed_size(checkpoint, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--onnx", str(out), "--size", "40,56"]) == 0
    printed = capsys.readouterr().out
    assert "max |onnxruntime - pytorch|" in printed and str(out) in printed
    proto = onnx.load(str(out))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 40, 56]
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["classes"] == CLASSES and meta["palette"] == PALETTE
    assert meta["mean"] == pytest.approx(MEAN) and meta["std"] == pytest.approx(STD)
    model = load(checkpoint)
    x = torch.randn(1, 3, 40, 56)  # not the exporter's own check input
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(ort_logits(out, x) - expected).max() < 1e-3


def test_export_dynamic_at_unseen_sizes(checkpoint, tmp_path, capsys):
    out = tmp_path / "dynamic.onnx"
    args = ["export", "--checkpoint", str(checkpoint), "--onnx", str(out), "--dynamic", "--size", "48"]
    assert main(args) == 0
    assert capsys.readouterr().out.count("max |onnxruntime - pytorch|") == 2  # two sizes checked
    model = load(checkpoint)
    # sizes far from the traced 48x48: at 19x23 the rate-18 ASPP kernels reach only padding (the native
    # path would crop them); at 3x(97x75) they are whole
    for shape in [(1, 3, 19, 23), (3, 3, 97, 75)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = model(x).numpy()
        got = ort_logits(out, x)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-3


def test_failed_check_writes_nothing(tmp_path, capsys, monkeypatch):
    checkpoint = write_checkpoint(tmp_path / "small.pt", name="dilated_net", channels=8, rates=(1, 2))
    out = tmp_path / "out" / "bad.onnx"
    monkeypatch.setattr(atrous.export, "onnx_max_abs_diff", lambda *a: 0.25)  # a fault injected
    assert main(["export", "--checkpoint", str(checkpoint), "--onnx", str(out), "--size", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert "differs from PyTorch by 0.25" in err and str(out) in err and len(err.splitlines()) == 1
    assert list(out.parent.iterdir()) == []  # neither the file nor a temporary one


def test_export_of_a_missing_checkpoint(tmp_path, capsys):
    assert (
        main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--onnx", str(tmp_path / "x.onnx")]) == 2
    )
    err = capsys.readouterr().err
    assert "nope.pt" in err and "Traceback" not in err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("where", ["under_a_file", "read_only", "a_folder"])
def test_unwritable_onnx_stops_before_the_export(checkpoint, tmp_path, capsys, monkeypatch, where):
    """One line before any work: the export and its onnxruntime check never start."""
    (tmp_path / "a_file").write_text("x")
    target = {
        "under_a_file": tmp_path / "a_file" / "m.onnx",
        "read_only": "/sys/atrous-test/m.onnx",  # not writable, even for root
        "a_folder": tmp_path,
    }[where]
    monkeypatch.setattr(atrous.export, "export_onnx", lambda *a, **k: pytest.fail("export ran"))
    assert main(["export", "--checkpoint", str(checkpoint), "--onnx", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    message = "is a folder: give a file name" if where == "a_folder" else "cannot write there"
    assert f"--onnx {target}" in err and message in err and len(err.splitlines()) == 1


def test_a_run_folder_as_checkpoint_names_the_file_to_give(checkpoint, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    args = ["export", "--checkpoint", str(run), "--onnx", str(tmp_path / "x.onnx")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert f"checkpoint {run} is a folder with no .pt file" in err and len(err.splitlines()) == 1
    (run / "best.pt").write_bytes(checkpoint.read_bytes())
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert f"checkpoint {run} is a folder: give a checkpoint file in it, e.g. {run / 'best.pt'}" in err
    assert "does not exist" not in err


def test_dilated_reparam_exports_in_its_merged_form(tmp_path, capsys):
    """One depthwise Conv node per DilatedReparam (not one per branch), checked by onnxruntime against the
    training form; the checkpoint keeps the branches."""
    from atrous.ops import DilatedReparam

    ck = write_checkpoint(tmp_path / "rep.pt", name="dilated_net", channels=4, rates=(1, 2), block="reparam")
    model = load(ck)
    blocks = [m for m in model.modules() if isinstance(m, DilatedReparam)]
    training_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    out = tmp_path / "rep.onnx"
    assert main(["export", "--checkpoint", str(ck), "--onnx", str(out), "--size", "24", "--dynamic"]) == 0
    assert "max |onnxruntime - pytorch|" in capsys.readouterr().out
    graph = onnx.load(str(out)).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    branches = sum(len(b.dilated) for b in blocks)  # each block's dilated branches vanish in the merge
    assert len(convs) == training_convs - branches + 1  # + the classifier head's F.conv2d (no Conv2d module)
    group = {n.name: next(a.i for a in n.attribute if a.name == "group") for n in convs}
    assert sum(g > 1 for g in group.values()) == len(blocks)  # one depthwise conv per block
    assert sum(isinstance(m, DilatedReparam) for m in load(ck).modules()) == len(blocks)
