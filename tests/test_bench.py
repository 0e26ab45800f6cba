"""benchmarks/run.py --quick: runs end to end and writes results.json with the documented structure.

No timing is asserted (timings belong to the benchmark's output, not to tests); the checks are on what
the JSON contains and on the values that are not timings (FLOP counts, output agreement).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout


def _is_time(v):
    return isinstance(v, float) and v > 0


def test_quick_bench_json_structure(quick_results):
    res, stdout = quick_results
    assert res["meta"]["quick"] is True and res["meta"]["machine"]["cores"] >= 1
    assert set(res["seconds"]) >= {"conv", "inference", "training", "scaling", "demo", "total"}
    # 1. conv grid: every cell times auto, each implementation and dense, in both layouts and passes
    rows = res["conv"]["rows"]
    assert {(r["layout"], r["pass"]) for r in rows} == {
        (lay, pas) for lay in ("nchw", "channels_last") for pas in ("fwd", "fwd+bwd")
    }
    for r in rows:
        assert {"auto", "native", "space_to_batch", "dense"} <= set(r["median_s"])
        assert all(_is_time(t) for t in r["median_s"].values())
        assert r["ratio_to_dense"]["auto"] == pytest.approx(r["median_s"]["auto"] / r["median_s"]["dense"])
        # auto runs exactly one measured column (timed through the auto module), over whole rotations
        assert r["median_s"]["auto"] == r["median_s"][r["auto_measured_as"]]
        assert r["repeats"] % (len(r["median_s"]) - 1) == 0
        flops = 2 * r["channels"] ** 2 * 9 * r["size"] ** 2 * (3 if r["pass"] == "fwd+bwd" else 1)
        assert r["gflops"]["dense"] == pytest.approx(flops / r["median_s"]["dense"] / 1e9)
    assert res["conv"]["ceiling_gflops"] == max(r["gflops"]["dense"] for r in rows if r["pass"] == "fwd")
    assert set(res["conv"]["summary"]["all"]) == {"auto", "native", "space_to_batch"}
    # 2. inference: atrous (same weights) against torchvision, outputs compared
    pair = res["inference"]["pairs"]["deeplabv3_resnet50"]
    assert {"torchvision_nchw", "torchvision_channels_last", "atrous", "atrous_os16"} <= set(pair)
    assert pair["atrous"]["output_vs_torchvision"]["relative"] < 1e-4
    assert pair["torchvision_nchw"]["peak_memory_mib"] > 0 and pair["atrous"]["peak_memory_mib"] > 0
    # nominal FLOPs of torchvision's DeepLab v3 at 32x32 = (32/512)^2 of the 327.16 GFLOPs at 512x512
    # (every conv scales with the pixel count, up to the image-pooling branch's fixed 1x1 map)
    assert pair["torchvision_nchw"]["gflops_nominal"] == pytest.approx(327.16 / 256, rel=0.02)
    assert pair["atrous"]["gflops_nominal"] == pytest.approx(pair["torchvision_nchw"]["gflops_nominal"])
    assert pair["atrous_os16"]["gflops_nominal"] < pair["atrous"]["gflops_nominal"] / 2
    for r in pair.values():
        assert r["gflops_real_pixel"] <= r["gflops_nominal"] and _is_time(r["limit_s"])
    # 3.-5. training, scaling, demo
    train = res["training"]["pairs"]["deeplabv3_resnet50"]
    assert set(train) == {"torchvision_nchw", "torchvision_channels_last", "atrous"}
    assert all(r["images_per_s"] > 0 for r in train.values())
    scaling = res["scaling"]
    assert len(scaling["rows"]) >= 2 and isinstance(scaling["time_exponent"], float)
    assert scaling["real_flops_exponent"] == pytest.approx(1.0, abs=0.15)
    assert res["demo"]["rows"] and res["demo"]["input_shape"][0] == 1
    # 6. bf16 against fp32: both bf16 forms timed against fp32, labels compared, optimize's choice recorded
    precision = res["precision"]
    assert isinstance(precision["cpu_flags"], list)
    for name in ("trained", "resnet50"):
        part = precision[name]
        assert set(part["rows"]) == {"fp32", "bf16_autocast", "bf16_weights"}
        fp32 = part["rows"]["fp32"]
        assert fp32["speedup_vs_fp32"] == 1.0 and fp32["label_agreement_vs_fp32"] == 1.0
        for row in part["rows"].values():
            assert _is_time(row["median_s"]) and 0.0 <= row["label_agreement_vs_fp32"] <= 1.0
            assert row["speedup_vs_fp32"] == pytest.approx(fp32["median_s"] / row["median_s"])
        assert part["optimize_bf16_chose"] in ("autocast", "weights")
    assert "wrote" in stdout
