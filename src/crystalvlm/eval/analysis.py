"""Bad-case analysis: error rates per capability with confidence intervals, the worst examples, and a
machine-readable weakness profile.

A capability is whatever a task says a sample tests (`Task.sample_capability`: an MME subtask, a POPE
split, a question type). Each sample's score in [0, 1] comes from the task's own answer rule
(`Task.sample_scores`), so the analysis agrees with the task's metric. The weakness profile is

    {"confidence": 0.95, "samples": N, "error_rate": E,
     "capabilities": {CAPABILITY: {"samples": n, "errors": e, "error_rate": r, "ci_low": lo, "ci_high": hi}},
     "ranking": [CAPABILITY, ...],            # highest error rate first
     "worst_examples": {CAPABILITY: [{"sample_id", "prompt", "response", "target", "image", "score"}, ...]}}

Intervals are Wilson score intervals: unlike the normal approximation they stay inside [0, 1] and mean
something for small groups and for error rates near 0 or 1, which is where the interesting
capabilities are. A fractional score (TextVQA's VQA accuracy) counts `1 - score` of an error. The
formula is written out (five lines) because scipy's `binomtest(...).proportion_ci(method="wilson")`
takes whole counts only, and fractional error counts are what TextVQA gives.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

PROFILE_FILE = "weakness_profile.json"
REPORT_FILE = "analysis.html"


@dataclass(frozen=True)
class Outcome:
    """One judged sample."""

    capability: str
    score: float  # in [0, 1]; 1 is right
    sample_id: str
    prompt: str
    response: str
    target: Any
    image: str | None = None


def wilson_interval(errors: float, samples: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of an error rate `errors / samples`; (0, 1) when nothing was counted."""
    from statistics import NormalDist

    if samples <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    rate = min(1.0, max(0.0, errors / samples))
    centre = (rate + z * z / (2 * samples)) / (1 + z * z / samples)
    half = z / (1 + z * z / samples) * math.sqrt(rate * (1 - rate) / samples + z * z / (4 * samples * samples))
    return max(0.0, centre - half), min(1.0, centre + half)


def analyse(outcomes: Iterable[Outcome], worst: int = 5, confidence: float = 0.95) -> dict:
    """The weakness profile (module docstring) of `outcomes`; capabilities in first-seen order."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    groups: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        if not 0.0 <= outcome.score <= 1.0:
            raise ValueError(f"sample {outcome.sample_id}: score {outcome.score} is outside [0, 1]")
        groups.setdefault(outcome.capability, []).append(outcome)
    if not groups:
        raise ValueError("nothing to analyse: no judged samples")
    capabilities, worst_examples = {}, {}
    for name, members in groups.items():
        errors = sum(1.0 - o.score for o in members)
        low, high = wilson_interval(errors, len(members), confidence)
        capabilities[name] = {"samples": len(members), "errors": round(errors, 4),
                              "error_rate": errors / len(members), "ci_low": low, "ci_high": high}
        # The lowest-scoring samples, in benchmark order among equals (a stable sort).
        wrong = sorted((o for o in members if o.score < 1.0), key=lambda o: o.score)[:worst]
        worst_examples[name] = [{k: v for k, v in asdict(o).items() if k != "capability"} for o in wrong]
    total = sum(len(m) for m in groups.values())
    all_errors = sum(c["errors"] for c in capabilities.values())
    ranking = sorted(capabilities, key=lambda name: -capabilities[name]["error_rate"])  # stable among ties
    return {"confidence": confidence, "samples": total, "error_rate": all_errors / total,
            "capabilities": capabilities, "ranking": ranking, "worst_examples": worst_examples}


def task_outcomes(task, answers: dict[str, str], scoring: str = "llava") -> list[Outcome]:
    """Every selected sample of `task` judged by the task's own rule (raises ValueError for tasks without one)."""
    scores = task.sample_scores(answers, scoring=scoring)
    return [Outcome(task.sample_capability(sample), scores[sample.sample_id], sample.sample_id, sample.prompt,
                    answers.get(sample.sample_id, ""), sample.target, str(sample.image) if sample.image else None)
            for sample in task.samples()]


def read_task_answers(out_dir: Path, task_name: str) -> dict[str, str]:
    """sample_id -> response from an evaluation folder's per-sample log (OUT/samples_<task>.jsonl)."""
    path = Path(out_dir) / f"samples_{task_name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no per-sample log of task {task_name}; evaluate it first")
    answers = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            answers[str(row["sample_id"])] = str(row["response"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not a per-sample log line ({error})") from None
    return answers


def analyse_evaluation(out_dir: Path, tasks: list, scoring: str = "llava", worst: int = 5) -> tuple[dict, list[str]]:
    """The weakness profile of an evaluation folder's tasks, and the names of tasks that have no per-sample
    score (skipped, not silently: the caller says so)."""
    outcomes, skipped = [], []
    for task in tasks:
        try:
            outcomes += task_outcomes(task, read_task_answers(out_dir, task.name), scoring)
        except ValueError as error:
            if "no per-sample score" not in str(error):
                raise
            skipped.append(task.name)
    profile = analyse(outcomes, worst=worst)
    profile["skipped_tasks"] = skipped
    return profile, skipped


def write_analysis(out_dir: Path, profile: dict, title: str = "Bad-case analysis") -> tuple[Path, Path]:
    """OUT/weakness_profile.json (atomic) and OUT/analysis.html (error rates with intervals, worst examples)."""
    from crystalvlm.eval.outputs import write_atomically
    from crystalvlm.reporting import HtmlReport, close, new_figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    profile_path = out_dir / PROFILE_FILE
    write_atomically(profile_path, json.dumps(profile, indent=2, ensure_ascii=False, default=str) + "\n")
    page = HtmlReport(title)
    page.paragraph(f"{profile['samples']} samples, error rate {profile['error_rate']:.3f}; intervals: Wilson, "
                   f"{profile['confidence']:.0%}.")
    names = profile["ranking"]
    rows = [[name, c["samples"], c["errors"], c["error_rate"], c["ci_low"], c["ci_high"]]
            for name in names for c in [profile["capabilities"][name]]]
    page.table(["capability", "samples", "errors", "error rate", "CI low", "CI high"], rows)
    fig, axis = new_figure(7, max(2.5, 0.35 * len(names)))
    rates = [profile["capabilities"][n]["error_rate"] for n in names]
    lows = [r - profile["capabilities"][n]["ci_low"] for n, r in zip(names, rates)]
    highs = [profile["capabilities"][n]["ci_high"] - r for n, r in zip(names, rates)]
    axis.barh(range(len(names)), rates, xerr=[lows, highs], capsize=3)
    axis.set_yticks(range(len(names)), names)
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.set_xlabel("error rate")
    page.figure(fig, "error rate per capability")
    close(fig)
    page.heading("Worst examples")
    for name in names:
        examples = profile["worst_examples"].get(name) or []
        if examples:
            page.paragraph(name)
            page.table(["sample", "prompt", "response", "target", "score"],
                       [[e["sample_id"], e["prompt"], e["response"], json.dumps(e["target"]), e["score"]] for e in examples])
    return profile_path, page.write(out_dir / REPORT_FILE)
