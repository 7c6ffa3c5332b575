"""Preparing the shapes world (the `prepare:` section of recipe `tiny`): its data and its own tiny
"pretrained" parts, in resumable steps (`base.PreparedFolder`).

    world      `write_shapes_world`: images, caption and instruction data, benchmarks
    tokenizer  the tiny byte-level BPE trained on the world's text
    clip       a tiny CLIP trained contrastively on the world's image-caption pairs
    lm         a tiny LM trained on the world's text

The CLIP and the LM need only the world and the tokenizer, not each other. With `parallel_parts: true`
in the settings (recipe `tiny`) they train at the same time in two processes of one thread each: a
model this small gains little from a second thread (its matrices are too small to split well), so
two single-threaded runs side by side finish the pair in about the time of the longer one. The CLIP
finishes first (its steps cost about half the LM's); from then on the LM takes torch's usual thread
count, so the freed core is not left idle. The thread count does not change the tiny LM's numbers
(tests/core/test_parallel_parts.py checks the parts bitwise against a one-thread run).

With `parts_world: {SETTINGS}` (a whole `prepare` section of another world, e.g. recipe `tiny`'s), the
parts are not trained on this world's data: that world is prepared in `<world>/parts_world/` (the same
resumable steps, side by side if it says so) and its tokenizer, CLIP and LM are copied into
`<world>/parts/`. A variant world whose data carry biases (the hallucination world) so gets parts
pretrained on the plain world's scenes and text, as a real CLIP and LLM are pretrained on broad data
and only the instruction data carry the variant's quirks.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from crystalvlm.worlds.base import PreparedFolder, move_children, staged

PARTS = ("clip", "lm")
PARTS_WORLD = "parts_world"  # sub-folder of a world whose parts come from another world's preparation


def _timed(work):
    started = time.time()
    result = work()
    return result, time.time() - started


def _corpus(world: Path) -> list[str]:
    return [line for line in (world / "text_corpus.txt").read_text().splitlines() if line.strip()]


def _pretrain_clip(world: Path, settings: dict, seed: int, progress: bool, position: int = 0) -> dict:
    from transformers import AutoTokenizer

    from crystalvlm.worlds.parts.clip import pretrain_tiny_clip, warn_if_contrastive_chance
    from crystalvlm.worlds.parts.tiny import tiny_vision_config

    parts = world / "parts"
    tokenizer = AutoTokenizer.from_pretrained(parts / "tokenizer")
    pairs = []
    with open(world / "clip_pairs.jsonl") as handle:
        for line in handle:
            record = json.loads(line)
            pairs.append((world / "images" / record["image"], record["caption"]))
    options = {"lr": float(settings["clip_lr"])} if "clip_lr" in settings else {}  # else pretrain_tiny_clip's default
    for key, name in (("clip_precision", "precision"), ("clip_attention", "attention")):
        if key in settings:
            options[name] = settings[key]
    with staged(parts / "clip") as out:
        report = pretrain_tiny_clip(pairs, tokenizer, tiny_vision_config(**settings["vision"]), out,
                                    steps=int(settings["clip_steps"]), seed=seed, progress=progress,
                                    progress_position=position, **options)
    warn_if_contrastive_chance(report)
    return {"steps": report.steps, "first_loss": report.first_loss, "last_loss": report.last_loss,
            "seconds": report.seconds}


def _pretrain_lm(world: Path, settings: dict, seed: int, progress: bool, position: int = 0,
                 before_step=None) -> dict:
    from transformers import AutoTokenizer

    from crystalvlm.worlds.parts.lm import pretrain_tiny_lm
    from crystalvlm.worlds.parts.tiny import tiny_llm_config

    parts = world / "parts"
    tokenizer = AutoTokenizer.from_pretrained(parts / "tokenizer")
    options = {"lr": float(settings["lm_lr"])} if "lm_lr" in settings else {}  # else pretrain_tiny_lm's default
    for key, name in (("lm_batch_size", "batch_size"), ("lm_packing", "packing"), ("lm_precision", "precision"),
                      ("lm_attention", "attention")):
        if key in settings:
            options[name] = settings[key]
    with staged(parts / "lm") as out:
        report = pretrain_tiny_lm(_corpus(world), tokenizer, tiny_llm_config(len(tokenizer), **settings["llm"]), out,
                                  steps=int(settings["lm_steps"]), seed=seed, progress=progress,
                                  progress_position=position, before_step=before_step, **options)
    return {"steps": report.steps, "first_loss": report.first_loss, "last_loss": report.last_loss,
            "seconds": report.seconds}


_PRETRAIN = {"clip": _pretrain_clip, "lm": _pretrain_lm}


def _die_with_parent() -> None:
    """In a part's process: on Linux, ask the kernel to kill it when the preparing process dies (a kill,
    a crash, the OOM killer), so no orphan keeps training and races the resumed run for the part's folder."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the request took effect
            os._exit(1)


def _pretrain_part_alone(part: str, world: Path, settings: dict, seed: int, progress: bool) -> dict:
    """One part in a process of its own, on one thread (see the module docstring)."""
    import torch

    usual_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    if part != "lm":
        return _PRETRAIN[part](world, settings, seed, progress, position=PARTS.index(part))
    clip = world / "parts" / "clip"

    def take_the_cores_once_clip_is_done(step: int) -> None:
        # parts/clip appears in one rename when the CLIP's process has saved it.
        if torch.get_num_threads() != usual_threads and clip.is_dir():
            torch.set_num_threads(usual_threads)

    return _pretrain_lm(world, settings, seed, progress, position=PARTS.index(part),
                        before_step=take_the_cores_once_clip_is_done)


