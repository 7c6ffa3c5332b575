"""`prepare.parts_world`: a world whose tiny parts are pretrained on another (plain) world's data and
copied in, and `prepare.mme_images`. The parts world is kept when only the outer world's data change."""

from __future__ import annotations

import json
from pathlib import Path

from crystalvlm.train.recipe import apply_overrides, read_recipe
from crystalvlm.worlds.shapes.prepare import PARTS_WORLD, prepare_tiny_world
from crystalvlm.worlds.shapes.world import ShapesWorld


def _plain_settings() -> dict:
    settings = apply_overrides(read_recipe("tiny"), list(ShapesWorld.smoke_overrides))["prepare"]
    return {**settings, "n_train": 40, "n_eval": 5, "clip_steps": 2, "lm_steps": 2}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_parts_come_from_the_parts_world_and_survive_a_change_of_the_outer_world(tmp_path):
    world = tmp_path / "world"
    outer = {"world": "shapes", "n_train": 30, "n_eval": 5, "image_size": 48, "mme_images": 3,
             "parts_world": _plain_settings()}
    record = prepare_tiny_world(world, outer, seed=0, progress=False)

    donor = world / PARTS_WORLD
    assert json.loads((donor / "manifest.json").read_text())["n_train"] == 40  # the parts world's own data
    for part in ("tokenizer", "clip", "lm"):
        assert _files(world / "parts" / part) == _files(donor / "parts" / part), part
    assert record["lm"]["steps"] == 2 and record["parts_world"] == PARTS_WORLD
    assert "parts_world_lm_s" in record["timings"]
    # the outer world's data are its own (30 training images), with 3 MME images per subtask
    assert len(json.loads((world / "annotations" / "train.json").read_text())["images"]) == 30
    mme = json.loads((world / "manifest.json").read_text())["benchmarks"]["mme"]["images_per_subtask"]
    assert set(mme.values()) == {3}, mme

    # Other outer settings: the outer world is rewritten, the parts world (same settings) is not retrained.
    clip_file = donor / "parts" / "clip" / "model.safetensors"
    before = clip_file.stat().st_mtime_ns
    prepare_tiny_world(world, {**outer, "n_train": 20}, seed=0, progress=False)
    assert clip_file.stat().st_mtime_ns == before
    assert len(json.loads((world / "annotations" / "train.json").read_text())["images"]) == 20
    assert _files(world / "parts" / "lm") == _files(donor / "parts" / "lm")
