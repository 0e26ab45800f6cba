"""End to end from the CLI, in-process: train -> eval -> predict -> export on the built-in data, on a folder
tree written here, and on a real microscopy image with its real mask (stardist's nuclei); a short training
run lowers the loss and raises mIoU over the same model untrained."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from _realdata import write_stardist_folder
from atrous import models
from atrous.api import load
from atrous.checkpoint import load_checkpoint, save_checkpoint
from atrous.cli import main
from atrous.data import build_dataset, eval_transform

TRAIN = ["train", "--threads", "1", "--set", "optim.name=adamw", "--set", "log.progress=false"]


def untrained_copy(trained: Path, out: Path) -> Path:
    """The trained checkpoint's model, classes and normalisation with freshly initialised weights."""
    ck = load_checkpoint(trained)
    spec = ck["model"]
    torch.manual_seed(0)
    fresh = models.build(spec["name"], spec["num_classes"], **spec["options"])
    payload = {k: v for k, v in ck.items() if k not in ("format", "version", "train_state", "metrics")}
    save_checkpoint(out, {**payload, "state_dict": fresh.state_dict()})
    return out


def mean_loss(checkpoint: Path, data: str, split: str | None) -> float:
    """Pixel-wise cross-entropy over a data set, computed here (not by the training code)."""
    model = load(checkpoint)
    dataset = build_dataset(data, split, transform=eval_transform(mean=model.meta.mean, std=model.meta.std))
    total, pixels = 0.0, 0
    with torch.no_grad():
        for image, mask in dataset:
            logits = model(image[None])
            total += F.cross_entropy(logits, mask[None], ignore_index=255, reduction="sum").item()
            pixels += int((mask != 255).sum())
    return total / pixels


def evaluate_json(checkpoint: Path, data: str, out: Path, *extra: str) -> dict:
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", data, "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def check_training_helped(trained: Path, tmp_path: Path, data: str, split: str | None, min_gain: float):
    untrained = untrained_copy(trained, tmp_path / "untrained.pt")
    args = [] if split is None else ["--split", split]
    before = evaluate_json(untrained, data, tmp_path / "before.json", *args)
    after = evaluate_json(trained, data, tmp_path / "after.json", *args)
    assert after["miou"] > before["miou"] + min_gain, (before["miou"], after["miou"])
    assert mean_loss(trained, data, split) < mean_loss(untrained, data, split)
    return before, after


def check_predict_and_export(checkpoint: Path, images: Path, tmp_path: Path, num_classes: int):
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(checkpoint), str(images), "--out", str(out)]) == 0
    sources = sorted(p for p in images.iterdir() if p.suffix == ".png")
    for source in sources:
        mask = np.asarray(Image.open(out / "masks" / source.name))
        assert mask.shape == np.asarray(Image.open(source)).shape[:2] and mask.max() < num_classes
        assert (out / "overlays" / source.name).is_file()
    onnx_path = tmp_path / "model.onnx"
    assert (
        main(
            ["export", "--checkpoint", str(checkpoint), "--onnx", str(onnx_path), "--dynamic", "--size", "32"]
        )
        == 0
    )
    assert onnx_path.stat().st_size > 0


def test_pipeline_on_builtin_data(tiny_checkpoint, tmp_path, capsys):
    # tiny_checkpoint: 2 epochs of a dilated_net (8 channels) on synthetic shapes (tests/conftest.py)
    data = "synthetic:shapes?n=8&size=32"
    before, after = check_training_helped(tiny_checkpoint, tmp_path, data, "val", min_gain=0.1)
    images = tmp_path / "images"
    images.mkdir()
    for i, (image, _) in enumerate(build_dataset(data, "test")):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(images / f"{i}.png")
    check_predict_and_export(tiny_checkpoint, images, tmp_path, num_classes=4)
    print(f"synthetic shapes: mIoU untrained {before['miou']:.3f} -> trained {after['miou']:.3f}")


def write_folder_tree(root: Path) -> None:
    """A `folder:` data set with train/val splits, from synthetic shapes items saved as PNG files."""
    for split, n in (("train", 16), ("val", 4)):
        for i, (image, mask) in enumerate(build_dataset(f"synthetic:shapes?n={n}&size=32&seed=2", split)):
            (root / split / "images").mkdir(parents=True, exist_ok=True)
            (root / split / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / split / "images" / f"{i:03d}.png")
            Image.fromarray(mask.numpy().astype(np.uint8)).save(root / split / "masks" / f"{i:03d}.png")


def test_pipeline_on_a_folder_tree(tmp_path):
    root = tmp_path / "data"
    write_folder_tree(root)
    run = tmp_path / "run"
    args = [*TRAIN, "--model", "dilated_net", "--opt", "channels=8", "--data", f"folder:{root}"]
    assert main([*args, "--iters", "6", "--batch-size", "4", "--crop", "32", "--out", str(run)]) == 0
    result = evaluate_json(run / "last.pt", f"folder:{root}", tmp_path / "m.json")
    assert result["split"] == "val" and result["images"] == 4 and len(result["class_names"]) == 4
    check_predict_and_export(run / "last.pt", root / "val" / "images", tmp_path, num_classes=4)


def test_pipeline_on_real_nuclei_image(tmp_path):
    # stardist's 512x512 fluorescence image and its hand-annotated nuclei, as a folder tree of quadrants
    root = write_stardist_folder(tmp_path / "nuclei")
    run = tmp_path / "run"
    args = [
        *TRAIN,
        "--model",
        "dilated_net",
        "--opt",
        "channels=8",
        "--data",
        f"folder:{root}",
        "--lr",
        "0.003",
    ]
    assert main([*args, "--iters", "30", "--batch-size", "3", "--crop", "64", "--out", str(run)]) == 0
    before, after = check_training_helped(run / "last.pt", tmp_path, f"folder:{root}", "val", min_gain=0.3)
    assert after["class_names"] == ["background", "nucleus"]
    print(f"stardist nuclei: mIoU untrained {before['miou']:.3f} -> trained {after['miou']:.3f}")


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_checkpoint_of_another_model_is_refused(tiny_checkpoint, tmp_path, capsys, command):
    ck = load_checkpoint(tiny_checkpoint)
    ck["model"] = {**ck["model"], "name": "deeplabv3"}  # weights of a dilated_net under another name
    bad = tmp_path / "other.pt"
    save_checkpoint(bad, {k: v for k, v in ck.items() if k not in ("format", "version")})
    target = tmp_path / "target"
    args = {
        "eval": ["--data", "synthetic:shapes?n=2&size=32", "--json", str(target)],
        "predict": [str(Path(__file__)), "--out", str(target)],
        "export": ["--onnx", str(target)],
    }[command]
    assert main([command, "--checkpoint", str(bad), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "other.pt" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not target.exists()
