"""Losses against their papers' formulas evaluated by brute force (Python loops over pixels and sets),
hand values, and torch's own cross-entropy; the ignore index; gradients; the criterion's terms."""

import math

import pytest
import torch
import torch.nn.functional as F

from atrous.errors import AtrousError
from atrous.losses import (
    TERM_NAMES,
    build_criterion,
    dice_loss,
    focal_loss,
    lovasz_softmax,
    ohem_cross_entropy,
)

K = 3


def _batch(seed, n=2, h=5, w=6, k=K, ignore_frac=0.2):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, h, w, generator=g) * 2
    target = torch.randint(0, k, (n, h, w), generator=g)
    target[torch.rand(n, h, w, generator=g) < ignore_frac] = 255
    return logits, target


def _pixels(logits, target, ignore=255):
    """[(softmax probabilities as a list, label)] for every labelled pixel, computed with math.exp."""
    out = []
    n, k, h, w = logits.shape
    for i in range(n):
        for y in range(h):
            for x in range(w):
                t = int(target[i, y, x])
                if t == ignore:
                    continue
                z = [float(logits[i, c, y, x]) for c in range(k)]
                m = max(z)
                e = [math.exp(v - m) for v in z]
                out.append(([v / sum(e) for v in e], t))
    return out


def _brute_dice(logits, target, smooth=1.0, classes="present"):
    k = logits.shape[1]
    inter, psum, count = [0.0] * k, [0.0] * k, [0] * k
    for p, t in _pixels(logits, target):
        for c in range(k):
            psum[c] += p[c]
        inter[t] += p[t]
        count[t] += 1
    used = [c for c in range(k) if classes == "all" or count[c] > 0]
    dice = [(2 * inter[c] + smooth) / (psum[c] + count[c] + smooth) for c in used]
    return 1 - sum(dice) / len(dice)


def _brute_focal(logits, target, gamma=2.0, alpha=None):
    num = den = 0.0
    for p, t in _pixels(logits, target):
        a = 1.0 if alpha is None else alpha[t]
        num += a * (1 - p[t]) ** gamma * -math.log(p[t])
        den += a
    return num / den


def _jaccard_loss_of(mispredicted, fg):
    # Berman et al. eq. (3): Delta_J(M) = |M| / |{y = c} | M|.
    return len(mispredicted) / len(fg | mispredicted) if fg | mispredicted else 0.0


def _brute_lovasz(logits, target, classes="present"):
    px = _pixels(logits, target)
    losses = []
    for c in range(logits.shape[1]):
        fg = {i for i, (_, t) in enumerate(px) if t == c}
        if classes == "present" and not fg:
            continue
        errors = [abs((1.0 if t == c else 0.0) - p[c]) for p, t in px]
        order = sorted(range(len(px)), key=lambda i: -errors[i])
        # Lovasz extension: sum_i m_(pi_i) (Delta({pi_1..pi_i}) - Delta({pi_1..pi_(i-1)})).
        value, prefix, previous = 0.0, set(), 0.0
        for i in order:
            prefix.add(i)
            current = _jaccard_loss_of(prefix, fg)
            value += errors[i] * (current - previous)
            previous = current
        losses.append(value)
    return sum(losses) / len(losses)


def _brute_ohem(logits, target, thresh, min_kept):
    px = _pixels(logits, target)
    pt = [p[t] for p, t in px]
    kept = [i for i, v in enumerate(pt) if v < thresh]
    wanted = min_kept * logits.shape[0]
    if len(kept) < wanted and pt:
        cut = sorted(pt)[min(wanted, len(pt)) - 1]
        kept = [i for i, v in enumerate(pt) if v <= cut]
    return sum(-math.log(pt[i]) for i in kept) / len(kept), len(kept)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("options", [{}, {"smooth": 0.0}, {"classes": "all"}])
def test_dice_against_brute_force(seed, options):
    logits, target = _batch(seed)
    target[target == 2] = 0  # class 2 absent from the target: "present" and "all" differ
    assert dice_loss(logits, target, **options).item() == pytest.approx(
        _brute_dice(logits, target, **options)
    )


def test_dice_by_hand():
    # Two labelled pixels of a 2-class problem with probabilities (0.8, 0.2) and (0.4, 0.6), targets 0 and 1.
    logits = torch.log(torch.tensor([[0.8, 0.4], [0.2, 0.6]])).reshape(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    # class 0: (2 * 0.8 + 1) / (1.2 + 1 + 1); class 1: (2 * 0.6 + 1) / (0.8 + 1 + 1).
    expected = 1 - (2.6 / 3.2 + 2.2 / 2.8) / 2
    assert dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("gamma", "alpha"), [(2.0, None), (0.5, None), (2.0, [0.25, 1.0, 2.0])])
