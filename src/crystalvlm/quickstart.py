"""`crystalvlm quickstart`: the whole pipeline on a laptop CPU, nothing downloaded.

    world  -> the shapes world (images, caption and instruction data, benchmarks in official formats)
    parts  -> a tiny CLIP trained contrastively and a tiny LM trained on the world's text
    build  -> LlavaForConditionalGeneration composed from them; evaluated before training
    train  -> stage `align` (projector only, plain template), then `finetune` (projector + LLM)
    eval   -> POPE (3 splits) and MME again; report.json and report.html with curves and tables

`--scale smoke` shrinks every size so the same code path runs in well under a minute (tests use it);
its scores mean little.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

QUICKSTART_TASKS = ("pope_random", "pope_popular", "pope_adversarial", "mme")
# POPE and MME want a yes/no answer (two tokens here); the official budget of 128 tokens only lets an
# untrained model ramble, which on a CPU costs minutes and changes no score (scoring reads the start).
QUICKSTART_MAX_NEW_TOKENS = 16

# A reduced run for tests: same steps, small sizes.
SMOKE_OVERRIDES = [
    "prepare.n_train=120", "prepare.n_eval=12", "prepare.clip_steps=6", "prepare.lm_steps=6",
    "stages.align.max_steps=3", "stages.finetune.max_steps=4",
]


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def build_quickstart_tasks(world: Path, limit_per_task: int | None = None,
                           max_new_tokens: int = QUICKSTART_MAX_NEW_TOKENS):
    from crystalvlm.eval.tasks.registry import build_task

    benchmarks = world / "benchmarks"
    tasks = []
    for name in QUICKSTART_TASKS:
        options = {"image_folder": world / "images" / "eval"} if name.startswith("pope") else {}
        task = build_task(name, benchmarks, max_new_tokens=max_new_tokens, **options)
        if limit_per_task is not None:
            task = task.select([s.sample_id for s in task.samples()[:limit_per_task]])
        tasks.append(task)
    return tasks


def run_quickstart(out: Path, world: str = "shapes", scale: str = "full", seed: int = 0, batch_size: int = 32) -> dict:
    if world == "web":
        from crystalvlm.web2code.quickstart import run_web_quickstart

        return run_web_quickstart(out, scale=scale, seed=seed)
    from crystalvlm.data.templates import get_template
    from crystalvlm.eval.runner import evaluate
    from crystalvlm.infer.engine import DecodingConfig, GenerationEngine
    from crystalvlm.models.build import ModelSpec, build_llava
    from crystalvlm.models.checkpoint import CheckpointInfo, save_checkpoint
    from crystalvlm.train.recipe import apply_overrides, load_recipe
    from crystalvlm.train.recipe import _read as read_recipe
    from crystalvlm.train.tiny_world import prepare_tiny_world
    from crystalvlm.train.trainer import TrainOptions, train_recipe

    started = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"seed={seed}"] + (SMOKE_OVERRIDES if scale == "smoke" else [])
    raw = apply_overrides(read_recipe("tiny"), overrides)
    world_dir = out / "world"
    timings: dict[str, float] = {}

    _banner("1/5 making the shapes world and its tiny pretrained parts")
    prepared = prepare_tiny_world(world_dir, raw["prepare"], seed=seed)
    timings["prepare_s"] = time.time() - started
    recipe = load_recipe("tiny", overrides, {"world": str(world_dir), "run_dir": str(out)})
    run_dir = out / "run"
    tasks = build_quickstart_tasks(world_dir)
    decoding = DecodingConfig(strategy="greedy")

    _banner("2/5 composing the tiny LLaVA and evaluating it before training")
    finetune_template = recipe.stages[-1].template
    model, processor = build_llava(ModelSpec.from_dict(recipe.model),
                                   chat_template=get_template(finetune_template).chat_template_jinja())
    initial = save_checkpoint(model, processor, run_dir / "initial",
                              CheckpointInfo(template=finetune_template, image_mode=recipe.image_mode, stage="initial",
                                             recipe=recipe.name))
    mark = time.time()
    engine = GenerationEngine(model.eval(), processor, finetune_template, recipe.image_mode, batch_size=batch_size)
    before = evaluate(engine, tasks, out / "eval" / "before", decoding, model_id=str(initial))
    timings["eval_before_s"] = time.time() - mark

    _banner("3/5 training: align (projector), then finetune (projector + LLM)")
    mark = time.time()
    results = train_recipe(recipe, TrainOptions(run_dir=run_dir, progress=True))
    timings["train_s"] = time.time() - mark
    final = results[-1].checkpoint

    _banner("4/5 evaluating the trained model")
    mark = time.time()
    engine = GenerationEngine.from_checkpoint(final, batch_size=batch_size)
    after = evaluate(engine, tasks, out / "eval" / "after", decoding, model_id=str(final))
    timings["eval_after_s"] = time.time() - mark

    _banner("5/5 writing the report")
    report = {
        "wall_seconds": round(time.time() - started, 1),
        "scale": scale,
        "seed": seed,
        "checkpoint": str(final),
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "pretraining": {k: prepared.get(k) for k in ("clip", "lm")},
        "training": {r.name: {"steps": r.steps, "final_loss": r.final_loss, "skipped_records": len(r.problems)}
                     for r in results},
        "benchmarks": {name: {"before": _quickstart_metrics(name, before[name]),
                              "after": _quickstart_metrics(name, after[name])} for name in before},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_quickstart_html(out, report, run_dir, engine, tasks)
    report["wall_seconds"] = round(time.time() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _print_summary(report, out, final)
    return report


def _quickstart_metrics(task: str, metrics: dict[str, float]) -> dict[str, float]:
    if task == "mme":
        kept = {"total": metrics.get("perception", 0.0) + metrics.get("cognition", 0.0)}
        kept.update({k: v for k, v in metrics.items()})
        return kept
    return {k: metrics[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio") if k in metrics}


def write_quickstart_html(out: Path, report: dict, run_dir: Path, engine, tasks) -> Path:
    from crystalvlm.reporting import HtmlReport, add_loss_curves, close, new_figure

    page = HtmlReport("crystalvlm quickstart")
    page.paragraph(f"Whole run: {report['wall_seconds']} s on this machine (scale {report['scale']}, seed {report['seed']}). "
                   f"Checkpoint: {report['checkpoint']}")
    page.heading("Scores before and after training")
    rows, classes = [], []
    for task, scores in report["benchmarks"].items():
        for metric, after in scores["after"].items():
            before = scores["before"].get(metric, float("nan"))
            rows.append([task, metric, before, after, after - before])
            better = after > before if metric != "yes_ratio" else abs(after - 0.5) < abs(before - 0.5)
            classes.append(["", "", "", "better" if better else "worse", ""])
    page.table(["task", "metric", "before", "after", "change"], rows, classes)

    fig, axis = new_figure(7, 3.2)
    names = [t for t in report["benchmarks"] if t.startswith("pope")]
    xs = range(len(names))
    axis.bar([x - 0.2 for x in xs], [report["benchmarks"][t]["before"]["accuracy"] for t in names], 0.4, label="before")
    axis.bar([x + 0.2 for x in xs], [report["benchmarks"][t]["after"]["accuracy"] for t in names], 0.4, label="after")
    axis.axhline(0.85, color="gray", linestyle="--", linewidth=1, label="target 0.85")
    axis.set_xticks(list(xs), names)
    axis.set_ylim(0, 1)
    axis.set_ylabel("POPE accuracy")
    axis.legend(loc="lower right")
    page.figure(fig, "POPE accuracy before and after")
    close(fig)

    if "mme" in report["benchmarks"]:
        mme = report["benchmarks"]["mme"]
        subtasks = [k for k in mme["after"] if k not in ("total", "perception", "cognition")]
        fig, axis = new_figure(7, 3.2)
        xs = range(len(subtasks))
        axis.bar([x - 0.2 for x in xs], [mme["before"].get(s, 0) for s in subtasks], 0.4, label="before")
        axis.bar([x + 0.2 for x in xs], [mme["after"].get(s, 0) for s in subtasks], 0.4, label="after")
        axis.set_xticks(list(xs), subtasks, rotation=30, ha="right")
        axis.set_ylabel("MME score (acc + acc+)")
        axis.set_ylim(0, 200)
        axis.legend()
        page.figure(fig, "MME subtasks before and after")
        close(fig)

    add_loss_curves(page, run_dir)

    page.heading("Examples: the trained model's answers on held-out images")
    page.examples(_example_answers(engine, tasks))
    return page.write(out / "report.html")


def _example_answers(engine, tasks, count: int = 6) -> list[tuple[bytes, str]]:
    """A few held-out images with POPE questions and the trained model's answers."""
    from PIL import Image

    from crystalvlm.data.templates import IMAGE_PLACEHOLDER, Turn
    from crystalvlm.infer.engine import DecodingConfig, GenerationRequest

    pope = next(t for t in tasks if t.name.startswith("pope"))
    by_image: dict = {}
    for sample in pope.samples():
        by_image.setdefault(sample.image, []).append(sample)
    items = []
    for image_path, samples in list(by_image.items())[:count]:
        with Image.open(image_path) as image:
            image = image.convert("RGB")
        questions = samples[:3]
        requests = [GenerationRequest([Turn("user", f"{IMAGE_PLACEHOLDER}\n{s.prompt}")], [image]) for s in questions]
        describe = GenerationRequest([Turn("user", f"{IMAGE_PLACEHOLDER}\nDescribe the image concisely.")], [image])
        answers = engine.generate(requests + [describe], DecodingConfig(strategy="greedy", max_new_tokens=24))
        lines = [f"Q: {s.prompt.splitlines()[0]} A: {a.text} (truth: {s.target})" for s, a in zip(questions, answers)]
        lines.append(f"Describe: {answers[-1].text}")
        buffer = io.BytesIO()
        image.resize((192, 192), Image.NEAREST).save(buffer, format="PNG")
        items.append((buffer.getvalue(), "\n".join(lines)))
    return items


def _print_summary(report: dict, out: Path, final: Path) -> None:
    print("\nPOPE accuracy (before -> after):")
    for task, scores in report["benchmarks"].items():
        if task.startswith("pope"):
            print(f"  {task:<18} {scores['before']['accuracy']:.3f} -> {scores['after']['accuracy']:.3f}")
    if "mme" in report["benchmarks"]:
        mme = report["benchmarks"]["mme"]
        print(f"  {'MME total':<18} {mme['before']['total']:.1f} -> {mme['after']['total']:.1f}")
    print(f"\nwall time {report['wall_seconds']} s; report: {out / 'report.html'} and {out / 'report.json'}")
    example = next((out / "world" / "images" / "eval").glob("*.png"), None)
    print("\nTalk to the model:")
    print(f"  crystalvlm chat {final}")
    if example:
        print(f"  crystalvlm generate {final} --image {example} --prompt 'What shapes are in the image?'")
