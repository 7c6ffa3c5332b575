"""The files an evaluation folder holds, each written atomically, in two layouts.

crystalvlm's own (read by `crystalvlm eval` reports, the quickstarts and `eval score`):

    OUT/results.json              {"results": {task: {metric: value}}, "config": {...}}
    OUT/samples_<task>.jsonl      doc_id, sample_id, prompt, image, target, response, meta
    OUT/answers_<task>.jsonl      LLaVA-1.5 answer files (question_id, prompt, text, model_id, metadata)

lmms-eval's, beside it, as lmms-eval writes for `--output_path OUT/lmms-eval --log_samples`, so that
tools made for lmms-eval logs read a crystalvlm evaluation unchanged:

    OUT/lmms-eval/<model>/<date>_results.json          results ("<metric>,none"), configs, versions, n-shot,
                                                       higher_is_better, n-samples, config, git_hash, date ...
    OUT/lmms-eval/<model>/<date>_samples_<task>.jsonl  doc_id, doc, target, arguments, resps, filtered_resps ...

Task and metric names are crystalvlm's (pope_random/accuracy); where lmms-eval reports the same quantity
under a name of its own (pope_random/pope_accuracy, mme/mme_percetion_score), the value is written under
that name as well, so scripts that look up lmms-eval's keys find it. The numbers are crystalvlm's scores
under the run's --scoring convention. docs/eval-conventions.md has the details. The lmms-eval folder holds one evaluation, like results.json: the files of an earlier run
into the same OUT are removed once the new results file is in place.

Why atomic: a kill (SIGKILL, out of memory, a pre-empted node) during a write must not leave a
truncated results.json for a reader to trust; a file is written beside its final name, synced, then
renamed over it. An evaluation's files are written as one batch (`write_all_atomically`): all staged,
synced at the same time (the file system commits them together, where one sync after another waits
for a disk flush each), then renamed in order.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from crystalvlm.eval.tasks.base import Task

LMMS_EVAL_FOLDER = "lmms-eval"
# Metrics where a smaller number is better (CHAIR's hallucination rates); every other metric is
# higher-is-better. POPE's yes_ratio has no better direction (0.5 on the balanced splits); lmms-eval
# marks it higher-is-better too, and so does this file.
LOWER_IS_BETTER = frozenset({"chair_s", "chair_i"})

# lmms-eval's name for a crystalvlm metric that measures the same quantity on the same scale, per task
# (lmms-eval's tasks pope_random/pope_pop/pope_adv, mme, scienceqa_img/scienceqa_full, textvqa_val).
# `mme_percetion_score` is spelled as lmms-eval spells it.
_POPE_NAMES = {"accuracy": "pope_accuracy", "precision": "pope_precision", "recall": "pope_recall",
               "f1": "pope_f1_score", "yes_ratio": "pope_yes_ratio"}
LMMS_EVAL_METRIC_NAMES: dict[str, dict[str, str]] = {
    "pope_random": _POPE_NAMES, "pope_popular": _POPE_NAMES, "pope_adversarial": _POPE_NAMES,
    "mme": {"perception": "mme_percetion_score", "cognition": "mme_cognition_score"},
    "scienceqa": {"accuracy": "exact_match"},
    "scienceqa_img": {"accuracy": "exact_match"},
    "textvqa": {"accuracy": "exact_match"},
}


# ----------------------------------------------------------------------------- atomic writes
def write_atomically(path: Path, text: str) -> None:
    """`path` holds either its old content or all of `text`, never a part of it."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(staging, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)


def write_all_atomically(files: list[tuple[Path, str]], before_last: Callable[[], None] | None = None,
                         also_sync: list[Path] = ()) -> None:
    """Each of `files` (path, text) holds either its old content or all of its new text, and none is
    renamed into place before all of them are on disk; they are renamed in the order given, so a reader
    who finds the last one finds the others. `before_last` runs just before the last rename (removing
    files the last one must not be seen beside). `also_sync`: files already written that are synced in
    the same round (an answer cache's last lines).

    The syncs run concurrently: one after another, each waits for its own flush of the file system's
    journal; together they share one (an evaluation's files then cost one flush, not one each)."""
    from concurrent.futures import ThreadPoolExecutor

    staged: list[tuple[Path, Path]] = []
    handles = []
    try:
        for path, text in files:
            path = Path(path)
            staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            handle = open(staging, "w", encoding="utf-8")
            handles.append(handle)
            staged.append((staging, path))
            handle.write(text)
            handle.flush()
        syncs = [functools.partial(os.fsync, handle.fileno()) for handle in handles]
        syncs += [functools.partial(sync_file, path) for path in also_sync]
        if len(syncs) > 1:
            with ThreadPoolExecutor(max_workers=min(len(syncs), 16), thread_name_prefix="crystalvlm-fsync") as pool:
                list(pool.map(lambda sync: sync(), syncs))
        elif syncs:
            syncs[0]()
        for handle in handles:
            handle.close()
        for index, (staging, path) in enumerate(staged):
            if index == len(staged) - 1 and before_last is not None:
                before_last()
            os.replace(staging, path)
    except BaseException:
        for handle in handles:
            handle.close()
        for staging, _ in staged:
            staging.unlink(missing_ok=True)
        raise