def _pretrain_parts_side_by_side(folder: PreparedFolder, world: Path, settings: dict, seed: int,
                                 progress: bool) -> None:
    """The parts not yet pretrained, each in its own spawned process; each is recorded as soon as it
    finishes, so a kill while the other still trains keeps it."""
    pending = [part for part in PARTS if not folder.done(part)]
    # spawn, not fork: this process may already hold OpenMP threads, which a forked child inherits broken.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(pending), mp_context=context, initializer=_die_with_parent) as pool:
        running = {pool.submit(_pretrain_part_alone, part, world, settings, seed, progress): part for part in pending}
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                folder.run(running.pop(future), future.result)


def prepare_tiny_world(world: Path, settings: dict, seed: int = 0, progress: bool = True,
                       world_name: str = "shapes", data_options: dict | None = None) -> dict:
    """Write the world, train the tokenizer, pretrain the tiny CLIP and LM; return what was done
    (`prepared.json`'s record: settings, seed, steps, timings, clip and lm figures).

    `world_name` is the `prepare.world` the settings must name; `data_options` are further keyword
    arguments of `write_shapes_world` (a variant world's mix and scene configs)."""
    from crystalvlm.worlds.parts.tiny import WORLD_TEMPLATES, train_tiny_tokenizer
    from crystalvlm.worlds.shapes.writer import write_shapes_world

    if settings.get("world", "shapes") != world_name:
        raise ValueError(f"prepare_tiny_world: settings.world must be {world_name!r}, got {settings.get('world')!r}")
    world = Path(world)
    # A parts world (below) checks its own settings and steps: kept when this world's data are redone.
    keep = (PARTS_WORLD,) if settings.get("parts_world") else ()
    folder = PreparedFolder(world, settings, seed, keep=keep).open()
    parts = world / "parts"

    # `mme_images`: MME images per subtask (absent in recipe `tiny`: the writer's default, ceil(n_eval / 5)).
    mme_option = {"mme_images": int(settings["mme_images"])} if settings.get("mme_images") is not None else {}

    def write_world() -> dict:
        folder.clear_outputs()  # a cut run may have left part of the data
        partial = world / f"data.partial-{os.getpid()}"
        _, seconds = _timed(lambda: write_shapes_world(partial, n_train=int(settings["n_train"]),
                                                        n_eval=int(settings["n_eval"]), seed=seed,
                                                        image_size=int(settings["image_size"]), progress=progress,
                                                        **mme_option, **(data_options or {})))
        move_children(partial, world)
        return {"seconds": seconds}

    def train_tokenizer() -> dict:
        with staged(parts / "tokenizer") as out:
            _, seconds = _timed(lambda: train_tiny_tokenizer(_corpus(world), out,
                                                             vocab_size=int(settings.get("tokenizer_vocab", 1024)),
                                                             templates=WORLD_TEMPLATES))
        return {"seconds": seconds}

    folder.run("world", write_world)
    parts_world = settings.get("parts_world")
    if parts_world:
        # The tokenizer, CLIP and LM are the parts world's, not trained on this world's text and images.
        return _parts_from_another_world(folder, world, dict(parts_world), seed, progress)
    folder.run("tokenizer", train_tokenizer)
    if settings.get("parallel_parts") and not all(folder.done(part) for part in PARTS):
        _, parts_seconds = _timed(lambda: _pretrain_parts_side_by_side(folder, world, settings, seed, progress))
    else:
        parts_seconds = None
        for part in PARTS:
            folder.run(part, lambda part=part: _PRETRAIN[part](world, settings, seed, progress))
    done = {name: folder.result(name) for name in ("world", "tokenizer", *PARTS)}
    timings = {"world_s": done["world"]["seconds"], "tokenizer_s": done["tokenizer"]["seconds"],
               "clip_s": done["clip"]["seconds"], "lm_s": done["lm"]["seconds"]}
    if parts_seconds is not None:
        timings["parts_s"] = parts_seconds  # both parts side by side, wall time
    strip = ("seconds",)
    return folder.finish(timings=timings, clip={k: v for k, v in done["clip"].items() if k not in strip},
                         lm={k: v for k, v in done["lm"].items() if k not in strip})


def _parts_from_another_world(folder: PreparedFolder, world: Path, settings: dict, seed: int, progress: bool) -> dict:
    """`settings` (a shapes world's `prepare` section) prepared in `world/parts_world`, then its
    tokenizer, CLIP and LM copied into `world/parts` as this world's steps; the record holds the part
    world's figures and timings (its part pretraining is this preparation's cost)."""
    import shutil

    source = world / PARTS_WORLD
    if settings.get("parts_world"):
        raise ValueError("prepare.parts_world: a parts world cannot take its parts from yet another world")
    donor = prepare_tiny_world(source, settings, seed=seed, progress=progress,
                               world_name=str(settings.get("world", "shapes")))
    for name in ("tokenizer", *PARTS):
        def copy(name: str = name) -> dict:
            with staged(world / "parts" / name) as out:
                shutil.copytree(source / "parts" / name, out, dirs_exist_ok=True)
            return {"copied_from": f"{PARTS_WORLD}/parts/{name}"}

        folder.run(name, copy)
    timings = {"world_s": folder.result("world")["seconds"],
               **{f"parts_world_{key}": value for key, value in donor["timings"].items()}}
    return folder.finish(timings=timings, clip=donor["clip"], lm=donor["lm"], parts_world=PARTS_WORLD)
