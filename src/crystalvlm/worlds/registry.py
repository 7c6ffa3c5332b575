"""Worlds by exact name, and the preparation a recipe's `prepare:` section asks for.

A recipe that trains on a synthetic world says `prepare: {world: NAME, ...}`; the CLI (never the
library) calls `prepare_recipe_inputs`, which prepares that world under RUN/world and returns the
`${world}` variable the recipe's paths use.
"""

from __future__ import annotations

from pathlib import Path

from crystalvlm.worlds.base import World
from crystalvlm.worlds.hallucination.world import HallucinationWorld
from crystalvlm.worlds.shapes.world import ShapesWorld
from crystalvlm.worlds.shapes_hires.world import ShapesHiresWorld
from crystalvlm.worlds.web.world import WebWorld

WORLDS: dict[str, World] = {world.name: world for world in (ShapesWorld(), WebWorld(), HallucinationWorld(),
                                                          ShapesHiresWorld())}


def get_world(name: str) -> World:
    if name not in WORLDS:
        raise KeyError(f"unknown world {name!r}; known worlds: {', '.join(sorted(WORLDS))}")
    return WORLDS[name]


def recipe_world(raw_recipe: dict) -> World | None:
    """The world a recipe's `prepare:` section names (None when it prepares nothing)."""
    settings = raw_recipe.get("prepare")
    if not settings:
        return None
    if not isinstance(settings, dict) or "world" not in settings:
        raise ValueError(f"the recipe's prepare section must name a world (prepare.world: one of "
                         f"{', '.join(sorted(WORLDS))})")
    return get_world(str(settings["world"]))


def prepare_recipe_inputs(raw_recipe: dict, run_dir: Path, progress: bool = True) -> dict[str, str]:
    """Variables for the recipe: `run_dir`, and `world` when it prepares one (prepared now, resumably)."""
    variables = {"run_dir": str(run_dir)}
    world = recipe_world(raw_recipe)
    if world is not None:
        folder = Path(run_dir) / "world"
        settings = raw_recipe["prepare"]
        with world.resources(settings) as resources:
            world.prepare(folder, settings, seed=int(raw_recipe.get("seed", 0)), progress=progress, resources=resources)
        variables["world"] = str(folder)
    return variables
