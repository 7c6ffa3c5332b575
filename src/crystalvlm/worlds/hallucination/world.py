"""The hallucination world: the shapes world whose training data carry the biases that make models
hallucinate (biases.py), with CHAIR beside POPE and MME. Its tiny parts are pretrained on the plain
shapes world (`prepare.parts_world`), as real parts are pretrained on broad data; only the instruction
data carry the biases. Its quickstart is the study (study.py):
train on the biased world, make HA-DPO pairs from the model's own descriptions, train the `dpo`
stage, and evaluate greedy, OPERA, VCD, HA-DPO and HA-DPO + OPERA on the same held-out files.
"""

from __future__ import annotations

from pathlib import Path

from crystalvlm.worlds.base import WorldContext
from crystalvlm.worlds.shapes.world import ShapesWorld, build_quickstart_tasks

# Detailed descriptions run to ~60 words (~90 tokens) for four objects; a longer budget only lets a
# model that never stops ramble.
CHAIR_MAX_NEW_TOKENS = 96
# POPE and MME want "Yes" or "No" (and scoring reads the start): four tokens hold the answer and its
# end. OPERA runs a beam search per request, so every extra token here costs beams x candidates forwards.
YES_NO_MAX_NEW_TOKENS = 4
STUDY_KEYS = ("pairs", "study")  # keys of `prepare` read by the study, not by the world's preparation


def build_study_tasks(world: Path, limit_per_task: int | None = None) -> list:
    """POPE's three splits and MME (as the shapes quickstart), then CHAIR on the POPE images."""
    from crystalvlm.eval.tasks.registry import build_task

    tasks = build_quickstart_tasks(world, limit_per_task, max_new_tokens=YES_NO_MAX_NEW_TOKENS)
    chair = build_task("chair", world / "benchmarks", max_new_tokens=CHAIR_MAX_NEW_TOKENS,
                       image_folder=world / "images" / "eval")
    if limit_per_task is not None:
        chair = chair.select([s.sample_id for s in chair.samples()[:limit_per_task]])
    return tasks + [chair]


class HallucinationWorld(ShapesWorld):
    name = "hallucination"
    recipe = "tiny-hallucination"
    smoke_overrides = (
        "prepare.n_train=120", "prepare.n_eval=6", "prepare.mme_images=2", "prepare.parts_world.n_train=120", "prepare.parts_world.n_eval=6",
        "prepare.parts_world.clip_steps=6", "prepare.parts_world.lm_steps=6", "prepare.parts_world.parallel_parts=false",
        "prepare.pairs={images: 8, temperature: 0.7, max_new_tokens: 24}",
        "stages.align.max_steps=2", "stages.finetune.max_steps=3", "stages.hadpo.max_steps=2",
    )

    def prepare(self, folder: Path, settings: dict, seed: int = 0, progress: bool = True, resources=None) -> dict:
        from crystalvlm.worlds.hallucination.biases import world_data_options
        from crystalvlm.worlds.shapes.prepare import prepare_tiny_world

        # The study's own options (pairs, evaluation) do not shape the world: changing them keeps it.
        world_settings = {key: value for key, value in settings.items() if key not in STUDY_KEYS}
        return prepare_tiny_world(folder, world_settings, seed=seed, progress=progress, world_name=self.name,
                                  data_options=world_data_options(world_settings))

    def tasks(self, folder: Path, settings: dict, resources=None, limit_per_task: int | None = None) -> list:
        return build_study_tasks(folder, limit_per_task)

    def quickstart(self, out: Path, scale: str, seed: int, batch_size: int) -> dict:
        from crystalvlm.worlds.hallucination.study import run_study

        return run_study(self, out, scale=scale, seed=seed, batch_size=batch_size)

    def add_to_report(self, report: dict, context: WorldContext) -> None:
        pass  # the study writes its own report

    def write_html(self, out: Path, report: dict, context: WorldContext, engine, tasks: list) -> Path:
        from crystalvlm.worlds.hallucination.report import write_study_html

        return write_study_html(out, report)

    def print_summary(self, report: dict, out: Path, checkpoint: Path, context: WorldContext) -> None:
        from crystalvlm.worlds.hallucination.report import print_study_summary

        print_study_summary(report, out)
