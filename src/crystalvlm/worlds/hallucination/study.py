"""`crystalvlm quickstart --world hallucination`: every hallucination mitigation measured on one world.

    prepare   the biased shapes world, and its tiny parts pretrained on the plain shapes world
              (`prepare.parts_world`, in world/parts_world; resumable)
    train     recipe `tiny-hallucination`'s align and finetune stages
    pairs     HA-DPO pairs from the finetuned model's own descriptions (`crystalvlm data pairs`)
    hadpo     the recipe's `dpo` stage on those pairs, starting from (and referenced to) finetune, with
              an SFT term on the chosen answers (`rpo_alpha`)
    evaluate  greedy, OPERA and VCD on the finetuned model; greedy (hadpo) and OPERA (hadpo+opera) on
              the HA-DPO model; each on POPE's three splits, MME and CHAIR (cached: a rerun reuses answers)
    report    report.json ({"methods": {NAME: {METRIC: V}}, targets, pairs, timings, cpu_timings}) and report.html

The same seed gives the same report: the world, every stage (seeded, order a function of the seed),
the sampled descriptions (seeded) and greedy/beam decoding are deterministic; VCD's noise is seeded.
A rerun into the same folder continues where a killed one stopped.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from crystalvlm.worlds.base import write_json_atomic

# OPERA with 3 beams and 3 candidates instead of the published 5 and 5: each request is its own beam
# search and every candidate one more forward per step, which at 5 x 5 alone costs more CPU time than the
# whole study may take (docs/hallucination.md). Its penalty, scale, threshold and rollback are the published ones.
OPERA = "opera:num_beams=3,num_candidates=3"
# NAME -> (model: "finetune" or "hadpo", decoding string)
METHODS: dict[str, tuple[str, str]] = {
    "greedy": ("finetune", "greedy"),
    "opera": ("finetune", OPERA),
    "vcd": ("finetune", "vcd"),
    "hadpo": ("hadpo", "greedy"),
    "hadpo+opera": ("hadpo", OPERA),
}
SMOKE_SAMPLES_PER_TASK = 4  # smoke scale: a few samples per task, enough to run every path
POPE_SPLITS = ("random", "popular", "adversarial")
# The targets the study is judged on (HA-DPO against greedy decoding of the same finetuned model).
CHAIR_I_RELATIVE_DROP = 0.30
MME_RELATIVE_LOSS = 0.02


def method_metrics(results: dict, eval_dir: Path) -> dict[str, float]:
    """The report's metrics of one method from its evaluation results (CHAIR as fractions)."""
    metrics = {"chair_s": results["chair"]["chair_s"], "chair_i": results["chair"]["chair_i"],
               "chair_recall": results["chair"]["recall"]}
    for split in POPE_SPLITS:
        pope = results[f"pope_{split}"]
        metrics[f"pope_{split}_accuracy"] = pope["accuracy"]
        metrics[f"pope_{split}_yes_ratio"] = pope["yes_ratio"]
        metrics[f"pope_{split}_f1"] = pope["f1"]
    metrics["mme_total"] = results["mme"].get("perception", 0.0) + results["mme"].get("cognition", 0.0)
    descriptions = chair_descriptions(eval_dir)
    metrics["mean_words"] = (sum(len(text.split()) for text in descriptions.values()) / len(descriptions)
                             if descriptions else 0.0)
    return {name: round(float(value), 6) for name, value in metrics.items()}


def chair_descriptions(eval_dir: Path) -> dict[str, str]:
    """image file name -> the method's CHAIR description (from the evaluation's samples file)."""
    rows = [json.loads(line) for line in (eval_dir / "samples_chair.jsonl").read_text().splitlines() if line.strip()]
    return {Path(row["image"]).name: row["response"] for row in rows}


