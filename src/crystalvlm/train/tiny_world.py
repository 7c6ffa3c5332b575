"""Preparing a recipe's `prepare` section: the synthetic world and its tiny pretrained parts.

Only recipes that say `prepare:` need this (the shipped `tiny` recipe). Preparation is cached: a
folder whose `prepared.json` records the same settings is reused, so a resumed or repeated run
neither regenerates data nor retrains the parts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from crystalvlm.train.recipe import _read


def prepare_recipe_inputs(recipe_name_or_path: str, run_dir: Path, progress: bool = True) -> dict[str, str]:
    """Variables for the recipe (`run_dir`, and `world` when it prepares one)."""
    variables = {"run_dir": str(run_dir)}
    settings = _read(recipe_name_or_path).get("prepare")
    if settings:
        world = run_dir / "world"
        prepare_tiny_world(world, settings, seed=int(_read(recipe_name_or_path).get("seed", 0)), progress=progress)
        variables["world"] = str(world)
    return variables


def already_prepared(marker: Path, wanted: dict) -> dict | None:
    """The record in `marker` (a world's prepared.json) when it was prepared with the same
    settings and seed as `wanted`, else None: a world is reused only when nothing changed."""
    if not marker.is_file():
        return None
    done = json.loads(marker.read_text())
    return done if {"settings": done.get("settings"), "seed": done.get("seed")} == wanted else None


def warn_if_contrastive_chance(report) -> bool:
    """Print a warning when CLIP's final loss is still near chance (ln batch), the loss of a tower
    that tells no image from another, which is what a too-high learning rate ends in; True when it
    warned. Short runs (under 100 steps, the tests' smoke sizes) are not judged."""
    if report.chance_loss is None or report.steps < 100 or report.last_loss <= 0.9 * report.chance_loss:
        return False
    print(f"warning: the tiny CLIP's loss ended at {report.last_loss:.3f}, near chance ({report.chance_loss:.3f}): "
          "its features will not tell shapes apart; lower prepare.clip_lr", flush=True)
    return True


def prepare_tiny_world(world: Path, settings: dict, seed: int = 0, progress: bool = True) -> dict:
    """Write the world, train the tokenizer, pretrain the tiny CLIP and LM; return timings."""
    from transformers import AutoTokenizer

    from crystalvlm.data.synthetic.shapes_world import write_shapes_world
    from crystalvlm.models.tiny import tiny_llm_config, tiny_vision_config, train_tiny_tokenizer
    from crystalvlm.train.pretrain_parts import pretrain_tiny_clip, pretrain_tiny_lm

    marker = world / "prepared.json"
    wanted = {"settings": settings, "seed": seed}
    done = already_prepared(marker, wanted)
    if done is not None:
        return done
    if settings.get("world", "shapes") != "shapes":
        raise ValueError(f"unknown world {settings.get('world')!r}; the tiny recipe knows 'shapes'")
    timings: dict[str, float] = {}
    started = time.time()
    write_shapes_world(world, n_train=int(settings["n_train"]), n_eval=int(settings["n_eval"]), seed=seed,
                       image_size=int(settings["image_size"]), progress=progress)
    timings["world_s"] = time.time() - started

    started = time.time()
    texts = [line for line in (world / "text_corpus.txt").read_text().splitlines() if line.strip()]
    parts = world / "parts"
    train_tiny_tokenizer(texts, parts / "tokenizer", vocab_size=int(settings.get("tokenizer_vocab", 1024)))
    tokenizer = AutoTokenizer.from_pretrained(parts / "tokenizer")
    timings["tokenizer_s"] = time.time() - started

    vision = tiny_vision_config(**settings["vision"])
    pairs = []
    with open(world / "clip_pairs.jsonl") as handle:
        for line in handle:
            record = json.loads(line)
            pairs.append((world / "images" / record["image"], record["caption"]))
    clip_lr = {"lr": float(settings["clip_lr"])} if "clip_lr" in settings else {}  # else pretrain_tiny_clip's default
    clip = pretrain_tiny_clip(pairs, tokenizer, vision, parts / "clip", steps=int(settings["clip_steps"]),
                              seed=seed, progress=progress, **clip_lr)
    warn_if_contrastive_chance(clip)
    timings["clip_s"] = clip.seconds
    llm = tiny_llm_config(len(tokenizer), **settings["llm"])
    lm_lr = {"lr": float(settings["lm_lr"])} if "lm_lr" in settings else {}  # else pretrain_tiny_lm's default
    lm = pretrain_tiny_lm(texts, tokenizer, llm, parts / "lm", steps=int(settings["lm_steps"]), seed=seed,
                          progress=progress, **lm_lr)
    timings["lm_s"] = lm.seconds
    done = {**wanted, "timings": timings,
            "clip": {"steps": clip.steps, "first_loss": clip.first_loss, "last_loss": clip.last_loss},
            "lm": {"steps": lm.steps, "first_loss": lm.first_loss, "last_loss": lm.last_loss}}
    marker.write_text(json.dumps(done, indent=2))
    return done
