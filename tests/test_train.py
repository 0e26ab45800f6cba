"""`atrous train` end to end (in-process, tiny models and data): the run folder, the checkpoint format, config
precedence, fine-tuning, fallback to an intact checkpoint, the NaN stop, and one-line user errors."""

import csv
import math

import numpy as np
import pytest
import torch
import yaml

from atrous.checkpoint import FORMAT, VERSION, build_model_from_checkpoint, load_checkpoint
from atrous.cli import main
from atrous.config import from_dict, load_config
from atrous.data import IMAGENET_MEAN, IMAGENET_STD, build_dataset, eval_transform
from atrous.data.synthetic import SHAPES_CLASSES, SHAPES_PALETTE
from atrous.evaluate import evaluate
from atrous.models import build

# Two quick steps of the tiny model; tests add --out and what they check.
QUICK = [
    "train", "--model", "dilated_net", "--opt", "channels=4", "--opt", "rates=1,2",
    "--data", "synthetic:shapes?n=8&size=24", "--val-data", "synthetic:shapes?n=2&size=24",
    "--batch-size", "4", "--crop", "24", "--threads", "1",
    "--set", "log.progress=false", "--set", "log.tensorboard=false",
]  # fmt: skip


def _val_loader():
    val = build_dataset(
        "synthetic:shapes?n=8&size=32", "val", transform=eval_transform(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    )
    return torch.utils.data.DataLoader(val, batch_size=4)


def test_run_folder_and_checkpoint_format(tiny_checkpoint):
    out = tiny_checkpoint.parent
    # weights_only-loadable by plain torch, with every field of the format.
    raw = torch.load(tiny_checkpoint, weights_only=True)
    assert raw["format"] == FORMAT and raw["version"] == VERSION
    assert raw["model"] == {"name": "dilated_net", "num_classes": 4, "options": {"channels": 8}}
    assert raw["classes"] == SHAPES_CLASSES and raw["palette"] == [list(c) for c in SHAPES_PALETTE]
    assert raw["normalize"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    assert raw["train_state"]["step"] == 16 and raw["train_state"]["epoch"] == 2
    # The resolved config: saved in the folder and in the checkpoint, and loadable as a Config.
    saved = load_config(out / "config.yaml")
    assert from_dict(raw["config"]) == saved
    assert saved.model.num_classes == 4 and saved.optim.name == "adamw" and saved.data.crop_size == 32
    # metrics.csv: one row per epoch; best.pt holds the best validation mIoU of those rows.
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and [int(r["step"]) for r in rows] == [8, 16]
    best = load_checkpoint(out / "best.pt")
    assert "train_state" not in best
    assert best["metrics"]["miou"] == pytest.approx(max(float(r["val_miou"]) for r in rows), abs=1e-12)
    # TensorBoard event files were written.
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    # The stored metrics agree with an independent evaluation of the stored weights.
    model = build_model_from_checkpoint(best)
    again = evaluate(model, _val_loader(), num_classes=4)
    assert again["miou"] == pytest.approx(best["metrics"]["miou"], abs=1e-9)


def test_training_lowers_the_loss_and_raises_miou(tiny_checkpoint):
    out = tiny_checkpoint.parent
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    torch.manual_seed(0)
    untrained = evaluate(build("dilated_net", 4, channels=8), _val_loader(), num_classes=4)
    trained = load_checkpoint(out / "best.pt")["metrics"]
    assert trained["miou"] > untrained["miou"] + 0.1


def test_yaml_flags_set_and_opt_precedence(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name": "dilated_net", "options": {"channels": 4, "rates": [1, 2, 5]}},
                "optim": {"lr": 0.5, "name": "sgd"},
                "train": {"epochs": 7},
            }
        )
    )
    out = tmp_path / "run"
    args = [
        *QUICK,
        str(config),
        "--iters",
        "1",
        "--lr",
        "0.02",
        "--set",
        "optim.name=adamw",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    saved = load_config(out / "config.yaml")
    assert saved.optim.lr == 0.02 and saved.optim.name == "adamw"  # flag and --set over the file
    assert saved.train.iters == 1 and saved.train.epochs is None  # --iters replaces the file's epochs
    assert saved.model.options == {"channels": 4, "rates": [1, 2]}  # --opt over the file's options
    assert load_checkpoint(out / "last.pt")["train_state"]["step"] == 1


def test_user_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrate: 0.1\n")
    cases = [
        ([*QUICK, str(bad)], ["optim.lrate", "valid keys under optim"]),
        ([*QUICK, "--opt", "ratez=1,2"], ["ratez", "valid options"]),
        ([*QUICK, "--model", "nonet"], ["nonet", "valid names"]),
        ([*QUICK, "--batch-size", "64"], ["8 samples", "fewer than one batch of 64"]),
        ([*QUICK, "--set", "loss.class_weights=[1,2]"], ["class_weights has 2 values", "4 classes"]),
        ([*QUICK, "--init-from", str(tmp_path / "none.pt")], ["none.pt does not exist"]),
        ([*QUICK, "--set", "loss.terms=[[cee, 1.0]]"], ["loss.terms[0]", "unknown loss 'cee'"]),
    ]
    for args, words in cases:
        assert main([*args, "--iters", "1", "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        for word in words:
            assert word in err, (word, err)


def test_init_from_reinitialises_the_classifier(tiny_checkpoint, tmp_path, capsys):
    source = load_checkpoint(tiny_checkpoint)["state_dict"]
    out = tmp_path / "ft"
    # synthetic:texture has 2 classes: the 4-class classifier cannot be loaded. lr ~0: weights stay put.
    args = [
        "train", "--model", "dilated_net", "--opt", "channels=8", "--data", "synthetic:texture?n=4&size=24",
        "--val-data", "synthetic:texture?n=2&size=24", "--batch-size", "4", "--crop", "24", "--iters", "1",
        "--lr", "1e-30", "--threads", "1", "--init-from", str(tiny_checkpoint), "--out", str(out),
        "--set", "log.progress=false", "--set", "log.tensorboard=false",
    ]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "kept at initialisation" in text and "head.weight" in text and "head.bias" in text
    tuned = load_checkpoint(out / "last.pt")
    assert tuned["model"]["num_classes"] == 2 and tuned["classes"] == ["flat", "checker"]
    conv_keys = [
        k for k in source if k.startswith("backbone") and k.endswith("weight") and source[k].dim() == 4
    ]
    assert conv_keys
    for key in conv_keys:
        assert torch.equal(tuned["state_dict"][key], source[key]), key
    assert tuned["state_dict"]["head.weight"].shape[0] == 2
    # Another model is refused.
    assert (
        main(
            [
                *QUICK,
                "--model",
                "fcn_resnet",
                "--init-from",
                str(tiny_checkpoint),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "holds a dilated_net model, not fcn_resnet" in capsys.readouterr().err


def test_corrupt_last_checkpoint_falls_back_to_previous(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*QUICK, "--epochs", "2", "--out", str(out)]) == 0
    previous = load_checkpoint(out / "previous.pt")["train_state"]["step"]
    assert previous == 2  # 8 samples, batches of 4: 2 steps per epoch
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 3])  # a copy cut short
    capsys.readouterr()
    assert main([*QUICK, "--epochs", "2", "--resume", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "last.pt is truncated or corrupt" in text
    assert f"resuming from the older intact checkpoint {out / 'previous.pt'} (step 2)" in text
    assert "resumed at step 2 (epoch 2, batch 0)" in text
    assert load_checkpoint(out / "last.pt")["train_state"]["step"] == 4
    # The damaged file was replaced, never rotated into previous.pt: the fallback is still intact.
    assert load_checkpoint(out / "previous.pt")["train_state"]["step"] == 2


def test_resume_of_an_empty_folder_starts_afresh(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*QUICK, "--iters", "1", "--resume", "--out", str(out)]) == 0
    assert "nothing to resume" in capsys.readouterr().out
    assert load_checkpoint(out / "last.pt")["train_state"]["step"] == 1


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    # Without normalisation a huge learning rate blows the logits up to inf within two steps.
    args = [*QUICK, "--opt", "norm=none", "--lr", "1e8", "--epochs", "2", "--set", "train.checkpoint_every=1"]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    step = int(err.split("at step ")[1].split(":")[0])
    assert "the loss is nan" in err or "the loss is inf" in err
    assert f"last good checkpoint {out / 'last.pt'} (step {step - 1}) is kept" in err
    ck = load_checkpoint(out / "last.pt")
    assert ck["train_state"]["step"] == step - 1
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())


def test_amp_bf16_on_cpu_is_close_to_fp32(tmp_path):
    losses = {}
    for amp in (False, True):
        out = tmp_path / f"amp{amp}"
        assert main([*QUICK, "--iters", "1", "--out", str(out), *(["--amp"] if amp else [])]) == 0
        with open(out / "metrics.csv") as f:
            losses[amp] = float(next(csv.DictReader(f))["train_loss"])
    # bfloat16 has 8 bits of mantissa: the same step's loss differs, but by well under 2 %.
    assert losses[True] != losses[False]
    assert math.isclose(losses[True], losses[False], rel_tol=0.02)


def test_resume_uses_the_saved_config_and_refuses_another_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*QUICK, "--epochs", "1", "--out", str(out)]) == 0
    # Only the folder and a longer schedule: model, data and the rest come from DIR/config.yaml.
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2"]) == 0
    assert "resumed at step 2 (epoch 2, batch 0)" in capsys.readouterr().out
    ck = load_checkpoint(out / "last.pt")
    assert ck["train_state"]["step"] == 4 and ck["model"]["options"] == {"channels": 4, "rates": [1, 2]}
    before = (out / "last.pt").read_bytes()
    assert main([*QUICK, "--opt", "rates=1,2,5", "--epochs", "3", "--resume", "--out", str(out)]) == 2
    assert "does not fit this model" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == before


def _folder_tree(root, splits, labels=3):
    from PIL import Image

    for split in splits:
        for i in range(4):
            rng = np.random.default_rng(i)
            mask = rng.integers(0, labels, (12, 14)).astype(np.uint8)
            image = (mask[..., None] * 80 + rng.integers(0, 30, (12, 14, 3))).astype(np.uint8)
            for sub, array in (("images", image), ("masks", mask)):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / split / sub / f"{i}.png")


