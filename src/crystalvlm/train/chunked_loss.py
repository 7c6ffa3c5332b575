"""Next-token cross entropy that never builds the full (B, T, V) logits.

The plain loss projects every position onto the vocabulary (B x T x V floats, 2 GB for 8 x 2048 x
32000 in fp32, kept for backward) although only the answer tokens are trained. Here the model runs
without its LM head (asked for no logits; its last hidden state is read instead), the positions whose
next token is trained are gathered, and the LM head and cross entropy run over them `chunk_size` at a
time. Each chunk is checkpointed: backward recomputes its logits instead of keeping them, so at most
one chunk's logits (chunk_size x V) exist at any moment.

Same sum, same gradients as `cross_entropy(logits[:, :-1], labels[:, 1:], reduction="sum")` up to
floating-point summation order (tests/core/test_chunked_loss.py states the tolerance).

Under FSDP the LM head's weight is sharded outside the model's forward, so there the head runs inside
the forward instead, on the trained positions only (`trained_positions_cross_entropy_sum`): the
logits of those positions are built whole (N x V), still far fewer than B x T x V.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from crystalvlm.data.templates import IGNORE_INDEX


def trained_hidden_states(model, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden (N, D), targets (N,)): the final hidden state at each position whose next token is
    trained, and that token. The forward goes through `model` itself (a DDP wrapper stays in charge)."""
    no_logits = torch.zeros_like(labels, dtype=torch.bool)  # (B, T): the LM head sees 0 positions
    outputs = model(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=no_logits)
    hidden = outputs.hidden_states[-1]  # (B, T, D), after the final norm: what the LM head reads
    trained = labels[:, 1:] != IGNORE_INDEX  # (B, T-1)
    return hidden[:, :-1][trained], labels[:, 1:][trained]


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()  # (n, V)
    return F.cross_entropy(logits, targets, reduction="sum")


def chunked_cross_entropy_sum(hidden: torch.Tensor, targets: torch.Tensor, lm_head: torch.nn.Linear,
                              chunk_size: int) -> torch.Tensor:
    """Summed cross entropy of lm_head(hidden) against targets; hidden (N, D), targets (N,)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    total = hidden.new_zeros((), dtype=torch.float32)
    if hidden.shape[0] == 0:
        # Nothing trained here; keep the head in the graph so every parameter receives a gradient.
        return total + 0.0 * lm_head.weight.sum()
    for start in range(0, hidden.shape[0], chunk_size):
        piece = slice(start, start + chunk_size)
        total = total + checkpoint(_chunk_loss, hidden[piece], lm_head.weight, lm_head.bias, targets[piece],
                                   use_reentrant=False)
    return total


def trained_positions_cross_entropy_sum(model, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Summed cross entropy with the LM head applied, inside the model's forward, to the trained
    positions alone (`logits_to_keep` as a (B, T) mask gives (N, V) logits)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)  # (B, T)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # (N, V)
    return F.cross_entropy(logits.float(), labels[:, 1:][keep[:, :-1]], reduction="sum")
