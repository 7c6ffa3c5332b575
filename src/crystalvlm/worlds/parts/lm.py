"""A tiny LM pretrained on a world's text, the way the reference recipe starts from an LLM trained
on text: a LlamaForCausalLM trained on packed lines, saved with its tokenizer.
"""

from __future__ import annotations

import bisect
import random
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from crystalvlm.worlds.parts.loop import PretrainReport, check_precision, forward_autocast, fresh_model, optimise, report, warmup_constant


def pack_lines(lines: list[list[int]], block: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lines -> (input_ids, labels), each (N_blocks, block), with no line that fits in a block
    split across two: a line starts a new block when it does not fit in what is left of the current
    one, which is padded (labels -100 there). Lines longer than a block fill whole blocks.

    Why not plain concatenation: a world's corpus line states what an image shows and then asks
    about it; cut in two, the second half's answers cannot be inferred from its context, and the
    lookup skill the LLaVA reuses gets only noise from them."""
    rows: list[list[int]] = []
    current: list[int] = []
    for line in lines:
        if current and len(current) + len(line) > block:
            rows.append(current)
            current = []
        while len(line) > block:
            rows.append(line[:block])
            line = line[block:]
        current += line
    if current:
        rows.append(current)
    if not rows:
        raise ValueError("text corpus is empty: nothing to pretrain the LM on")
    input_ids = torch.full((len(rows), block), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), block), -100, dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.tensor(row)
        labels[index, : len(row)] = torch.tensor(row)
    return input_ids, labels


def pack_lines_best_fit(lines: list[list[int]], block: int, pad_id: int,
                        seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Like `pack_lines` (no line that fits in a block is split; longer ones are cut into block-sized
    pieces), but lines are placed best-fit decreasing: longest first, each into the block whose free
    space it fills most tightly. In-order packing leaves ~22% of the shapes world's blocks as padding
    (a line that does not fit starts a new block); best fit leaves ~3%, so a batch of blocks carries
    more text per step for the same compute. The blocks, and the lines within each, are then shuffled
    with `seed`, so neighbouring lines are unrelated as in a shuffled corpus. Deterministic for a seed."""
    pieces: list[list[int]] = []
    for line in lines:
        while len(line) > block:
            pieces.append(line[:block])
            line = line[block:]
        if line:
            pieces.append(line)
    if not pieces:
        raise ValueError("text corpus is empty: nothing to pretrain the LM on")
    rows: list[list[int]] = []  # piece indices per block
    free: list[tuple[int, int]] = []  # (space left, block index), sorted
    for index in sorted(range(len(pieces)), key=lambda i: (-len(pieces[i]), i)):
        size = len(pieces[index])
        slot = bisect.bisect_left(free, (size, -1))  # the tightest block with room for it
        if slot < len(free):
            space, row = free.pop(slot)
        else:
            rows.append([])
            space, row = block, len(rows) - 1
        rows[row].append(index)
        bisect.insort(free, (space - size, row))
    rng = random.Random(seed)
    rng.shuffle(rows)
    input_ids = torch.full((len(rows), block), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), block), -100, dtype=torch.long)
    for position, members in enumerate(rows):
        rng.shuffle(members)
        row = [token for index in members for token in pieces[index]]
        input_ids[position, : len(row)] = torch.tensor(row)
        labels[position, : len(row)] = torch.tensor(row)
    return input_ids, labels


PACKINGS = ("lines", "best_fit")


def pretrain_tiny_lm(
    texts: list[str],
    tokenizer,
    llm_config: dict,
    out_dir: Path,
    steps: int,
    batch_size: int = 32,
    block: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
    packing: str = "lines",
    progress_position: int = 0,
    before_step=None,
    precision: str = "fp32",
    attention: str | None = None,
) -> PretrainReport:
    """Next-token pretraining on packed blocks of the world's text; saves the model and tokenizer.
    `packing`: "lines" (`pack_lines`, in corpus order) or "best_fit" (`pack_lines_best_fit`);
    `before_step(step)`: see `loop.optimise`.

    `precision` "bf16": the forward runs under CPU bf16 autocast (matrix products in bf16, weights,
    gradients and the optimizer in fp32; the saved model is fp32). `attention`: the transformers
    attention implementation to train with ("eager", "sdpa"; None: transformers' default); the saved
    config does not pin it, so a model that loads it picks its own."""
    if packing not in PACKINGS:
        raise ValueError(f"pretrain_tiny_lm: packing must be one of {PACKINGS}, got {packing!r}")
    check_precision("pretrain_tiny_lm", precision)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    fields = {k: v for k, v in llm_config.items() if k != "model_type"}
    fields["vocab_size"] = len(tokenizer)
    fields["pad_token_id"] = tokenizer.pad_token_id
    fields["bos_token_id"] = tokenizer.bos_token_id
    fields["eos_token_id"] = tokenizer.eos_token_id
    model = fresh_model(LlamaForCausalLM, LlamaConfig(**fields), attention)
    lines = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in texts]
    blocks, labels = (pack_lines_best_fit(lines, block, tokenizer.pad_token_id, seed=seed) if packing == "best_fit"
                      else pack_lines(lines, block, tokenizer.pad_token_id))  # (N_blocks, block) each

    def step_loss(step: int) -> torch.Tensor:
        batch = torch.tensor([rng.randrange(len(blocks)) for _ in range(batch_size)])  # blocks drawn with replacement
        with forward_autocast(precision):
            return model(input_ids=blocks[batch], labels=labels[batch]).loss  # (B, block) in, a scalar out

    losses, seconds = optimise(model, step_loss, steps, lr, warmup_constant(50), weight_decay=0.1,
                               description="pretrain tiny LM", progress=progress, position=progress_position,
                               before_step=before_step)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return PretrainReport(**report(losses, seconds))