def test_focal_against_brute_force(seed, gamma, alpha):
    logits, target = _batch(seed)
    value = focal_loss(logits, target, gamma=gamma, alpha=alpha).item()
    assert value == pytest.approx(_brute_focal(logits, target, gamma, alpha), rel=1e-5)


def test_focal_with_gamma_zero_is_weighted_cross_entropy():
    logits, target = _batch(3)
    w = torch.tensor([0.5, 1.0, 3.0])
    expected = F.cross_entropy(logits, target, weight=w, ignore_index=255)
    assert focal_loss(logits, target, gamma=0.0, alpha=w).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("classes", ["present", "all"])
def test_lovasz_against_brute_force(seed, classes):
    logits, target = _batch(seed, h=4, w=5)
    target[target == 1] = 2  # class 1 absent
    value = lovasz_softmax(logits, target, classes=classes).item()
    assert value == pytest.approx(_brute_lovasz(logits, target, classes), rel=1e-5)


def test_lovasz_of_hard_predictions_is_one_minus_iou():
    # With one-hot probabilities the Lovasz extension equals the set function: mean over classes of 1 - IoU.
    # gt:   0 0 1 1        pred: 0 1 1 1    -> IoU_0 = 1/2, IoU_1 = 2/3
    target = torch.tensor([[[0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1, 1]]])
    logits = F.one_hot(pred, 2).permute(0, 3, 1, 2).float() * 200.0  # softmax: 0 / 1 to 1e-87
    assert lovasz_softmax(logits, target).item() == pytest.approx(((1 - 1 / 2) + (1 - 2 / 3)) / 2)


@pytest.mark.parametrize(("thresh", "min_kept"), [(0.7, 1), (0.3, 10), (0.004, 4), (1.0, 0), (0.7, 10_000)])
def test_ohem_against_brute_force(thresh, min_kept):
    logits, target = _batch(4, h=6, w=7)
    expected, kept = _brute_ohem(logits, target, thresh, min_kept)
    value = ohem_cross_entropy(logits, target, thresh=thresh, min_kept=min_kept).item()
    assert value == pytest.approx(expected, rel=1e-5)
    labelled = int((target != 255).sum())
    if (thresh, min_kept) == (0.004, 4):
        # 4 pixels are below 0.004, fewer than 2 images x 4: the 8 hardest are kept instead.
        assert kept == 8 < labelled
    if min_kept == 10_000 or thresh == 1.0:
        # Every labelled pixel kept: plain cross-entropy.
        assert kept == labelled
        assert value == pytest.approx(F.cross_entropy(logits, target, ignore_index=255).item(), rel=1e-6)


def test_ohem_keeps_the_hardest_pixel():
    logits, target = _batch(5)
    value = ohem_cross_entropy(logits, target, thresh=1e-9, min_kept=0).item()
    assert value == 0.0  # nothing is that hard, and nothing must be kept
    ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")[target != 255]
    one = ohem_cross_entropy(logits[:1], target[:1], thresh=1e-9, min_kept=1).item()
    first = ce[: int((target[0] != 255).sum())]
    assert one == pytest.approx(first.max().item(), rel=1e-6)


LOSS_FUNCTIONS = {
    "dice": dice_loss,
    "dice_all_unsmoothed": lambda x, t: dice_loss(x, t, classes="all", smooth=0.0),
    "focal": focal_loss,
    "lovasz": lovasz_softmax,
    "ohem": lambda x, t: ohem_cross_entropy(x, t, min_kept=5),
    "criterion": build_criterion(
        [["ce", 1.0], ["dice", 0.5], ["focal", 1.0], ["lovasz", 0.3], ["ohem", 2.0, {"min_kept": 5}]],
        class_weights=[1.0, 2.0, 0.5],
    ),
}


@pytest.mark.parametrize("name", list(LOSS_FUNCTIONS))
def test_ignored_pixels_change_nothing_and_gradients_are_finite(name):
    fn = LOSS_FUNCTIONS[name]
    logits, target = _batch(6, ignore_frac=0.3)
    ignored = (target == 255)[:, None].expand_as(logits)
    a = logits.clone().requires_grad_(True)
    b = torch.where(ignored, torch.randn_like(logits) * 50, logits).requires_grad_(True)
    la, lb = fn(a, target), fn(b, target)
    assert la.item() == pytest.approx(lb.item(), rel=1e-6)
    la.backward()
    lb.backward()
    assert torch.isfinite(a.grad).all()
    assert a.grad[ignored].abs().max() == 0
    assert a.grad[~ignored].abs().max() > 0
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("name", list(LOSS_FUNCTIONS))
def test_a_batch_without_labels_gives_zero(name):
    logits = torch.randn(1, K, 3, 3, requires_grad=True)
    loss = LOSS_FUNCTIONS[name](logits, torch.full((1, 3, 3), 255))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().max() == 0


