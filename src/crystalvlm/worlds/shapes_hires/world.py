"""The high-resolution shapes world (`shapes_hires`): a variant of the shapes world whose answers
depend on a 1-pixel detail of a small tile on a large, often non-square canvas (scenes.py). Its
recipe `tiny-next` trains an anyres (LlavaNext) model from configs; the same recipe with
`--set image_mode=pad --set model.image_grid_pinpoints=null` is the one-view baseline
(docs/high-resolution.md measures both). Off by default: nothing else uses it, and the shapes
world, its tokenizer and the `tiny` recipe are untouched.

Preparation (resumable steps): `world` writes the data and benchmarks, `tokenizer` trains the tiny
byte-level BPE on the world's text, `clip` pretrains a tiny CLIP contrastively on 32 x 32 views
(the tile's full-resolution neighbourhood and the whole canvas squashed, same caption), so both
the one-view and the anyres model start from a tower that already tells colours and patterns
apart where the pixels allow it. The LM is built from its config, untrained.
"""

from __future__ import annotations

import json
from pathlib import Path

from crystalvlm.worlds.base import PreparedFolder, World, WorldContext, move_children, staged

TASKS = ("detail", "coarse")


def hires_tasks(folder: Path, max_new_tokens: int = 4) -> dict:
    """{'detail': task, 'coarse': task}: the library's TextVQA task over each benchmark folder."""
    from crystalvlm.eval.tasks.registry import build_task

    return {kind: build_task("textvqa", Path(folder) / "benchmarks" / kind, max_new_tokens=max_new_tokens)
            for kind in TASKS}


class ShapesHiresWorld(World):
    name = "shapes_hires"
    recipe = "tiny-next"
    smoke_overrides = ("prepare.n_train=64", "prepare.n_eval=8", "prepare.clip_steps=4", "stages.finetune.max_steps=3")

    def prepare(self, folder: Path, settings: dict, seed: int = 0, progress: bool = True, resources=None) -> dict:
        from crystalvlm.worlds.parts.tiny import WORLD_TEMPLATES, train_tiny_tokenizer
        from crystalvlm.worlds.shapes_hires.writer import write_hires_world

        if settings.get("world") != self.name:
            raise ValueError(f"settings.world must be {self.name!r}, got {settings.get('world')!r}")
        world = Path(folder)
        prepared = PreparedFolder(world, settings, seed).open()

        def write_world() -> dict:
            prepared.clear_outputs()
            partial = world / "data.partial"
            result = write_hires_world(partial, int(settings["n_train"]), int(settings["n_eval"]), seed, progress)
            move_children(partial, world)
            return {"train_records": result["train_records"], "eval_images": result["eval_images"]}

        def train_tokenizer() -> dict:
            lines = [line for line in (world / "text_corpus.txt").read_text().splitlines() if line.strip()]
            with staged(world / "parts" / "tokenizer") as out:
                train_tiny_tokenizer(lines, out, vocab_size=int(settings.get("tokenizer_vocab", 512)),
                                     templates=WORLD_TEMPLATES)
            return {}

        def pretrain_clip() -> dict:
            from transformers import AutoTokenizer

            from crystalvlm.worlds.parts.clip import pretrain_tiny_clip
            from crystalvlm.worlds.parts.tiny import tiny_vision_config

            tokenizer = AutoTokenizer.from_pretrained(world / "parts" / "tokenizer")
            pairs = [(world / row["image"], row["caption"])
                     for row in map(json.loads, (world / "clip_pairs.jsonl").read_text().splitlines())]
            with staged(world / "parts" / "clip") as out:
                report = pretrain_tiny_clip(pairs, tokenizer, tiny_vision_config(**settings["vision"]), out,
                                            steps=int(settings["clip_steps"]), seed=seed, progress=progress,
                                            lr=float(settings.get("clip_lr", 5e-4)))
            return {"steps": report.steps, "first_loss": report.first_loss, "last_loss": report.last_loss}

        steps = (("world", write_world), ("tokenizer", train_tokenizer), ("clip", pretrain_clip))
        done = {name: prepared.run(name, work) for name, work in steps}
        return prepared.finish(world=done["world"], clip=done["clip"])

    def tasks(self, folder: Path, settings: dict, resources=None) -> list:
        tasks = []
        for kind, task in hires_tasks(folder).items():
            task.name = f"textvqa_{kind}"  # two TextVQA-layout benchmarks; the report keys them apart
            tasks.append(task)
        return tasks

    def add_to_report(self, report: dict, context: WorldContext) -> None:
        pass

    def write_html(self, out: Path, report: dict, context: WorldContext, engine, tasks: list) -> Path:
        from crystalvlm.reporting import HtmlReport

        page = HtmlReport("crystalvlm: high-resolution shapes world")
        rows = [[task, metric, scores["before"].get(metric, float("nan")), value]
                for task, scores in report["benchmarks"].items() for metric, value in scores["after"].items()]
        page.table(["task", "metric", "before", "after"], rows)
        return page.write(out / "report.html")

    def print_summary(self, report: dict, out: Path, checkpoint: Path, context: WorldContext) -> None:
        print(json.dumps({task: scores["after"] for task, scores in report["benchmarks"].items()}, indent=2))
