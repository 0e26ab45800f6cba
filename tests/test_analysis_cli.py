"""The diagnostics commands, in-process: tables, exit codes, JSON keys and PNG files."""

from __future__ import annotations

import json

from atrous.cli import main


def test_rf_command_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "rf.json"
    assert main(["rf", "dilated_net", "--opt", "rates=2,2,2", "--size", "64", "48", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "receptive field: 13 pixels" in text and "backbone.6" in text
    data = json.loads(out.read_text())
    assert data["rf"] == [13, 13] and data["output_stride"] == 1 and data["global"] is False
    assert {"name", "kernel", "stride", "dilation", "rf"} <= set(data["layers"][0])
    assert data["input_size"] == [64, 48]


def test_rf_command_reports_global_and_degenerate_rates(capsys):
    argv = ["rf", "deeplabv3", "--opt", "width=0.125", "--opt", "backbone=resnet18", "--size", "129", "129"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "global-pooling branch" in text and "output stride: 16" in text
    assert "degenerates toward 1x1" in text  # rate 18 on a 9x9 map


def test_rf_command_user_errors(capsys):
    assert main(["rf", "no_such_model"]) == 2
    assert "valid names" in capsys.readouterr().err
    assert main(["rf", "dilated_net", "--opt", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_grid_command_compares_rate_lists(tmp_path, capsys):
    png, js = tmp_path / "cov.png", tmp_path / "cov.json"
    argv = [
        "grid",
        "--kernel",
        "3",
        "--rates",
        "2,2,2",
        "--rates",
        "1,2,5",
        "--png",
        str(png),
        "--json",
        str(js),
    ]
    assert main(argv) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(js.read_text())
    assert [d["holes"] for d in data] == [120, 0]
    assert {"rf", "holes", "gridding_ratio", "coverage"} <= set(data[0])
    assert "0.710" in capsys.readouterr().out
    assert main(["grid", "--rates", "1,x"]) == 2


def test_grid_command_on_a_model(tmp_path, capsys):
    js = tmp_path / "m.json"
    argv = ["grid", "--model", "dilated_net", "--opt", "rates=2,2", "--size", "21", "21", "--json", str(js)]
    assert main(argv) == 0
    data = json.loads(js.read_text())
    assert data["rf"] == [9, 9] and data["holes"] == 81 - 25


def test_hdc_commands(tmp_path, capsys):
    assert main(["hdc", "check", "1,2,5"]) == 0
    assert main(["hdc", "check", "1,2,9", "--kernel", "3"]) == 1
    assert "M_2 = 5 > K = 3" in capsys.readouterr().out
    js = tmp_path / "plan.json"
    assert main(["hdc", "plan", "--kernel", "3", "--layers", "3", "--max-rate", "9", "--json", str(js)]) == 0
    plans = json.loads(js.read_text())["plans"]
    assert plans[0]["rates"] == [1, 3, 9] and plans[0]["rf"] == [27, 27]


def test_erf_command(tmp_path, capsys):
    png, js = tmp_path / "erf.png", tmp_path / "erf.json"
    argv = ["erf", "dilated_net", "--opt", "channels=4", "--size", "33", "33", "--samples", "2"]
    assert main([*argv, "--png", str(png), "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert 0 < data["radius50"] <= data["radius95"] and len(data["heatmap"]) == 33
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["erf"]) == 2


def test_objects_command_on_synthetic_shapes(tmp_path, capsys):
    js = tmp_path / "obj.json"
    argv = ["objects", "--data", "synthetic:shapes?n=4&size=48", "--model", "fcn32s", "--opt", "width=0.0625"]
    assert main([*argv, "--erf-samples", "0", "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["model"]["small_object_limit"] == 32 and data["model"]["output_stride"] == 32
    rows = {r["class"]: r for r in data["per_class"]}
    # every foreground class of the synthetic shapes has objects narrower than 32 px: all at risk
    assert all(rows[c]["at_risk"] for c in rows if c != 0)
    assert "AT RISK" in capsys.readouterr().out


def test_grid_valid_weights_plot(tmp_path, capsys):
    png, js = tmp_path / "vw.png", tmp_path / "vw.json"
    assert main(["grid", "--valid-weights", "65", "--png", str(png), "--json", str(js)]) == 0
    curve = json.loads(js.read_text())
    assert curve[0]["rate"] == 1 and curve[0]["all_valid"] == 63**2 / 65**2
    assert curve[64]["only_centre"] == 1.0  # rate 65
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_erf_command_from_a_checkpoint_over_its_data(tiny_checkpoint, tmp_path, capsys):
    js = tmp_path / "erf.json"
    argv = ["erf", "--checkpoint", str(tiny_checkpoint), "--size", "33", "33", "--samples", "2"]
    assert main([*argv, "--data", "synthetic:shapes?n=4&size=40", "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert data["samples"] == 2 and data["model"].startswith("dilated_net from ")
    assert data["rf"] == [33, 33]  # rates 1,2,5,1,2,5 (the checkpoint's model, not a default one)
    assert "images of synthetic:shapes" in capsys.readouterr().out
