"""`crystalvlm quickstart [--world NAME]`: the whole pipeline on a laptop CPU, nothing downloaded,
for any registered world.

    prepare   the world's data and its tiny pretrained parts (resumable after a kill)
    baseline  the world's trivial baselines, if it has any
    before    LlavaForConditionalGeneration composed from the parts, evaluated untrained
    train     the world's recipe, stage by stage (a finished stage is kept on a rerun)
    after     the trained model evaluated again
    report    report.json and report.html: common tables and curves plus the world's own sections

Rerunning into the same folder with the same settings continues where a killed run stopped:
preparation and training resume, and evaluation reuses the answers it cached. Other settings
(scale, seed, world) start the folder's run afresh. `--scale smoke` shrinks every size so the same
path runs in seconds (tests use it); its scores mean little.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from pathlib import Path

from crystalvlm.worlds.base import WorldContext, write_json_atomic
from crystalvlm.worlds.registry import get_world

SCALES = ("full", "smoke")
RUN_MARKER = "quickstart.json"


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the part pretraining and
    record-check workers), for the report's per-phase CPU timings next to the wall times."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class _PhaseClock:
    """Wall and CPU seconds per phase: `timings` holds "<phase>_s" (wall), `cpu_timings` the same keys
    (CPU). CPU time above the wall time means both cores worked; far below it, the machine was busy
    with something else (the load average is recorded with them)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.cpu_timings: dict[str, float] = {}
        self._wall, self._cpu = time.time(), _cpu_seconds()

    def lap(self, phase: str) -> None:
        wall, cpu = time.time(), _cpu_seconds()
        self.timings[f"{phase}_s"] = wall - self._wall
        self.cpu_timings[f"{phase}_s"] = cpu - self._cpu
        self._wall, self._cpu = wall, cpu


def _start_or_continue(out: Path, settings: dict) -> None:
    """Keep a previous run's training and evaluation only when it had the same settings."""
    marker = out / RUN_MARKER
    previous = json.loads(marker.read_text()) if marker.is_file() else None
    if previous != settings:
        for name in ("run", "eval"):
            shutil.rmtree(out / name, ignore_errors=True)
        write_json_atomic(marker, settings)


def _training_summary(run_dir: Path, result) -> dict:
    """Steps, final loss and skipped records of a stage, also when an earlier (killed) run of the
    quickstart finished it and this one kept it: then they come from the stage's own records."""
    if result.final_loss is not None:
        return {"steps": result.steps, "final_loss": result.final_loss, "skipped_records": len(result.problems)}
    stage = run_dir / result.name
    rows = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines() if line.strip()]
    problems = stage / "data_problems.jsonl"
    skipped = sum(1 for line in problems.read_text().splitlines() if line.strip()) if problems.is_file() else 0
    return {"steps": rows[-1]["step"], "final_loss": rows[-1]["loss"], "skipped_records": skipped}


