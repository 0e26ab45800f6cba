"""Sampling against independent computations: data order and sharding, per-sample seeded augmentation."""

import torch

from atrous.train import EpochBatches, SeededSamples


def test_epoch_batches_shard_the_same_global_batches():
    one = list(EpochBatches(num_samples=23, batch_size=4, epoch=3, seed=7))
    assert len(one) == 5  # 23 // 4, the incomplete batch dropped
    indices = [i for batch in one for _, i in batch]
    assert len(set(indices)) == 20 and all(0 <= i < 23 for i in indices)
    assert all(e == 3 for batch in one for e, _ in batch)
    ranks = [
        list(EpochBatches(num_samples=23, batch_size=4, epoch=3, seed=7, rank=r, world=2)) for r in (0, 1)
    ]
    assert [a + b for a, b in zip(*ranks)] == one  # rank 0 takes the first half of each global batch
    # Resuming at batch 2 yields exactly the remaining batches.
    assert list(EpochBatches(num_samples=23, batch_size=4, epoch=3, seed=7, start=2)) == one[2:]
    # Another epoch or seed: another order.
    other = [i for b in EpochBatches(num_samples=23, batch_size=4, epoch=4, seed=7) for _, i in b]
    assert other != indices


def test_seeded_samples_are_a_function_of_the_key_and_leave_the_global_rng_alone():
    def augment(image, mask):
        return image + torch.rand(()), mask

    data = [(torch.zeros(1), torch.zeros(1))] * 5
    samples = SeededSamples(data, augment, seed=11)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = samples[(2, 4)][0]
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)  # the caller's RNG does not matter
    assert torch.equal(samples[(2, 4)][0], a)
    assert not torch.equal(samples[(2, 3)][0], a) and not torch.equal(samples[(1, 4)][0], a)
    assert not torch.equal(SeededSamples(data, augment, seed=12)[(2, 4)][0], a)
