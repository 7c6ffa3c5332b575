"""The high-resolution shapes world: its detail (the tile's pattern) survives only at full resolution,
its colour at any scale; its data and TextVQA-layout benchmarks are written and read back."""

from __future__ import annotations

import json
import random

import numpy as np
from PIL import Image

from crystalvlm.worlds.shapes_hires.scenes import PATTERNS, HiresScene, render_scene


def _render(pattern: str, colour: str = "red") -> Image.Image:
    return render_scene(HiresScene(96, 32, 40, 8, pattern, colour))


def test_patterns_differ_at_full_resolution_and_vanish_when_downscaled():
    full = {pattern: np.asarray(_render(pattern), dtype=float) for pattern in PATTERNS}
    small = {pattern: np.asarray(_render(pattern).resize((32, 11), Image.BICUBIC), dtype=float) for pattern in PATTERNS}
    for first in PATTERNS:
        for second in PATTERNS:
            if first < second:
                assert np.abs(full[first] - full[second]).max() > 100  # whole pixels differ
                assert np.abs(small[first] - small[second]).max() < 0.25 * np.abs(full[first] - full[second]).max()
    red, blue = (np.asarray(_render("vertical", c).resize((32, 11), Image.BICUBIC), dtype=float) for c in ("red", "blue"))
    assert np.abs(red - blue).max() > 40  # the colour is still there


def test_the_world_prepares_and_its_benchmarks_load(tmp_path):
    from crystalvlm.worlds.registry import get_world

    world = get_world("shapes_hires")
    world.prepare(tmp_path / "world", {"world": "shapes_hires", "n_train": 12, "n_eval": 6, "clip_steps": 2,
                                             "vision": {"image_size": 32, "patch_size": 8, "hidden": 32, "layers": 1}}, seed=3, progress=False)
    records = json.loads((tmp_path / "world" / "finetune.json").read_text())
    assert len(records) == 12 and {Image.open(tmp_path / "world" / "images" / r["image"]).size[0] for r in records} <= {32, 64, 96}
    tasks = world.tasks(tmp_path / "world", {})
    assert [t.name for t in tasks] == ["textvqa_detail", "textvqa_coarse"]
    detail = tasks[0].samples()
    assert len(detail) == 6 and all(s.target[0] in PATTERNS for s in detail)
    perfect = {s.sample_id: s.target[0] for s in detail}
    assert tasks[0].score(perfect)["accuracy"] == 1.0
    wrong = {s.sample_id: random.Random(0).choice([p for p in PATTERNS if p != s.target[0]]) for s in detail}
    assert tasks[0].score(wrong)["accuracy"] == 0.0
    assert (tmp_path / "world" / "parts" / "tokenizer" / "tokenizer.json").is_file()
    assert (tmp_path / "world" / "parts" / "clip" / "config.json").is_file()
    pairs = [json.loads(line) for line in (tmp_path / "world" / "clip_pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 24 and {Image.open(tmp_path / "world" / p["image"]).size for p in pairs[::2]} == {(32, 32)}