def test_criterion_is_the_weighted_sum_of_its_terms():
    logits, target = _batch(7)
    w = torch.tensor([0.5, 1.0, 2.0])
    terms = [["ce", 1.0], ["dice", 0.5], ["focal", 2.0, {"gamma": 1.0}], ["lovasz", 0.25], ["ohem", 3.0]]
    criterion = build_criterion(terms, class_weights=w)
    expected = (
        F.cross_entropy(logits, target, weight=w, ignore_index=255)
        + 0.5 * dice_loss(logits, target)
        + 2.0 * focal_loss(logits, target, gamma=1.0, alpha=w)
        + 0.25 * lovasz_softmax(logits, target)
        + 3.0 * ohem_cross_entropy(logits, target)
    )
    assert criterion(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    # The default training loss is torch's weighted mean cross-entropy.
    ce = build_criterion([["ce", 1.0]], class_weights=w)
    assert ce(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target, weight=w, ignore_index=255).item(), rel=1e-6
    )


def test_another_ignore_index_is_honoured():
    logits, target = _batch(8, ignore_frac=0.0)
    target[:, 0] = 0  # row 0 of every image: ignored under ignore_index=0; 255 is then no label at all
    crit = build_criterion([["ce", 1.0], ["dice", 1.0]], ignore_index=0)
    keep = target != 0
    moved = torch.where(keep[:, None], logits, logits + 10)
    assert crit(logits, target).item() == pytest.approx(crit(moved, target).item(), rel=1e-6)
    assert dice_loss(logits, target, ignore_index=0).item() == pytest.approx(
        dice_loss(moved, target, ignore_index=0).item(), rel=1e-6
    )


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        ([], "loss.terms is empty"),
        (
            [["dicee", 1.0]],
            r"loss.terms\[0\].*unknown loss 'dicee'; choose from ce, dice, focal, lovasz, ohem",
        ),
        ([["ce", 1.0], ["focal", -1.0]], r"loss.terms\[1\].*weight must be a finite number >= 0"),
        ([["focal", 1.0, {"gama": 2}]], r"focal has no option 'gama' \(options: gamma\)"),
        ([["focal", 1.0, {"alpha": [1, 2]}]], "focal has no option 'alpha'"),
        ([["ce", 1.0, {"gamma": 2}]], r"ce has no option 'gamma' \(options: none\)"),
        ([["ohem", 1.0, {"thresh": 1.5}]], r"option thresh must be a probability in \(0, 1\]"),
        ([["ohem", 1.0, {"min_kept": 0.5}]], "option min_kept must be an integer >= 0"),
        ([["dice", 1.0, {"classes": "some"}]], "option classes must be present or all"),
        (["ce"], r"each term is \[name, weight\]"),
    ],
)
def test_build_criterion_errors_name_the_entry(terms, message):
    assert TERM_NAMES == ("ce", "dice", "focal", "lovasz", "ohem")
    with pytest.raises(AtrousError, match=message):
        build_criterion(terms)


def test_bad_inputs_raise():
    logits = torch.randn(1, K, 2, 2)
    with pytest.raises(ValueError, match=r"label 7, outside 0\.\.2"):
        dice_loss(logits, torch.tensor([[[0, 7], [1, 2]]]))
    with pytest.raises(ValueError, match=r"logits \(N, K, H, W\) and target \(N, H, W\)"):
        focal_loss(logits, torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="classes must be one of present, all"):
        lovasz_softmax(logits, torch.zeros(1, 2, 2, dtype=torch.long), classes="every")


@pytest.mark.parametrize("term", ["ce", "dice", "focal", "lovasz", "ohem"])
def test_each_term_trains_a_tiny_model(term):
    # A 1x1 convolution can represent the labelling exactly: label = argmax of a fixed linear map of the
    # pixel's 3 values. Every term must drive the model towards it (pixel accuracy well above its start).
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 12, 12, generator=g)
    truth = torch.randn(K, 3, generator=g)
    target = torch.einsum("kc,nchw->nkhw", truth, images).argmax(1)
    target[:, :2] = 255
    model = torch.nn.Conv2d(3, K, 1)
    torch.nn.init.zeros_(model.weight)
    options = {"ohem": {"min_kept": 50}}.get(term, {})
    criterion = build_criterion([[term, 1.0, options]])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    labelled = target != 255

    def accuracy():
        return (model(images).argmax(1) == target)[labelled].float().mean().item()

    before = accuracy()
    for _ in range(40):
        optimizer.zero_grad()
        criterion(model(images), target).backward()
        optimizer.step()
    assert accuracy() > max(before + 0.3, 0.85), term
