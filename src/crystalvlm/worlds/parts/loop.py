"""The one optimisation loop behind every tiny-part pretraining (CLIP, LM, reader).

Each pretrainer says what one step's loss is (`step_loss(step)`, which also picks that step's
batch) and which learning-rate schedule it wants; this loop owns AdamW, the schedule, gradient
clipping, the loss record and the progress bar. Steps, not seconds: the same seed gives the same
weights on any machine.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from crystalvlm.data.images import expand_to_square


PRECISIONS = ("fp32", "bf16")  # a pretrainer's forward: fp32, or under CPU bf16 autocast (weights stay fp32)


def check_precision(who: str, precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"{who}: precision must be one of {PRECISIONS}, got {precision!r}")


def forward_autocast(precision: str):
    """The context a pretrainer's forward runs in: CPU bf16 autocast for "bf16" (matrix products in bf16,
    weights, gradients and optimizer state in fp32), nothing for "fp32"."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def fresh_model(model_class, config, attention: str | None):
    """A randomly initialised `model_class` for `config`, with the attention implementation `attention`
    (None: transformers' default)."""
    return model_class._from_config(config, attn_implementation=attention) if attention else model_class(config)


@dataclass
class PretrainReport:
    steps: int
    seconds: float
    first_loss: float
    last_loss: float  # mean of the last 20 steps: one step's loss is too noisy to report
    losses: list[float]
    chance_loss: float | None = None  # contrastive: ln(batch), the loss of features that tell nothing apart


def warmup_constant(warmup: int) -> Callable[[int, int], float]:
    """Linear warmup over `warmup` steps, then the full learning rate."""
    return lambda step, steps: min(1.0, (step + 1) / warmup)


def warmup_cosine(warmup: int) -> Callable[[int, int], float]:
    """Linear warmup, then cosine decay to zero: the last steps settle instead of jumping around."""
    return lambda step, steps: min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * step / steps))


def optimise(model: torch.nn.Module, step_loss: Callable[[int], torch.Tensor], steps: int, lr: float,
             schedule: Callable[[int, int], float], weight_decay: float, description: str,
             progress: bool = True, max_grad_norm: float = 1.0, position: int = 0,
             before_step: Callable[[int], None] | None = None) -> tuple[list[float], float]:
    """Run `steps` AdamW steps on `step_loss(step)`; return (loss per step, seconds). `position`: the
    progress bar's line, for loops that run side by side in several processes. `before_step(step)`
    runs before each step's batch is drawn (it must not touch the RNGs): a chance to change the
    thread count, say."""
    from tqdm.auto import tqdm

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    started = time.time()
    bar = tqdm(desc=description, total=steps, disable=not progress, unit="step", position=position)
    for step in range(steps):
        if before_step is not None:
            before_step(step)
        # The batch is drawn inside step_loss before anything else uses the RNGs, as each
        # pretrainer's own loop did, so a seed still gives bitwise the same weights.
        loss = step_loss(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * schedule(step, steps)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    return losses, time.time() - started


def report(losses: list[float], seconds: float, **extra) -> dict:
    """The PretrainReport fields of a finished loop (first loss, mean of the last 20)."""
    if not losses:
        raise ValueError("pretraining ran no step (steps must be at least 1)")
    tail = losses[-20:]
    return {"steps": len(losses), "seconds": seconds, "first_loss": losses[0], "last_loss": sum(tail) / len(tail),
            "losses": losses, **extra}


def load_pixels(paths: list[Path], side: int, mean: tuple[float, float, float],
                std: tuple[float, float, float]) -> torch.Tensor:
    """(N, 3, side, side) normalised pixels, images padded to square like the `pad` mode."""
    fill = tuple(int(round(m * 255)) for m in mean)
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            square = expand_to_square(image.convert("RGB"), fill).resize((side, side), Image.BICUBIC)
        arrays.append(torch.frombuffer(bytearray(square.tobytes()), dtype=torch.uint8).view(side, side, 3))
    pixels = torch.stack(arrays).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, S, S)
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t
