"""A tiny CLIP pretrained contrastively on a world's image-caption pairs, the way the reference
recipe starts from a CLIP vision tower: a `transformers` CLIPModel trained with CLIP's symmetric
contrastive loss, saved as an ordinary CLIP checkpoint (docs/tiny-world-status.md has what it
measured on the shapes world).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from crystalvlm.worlds.parts.loop import (PretrainReport, check_precision, forward_autocast, fresh_model, load_pixels, optimise,
                                          report, warmup_constant)


def pretrain_tiny_clip(
    pairs: list[tuple[Path, str]],
    tokenizer,
    vision_config: dict,
    out_dir: Path,
    steps: int,
    batch_size: int = 64,
    lr: float = 5e-4,
    text_hidden: int = 128,
    seed: int = 0,
    image_mean=(0.48145466, 0.4578275, 0.40821073),
    image_std=(0.26862954, 0.26130258, 0.27577711),
    progress: bool = True,
    progress_position: int = 0,
    precision: str = "fp32",
    attention: str | None = None,
) -> PretrainReport:
    """Contrastive pretraining for a fixed number of steps (steps, not seconds: same seed, same
    weights on any machine), then save_pretrained. `lr`'s default is the one that learns on the
    shapes world; higher ones collapse to chance (docs/tiny-world-status.md). `precision` and
    `attention` as in `lm.pretrain_tiny_lm` (bf16 autocast of the forward; the attention
    implementation trained with, not pinned in the saved config)."""
    check_precision("pretrain_tiny_clip", precision)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    vision = {k: v for k, v in vision_config.items() if k != "model_type"}
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": text_hidden, "intermediate_size": text_hidden * 4,
                     "num_hidden_layers": 2, "num_attention_heads": max(1, text_hidden // 32),
                     "max_position_embeddings": 64, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
                     "projection_dim": vision.get("projection_dim", 128)},
        vision_config=vision,
        projection_dim=vision.get("projection_dim", 128),
    )
    model = fresh_model(CLIPModel, config, attention)
    side = vision["image_size"]
    pixels = load_pixels([p for p, _ in pairs], side, image_mean, image_std)  # all images fit in memory at this size
    encoded = tokenizer([c + tokenizer.eos_token for _, c in pairs], add_special_tokens=False, padding=True,
                        truncation=True, max_length=64, return_tensors="pt")
    order: list[int] = []

    def step_loss(step: int) -> torch.Tensor:
        nonlocal order
        if len(order) < batch_size:  # epochs of shuffled pairs, drawn batch by batch
            fresh = list(range(len(pairs)))
            rng.shuffle(fresh)
            order += fresh
        batch, order = order[:batch_size], order[batch_size:]
        with forward_autocast(precision):
            return model(input_ids=encoded["input_ids"][batch], attention_mask=encoded["attention_mask"][batch],
                         pixel_values=pixels[batch], return_loss=True).loss

    losses, seconds = optimise(model, step_loss, steps, lr, warmup_constant(50), weight_decay=0.1,
                               description="pretrain tiny CLIP", progress=progress,
                               position=progress_position)
    model.save_pretrained(out_dir)
    return PretrainReport(**report(losses, seconds, chance_loss=math.log(batch_size)))


def warn_if_contrastive_chance(report: PretrainReport) -> bool:
    """Print a warning when CLIP's final loss is still near chance (ln batch), the loss of a tower
    that tells no image from another, which is what a too-high learning rate ends in; True when it
    warned. Short runs (under 100 steps, the tests' smoke sizes) are not judged."""
    if report.chance_loss is None or report.steps < 100 or report.last_loss <= 0.9 * report.chance_loss:
        return False
    print(f"warning: the tiny CLIP's loss ended at {report.last_loss:.3f}, near chance ({report.chance_loss:.3f}): "
          "its features will not tell shapes apart; lower the CLIP learning rate", flush=True)
    return True
