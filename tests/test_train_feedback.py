"""Training defaults that fit the data and what a run reports: the derived crop, loss.terms with the aux
head, validation loss and per-class IoU in metrics.csv, predictions in TensorBoard, train.best_metric."""

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from atrous.checkpoint import build_model_from_checkpoint, load_checkpoint
from atrous.cli import main
from atrous.config import LossConfig
from atrous.data import IMAGENET_MEAN, IMAGENET_STD, build_dataset, eval_transform
from atrous.train import Dist, build_loss
from atrous.train.data import derive_crop

RUN = [
    "train", "--model", "dilated_net", "--opt", "channels=4", "--opt", "rates=1,2",
    "--batch-size", "4", "--threads", "1", "--set", "log.progress=false",
]  # fmt: skip


def _folder(root, sizes):
    for i, (h, w) in enumerate(sizes):
        rng = np.random.default_rng(i)
        mask = rng.integers(0, 2, (h, w)).astype(np.uint8)
        image = (mask[..., None] * 120 + rng.integers(0, 30, (h, w, 3))).astype(np.uint8)
        for sub, array in (("images", image), ("masks", mask)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / sub / f"{i}.png")


def test_the_default_crop_is_the_median_short_side_capped_at_321(tmp_path, capsys):
    # Hand values: short sides 20, 20, 20, 30, 40 -> median 20; 24x20 is (H, W) = (24, 20).
    small = tmp_path / "small"
    _folder(small, [(24, 20), (20, 24), (20, 20), (30, 50), (40, 40)])
    assert derive_crop(build_dataset(f"folder:{small}")) == 20
    # Before: the default crop was 321 whatever the images, padding 64 px images to 96 % ignore label.
    out = tmp_path / "run"
    args = [*RUN, "--data", f"folder:{small}", "--iters", "1", "--set", "log.tensorboard=false"]
    assert main([*args, "--out", str(out)]) == 0
    assert (
        "crop 20 px: the median short side of the training images, capped at 321" in capsys.readouterr().out
    )
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["crop_size"] == 20
    # Large images: capped at 321 (today's crop); mixed: the median (an even count takes the lower one).
    assert derive_crop(build_dataset("synthetic:shapes?n=4&size=400", "train")) == 321
    mixed = tmp_path / "mixed"
    _folder(mixed, [(16, 16), (64, 64), (400, 500), (30, 90)])
    assert derive_crop(build_dataset(f"folder:{mixed}")) == 30


def _dice(logits, target):
    # 1 - mean over the classes present of (2 sum p g + 1) / (sum p + sum g + 1), written out.
    p = logits.softmax(1)
    scores = []
    for c in target.unique().tolist():
        g = (target == c).float()
        pc = p[:, c]
        scores.append((2 * (pc * g).sum() + 1) / (pc.sum() + g.sum() + 1))
    return 1 - torch.stack(scores).mean()


def test_loss_terms_and_the_aux_head_get_the_same_sum():
    torch.manual_seed(0)
    logits, aux = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    target = torch.randint(0, 3, (2, 5, 4))
    weights = [1.0, 2.0, 0.5]
    config = LossConfig(terms=[["ce", 1.0], ["dice", 0.5]], class_weights=weights, aux_weight=0.4)
    loss = build_loss(config, num_classes=3)(logits, aux, target, Dist())

    def terms(x):  # class weights apply to cross-entropy, not to Dice
        return F.cross_entropy(x, target, weight=torch.tensor(weights)) + 0.5 * _dice(x, target)

    torch.testing.assert_close(loss, terms(logits) + 0.4 * terms(aux))


@pytest.fixture(scope="module")
def feedback_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("feedback") / "run"
    args = [
        *RUN, "--data", "synthetic:shapes?n=8&size=24", "--val-data", "synthetic:shapes?n=3&size=24",
        "--crop", "24", "--epochs", "3", "--lr", "0.05", "--set", "train.best_metric=val_loss",
    ]  # fmt: skip
    assert main([*args, "--out", str(out)]) == 0
    with open(out / "metrics.csv") as f:
        return out, list(csv.DictReader(f))


def test_validation_loss_and_per_class_iou_are_logged_and_best_metric_chooses_best(feedback_run):
    out, rows = feedback_run
    best = load_checkpoint(out / "best.pt")
    losses = [float(r["val_loss"]) for r in rows]
    row = rows[losses.index(min(losses))]  # val_loss: lower is better
    assert best["metrics"]["best_metric"] == "val_loss" and best["metrics"]["step"] == int(row["step"])
    assert best["metrics"]["loss"] == pytest.approx(min(losses), rel=1e-12)
    names = best["classes"]
    assert [float(row[f"val_iou_{n}"]) for n in names] == pytest.approx(best["metrics"]["per_class_iou"])
    assert float(row["val_miou"]) == pytest.approx(best["metrics"]["miou"])
    for key in ("val_dice", "val_boundary_iou", "val_pixel_acc"):
        assert 0.0 <= float(row[key]) <= 1.0
    # The validation loss recomputed here: the mean over images of each image's cross-entropy.
    model = build_model_from_checkpoint(best).eval()
    data = build_dataset(
        "synthetic:shapes?n=3&size=24", "val", transform=eval_transform(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    )
    with torch.no_grad():
        per_image = [float(F.cross_entropy(model(x[None]), y[None], ignore_index=255)) for x, y in data]
    assert best["metrics"]["loss"] == pytest.approx(sum(per_image) / len(per_image), rel=1e-5)


def test_validation_predictions_are_tensorboard_images(feedback_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, rows = feedback_run
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["images"]) >= {"val/0", "val/1", "val/2"}
    shots = events.Images("val/0")
    assert [s.step for s in shots] == [int(r["step"]) for r in rows]  # one per validated epoch
    assert (shots[0].width, shots[0].height) == (3 * 24, 24)  # image | ground truth | prediction
    assert (
        "epoch/val_loss" in events.Tags()["scalars"]
        and "epoch/val_iou_background" in events.Tags()["scalars"]
    )
