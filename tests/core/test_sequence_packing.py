"""Packed micro-batches: the same samples, the same per-sample losses and gradients as padded ones."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from crystalvlm.data.collate import collate_conversations, collate_packed, input_token_count, model_inputs
from crystalvlm.data.packing import pack_rows
from tiny_fixtures import tiny_llava, tiny_samples

# fp32 on CPU: packed and padded rows differ only in summation order inside attention and matmuls.
LOSS_TOLERANCE = 1e-5  # relative, per sample
GRADIENT_TOLERANCE = 1e-4  # relative to the largest gradient entry of the model (some are ~0, e.g. key biases)


def test_rows_hold_every_sample_once_within_the_row_length():
    rng = random.Random(3)
    for _ in range(200):
        lengths = [rng.randint(1, 50) for _ in range(rng.randint(1, 20))]
        for row_length in (None, 64):
            rows = pack_rows(lengths, row_length)
            capacity = row_length or max(lengths)
            assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
            assert all(sum(lengths[i] for i in row) <= capacity for row in rows)
            assert all(row == sorted(row) for row in rows)
            assert rows == pack_rows(list(lengths), row_length)  # a function of the lengths alone
    # First-fit decreasing into rows of the longest (30): [30], [20 + 10], then 5 opens a third row.
    assert pack_rows([10, 30, 20, 5]) == [[1], [0, 2], [3]]
    assert pack_rows([10, 30, 20, 5], 40) == [[0, 1], [2, 3]]  # 30 + 10, 20 + 5
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([10, 40], 32)


def _per_token_losses(model, batch) -> torch.Tensor:
    logits = model(**model_inputs(batch), use_cache=False).logits  # (R, W, V)
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], reduction="none",
                           ignore_index=-100)  # (R, W-1): 0 where untrained


def _packed_sample_losses(losses: torch.Tensor, lengths: list[int]) -> dict[int, torch.Tensor]:
    """Per-sample loss sums of a packed batch (rows as `pack_rows` lays them out), by sample index."""
    sums = {}
    for row, members in enumerate(pack_rows(lengths)):
        start = 0
        for index in members:
            # The sample's last position would predict the next sample's first token: never trained,
            # since a sample's first label (its BOS) is ignored.
            sums[index] = losses[row, start:start + lengths[index] - 1].sum()
            start += lengths[index]
    return sums


def test_packed_rows_give_each_sample_its_unpacked_loss_and_the_same_gradients():
    samples = tiny_samples(seed=1, count=7)
    lengths = [len(s["input_ids"]) for s in samples]
    padded = collate_conversations(samples, pad_token_id=0)
    packed = collate_packed(samples, pad_token_id=0)
    assert packed["input_ids"].shape[0] < len(samples)  # several samples share a row
    assert packed["input_ids"].shape[1] == max(lengths)  # never wider than the padded batch
    assert input_token_count(packed) == input_token_count(padded) == sum(lengths)
    assert "attention_mask" not in packed  # transformers detects the samples from position_ids
    layout = [i for row in pack_rows(lengths) for i in row]
    assert packed["sample_lengths"].tolist() == [lengths[i] for i in layout]
    # Images follow their samples: the packed images are the padded ones in layout order.
    image_rows = [i for i in layout if samples[i]["pixel_values"] is not None]
    assert torch.equal(packed["pixel_values"], torch.cat([samples[i]["pixel_values"] for i in image_rows]))

    model = tiny_llava(seed=0)
    padded_losses = _per_token_losses(model, padded)  # (B, T-1)
    padded_total = padded_losses.sum()
    padded_total.backward()
    padded_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    packed_losses = _per_token_losses(model, packed)
    per_sample = _packed_sample_losses(packed_losses, lengths)
    assert sorted(per_sample) == list(range(len(samples)))
    assert torch.allclose(sum(per_sample.values()), packed_losses.sum())  # nothing trained across samples
    for index, loss in per_sample.items():
        expected = padded_losses[index].sum()
        assert torch.allclose(loss, expected, rtol=LOSS_TOLERANCE, atol=1e-6), (index, loss, expected)
    packed_losses.sum().backward()
    assert padded_grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    scale = max(float(grad.abs().max()) for grad in padded_grads.values())
    for name, parameter in model.named_parameters():
        if name in padded_grads:
            assert float((parameter.grad - padded_grads[name]).abs().max()) < GRADIENT_TOLERANCE * scale, name


def test_packing_without_a_boundary_would_leak_attention():
    """The check above can fail: the same rows with positions running on across samples (no restart)
    attend across samples and change the losses."""
    samples = tiny_samples(seed=1, count=7)
    packed = collate_packed(samples, pad_token_id=0)
    model = tiny_llava(seed=0).eval()
    leaking = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"]))
    with torch.no_grad():
        assert not torch.allclose(_per_token_losses(model, packed), _per_token_losses(model, leaking), atol=1e-4)


def test_no_sample_is_trained_on_predicting_the_next_samples_first_token():
    samples = tiny_samples(seed=1, count=7)
    for sample in samples:
        sample["labels"] = list(sample["input_ids"])  # every token trained, the first one too
    packed = collate_packed(samples, pad_token_id=0)
    starts = packed["position_ids"] == 0  # (R, W): first positions of samples (and of row-end padding)
    assert (packed["labels"][starts] == -100).all()
    padded = collate_conversations(samples, pad_token_id=0)
    # The same targets as the padded batch, where a first label is never a target.
    assert int((packed["labels"][:, 1:] != -100).sum()) == int((padded["labels"][:, 1:] != -100).sum())
