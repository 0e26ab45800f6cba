"""The diagnostics commands, in-process: tables, exit codes, JSON keys and PNG files."""

from __future__ import annotations

import json

import pytest

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


_NO_WORK = "receptive field"  # printed by rf after its trace; also no table, heat-map or plan line


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["rf", "dilated_net", "--json", "{out}"], "--json"),
        (["grid", "--rates", "1,2,5", "--png", "{out}"], "--png"),
        (["grid", "--model", "dilated_net", "--json", "{out}"], "--json"),
        (["grid", "--valid-weights", "65", "--png", "{out}"], "--png"),
        (["hdc", "plan", "--json", "{out}"], "--json"),
        (["erf", "dilated_net", "--samples", "1", "--png", "{out}"], "--png"),
        (["objects", "--data", "synthetic:shapes?n=2&size=32", "--json", "{out}"], "--json"),
    ],
)
@pytest.mark.parametrize("where", ["under_a_file", "a_folder"])
def test_unwritable_output_is_one_line_before_the_work(tmp_path, capsys, monkeypatch, argv, flag, where):
    """An output whose folder is a file, or which is itself a folder, stops the command with exit 2 and
    one line naming the flag and the path, before the model, the data or the search is touched."""
    import atrous.analysis
    import atrous.models

    def must_not_run(*args, **kwargs):
        raise AssertionError("the expensive work started before the output was checked")

    for module, name in [
        (atrous.models, "build"),
        (atrous.analysis, "hdc_plan"),
        (atrous.analysis, "coverage"),
    ]:
        monkeypatch.setattr(module, name, must_not_run)
    monkeypatch.setattr("atrous.analysis.valid_weight_curve", must_not_run)
    monkeypatch.setattr("atrous.data.build_dataset", must_not_run)
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    out = tmp_path / "file.txt" / "sub" / "out.x" if where == "under_a_file" else tmp_path / "folder"
    assert main([a.replace("{out}", str(out)) for a in argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and flag in err and str(out) in err
    assert ("is a file, not a folder" if where == "under_a_file" else "is a folder: give a file name") in err
    assert _NO_WORK not in captured.out and "---" not in captured.out
    assert not list((tmp_path / "folder").iterdir())  # nothing written, no probe left behind


def test_a_missing_output_folder_is_created(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "rf.json"
    assert main(["rf", "dilated_net", "--opt", "rates=1,2", "--size", "33", "33", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["rf"] == [7, 7]  # 3 + 2*2 (rates 1, 2)
    # the write check leaves no probe file behind
    assert sorted(p.name for p in out.parent.iterdir()) == ["rf.json"]


def test_model_errors_come_from_the_registry_unwrapped(capsys):
    """`build()` raises ModelError (an AtrousError and a ValueError) in one line; the diagnostics pass it
    through as it is (no second wrap), exit code 2."""
    assert main(["grid", "--model", "dilated_net", "--opt", "rates=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.count("model dilated_net") == 1 and "rates" in err


def test_grid_draws_a_reparameterised_block_and_model(tmp_path, capsys):
    """`--reparam 13`: UniRepLKNet's k=13 block as three maps (dilated branches alone, training form,
    merged); `--model dilated_net --opt block=reparam`: the model in both forms, without holes where the
    plain stack at rates 2,2,2 has 120."""
    png, js = tmp_path / "r.png", tmp_path / "r.json"
    assert main(["grid", "--reparam", "13", "--png", str(png), "--json", str(js)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    alone, train, merged = json.loads(js.read_text())
    assert [d["form"] for d in (alone, train, merged)] == [
        "dilated branches alone",
        "training form",
        "merged",
    ]
    assert alone["branches"] == [[5, 1], [7, 2], [3, 3], [3, 4], [3, 5]]
    assert alone["holes"] > 0 and train["holes"] == merged["holes"] == 0
    assert train["rf"] == merged["rf"] == [13, 13] and train["max_paths"] == 6 and merged["max_paths"] == 1
    assert "K=13 training form" in capsys.readouterr().out
    assert main(["grid", "--reparam", "7", "--branches", "3:3", "--json", str(js)]) == 0
    assert json.loads(js.read_text())[0]["holes"] == 49 - 9  # one 3x3 at rate 3 alone reads 9 of 49 taps
    assert main(["grid", "--reparam", "5", "--branches", "3:3"]) == 2  # 7 px wide: not inside 5x5
    assert main(["grid", "--reparam", "13", "--branches", "5-1"]) == 2
    argv = ["grid", "--model", "dilated_net", "--opt", "rates=2,2,2", "--opt", "block=reparam"]
    assert main([*argv, "--size", "21", "21", "--json", str(js)]) == 0
    forms = json.loads(js.read_text())
    assert [d["model"].split("(")[-1] for d in forms] == ["training form)", "merged)"]
    assert [d["holes"] for d in forms] == [0, 0] and [d["rf"] for d in forms] == [[13, 13], [13, 13]]