def verdicts(methods: dict[str, dict[str, float]]) -> dict[str, dict]:
    """Each target with the measured numbers and whether it is met."""
    greedy, hadpo = methods["greedy"], methods["hadpo"]
    drop = (greedy["chair_i"] - hadpo["chair_i"]) / greedy["chair_i"] if greedy["chair_i"] > 0 else 0.0
    mme_change = (hadpo["mme_total"] - greedy["mme_total"]) / greedy["mme_total"] if greedy["mme_total"] > 0 else 0.0
    return {
        "hadpo_chair_i_relative_drop": {"target": f">= {CHAIR_I_RELATIVE_DROP}", "value": round(drop, 4),
                                        "met": drop >= CHAIR_I_RELATIVE_DROP},
        "hadpo_pope_adversarial_accuracy_gain": {
            "target": "> 0", "value": round(hadpo["pope_adversarial_accuracy"] - greedy["pope_adversarial_accuracy"], 4),
            "met": hadpo["pope_adversarial_accuracy"] > greedy["pope_adversarial_accuracy"]},
        "hadpo_mme_relative_change": {"target": f">= -{MME_RELATIVE_LOSS}", "value": round(mme_change, 4),
                                      "met": mme_change >= -MME_RELATIVE_LOSS},
    }


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_study(world, out: Path, scale: str = "full", seed: int = 0, batch_size: int = 32,
              extra_overrides: tuple[str, ...] = (), methods: tuple[str, ...] = tuple(METHODS)) -> dict:
    """The study into `out` (world/, run/, pairs.jsonl, eval/<method>/, report.json, report.html).
    `extra_overrides` (`--set` style) and `methods` serve the control run of docs/hallucination.md."""
    from crystalvlm.dataengine.pairs_command import make_pairs, world_inputs
    from crystalvlm.eval.runner import evaluate
    from crystalvlm.infer.engine import DecodingConfig, GenerationEngine
    from crystalvlm.models.checkpoint import checkpoint_revision
    from crystalvlm.train.recipe import apply_overrides, load_recipe, read_recipe
    from crystalvlm.train.trainer import TrainOptions, final_checkpoint, train_recipe
    from crystalvlm.worlds.hallucination.report import example_descriptions, print_study_summary, write_study_html
    from crystalvlm.worlds.quickstart import RUN_MARKER, SCALES, _cpu_seconds, _start_or_continue, _training_summary

    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; known: {', '.join(METHODS)}")
    started, started_cpu = time.time(), _cpu_seconds()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"seed={seed}"] + (list(world.smoke_overrides) if scale == "smoke" else []) + list(extra_overrides)
    settings = apply_overrides(read_recipe(world.recipe), overrides)["prepare"]
    run_settings = {"world": world.name, "scale": scale, "seed": seed,
                    **({"overrides": list(extra_overrides)} if extra_overrides else {})}
    marker = out / RUN_MARKER
    if not marker.is_file() or json.loads(marker.read_text()) != run_settings:
        for stale in ("pairs.jsonl", "pairs.summary.json", "pairs.details.jsonl"):  # another run's pairs
            (out / stale).unlink(missing_ok=True)
    _start_or_continue(out, run_settings)
    world_dir, run_dir = out / "world", out / "run"
    timings: dict[str, float] = {}
    cpu_timings: dict[str, float] = {}  # the same phases in CPU seconds (this process and its children)
    cpu_mark = [started_cpu]

    def cpu_lap(phase: str) -> None:
        now = _cpu_seconds()
        cpu_timings[phase] = now - cpu_mark[0]
        cpu_mark[0] = now

    _banner("1/5 making the hallucination world (biased training data) and its tiny parts (pretrained on the plain world)")
    prepared = world.prepare(world_dir, settings, seed=seed)
    timings["prepare_s"] = time.time() - started
    cpu_lap("prepare_s")
    recipe = load_recipe(world.recipe, overrides, {"world": str(world_dir), "run_dir": str(out)})
    needs_hadpo = any(METHODS[name][0] == "hadpo" for name in methods)

    _banner("2/5 training align and finetune on the biased world")
    mark = time.time()
    results = train_recipe(recipe, TrainOptions(run_dir=run_dir, progress=True, resume=True, stages=["align", "finetune"]))
    timings["train_s"] = time.time() - mark
    cpu_lap("train_s")
    finetuned = final_checkpoint(run_dir, "finetune")

    pairs_summary, hadpo_skipped = None, None
    if needs_hadpo:
        _banner("3/5 HA-DPO pairs from the finetuned model's own descriptions")
        mark = time.time()
        pairs = out / "pairs.jsonl"
        summary_file = out / "pairs.summary.json"
        if not (pairs.is_file() and summary_file.is_file()):
            annotations, image_folder, synonyms = world_inputs(world_dir)
            options = settings.get("pairs") or {}
            make_pairs(finetuned, annotations, image_folder, pairs, synonyms=synonyms,
                       images=int(options.get("images", 400)), temperature=float(options.get("temperature", 0.7)),
                       max_new_tokens=int(options.get("max_new_tokens", 96)), seed=seed, batch_size=batch_size,
                       existence_pairs=bool(options.get("existence_pairs", False)),
                       attributes=bool(options.get("attributes", True)))
        pairs_summary = json.loads(summary_file.read_text())
        timings["pairs_s"] = time.time() - mark
        cpu_lap("pairs_s")

        if pairs_summary["pairs"]:
            _banner("4/5 HA-DPO: the dpo stage (reference = the finetuned model, frozen)")
            mark = time.time()
            results += train_recipe(recipe, TrainOptions(run_dir=run_dir, progress=True, resume=True, stages=["hadpo"]))
            timings["hadpo_s"] = time.time() - mark
            cpu_lap("hadpo_s")
        else:  # an untrained model (smoke scale) names no shape: nothing to prefer
            hadpo_skipped = f"no pair: none of {pairs_summary['images']} descriptions named a shape"
            _banner(f"4/5 HA-DPO skipped ({hadpo_skipped}); the hadpo methods evaluate the finetuned model")
    else:
        _banner("3/5 and 4/5 skipped: no HA-DPO method asked for")

    _banner("5/5 evaluating " + ", ".join(methods))
    tasks = world.tasks(world_dir, settings, limit_per_task=SMOKE_SAMPLES_PER_TASK if scale == "smoke" else None)
    checkpoints = {"finetune": finetuned, "hadpo": finetuned if hadpo_skipped else final_checkpoint(run_dir, "hadpo")}
    measured: dict[str, dict[str, float]] = {}
    engines: dict[str, GenerationEngine] = {}
    for name in methods:
        mark = time.time()
        model, decoding_text = METHODS[name]
        checkpoint = checkpoints[model]
        engines.setdefault(model, GenerationEngine.from_checkpoint(checkpoint, batch_size=batch_size))
        eval_dir = out / "eval" / name.replace("+", "_")
        print(f"-- {name}: {decoding_text} on {model}", flush=True)
        results_of = evaluate(engines[model], tasks, eval_dir, DecodingConfig.parse(decoding_text, seed=seed),
                              model_id=str(checkpoint), model_revision=checkpoint_revision(checkpoint))
        measured[name] = method_metrics(results_of, eval_dir)
        timings[f"eval_{name}_s"] = time.time() - mark
        cpu_lap(f"eval_{name}_s")

    report = {
        "world": world.name,
        "scale": scale,
        "seed": seed,
        "overrides": list(extra_overrides),
        "wall_seconds": round(time.time() - started, 1),
        "timings": {k: round(v, 1) for k, v in timings.items()},
        # CPU seconds per phase beside the wall times: on a shared machine they, not the wall times,
        # tell what the study costs (the part pretraining runs in two processes, so its CPU time can
        # exceed its wall time on two free cores).
        "cpu_timings": {k: round(v, 1) for k, v in cpu_timings.items()},
        "methods": measured,
        "decoding": {name: METHODS[name][1] for name in methods},
        "pretraining": {part: prepared.get(part) for part in world.pretrained_parts},
        "training": {r.name: _training_summary(run_dir, r) for r in results},
        "biases": settings.get("biases") or {},
        "pairs": pairs_summary,
        **({"hadpo_skipped": hadpo_skipped} if hadpo_skipped else {}),
        "samples": {task.name: len(task.samples()) for task in tasks},
    }
    if {"greedy", "hadpo"} <= set(measured):
        report["targets"] = verdicts(measured)
    report["examples"] = example_descriptions(world_dir, {name: out / "eval" / name.replace("+", "_") for name in methods})
    write_study_html(out, report)
    report["wall_seconds"] = round(time.time() - started, 1)
    report["cpu_seconds"] = round(_cpu_seconds() - started_cpu, 1)
    report["load_average"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    write_json_atomic(out / "report.json", report)
    print_study_summary(report, out)
    return report
