"""Finetuning a checkpoint on one data file, for the data engine's rounds: one recipe stage (its
freeze policy, learning rates, epochs) run by the project's trainer from the given checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from crystalvlm.data.dataset import DataSource
from crystalvlm.train.recipe import Recipe, StageConfig


class StageFinetuner:
    """Runs `stage` from a start checkpoint; the final checkpoint is `folder/<stage>/final`.

    A final checkpoint that exists is complete (the trainer renames it into place whole) and is kept;
    a cut run trains again from the start checkpoint, which gives the same weights (the trainer's
    batch order and initial state are pure functions of the seed)."""

    def __init__(self, stage: StageConfig, image_mode: str = "pad", progress: bool = True) -> None:
        self.stage = stage
        self.image_mode = image_mode
        self.progress = progress
        self.description = json.dumps({"stage": asdict(self.stage), "image_mode": image_mode}, sort_keys=True, default=str)

    def finetune(self, start: Path, data: DataSource, folder: Path, seed: int) -> Path:
        from crystalvlm.train.trainer import TrainOptions, final_checkpoint, train_stage

        final = final_checkpoint(Path(folder), self.stage.name)
        if (final / "config.json").is_file():
            return final
        recipe = Recipe(name="data-engine", seed=seed, model={}, image_mode=self.image_mode, datasets={},
                        stages=[self.stage], raw={"name": "data-engine", "seed": seed})
        options = TrainOptions(run_dir=Path(folder), data=data, progress=self.progress)
        return train_stage(recipe, self.stage, options, Path(start)).checkpoint
