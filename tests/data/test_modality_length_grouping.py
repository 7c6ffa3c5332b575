"""Modality-length grouping (`group_by_modality_length`): every sample once per epoch, batches of one
modality and of similar lengths, full batches first, and the order a pure function of (seed, epoch)."""

from __future__ import annotations

import random

from crystalvlm.data.batching import epoch_batches


def _data(count: int = 403, seed: int = 0):
    rng = random.Random(seed)
    has_image = [rng.random() < 0.8 for _ in range(count)]
    lengths = [rng.randint(60, 900) if image else rng.randint(20, 2000) for image in has_image]
    return lengths, has_image


def _padding_share(batches, lengths) -> float:
    used = sum(lengths[i] for batch in batches for i in batch)
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return 1 - used / padded


def test_grouped_batches_cover_the_epoch_once_each_of_one_modality():
    lengths, has_image = _data()
    batches = epoch_batches(lengths, has_image, batch_size=8, seed=3, epoch=0)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert all(len({has_image[i] for i in batch}) == 1 for batch in batches)
    sizes = [len(batch) for batch in batches]
    # Only the two modalities' tails may be short, and they come last.
    assert sizes.count(8) >= len(sizes) - 2 and sizes == sorted(sizes, reverse=True)
    # Each batch holds samples sorted longest first (taken in order from a sorted mega-batch).
    assert all([lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True) for batch in batches)


def test_grouping_removes_most_padding_compared_with_a_random_order():
    lengths, has_image = _data()
    grouped = epoch_batches(lengths, has_image, batch_size=8, seed=3, epoch=0)
    shuffled = epoch_batches(lengths, has_image, batch_size=8, seed=3, epoch=0, group_by_modality_length=False)
    assert _padding_share(grouped, lengths) < 0.5 * _padding_share(shuffled, lengths)
    # Still shuffled: not one global sort (consecutive batches do not keep descending).
    firsts = [lengths[batch[0]] for batch in grouped]
    assert firsts != sorted(firsts, reverse=True)


def test_order_is_a_pure_function_of_seed_and_epoch():
    lengths, has_image = _data()
    first = epoch_batches(lengths, has_image, batch_size=8, seed=3, epoch=1)
    assert epoch_batches(list(lengths), list(has_image), batch_size=8, seed=3, epoch=1) == first
    assert epoch_batches(lengths, has_image, batch_size=8, seed=3, epoch=2) != first
    assert epoch_batches(lengths, has_image, batch_size=8, seed=4, epoch=1) != first