def sync_file(path: Path) -> None:
    """Put what was written to `path` on disk (a descriptor of its own: a sync covers every write to the file)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


# ----------------------------------------------------------------------------- crystalvlm's layout
def write_task_outputs(out_dir: Path, task: Task, answers: dict[str, str]) -> None:
    """OUT/samples_<task>.jsonl and OUT/answers_<task>.jsonl, in benchmark order."""
    write_all_atomically(task_output_files(out_dir, task, answers))


def task_output_files(out_dir: Path, task: Task, answers: dict[str, str]) -> list[tuple[Path, str]]:
    """(path, text) of OUT/samples_<task>.jsonl and OUT/answers_<task>.jsonl, in benchmark order."""
    samples, llava_answers = [], []
    for index, sample in enumerate(task.samples()):
        text = answers[sample.sample_id]
        samples.append({"doc_id": index, "sample_id": sample.sample_id, "prompt": sample.prompt,
                        "image": str(sample.image) if sample.image else None,
                        "target": sample.target, "response": text, "meta": sample.meta})
        llava_answers.append({"question_id": sample.sample_id, "prompt": sample.prompt, "text": text,
                              "model_id": "crystalvlm", "metadata": {}})
    # json.dumps' default ensure_ascii, as the runner always wrote these files.
    return [(out_dir / f"samples_{task.name}.jsonl", "".join(json.dumps(row) + "\n" for row in samples)),
            (out_dir / f"answers_{task.name}.jsonl", "".join(json.dumps(row) + "\n" for row in llava_answers))]


def write_results(out_dir: Path, results: dict[str, dict[str, float]], config: dict) -> Path:
    path, text = results_file(out_dir, results, config)
    write_atomically(path, text)
    return path


def results_file(out_dir: Path, results: dict[str, dict[str, float]], config: dict) -> tuple[Path, str]:
    """(path, text) of OUT/results.json."""
    return out_dir / "results.json", json.dumps({"results": results, "config": config}, indent=2) + "\n"


# ----------------------------------------------------------------------------- lmms-eval's layout
def sanitized_model_name(name: str) -> str:
    """A model name made into one folder name, as lmms-eval does (path separators and the characters
    Windows refuses become `__`)."""
    return re.sub(r'["<>:/|\\?*\[\]]+', "__", name) or "model"


def lmms_eval_folder(out_dir: Path, model_name: str) -> Path:
    return Path(out_dir) / LMMS_EVAL_FOLDER / sanitized_model_name(model_name)


def lmms_eval_date_id(when: float | None = None) -> str:
    """lmms-eval's file-name stamp (YYYYMMDD_HHMMSS), in UTC."""
    moment = datetime.fromtimestamp(time.time() if when is None else when, tz=timezone.utc)
    return moment.strftime("%Y%m%d_%H%M%S")


