"""The chunked loss (`loss: chunked`) equals the plain full-logits loss, with the same gradients."""

from __future__ import annotations

import pytest
import torch

from crystalvlm.data.collate import collate_conversations, collate_packed
from crystalvlm.train.chunked_loss import chunked_cross_entropy_sum
from crystalvlm.train.image_path_anchor import keep_image_path_in_graph
from crystalvlm.train.trainer import NextTokenObjective
from tiny_fixtures import tiny_llava, tiny_samples

# fp32 on CPU: the two differ only in the order the per-token losses are summed.
LOSS_TOLERANCE = 1e-5  # relative
GRADIENT_TOLERANCE = 1e-4  # relative to the largest gradient entry of the model


def _loss_and_gradients(model, objective, batch):
    model.zero_grad()
    loss, _ = objective.loss_sum(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("layout", [collate_conversations, collate_packed])
def test_chunked_loss_equals_the_full_loss_and_its_gradients(layout):
    model = tiny_llava(seed=2)
    batch = layout(tiny_samples(seed=4, count=6), pad_token_id=0)
    trained = int((batch["labels"][:, 1:] != -100).sum())
    full_loss, full_grads = _loss_and_gradients(model, NextTokenObjective(), batch)
    # A chunk smaller than the trained positions, not dividing them: several chunks and a ragged last one.
    chunk = 7
    assert trained > 2 * chunk and trained % chunk
    scale = max(float(grad.abs().max()) for grad in full_grads.values())
    # In chunks outside the forward; and (FSDP's variant) the trained positions' logits inside it.
    for objective in (NextTokenObjective(lm_head=model.get_output_embeddings(), chunk_size=chunk),
                      NextTokenObjective(trained_positions_only=True)):
        loss, grads = _loss_and_gradients(model, objective, batch)
        assert torch.allclose(loss, full_loss, rtol=LOSS_TOLERANCE)
        assert grads.keys() == full_grads.keys()
        for name, grad in full_grads.items():
            assert float((grads[name] - grad).abs().max()) < GRADIENT_TOLERANCE * scale, name


def test_chunks_never_hold_more_than_one_chunk_of_logits():
    """Backward recomputes each chunk's logits: the autograd graph keeps no (N, V) tensor."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 5000, bias=False)
    hidden = torch.randn(300, 16, requires_grad=True)
    targets = torch.randint(0, 5000, (300,))
    saved: list[tuple[int, ...]] = []

    def pack(tensor):
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = chunked_cross_entropy_sum(hidden, targets, head, chunk_size=64)
    assert all(shape[-1:] != (5000,) or shape[0] <= 64 for shape in saved), saved
    assert not any(shape == (300, 5000) for shape in saved)
    reference = torch.nn.functional.cross_entropy(head(hidden), targets, reduction="sum")
    assert torch.allclose(loss, reference, rtol=LOSS_TOLERANCE)
    (grad_chunked,) = torch.autograd.grad(loss, hidden)
    (grad_full,) = torch.autograd.grad(reference, hidden)
    assert torch.allclose(grad_chunked, grad_full, rtol=1e-4, atol=1e-6)


def test_text_only_micro_batch_reaches_a_trained_projector():
    """With only the projector trained, a text-only micro-batch still has a loss with a gradient (the
    image-path anchor reaches the hidden states the chunked loss reads)."""
    model = tiny_llava(seed=3)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("multi_modal_projector" in name)
    anchor = keep_image_path_in_graph(model)
    try:
        text_only = [sample for sample in tiny_samples(seed=5, count=9) if sample["pixel_values"] is None]
        batch = collate_packed(text_only, pad_token_id=0)
        loss, _ = NextTokenObjective(lm_head=model.get_output_embeddings(), chunk_size=5).loss_sum(model, batch)
        loss.backward()
        grads = [p.grad for n, p in model.named_parameters() if "multi_modal_projector" in n]
        assert all(grad is not None and float(grad.abs().max()) == 0.0 for grad in grads)
    finally:
        anchor.remove()


def test_memory_estimate_counts_one_chunk_of_logits():
    from crystalvlm.train.memory_estimate import LaunchPlan, ModelShape, estimate_memory

    shape = ModelShape(trainable=7_000_000_000, frozen=300_000_000, hidden_size=4096, layers=32, vocab_size=32000)
    plan = LaunchPlan(precision="bf16", sharding="none", world_size=1, batch_size=16, max_length=2048,
                      gradient_checkpointing=True)
    full = estimate_memory(shape, plan)
    chunked = estimate_memory(shape, LaunchPlan(**{**plan.__dict__, "loss_chunk_size": 1024}))
    assert full.logits == 16 * 2048 * 32000 * 14  # every token's logits: bf16, fp32 copy, log-softmax, gradient
    assert chunked.logits == 1024 * 32000 * 14
    assert chunked.total < full.total
