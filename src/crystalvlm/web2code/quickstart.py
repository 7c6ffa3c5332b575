"""`crystalvlm quickstart --world web`: the tiny LLaVA learns to write HTML for small screenshots.

    world     simple generated pages rendered in Chromium (128x128 by default), DWCG screenshot ->
              HTML records, DWU question records, WCGB and WUB held-out files (`tiny_web_world`)
    parts     a tiny vision tower pretrained to read the screenshots, a tiny LM on the world's text
    baseline  the constant page (`constant_baseline`) and the majority Yes/No answer
    before    the composed LlavaForConditionalGeneration, evaluated on WCGB and WUB untrained
    train     recipe `tiny-web`: `align` (projector, plain template), `finetune` (everything)
    after     WCGB and WUB again; report.json and report.html with tables, plots and examples
              (screenshot, generated HTML and its rendering side by side)

One Chromium serves every step (world rendering, baselines, WCGB scoring). `--scale smoke` runs
the same path with tiny sizes for tests; its scores mean little.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

RECIPE = "tiny-web"
# A reduced run for tests: same steps, small sizes.
SMOKE_OVERRIDES = [
    "prepare.n_train=40", "prepare.n_eval=4", "prepare.vision_steps=3", "prepare.lm_steps=3",
    "prepare.vision={image_size: 128, patch_size: 32, hidden: 32, layers: 1}", "prepare.llm={hidden: 64, layers: 2}",
    "stages.align.max_steps=2", "stages.finetune.max_steps=3",
]
SMOKE_BASELINE = {"n_candidates": 4, "n_references": 8}
FULL_BASELINE = {"n_candidates": 24, "n_references": 48}
EXAMPLES = 6


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _html_token_budget(world: Path, tokenizer) -> int:
    """New tokens allowed per generated page: twice the longest training page (an untrained model
    never stops, so this bounds the 'before' evaluation too)."""
    records = json.loads((world / "dwcg_train.json").read_text(encoding="utf-8"))
    longest = max(len(tokenizer(r["conversations"][1]["value"], add_special_tokens=False)["input_ids"]) for r in records)
    return 2 * longest + 8


def run_web_quickstart(out: Path, scale: str = "full", seed: int = 0, batch_size: int = 32) -> dict:
    from transformers import AutoTokenizer

    from crystalvlm.data.templates import get_template
    from crystalvlm.eval.runner import evaluate
    from crystalvlm.infer.engine import DecodingConfig, GenerationEngine
    from crystalvlm.models.build import ModelSpec, build_llava
    from crystalvlm.models.checkpoint import CheckpointInfo, save_checkpoint
    from crystalvlm.train.recipe import _read as read_recipe
    from crystalvlm.train.recipe import apply_overrides, load_recipe
    from crystalvlm.train.trainer import TrainOptions, train_recipe
    from crystalvlm.web2code.constant_baseline import choose_constant_page
    from crystalvlm.web2code.quickstart_report import print_summary, target_verdict, write_web_report
    from crystalvlm.web2code.render import RenderPool, RenderSettings
    from crystalvlm.web2code.tasks import WcgbTask, WubTask, wub_majority_answer
    from crystalvlm.web2code.tiny_web_world import prepare_tiny_web_world

    if scale not in ("full", "smoke"):
        raise ValueError(f"scale must be 'full' or 'smoke', got {scale!r}")
    started = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"seed={seed}"] + (SMOKE_OVERRIDES if scale == "smoke" else [])
    raw = apply_overrides(read_recipe(RECIPE), overrides)
    world = out / "world"
    # Answers are cached by checkpoint path; a new run into the same folder must not reuse old ones.
    shutil.rmtree(out / "eval", ignore_errors=True)
    viewport = tuple(int(v) for v in raw["prepare"]["viewport"])
    timings: dict[str, float] = {}

    with RenderPool(RenderSettings(viewport=viewport, word_boxes=True)) as pool:
        _banner(f"1/6 making the web world ({viewport[0]}x{viewport[1]} screenshots) and its tiny pretrained parts")
        prepared = prepare_tiny_web_world(world, raw["prepare"], seed=seed, pool=pool)
        timings["prepare_s"] = time.time() - started
        recipe = load_recipe(RECIPE, overrides, {"world": str(world), "run_dir": str(out)})
        run_dir = out / "run"
        tokenizer = AutoTokenizer.from_pretrained(world / "parts" / "tokenizer")
        wcgb = WcgbTask(world / "eval" / "wcgb.jsonl", world / "images", pool=pool,
                        max_new_tokens=_html_token_budget(world, tokenizer))
        wub = WubTask(world / "eval" / "wub.jsonl", world / "images")
        tasks = [wcgb, wub]
        decoding = DecodingConfig(strategy="greedy")

        _banner("2/6 baselines: the best constant training page, the majority Yes/No answer")
        mark = time.time()
        train_pages = json.loads((world / "dwcg_train.json").read_text(encoding="utf-8"))
        constant = choose_constant_page(train_pages, pool, seed=seed,
                                        **(SMOKE_BASELINE if scale == "smoke" else FULL_BASELINE))
        baseline_wcgb = wcgb.score({s.sample_id: constant.html for s in wcgb.samples()})
        baseline_pages = wcgb.last_pages
        majority = wub_majority_answer(json.loads((world / "dwu_train.json").read_text(encoding="utf-8")))
        baseline_wub = wub.score({s.sample_id: majority for s in wub.samples()})
        timings["baselines_s"] = time.time() - mark
        print(f"constant page {constant.record_id}: WCGB Design2Code {baseline_wcgb['design2code']:.3f}; "
              f"always '{majority}': WUB accuracy {baseline_wub['accuracy']:.1f}%")

        _banner("3/6 composing the tiny LLaVA and evaluating it before training")
        mark = time.time()
        finetune_template = recipe.stages[-1].template
        model, processor = build_llava(ModelSpec.from_dict(recipe.model),
                                       chat_template=get_template(finetune_template).chat_template_jinja())
        initial = save_checkpoint(model, processor, run_dir / "initial",
                                  CheckpointInfo(template=finetune_template, image_mode=recipe.image_mode,
                                                 stage="initial", recipe=recipe.name))
        engine = GenerationEngine(model.eval(), processor, finetune_template, recipe.image_mode, batch_size=batch_size)
        before = evaluate(engine, tasks, out / "eval" / "before", decoding, model_id=str(initial))
        before_pages = wcgb.last_pages
        timings["eval_before_s"] = time.time() - mark

        _banner("4/6 training: align (projector), then finetune (projector, LLM and vision tower)")
        mark = time.time()
        results = train_recipe(recipe, TrainOptions(run_dir=run_dir, progress=True))
        timings["train_s"] = time.time() - mark
        final = results[-1].checkpoint

        _banner("5/6 evaluating the trained model")
        mark = time.time()
        engine = GenerationEngine.from_checkpoint(final, batch_size=batch_size)
        after = evaluate(engine, tasks, out / "eval" / "after", decoding, model_id=str(final))
        after_pages = wcgb.last_pages
        timings["eval_after_s"] = time.time() - mark

        _banner("6/6 writing the report")
        report = {
            "world": "web",
            "wall_seconds": round(time.time() - started, 1),
            "scale": scale,
            "seed": seed,
            "checkpoint": str(final),
            "viewport": list(viewport),
            "timings": {k: round(v, 1) for k, v in timings.items()},
            "world_counts": prepared.get("counts", {}),
            "pretraining": {k: prepared.get(k) for k in ("vision", "lm")},
            "training": {r.name: {"steps": r.steps, "final_loss": r.final_loss, "skipped_records": len(r.problems)}
                         for r in results},
            "benchmarks": {
                "wcgb": {"before": before["wcgb"], "after": after["wcgb"], "baseline": baseline_wcgb},
                "wub": {"before": before["wub"], "after": after["wub"], "baseline": baseline_wub},
            },
            "baselines": {"wcgb": {"kind": "constant training page", **constant.as_dict()},
                          "wub": {"kind": "majority answer", "answer": majority}},
            "max_new_tokens": {"wcgb": wcgb.max_new_tokens, "wub": wub.max_new_tokens},
        }
        report["target"] = target_verdict(report["benchmarks"])
        write_web_report(out, report, run_dir, {"before": before_pages, "baseline": baseline_pages, "after": after_pages},
                         {sample.sample_id: sample.target for sample in wcgb.samples()}, count=EXAMPLES)
    report["wall_seconds"] = round(time.time() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print_summary(report, out, final, world)
    return report
