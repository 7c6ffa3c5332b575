"""What the data-curation studies share: train the tiny recipe's LLaVA with some of its inputs
replaced, evaluate it on the world's POPE and MME, and record the machine the figures came from."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(), "shared_machine": True,
            "torch_threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0)}


def write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def train_and_evaluate(world: Path, run_dir: Path, overrides: list[str], pope_limit: int | None) -> dict:
    """Train recipe `tiny` (align, finetune) on `world` with `overrides`, resumably, then score the
    final checkpoint on POPE (three splits, at most `pope_limit` questions each) and MME."""
    from crystalvlm.eval.runner import evaluate
    from crystalvlm.infer.engine import DecodingConfig, GenerationEngine
    from crystalvlm.models.checkpoint import checkpoint_revision
    from crystalvlm.train.recipe import load_recipe
    from crystalvlm.train.trainer import TrainOptions, train_recipe
    from crystalvlm.worlds.shapes.world import _quickstart_metrics, build_quickstart_tasks

    scores_path = run_dir / "scores.json"
    if scores_path.is_file():
        return json.loads(scores_path.read_text())
    started = time.time()
    recipe = load_recipe("tiny", overrides, {"world": str(world), "run_dir": str(run_dir)})
    results = train_recipe(recipe, TrainOptions(run_dir=run_dir, progress=False, resume=True))
    train_seconds = time.time() - started
    final = results[-1].checkpoint
    tasks = build_quickstart_tasks(world, limit_per_task=None)
    tasks = [task.select([s.sample_id for s in task.samples()[:pope_limit]]) if pope_limit and task.name.startswith("pope")
             else task for task in tasks]
    engine = GenerationEngine.from_checkpoint(final, batch_size=32)
    mark = time.time()
    scored = evaluate(engine, tasks, run_dir / "eval", DecodingConfig(strategy="greedy"), model_id=str(final),
                      model_revision=checkpoint_revision(final), progress=False)
    scores = {name: _quickstart_metrics(name, scored[name]) for name in scored}
    payload = {"overrides": overrides, "checkpoint": str(final), "train_seconds": round(train_seconds, 1),
               "eval_seconds": round(time.time() - mark, 1), "pope_questions_per_split": pope_limit,
               "steps": {r.name: r.steps for r in results}, "scores": scores}
    write_json(scores_path, payload)
    return payload


def peak_rss_of(command: list[str], env: dict | None = None) -> dict:
    """Run `command` (a Python -c child) and return its wall time and peak RSS from its own report."""
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed:\n{done.stderr[-3000:]}")
    return {"wall_seconds": round(time.time() - started, 2), "stdout": done.stdout}
