"""The shapes world: seeded scenes of shapes, colours, positions and words, with caption data,
an instruction mixture and held-out benchmarks in the official file formats (POPE, MME, ScienceQA,
TextVQA, CHAIR). Its quickstart trains recipe `tiny` and is judged on POPE's three splits and MME.
"""

from __future__ import annotations

import io
from pathlib import Path

from crystalvlm.worlds.base import World, WorldContext

QUICKSTART_TASKS = ("pope_random", "pope_popular", "pope_adversarial", "mme")
# POPE and MME want a yes/no answer (two tokens here: the word and the end marker); the official budget
# of 128 tokens only lets an untrained model ramble, which on a CPU costs minutes and changes no score
# (scoring reads the start). At 16 the untrained model's evaluation still spent most of its time writing
# tokens nobody reads; every answer of the trained model is one word, well inside 6.
QUICKSTART_MAX_NEW_TOKENS = 6


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


class ShapesWorld(World):
    name = "shapes"
    recipe = "tiny"
    # A reduced run for tests: same steps, small sizes; the parts pretrain one after the other, since
    # starting two processes for 6 steps each costs more than it saves (tests/core/test_parallel_parts.py
    # covers the side-by-side path).
    smoke_overrides = (
        "prepare.n_train=120", "prepare.n_eval=12", "prepare.clip_steps=6", "prepare.lm_steps=6",
        "prepare.parallel_parts=false", "stages.align.max_steps=3", "stages.finetune.max_steps=4",
    )
    pretrained_parts = ("clip", "lm")

    def prepare(self, folder: Path, settings: dict, seed: int = 0, progress: bool = True, resources=None) -> dict:
        from crystalvlm.worlds.shapes.mixture import FinetuneMix
        from crystalvlm.worlds.shapes.prepare import prepare_tiny_world

        # `prepare.multi_image: SHARE` adds two-image records and their benchmark (multi_image.py); absent
        # in recipe `tiny`, so the default world is written exactly as before.
        multi_image = float(settings.get("multi_image") or 0)
        options = {"mix": FinetuneMix(multi_image=multi_image)} if multi_image else None
        return prepare_tiny_world(folder, settings, seed=seed, progress=progress, data_options=options)

    def tasks(self, folder: Path, settings: dict, resources=None) -> list:
        return build_quickstart_tasks(folder)

    def report_metrics(self, task: str, metrics: dict[str, float]) -> dict[str, float]:
        return _quickstart_metrics(task, metrics)

    def add_to_report(self, report: dict, context: WorldContext) -> None:
        pass  # the shapes report is the common one

    def write_html(self, out: Path, report: dict, context: WorldContext, engine, tasks: list) -> Path:
        return write_quickstart_html(out, report, context.run_dir, engine, tasks)

    def print_summary(self, report: dict, out: Path, checkpoint: Path, context: WorldContext) -> None:
        _print_summary(report, out, checkpoint)


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