def _sha(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _target_text(target: Any) -> str:
    # lmms-eval logs the target as a string; structured targets (TextVQA's ten answers, MME's pair)
    # become JSON so they can be read back.
    return target if isinstance(target, str) else json.dumps(target, ensure_ascii=False)


def lmms_eval_sample_lines(task: Task, answers: dict[str, str], generation_kwargs: dict) -> list[dict]:
    """One lmms-eval per-sample record per sample, in benchmark order.

    The keys of lmms-eval's evaluator record (doc_id, doc, target, arguments, resps, filtered_resps,
    doc_hash, prompt_hash, target_hash) and `input`, which lmms-eval's tracker writes in place of
    `arguments`: both are kept so readers of either form find theirs. One generation per document,
    so `resps` is [[text]] and `filtered_resps` is [text] (crystalvlm applies no response filter; its
    scoring rules parse the raw text). Per-sample metric keys are not written: crystalvlm's scores are
    computed over the whole task (MME's acc+ pairs an image's questions, CHAIR counts over all captions).
    """
    lines = []
    for index, sample in enumerate(task.samples()):
        text = answers[sample.sample_id]
        doc = {"question_id": sample.sample_id, "question": sample.prompt,
               "image": str(sample.image) if sample.image else None, **sample.meta}
        target = _target_text(sample.target)
        lines.append({
            "doc_id": index,
            "doc": doc,
            "target": target,
            "arguments": [[sample.prompt, generation_kwargs]],
            "resps": [[text]],
            "filtered_resps": [text],
            "doc_hash": _sha(doc),
            "prompt_hash": _sha(sample.prompt),
            "target_hash": _sha(target),
            "input": sample.prompt,
        })
    return lines


@functools.cache
def _git_hash() -> str | None:
    """The commit of the crystalvlm source tree, when it is a git checkout (lmms-eval records its own).
    Asked once per process: the code running is the code imported at its start, and a `git` process
    per evaluation costs more than a small evaluation's scoring."""
    try:
        completed = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                   capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (completed.stdout.strip() or None) if completed.returncode == 0 else None


def lmms_eval_results(tasks: list[Task], results: dict[str, dict[str, float]], task_generation: dict[str, dict],
                      sample_lines: dict[str, list[dict]], config: dict, model_name: str, version: str,
                      started: float, finished: float) -> dict:
    """lmms-eval's aggregated-results document for crystalvlm's scores.

    `"<metric>,none"` is lmms-eval's key for a metric under the filter `none` (no response filter);
    `"<metric>_stderr,none"` is `"N/A"`, as lmms-eval writes when it computes no standard error.
    """
    names = [task.name for task in tasks]
    by_task, better = {}, {}
    for name in names:
        entry: dict[str, Any] = {"alias": name}
        better[name] = {}
        for metric, value in results[name].items():
            for key in (metric, LMMS_EVAL_METRIC_NAMES.get(name, {}).get(metric)):
                if key is not None and f"{key},none" not in entry:
                    entry[f"{key},none"] = value
                    entry[f"{key}_stderr,none"] = "N/A"
                    better[name][key] = metric not in LOWER_IS_BETTER
        by_task[name] = entry
    configs = {}
    for task in tasks:
        configs[task.name] = {
            "task": task.name,
            "output_type": "generate_until",
            "generation_kwargs": task_generation[task.name],
            "metric_list": [{"metric": metric, "aggregation": "crystalvlm", "higher_is_better": higher}
                            for metric, higher in better[task.name].items()],
            "num_fewshot": 0,
            "metadata": {"version": version, "scoring": config.get("scoring")},
        }
    counts = {task.name: len(sample_lines[task.name]) for task in tasks}
    return {
        "results": by_task,
        "group_subtasks": {name: [] for name in names},
        "configs": configs,
        "versions": {name: version for name in names},
        "n-shot": {name: 0 for name in names},
        "higher_is_better": better,
        # crystalvlm keeps no count of a benchmark before --limit; config.limit records the limit.
        "n-samples": {name: {"original": counts[name], "effective": counts[name]} for name in names},
        "config": config,
        "git_hash": _git_hash(),
        "date": started,
        "task_hashes": {name: _sha("".join(f"sample_{i}{line['doc_hash']}" for i, line in enumerate(sample_lines[name])))
                        for name in names},
        "model_name": model_name,
        "model_name_sanitized": sanitized_model_name(model_name),
        "start_time": started,
        "end_time": finished,
        "total_evaluation_time_seconds": str(finished - started),
    }


def write_lmms_eval_outputs(out_dir: Path, model_name: str, date_id: str, results_document: dict,
                            sample_lines: dict[str, list[dict]]) -> Path:
    """Write the per-sample logs, then the results file (a reader that finds the results file finds its
    samples too), then remove the files of earlier runs. Returns the results file."""
    files = lmms_eval_output_files(out_dir, model_name, date_id, results_document, sample_lines)
    write_all_atomically(files)
    remove_earlier_lmms_eval_files(out_dir, model_name, {path.name for path, _ in files})
    return files[-1][0]


def lmms_eval_output_files(out_dir: Path, model_name: str, date_id: str, results_document: dict,
                           sample_lines: dict[str, list[dict]]) -> list[tuple[Path, str]]:
    """(path, text) of the per-sample logs, then of the results file; creates their folder."""
    folder = lmms_eval_folder(out_dir, model_name)
    folder.mkdir(parents=True, exist_ok=True)
    files = [(folder / f"{date_id}_samples_{task_name}.jsonl", jsonl(lines)) for task_name, lines in sample_lines.items()]
    files.append((folder / f"{date_id}_results.json", json.dumps(results_document, indent=2, ensure_ascii=False) + "\n"))
    return files


def remove_earlier_lmms_eval_files(out_dir: Path, model_name: str, keep: set[str]) -> None:
    """Remove the lmms-eval files of earlier runs (and their leftover staging files) but those named in `keep`."""
    folder = lmms_eval_folder(out_dir, model_name)
    for stale in folder.iterdir():
        if stale.is_file() and stale.name not in keep and (
                stale.name.endswith("_results.json") or re.search(r"_samples_.+\.jsonl$", stale.name)
                or ".tmp-" in stale.name):
            stale.unlink()
