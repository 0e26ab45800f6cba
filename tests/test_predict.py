"""`atrous predict`: outputs equal `atrous.predict`, interrupted runs resume without redoing finished images,
bad files stop with one line (or are counted with --skip-bad), and memory does not grow with the number
of images."""

import gc
import importlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import atrous.api
from _inference_helpers import PALETTE, write_checkpoint, write_images
from atrous.api import ModelMeta, load, predict, predict_files
from atrous.cli import main
from atrous.optimize import optimize


def predict_args(checkpoint, inputs, out, *extra) -> list[str]:
    """`atrous predict` arguments for one input file or folder."""
    return ["predict", "--checkpoint", str(checkpoint), str(inputs), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(
        tmp_path_factory.mktemp("ck") / "model.pt", name="dilated_net", channels=8, rates=(1, 2, 4)
    )


def test_predict_folder_and_file(checkpoint, tmp_path, capsys):
    inputs = tmp_path / "in"
    write_images(inputs / "sub", 2, size=(21, 30))
    (inputs / "notes.txt").write_text("not an image: a folder walk ignores it")
    single = write_images(tmp_path / "other", 1, size=(33, 17))[0].rename(
        tmp_path / "other" / "single shot.jpg"
    )
    Image.open(single).convert("RGB").save(single, format="JPEG")
    out = tmp_path / "out"
    assert (
        main(["predict", "--checkpoint", str(checkpoint), str(inputs), str(single), "--out", str(out)]) == 0
    )
    assert "3 predicted" in capsys.readouterr().out
    model = optimize(load(checkpoint))  # the CLI's model: the optimised copy by default
    for source, name in [
        (inputs / "sub" / "0000.png", "sub/0000.png"),
        (inputs / "sub" / "0001.png", "sub/0001.png"),
        (single, "single shot.png"),
    ]:
        mask = Image.open(out / "masks" / name)
        assert mask.mode == "P"
        expected = predict(model, source)
        np.testing.assert_array_equal(np.asarray(mask), expected)
        rgb = np.asarray(Image.open(source).convert("RGB")).astype(float)
        overlay = np.asarray(Image.open(out / "overlays" / name)).astype(float)
        np.testing.assert_array_equal(
            overlay, np.floor(0.5 * rgb + 0.5 * np.asarray(PALETTE)[expected] + 0.5)
        )
    assert sorted(p.name for p in (out / "masks").rglob("*.png")) == [
        "0000.png",
        "0001.png",
        "single shot.png",
    ]


def test_no_optimize_uses_the_loaded_model(checkpoint, tmp_path, monkeypatch):
    calls = []  # (atrous.optimize is also the name of the function, so patch the module by its import path)
    monkeypatch.setattr(
        importlib.import_module("atrous.optimize"), "optimize", lambda m: calls.append(m) or m
    )
    image = write_images(tmp_path / "in", 1)[0]
    assert main(["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "a")]) == 0
    assert len(calls) == 1
    args = [
        "predict",
        "--checkpoint",
        str(checkpoint),
        str(image),
        "--out",
        str(tmp_path / "b"),
        "--no-optimize",
    ]
    assert main(args) == 0
    assert len(calls) == 1
    expected = predict(load(checkpoint), image)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b" / "masks" / "0000.png")), expected)


def test_interrupted_run_resumes_with_skip_existing(checkpoint, tmp_path, monkeypatch, capsys):
    write_images(tmp_path / "in", 6)
    out = tmp_path / "out"
    args = predict_args(checkpoint, tmp_path / "in", out, "--no-optimize")
    real_predict = atrous.api.predict
    calls = []

    def interrupted(*a, **k):  # Ctrl-C while the 4th image is being predicted
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_predict(*a, **k)

    monkeypatch.setattr(atrous.api, "predict", interrupted)
    assert main(args) == 130
    monkeypatch.setattr(atrous.api, "predict", real_predict)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    done = [f"{i:04d}.png" for i in range(3)]
    assert files == [f"masks/{n}" for n in done] + [f"overlays/{n}" for n in done]  # no partial or temp files
    before = {f: (os.stat(out / f).st_mtime_ns, os.stat(out / f).st_ino) for f in files}
    capsys.readouterr()
    assert main([*args, "--skip-existing"]) == 0
    assert "3 predicted" in capsys.readouterr().out
    for f, stamp in before.items():  # finished images were not rewritten (same inode, same mtime)
        assert (os.stat(out / f).st_mtime_ns, os.stat(out / f).st_ino) == stamp
    for i in range(6):
        assert (out / "masks" / f"{i:04d}.png").is_file() and (out / "overlays" / f"{i:04d}.png").is_file()
    assert main(args) == 0  # without --skip-existing everything is redone
    assert all(os.stat(out / f).st_ino != stamp[1] for f, stamp in before.items())


def test_bad_images_stop_with_one_line_or_are_counted(checkpoint, tmp_path, capsys):
    inputs = tmp_path / "in"
    write_images(inputs, 2)
    (inputs / "0001.png").write_bytes((inputs / "0001.png").read_bytes()[:-60])  # truncated
    (inputs / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(checkpoint), str(inputs), "--out", str(out), "--no-optimize"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "0001.png" in err and "--skip-bad" in err and "Traceback" not in err
    assert main([*args, "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert "1 predicted" in captured.out and "2 unreadable skipped" in captured.out
    assert "empty.png" in captured.err and "0001.png" in captured.err
    assert "--skip-bad" not in captured.err  # the warnings do not ask for the flag that is already given
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["0000.png"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no such file or folder"),
        ("empty-folder", "no images found"),
        ("collision", "would both be written"),
        ("out-is-a-file", "is a file"),
        ("out-under-a-file", "cannot write there"),
        ("out-read-only", "cannot write there"),
    ],
)
def test_input_errors(checkpoint, tmp_path, capsys, setup, message):
    inputs = [str(tmp_path / "missing")]
    if setup == "empty-folder":
        (tmp_path / "empty").mkdir()
        inputs = [str(tmp_path / "empty")]
    elif setup == "collision":
        a = write_images(tmp_path / "a", 1)[0]
        b = write_images(tmp_path / "b", 1)[0]
        inputs = [str(a), str(b)]
    out = tmp_path / "out"
    if setup == "out-is-a-file":
        inputs = [str(write_images(tmp_path / "a", 1)[0])]
        out.write_text("a file where the output folder should go")
    elif setup == "out-under-a-file":
        inputs = [str(write_images(tmp_path / "a", 1)[0])]
        (tmp_path / "a_file").write_text("x")
        out = tmp_path / "a_file" / "out"
    elif setup == "out-read-only":  # not writable, even for root: stops before the model is loaded
        inputs = [str(write_images(tmp_path / "a", 1)[0])]
        out = Path("/sys/atrous-test/out")
    assert main(["predict", "--checkpoint", str(checkpoint), *inputs, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.is_dir()


def test_folder_walk_survives_symlink_loops_and_odd_names(checkpoint, tmp_path, capsys):
    inputs = tmp_path / "in put"
    write_images(inputs / "ünï cödé", 2)
    (inputs / "ünï cödé" / "loop").symlink_to(
        inputs, target_is_directory=True
    )  # in put/ünï cödé/loop -> in put
    (inputs / "UPPER.PNG").write_bytes((inputs / "ünï cödé" / "0000.png").read_bytes())
    out = tmp_path / "out"
    assert (
        main(["predict", "--checkpoint", str(checkpoint), str(inputs), "--out", str(out), "--no-optimize"])
        == 0
    )
    assert "3 predicted" in capsys.readouterr().out
    written = sorted(p.relative_to(out / "masks").as_posix() for p in (out / "masks").rglob("*.png"))
    assert written == ["UPPER.png", "ünï cödé/0000.png", "ünï cödé/0001.png"]


def test_outputs_inside_the_input_folder_are_not_read_back(checkpoint, tmp_path, capsys):
    write_images(tmp_path / "in", 2)
    out = tmp_path / "in" / "pred"
    args = predict_args(checkpoint, tmp_path / "in", out, "--no-optimize")
    assert main(args) == 0
    assert main(args) == 0  # the second run must not predict the first run's PNGs
    assert "2 predicted" in capsys.readouterr().out.splitlines()[-1]
    assert not (tmp_path / "in" / "pred" / "masks" / "pred").exists()


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="resident set size read from /proc (Linux)")
def test_memory_does_not_grow_with_the_number_of_images(tmp_path):
    # A tmpfs keeps the 2,000 fsyncs of the atomic writes from dominating the run: this test is about memory.
    base = Path(tempfile.mkdtemp(dir="/dev/shm")) if Path("/dev/shm").is_dir() else tmp_path
    try:
        write_images(base / "in", 1000, size=(24, 32))
        model = nn.Conv2d(3, 4, 1).eval()  # the loop is under test, not the network
        model.meta = ModelMeta(
            name="pointwise", options={}, num_classes=4, classes=list("abcd"),
            palette=[(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)], mean=(0.5,) * 3, std=(0.25,) * 3,
        )  # fmt: skip
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # 24x32 images: threads only add contention
        rss = {}
        try:
            for i, result in enumerate(predict_files(model, [base / "in"], base / "out"), 1):
                assert result.status == "written"
                if i in (100, 1000):
                    gc.collect()
                    rss[i] = _rss_bytes()
        finally:
            torch.set_num_threads(threads)
        assert len(list((base / "out" / "overlays").iterdir())) == 1000
        # Keeping any per-image array alive would grow by >= 900 x 2.3 KiB (the uint8 RGB image; the int64
        # label map is 6 KiB) = 2 MiB or more between image 100 and image 1000; allocator noise after the
        # first 100 images is well under that (measured: about 0.1 MiB).
        growth = rss[1000] - rss[100]
        assert growth < 2 * 2**20, f"RSS grew by {growth / 2**20:.2f} MiB from image 100 to image 1000"
    finally:
        if base != tmp_path:
            import shutil

            shutil.rmtree(base)


def test_predict_with_sliding_window_and_tta(checkpoint, tmp_path):
    from atrous.inference import MultiScaleFlip, SlidingWindow

    image = write_images(tmp_path / "in", 1, size=(30, 41))[0]
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(out), "--no-optimize"]
    assert main([*args, "--sliding", "16", "--tta", "flip,0.5"]) == 0
    infer = MultiScaleFlip(scales=(0.5,), flip=True, base=SlidingWindow(size=16))
    expected = predict(load(checkpoint), image, infer=infer)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "masks" / "0000.png")), expected)
    # and the strategy mattered for this model: the plain prediction differs
    assert not np.array_equal(predict(load(checkpoint), image), expected)


def test_precision_bf16_predicts_the_fp32_labels_and_fp16_needs_cuda(checkpoint, tmp_path, capsys):
    """`--precision bf16` (on the CPU: emulated where the CPU has no native bf16) against the fp32 labels;
    `--precision fp16` on the CPU stops in one line before any file is read."""
    image = write_images(tmp_path / "in", 1, size=(40, 36))[0]
    args = ["predict", "--checkpoint", str(checkpoint), str(image)]
    assert main([*args, "--out", str(tmp_path / "bf16"), "--precision", "bf16"]) == 0
    got = np.asarray(Image.open(tmp_path / "bf16" / "masks" / "0000.png"))
    expected = predict(load(checkpoint), image)
    assert (got == expected).mean() >= 0.98
    bf16 = load(checkpoint, dtype="bf16")  # the Python form: a Precision wrapper that keeps .meta
    assert bf16.meta == load(checkpoint).meta and bf16.dtype is torch.bfloat16
    assert (predict(bf16, image) == expected).mean() >= 0.98
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "fp16"), "--precision", "fp16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--precision fp16: fp16 runs on CUDA GPUs only, not on cpu" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "fp16").exists()