def run_quickstart(out: Path, world: str = "shapes", scale: str = "full", seed: int = 0, batch_size: int = 32) -> dict:
    from accelerate.utils import set_seed

    from crystalvlm.data.templates import get_template
    from crystalvlm.models.checkpoint import checkpoint_revision
    from crystalvlm.eval.runner import evaluate
    from crystalvlm.infer.engine import DecodingConfig, GenerationEngine
    from crystalvlm.models.build import ModelSpec, build_llava
    from crystalvlm.models.checkpoint import CheckpointInfo, save_checkpoint
    from crystalvlm.train.recipe import apply_overrides, load_recipe, read_recipe
    from crystalvlm.train.trainer import TrainOptions, train_recipe

    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    chosen = get_world(world)
    own = chosen.quickstart(Path(out), scale, seed, batch_size)
    if own is not None:
        return own
    started, started_cpu = time.time(), _cpu_seconds()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"seed={seed}"] + (list(chosen.smoke_overrides) if scale == "smoke" else [])
    settings = apply_overrides(read_recipe(chosen.recipe), overrides)["prepare"]
    _start_or_continue(out, {"world": world, "scale": scale, "seed": seed})
    world_dir, run_dir = out / "world", out / "run"
    clock = _PhaseClock()
    decoding = DecodingConfig(strategy="greedy")

    with chosen.resources(settings) as resources:
        _banner(f"1/6 making the {world} world and its tiny pretrained parts")
        prepared = chosen.prepare(world_dir, settings, seed=seed, resources=resources)
        clock.lap("prepare")
        recipe = load_recipe(chosen.recipe, overrides, {"world": str(world_dir), "run_dir": str(out)})
        tasks = chosen.tasks(world_dir, settings, resources)
        context = WorldContext(world_dir, run_dir, settings, prepared, resources)

        _banner("2/6 baselines")
        baseline_scores, baseline_info = chosen.baselines(world_dir, tasks, resources, scale, seed)
        clock.lap("baselines")

        _banner("3/6 composing the tiny LLaVA and evaluating it before training")
        template = recipe.stages[-1].template
        initial = run_dir / "initial"
        if not (initial / "config.json").is_file():
            # Seeded as the trainer seeds its first stage, so the untrained model is exactly the one
            # training starts from, and a rerun after a kill composes it again bit for bit.
            set_seed(recipe.seed)
            model, processor = build_llava(ModelSpec.from_dict(recipe.model),
                                           chat_template=get_template(template).chat_template_jinja(),
                                           image_mode=recipe.image_mode)
            save_checkpoint(model, processor, initial, CheckpointInfo(template=template, image_mode=recipe.image_mode,
                                                                       stage="initial", recipe=recipe.name))
        engine = GenerationEngine.from_checkpoint(initial, batch_size=batch_size)
        before = evaluate(engine, tasks, out / "eval" / "before", decoding, model_id=str(initial),
                          model_revision=checkpoint_revision(initial))
        clock.lap("eval_before")

        _banner(f"4/6 training recipe {recipe.name}: " + ", then ".join(s.name for s in recipe.stages))
        results = train_recipe(recipe, TrainOptions(run_dir=run_dir, progress=True, resume=True))
        clock.lap("train")
        final = results[-1].checkpoint

        _banner("5/6 evaluating the trained model")
        engine = GenerationEngine.from_checkpoint(final, batch_size=batch_size)
        after = evaluate(engine, tasks, out / "eval" / "after", decoding, model_id=str(final),
                         model_revision=checkpoint_revision(final))
        clock.lap("eval_after")
        context.details = {"before": before.details, "after": after.details}

        _banner("6/6 writing the report")
        benchmarks = {}
        for name in before:
            benchmarks[name] = {"before": chosen.report_metrics(name, before[name]),
                                "after": chosen.report_metrics(name, after[name])}
            if name in baseline_scores:
                benchmarks[name]["baseline"] = chosen.report_metrics(name, baseline_scores[name])
        report = {
            "world": world,
            "wall_seconds": round(time.time() - started, 1),
            "scale": scale,
            "seed": seed,
            "checkpoint": str(final),
            "timings": {k: round(v, 1) for k, v in clock.timings.items()},
            "cpu_timings": {k: round(v, 1) for k, v in clock.cpu_timings.items()},
            "pretraining": {part: prepared.get(part) for part in chosen.pretrained_parts},
            "training": {r.name: _training_summary(run_dir, r) for r in results},
            "benchmarks": benchmarks,
            "max_new_tokens": {task.name: task.max_new_tokens for task in tasks},
        }
        if baseline_info:
            report["baselines"] = baseline_info
        chosen.add_to_report(report, context)
        chosen.write_html(out, report, context, engine, tasks)
    report["wall_seconds"] = round(time.time() - started, 1)
    report["cpu_seconds"] = round(_cpu_seconds() - started_cpu, 1)
    # The 1-minute load average at the end: a wall time taken on a busy machine says so.
    report["load_average"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    write_json_atomic(out / "report.json", report)
    chosen.print_summary(report, out, final, context)
    return report
