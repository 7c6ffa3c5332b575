"""Preparing the shapes world (the `prepare:` section of recipe `tiny`): its data and its own tiny
"pretrained" parts, in resumable steps (`base.PreparedFolder`).

    world      `write_shapes_world`: images, caption and instruction data, benchmarks
    tokenizer  the tiny byte-level BPE trained on the world's text
    clip       a tiny CLIP trained contrastively on the world's image-caption pairs
    lm         a tiny LM trained on the world's text
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from crystalvlm.worlds.base import PreparedFolder, move_children, staged


def _timed(work):
    started = time.time()
    result = work()
    return result, time.time() - started


def prepare_tiny_world(world: Path, settings: dict, seed: int = 0, progress: bool = True,
                       world_name: str = "shapes", data_options: dict | None = None) -> dict:
    """Write the world, train the tokenizer, pretrain the tiny CLIP and LM; return what was done
    (`prepared.json`'s record: settings, seed, steps, timings, clip and lm figures).

    `world_name` is the `prepare.world` the settings must name; `data_options` are further keyword
    arguments of `write_shapes_world` (a variant world's mix and scene configs)."""
    from transformers import AutoTokenizer

    from crystalvlm.worlds.parts.clip import pretrain_tiny_clip, warn_if_contrastive_chance
    from crystalvlm.worlds.parts.lm import pretrain_tiny_lm
    from crystalvlm.worlds.parts.tiny import WORLD_TEMPLATES, tiny_llm_config, tiny_vision_config, train_tiny_tokenizer
    from crystalvlm.worlds.shapes.writer import write_shapes_world

    if settings.get("world", "shapes") != world_name:
        raise ValueError(f"prepare_tiny_world: settings.world must be {world_name!r}, got {settings.get('world')!r}")
    world = Path(world)
    folder = PreparedFolder(world, settings, seed).open()
    parts = world / "parts"

    def write_world() -> dict:
        folder.clear_outputs()  # a cut run may have left part of the data
        partial = world / f"data.partial-{os.getpid()}"
        _, seconds = _timed(lambda: write_shapes_world(partial, n_train=int(settings["n_train"]),
                                                        n_eval=int(settings["n_eval"]), seed=seed,
                                                        image_size=int(settings["image_size"]), progress=progress,
                                                        **(data_options or {})))
        move_children(partial, world)
        return {"seconds": seconds}

    def corpus() -> list[str]:
        return [line for line in (world / "text_corpus.txt").read_text().splitlines() if line.strip()]

    def train_tokenizer() -> dict:
        with staged(parts / "tokenizer") as out:
            _, seconds = _timed(lambda: train_tiny_tokenizer(corpus(), out,
                                                             vocab_size=int(settings.get("tokenizer_vocab", 1024)),
                                                             templates=WORLD_TEMPLATES))
        return {"seconds": seconds}

    def pretrain_clip() -> dict:
        tokenizer = AutoTokenizer.from_pretrained(parts / "tokenizer")
        pairs = []
        with open(world / "clip_pairs.jsonl") as handle:
            for line in handle:
                record = json.loads(line)
                pairs.append((world / "images" / record["image"], record["caption"]))
        lr = {"lr": float(settings["clip_lr"])} if "clip_lr" in settings else {}  # else pretrain_tiny_clip's default
        with staged(parts / "clip") as out:
            report = pretrain_tiny_clip(pairs, tokenizer, tiny_vision_config(**settings["vision"]), out,
                                        steps=int(settings["clip_steps"]), seed=seed, progress=progress, **lr)
        warn_if_contrastive_chance(report)
        return {"steps": report.steps, "first_loss": report.first_loss, "last_loss": report.last_loss,
                "seconds": report.seconds}

    def pretrain_lm() -> dict:
        tokenizer = AutoTokenizer.from_pretrained(parts / "tokenizer")
        lr = {"lr": float(settings["lm_lr"])} if "lm_lr" in settings else {}  # else pretrain_tiny_lm's default
        with staged(parts / "lm") as out:
            report = pretrain_tiny_lm(corpus(), tokenizer, tiny_llm_config(len(tokenizer), **settings["llm"]), out,
                                      steps=int(settings["lm_steps"]), seed=seed, progress=progress, **lr)
        return {"steps": report.steps, "first_loss": report.first_loss, "last_loss": report.last_loss,
                "seconds": report.seconds}

    steps = {"world": write_world, "tokenizer": train_tokenizer, "clip": pretrain_clip, "lm": pretrain_lm}
    done = {name: folder.run(name, work) for name, work in steps.items()}
    timings = {"world_s": done["world"]["seconds"], "tokenizer_s": done["tokenizer"]["seconds"],
               "clip_s": done["clip"]["seconds"], "lm_s": done["lm"]["seconds"]}
    strip = ("seconds",)
    return folder.finish(timings=timings, clip={k: v for k, v in done["clip"].items() if k not in strip},
                         lm={k: v for k, v in done["lm"].items() if k not in strip})
