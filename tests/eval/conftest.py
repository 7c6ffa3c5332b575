"""Fixtures of the evaluation tests: `benchmarks` (every benchmark in a tmp folder, official layouts; see
benchmark_files.py) and `shapes_world` (a tiny generated world)."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmark_files import write_chair, write_mme, write_pope, write_scienceqa, write_textvqa


@pytest.fixture()
def benchmarks(tmp_path) -> Path:
    """A benchmarks/ folder with all five benchmarks, laid out like the official releases."""
    root = tmp_path / "benchmarks"
    for split in ("random", "popular", "adversarial"):
        write_pope(root / "pope", split)
    write_mme(root / "mme")
    write_scienceqa(root / "scienceqa")
    write_textvqa(root / "textvqa")
    write_chair(root / "chair")
    return root


@pytest.fixture(scope="session")
def shapes_world(tmp_path_factory) -> Path:
    """A tiny shapes world: 4 held-out images -> 24 POPE questions per split, 28 MME questions,
    4 ScienceQA problems, 4 TextVQA questions, 4 CHAIR images (32-pixel images)."""
    from crystalvlm.worlds.shapes.writer import write_shapes_world

    world = tmp_path_factory.mktemp("shapes") / "world"
    write_shapes_world(world, n_train=2, n_eval=4, seed=0, image_size=32, progress=False)
    return world
