"""What a stage tells the trackers (`--report-to tensorboard/wandb`, through accelerate).

Each stage opens its own tracker run (its accelerator is its own, see `stage_accelerator`): W&B
groups the stages of a run directory; TensorBoard writes both into one folder, with metric names
prefixed by the stage so they never overlap. The configuration is the resolved recipe (variables
substituted, every stage field with its default filled in), flattened to `a/b/c` keys because
TensorBoard's hparams take scalars and strings only.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from crystalvlm.train.recipe import Recipe


def resolved_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe as the trainer uses it: raw sections plus every stage's fields with defaults."""
    stages = {stage.name: {k: v for k, v in asdict(stage).items() if k != "name"} for stage in recipe.stages}
    return {**recipe.raw, "name": recipe.name, "seed": recipe.seed, "image_mode": recipe.image_mode, "stages": stages}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, int | float | str | bool]:
    """{"a": {"b": 1}} -> {"a/b": 1}; lists and None become JSON text."""
    flat: dict[str, int | float | str | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "/"))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=str)
    return flat


def tracker_config(recipe: Recipe, stage: str) -> dict[str, int | float | str | bool]:
    return {"stage": stage, **flatten(resolved_recipe(recipe))}


def tracker_init_kwargs(run_name: str, stage: str) -> dict[str, dict]:
    return {"wandb": {"name": f"{run_name}-{stage}", "group": run_name}}


def step_metrics(stage: str, loss: float, grad_norm: float, lr_per_part: dict[str, float],
                 tokens_per_s: float) -> dict[str, float]:
    metrics = {f"{stage}/loss": loss, f"{stage}/grad_norm": grad_norm, f"{stage}/tokens_per_s": tokens_per_s}
    metrics.update({f"{stage}/lr/{part}": lr for part, lr in lr_per_part.items()})
    return metrics