def test_folder_splits_default_to_train_and_val(tmp_path, capsys):
    root = tmp_path / "data"
    _folder_tree(root, ["train", "val"])
    args = [*QUICK[:5], "--data", f"folder:{root}", "--crop", "12", "--batch-size", "2", "--iters", "2"]
    assert (
        main([*args, "--threads", "1", "--set", "log.tensorboard=false", "--out", str(tmp_path / "a")]) == 0
    )
    text = capsys.readouterr().out
    assert (
        f"on folder:{root}, 4 samples" in text
        and f"validation on folder:{root} split 'val', 4 samples" in text
    )
    ck = load_checkpoint(tmp_path / "a" / "best.pt")
    assert ck["model"]["num_classes"] == 3 and len(ck["classes"]) == 3

    # No split folders: no validation (and no best.pt); a larger num_classes than the data's pads the names.
    flat = tmp_path / "flat"
    _folder_tree(flat, [""])
    args = [*QUICK[:5], "--data", f"folder:{flat}", "--crop", "12", "--batch-size", "2", "--iters", "1"]
    out = tmp_path / "b"
    assert main([*args, "--threads", "1", "--set", "model.num_classes=5", "--out", str(out)]) == 0
    assert "no validation data" in capsys.readouterr().out
    assert not (out / "best.pt").exists()
    ck = load_checkpoint(out / "last.pt")
    assert ck["model"]["num_classes"] == 5 and ck["classes"][3:] == ["class_3", "class_4"]
    assert len(ck["palette"]) == 5


