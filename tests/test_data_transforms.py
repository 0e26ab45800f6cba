"""Paired transforms: masks only ever take values they had (nearest), crop padding is 255, and image and
mask stay aligned through scale, crop and flip."""

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from atrous.data import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
from atrous.data.transforms import PairTransform, RandomScale

ZERO_MEAN, UNIT_STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def _pattern(h=37, w=53, block=6, classes=5, seed=0):
    """A mask of blocks with random classes and an image whose red channel encodes the class (40 * c)
    and whose green channel encodes the column (so a flip or shift that the mask missed shows)."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, classes, (h // block + 1, w // block + 1))
    mask = np.kron(grid, np.ones((block, block), dtype=np.int64))[:h, :w]
    image = np.zeros((3, h, w), dtype=np.uint8)
    image[0] = 40 * mask
    image[1] = np.arange(w)[None, :] * 4
    return tv_tensors.Image(torch.from_numpy(image)), tv_tensors.Mask(torch.from_numpy(mask))


@pytest.mark.parametrize("seed", range(6))
def test_masks_only_keep_their_values_and_pad_with_255(seed):
    torch.manual_seed(seed)
    image, mask = _pattern(seed=seed)
    t = train_transform(crop_size=(41, 47), scale=(0.3, 2.5), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    out_image, out_mask = t(image, mask)
    assert type(out_image) is torch.Tensor and type(out_mask) is torch.Tensor
    assert out_image.dtype == torch.float32 and out_image.shape == (3, 41, 47)
    assert out_mask.dtype == torch.int64 and out_mask.shape == (41, 47)
    assert set(out_mask.unique().tolist()) <= set(mask.unique().tolist()) | {255}


def test_crop_pads_mask_with_255_and_image_with_0():
    torch.manual_seed(0)
    image, mask = _pattern(h=10, w=12)
    t = train_transform(
        crop_size=30, scale=(1.0, 1.0), hflip=False, color_jitter=0.0, mean=ZERO_MEAN, std=UNIT_STD
    )
    out_image, out_mask = t(image, mask)
    pad = out_mask == 255
    assert int(pad.sum()) == 30 * 30 - 10 * 12  # every added pixel, and only those, is ignore
    assert bool((out_image[:, pad] == 0).all())
    # The unpadded pixels form one 10x12 block: the original mask, and the image over it.
    rows, cols = torch.nonzero(~pad, as_tuple=True)
    y0, x0 = int(rows.min()), int(cols.min())
    assert torch.equal(out_mask[y0 : y0 + 10, x0 : x0 + 12], mask)
    assert torch.equal(torch.round(out_image[:, y0 : y0 + 10, x0 : x0 + 12] * 255).to(torch.uint8), image)


def test_crop_pads_the_mask_with_the_chosen_ignore_index():
    # With ignore index 7, padding is 7 and a stored 255 stays an ordinary value (here: class 255's pixels).
    torch.manual_seed(0)
    image, mask = _pattern(h=10, w=12)
    mask[0, 0] = 255
    t = train_transform(
        crop_size=30, scale=(1.0, 1.0), hflip=False, color_jitter=0.0, mean=ZERO_MEAN, std=UNIT_STD,
        ignore_index=7,
    )  # fmt: skip
    out_image, out_mask = t(image, mask)
    pad = out_mask == 7
    assert int(pad.sum()) == 30 * 30 - 10 * 12 and int((out_mask == 255).sum()) == 1
    assert bool((out_image[:, pad] == 0).all())


def test_alignment_survives_crop_and_flip_exactly():
    image, mask = _pattern()
    t = train_transform(crop_size=25, scale=(1.0, 1.0), color_jitter=0.0, mean=ZERO_MEAN, std=UNIT_STD)
    flips = 0
    for seed in range(8):
        torch.manual_seed(seed)
        out_image, out_mask = t(image, mask)
        # Red channel still encodes the mask pixel by pixel.
        assert torch.equal(torch.round(out_image[0] * 255 / 40).long(), out_mask)
        # The column code tells where the crop came from and whether it was flipped.
        cols = torch.round(out_image[1, 0] * 255 / 4).long()
        step = int(cols[1] - cols[0])
        assert step in (1, -1) and torch.equal(cols, cols[0] + step * torch.arange(25))
        flips += step == -1
        # Undo the flip and find the crop in the original mask: it must be there, with its image.
        x0 = int(cols.min())
        crop = out_mask.flip(-1) if step == -1 else out_mask
        assert any(torch.equal(mask[y : y + 25, x0 : x0 + 25], crop) for y in range(37 - 25 + 1))
    assert 0 < flips < 8  # both branches of the flip were exercised


def test_alignment_survives_random_scale_away_from_edges():
    # Bilinear image vs nearest mask agree wherever the mask's 3x3 neighbourhood is one class.
    image, mask = _pattern(h=60, w=60, block=10)
    t = train_transform(crop_size=48, scale=(0.6, 1.8), color_jitter=0.0, mean=ZERO_MEAN, std=UNIT_STD)
    checked = 0
    for seed in range(5):
        torch.manual_seed(seed)
        out_image, out_mask = t(image, mask)
        m = out_mask.clone()
        padded = torch.nn.functional.pad(m[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
        windows = padded.unfold(0, 3, 1).unfold(1, 3, 1)  # (48, 48, 3, 3)
        interior = (windows == m[..., None, None]).all(-1).all(-1) & (m != 255)
        decoded = torch.round(out_image[0] * 255 / 40).long()
        assert torch.equal(decoded[interior], m[interior])
        checked += int(interior.sum())
    assert checked > 5000


def test_random_scale_changes_size_by_one_factor():
    image, mask = _pattern(h=40, w=80)
    torch.manual_seed(3)
    out_image, out_mask = RandomScale((0.5, 2.0))(image, mask)
    h, w = out_image.shape[-2:]
    assert out_mask.shape == (h, w) and abs(w / h - 2.0) < 0.06 and 20 <= h <= 80
    with pytest.raises(ValueError, match="0 < low <= high"):
        RandomScale((2.0, 1.0))


def test_eval_transform_normalises_exactly():
    image = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    mask = torch.randint(0, 3, (5, 7))
    out_image, out_mask = eval_transform(mean=IMAGENET_MEAN, std=IMAGENET_STD)(image, mask)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(out_image, (image.float() / 255 - mean) / std, atol=1e-6)
    assert torch.equal(out_mask, mask)


def test_plain_inputs_are_wrapped_so_the_mask_is_never_left_behind():
    # A plain tensor mask would be passed through by v2 untouched; PairTransform wraps it as a Mask.
    image = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    mask = np.random.default_rng(1).integers(0, 4, (9, 11))
    t = PairTransform([v2.RandomHorizontalFlip(p=1.0)])
    out_image, out_mask = t(image, torch.from_numpy(mask))
    assert torch.equal(out_mask, torch.from_numpy(mask).flip(-1))
    assert torch.equal(out_image, torch.from_numpy(image).permute(2, 0, 1).flip(-1))
