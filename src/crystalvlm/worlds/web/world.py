"""The web world: simple generated pages rendered in Chromium, DWCG (screenshot -> HTML) and DWU
(question) training records, WCGB and WUB held-out files. Its quickstart trains recipe `tiny-web`
and is judged on WCGB and WUB against the untrained model and two constant baselines: the best
constant training page and the majority Yes/No answer. One Chromium serves every step.
"""

from __future__ import annotations

import json
from pathlib import Path

from crystalvlm.worlds.base import World, WorldContext

SMOKE_BASELINE = {"n_candidates": 4, "n_references": 8}
FULL_BASELINE = {"n_candidates": 24, "n_references": 48}
EXAMPLES = 6


def html_token_budget(world: Path, tokenizer) -> int:
    """New tokens allowed per generated page: twice the longest training page (an untrained model
    never stops, so this bounds the 'before' evaluation too)."""
    records = json.loads((world / "dwcg_train.json").read_text(encoding="utf-8"))
    longest = max(len(tokenizer(r["conversations"][1]["value"], add_special_tokens=False)["input_ids"]) for r in records)
    return 2 * longest + 8


class WebWorld(World):
    name = "web"
    recipe = "tiny-web"
    # A reduced run for tests: same steps, small sizes.
    smoke_overrides = (
        "prepare.n_train=40", "prepare.n_eval=4", "prepare.vision_steps=3", "prepare.lm_steps=3",
        "prepare.vision={image_size: 128, patch_size: 32, hidden: 32, layers: 1}", "prepare.llm={hidden: 64, layers: 2}",
        "stages.align.max_steps=2", "stages.finetune.max_steps=3",
    )
    pretrained_parts = ("vision", "lm")

    @staticmethod
    def viewport(settings: dict) -> tuple[int, int]:
        from crystalvlm.worlds.web.prepare import DEFAULT_VIEWPORT

        return tuple(int(v) for v in settings.get("viewport", DEFAULT_VIEWPORT))  # type: ignore[return-value]

    def resources(self, settings: dict):
        from crystalvlm.web2code.render import RenderPool, RenderSettings

        return RenderPool(RenderSettings(viewport=self.viewport(settings), word_boxes=True))

    def prepare(self, folder: Path, settings: dict, seed: int = 0, progress: bool = True, resources=None) -> dict:
        from crystalvlm.worlds.web.prepare import prepare_tiny_web_world

        return prepare_tiny_web_world(folder, settings, seed=seed, pool=resources, progress=progress)

    def tasks(self, folder: Path, settings: dict, resources=None) -> list:
        from transformers import AutoTokenizer

        from crystalvlm.eval.tasks.web import WcgbTask, WubTask

        tokenizer = AutoTokenizer.from_pretrained(folder / "parts" / "tokenizer")
        wcgb = WcgbTask(folder / "eval" / "wcgb.jsonl", folder / "images", renderer=resources,
                        max_new_tokens=html_token_budget(folder, tokenizer))
        return [wcgb, WubTask(folder / "eval" / "wub.jsonl", folder / "images")]

    def baselines(self, folder: Path, tasks: list, resources, scale: str, seed: int) -> tuple[dict, dict]:
        from crystalvlm.eval.tasks.web import wub_majority_answer
        from crystalvlm.worlds.web.constant_baseline import choose_constant_page

        wcgb, wub = tasks
        train_pages = json.loads((folder / "dwcg_train.json").read_text(encoding="utf-8"))
        constant = choose_constant_page(train_pages, resources, seed=seed,
                                        **(SMOKE_BASELINE if scale == "smoke" else FULL_BASELINE))
        self._baseline_pages = wcgb.score_samples({s.sample_id: constant.html for s in wcgb.samples()})
        majority = wub_majority_answer(json.loads((folder / "dwu_train.json").read_text(encoding="utf-8")))
        scores = {"wcgb": self._baseline_pages.metrics,
                  "wub": wub.score({s.sample_id: majority for s in wub.samples()})}
        print(f"constant page {constant.record_id}: WCGB Design2Code {scores['wcgb']['design2code']:.3f}; "
              f"always '{majority}': WUB accuracy {scores['wub']['accuracy']:.1f}%")
        info = {"wcgb": {"kind": "constant training page", **constant.as_dict()},
                "wub": {"kind": "majority answer", "answer": majority}}
        return scores, info

    def add_to_report(self, report: dict, context: WorldContext) -> None:
        from crystalvlm.worlds.web.report import target_verdict

        report["world"] = "web"
        report["viewport"] = list(self.viewport(context.settings))
        report["world_counts"] = context.prepared.get("counts", {})
        report["target"] = target_verdict(report["benchmarks"])

    def write_html(self, out: Path, report: dict, context: WorldContext, engine, tasks: list) -> Path:
        from crystalvlm.worlds.web.report import write_web_report

        wcgb = tasks[0]
        pages = {column: context.details[column]["wcgb"] for column in ("before", "after")}
        pages["baseline"] = self._baseline_pages.per_sample
        return write_web_report(out, report, context.run_dir, pages,
                                {sample.sample_id: sample.target for sample in wcgb.samples()}, count=EXAMPLES)

    def print_summary(self, report: dict, out: Path, checkpoint: Path, context: WorldContext) -> None:
        from crystalvlm.worlds.web.report import print_summary

        print_summary(report, out, checkpoint, context.world_dir)
