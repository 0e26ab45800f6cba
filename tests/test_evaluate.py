"""evaluate() against a hand-computed confusion matrix and hand-counted objects."""

import pytest
import torch
import torch.nn.functional as F

from _fixed_model import Fixed as _Fixed
from atrous.evaluate import evaluate


def test_evaluate_matches_a_hand_computed_confusion_matrix():
    # Ground truth and prediction of two 2x3 images (255 = ignore), class count 3.
    gt = torch.tensor([[[0, 0, 1], [1, 2, 255]], [[2, 2, 2], [0, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]], [[2, 2, 0], [0, 1, 2]]])
    logits = F.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    model = _Fixed(logits)
    loader = [(torch.tensor([[0.0]]), gt[:1]), (torch.tensor([[1.0]]), gt[1:])]
    result = evaluate(model, loader, num_classes=3)
    # Counted pixels (11): class 0: gt 3, pred-hit 2; class 1: gt 4, hit 3; class 2: gt 4, hit 3.
    # Predictions on counted pixels: class 0 predicted 2+1(gt2->0)=3, class 1: 3+1(gt0->1)=4, class 2: 3+1=4.
    iou = [2 / (3 + 3 - 2), 3 / (4 + 4 - 3), 3 / (4 + 4 - 3)]
    assert result["pixel_acc"] == pytest.approx(8 / 11)
    assert result["per_class_iou"] == pytest.approx(iou)
    assert result["miou"] == pytest.approx(sum(iou) / 3)
    # Objects (8-connected, per image and class), all with sqrt(area) < 4: image 1: class 0 {(0,0),(0,1)}
    # recall 1/2, class 1 {(0,2)} 1 and {(1,0)} 1 (not adjacent), class 2 {(1,1)} 1; image 2: class 2 the
    # top row 2/3, class 0 {(1,0)} 1, class 1 {(1,1),(1,2)} 1/2.
    buckets = result["object_recall_by_size"]
    assert buckets[0]["min"] == 0 and buckets[0]["objects"] == 7
    assert buckets[0]["recall"] == pytest.approx((0.5 + 1 + 1 + 1 + 2 / 3 + 1 + 0.5) / 7)
    assert all(b["objects"] == 0 and b["recall"] is None for b in buckets[1:])