def test_aux_loss_of_a_model_with_an_aux_head(tmp_path):
    # deeplabv3 with torchvision's aux head (an FCN head on layer3): the first step's loss is
    # main + aux_weight * aux, so it is linear in aux_weight with a positive slope (the aux cross-entropy).
    args = [
        "train", "--model", "deeplabv3", "--opt", "backbone=resnet18", "--opt", "width=0.125", "--opt", "aux=true",
        "--data", "synthetic:shapes?n=2&size=33", "--val-data", "synthetic:shapes?n=1&size=33", "--iters", "1",
        "--batch-size", "2", "--crop", "33", "--threads", "1", "--set", "log.progress=false",
        "--set", "log.tensorboard=false",
    ]  # fmt: skip
    loss = {}
    for weight in (0.0, 0.5, 1.0):
        out = tmp_path / str(weight)
        assert main([*args, "--set", f"loss.aux_weight={weight}", "--out", str(out)]) == 0
        with open(out / "metrics.csv") as f:
            loss[weight] = float(next(csv.DictReader(f))["train_loss"])
    slope = loss[1.0] - loss[0.0]
    assert slope > 0.1  # a cross-entropy over 4 classes at initialisation is about log(4) = 1.4
    assert loss[0.5] - loss[0.0] == pytest.approx(slope / 2, rel=1e-4)


def test_unusable_run_folder_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main([*QUICK, "--iters", "1", "--out", str(tmp_path / "file" / "run")]) == 2
    err = capsys.readouterr().err
    assert "cannot create the run folder" in err and len(err.strip().splitlines()) == 1
