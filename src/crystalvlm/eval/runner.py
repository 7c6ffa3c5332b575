"""Running benchmark tasks through the generation engine: batched, cached, resumable, sharded.

Layout of an evaluation folder (like lmms-eval's, plus LLaVA-format answer files):

    OUT/results.json                      {"results": {task: metrics}, "config": {...}}
    OUT/samples_<task>.jsonl              one line per sample: id, prompt, target, response, meta
    OUT/answers_<task>.jsonl              LLaVA-1.5 answer files (question_id, prompt, text), which
                                          `crystalvlm eval score` re-scores
    OUT/cache/<task>.rank<R>.jsonl        finished answers, appended after every chunk

The cache is keyed by sample id and the hash of everything that decides the answer (checkpoint,
decoding with the task's generation budget, prompt, image path); an interrupted evaluation
restarted with the same settings reuses every finished sample. Under torchrun each rank takes
every WORLD_SIZE-th sample and rank 0 merges the shards once all ranks are done.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from crystalvlm.data.images import open_image
from crystalvlm.data.templates import IMAGE_PLACEHOLDER, Turn
from crystalvlm.eval.tasks.base import EvalSample, Task
from crystalvlm.infer.engine import DecodingConfig, GenerationEngine, GenerationRequest

CHUNK = 64  # default samples generated between cache writes: an interruption loses at most this many


@dataclass
class Shard:
    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> "Shard":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


def _sample_key(sample: EvalSample, fingerprint: str) -> str:
    text = json.dumps([fingerprint, sample.sample_id, sample.prompt, str(sample.image)])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _read_cache(path: Path) -> dict[str, str]:
    done: dict[str, str] = {}
    if not path.is_file():
        return done
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write; that sample is simply generated again
        done[entry["key"]] = entry["text"]
    return done


def _ends_mid_line(path: Path) -> bool:
    if path.stat().st_size == 0:
        return False
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def _request(sample: EvalSample) -> GenerationRequest:
    if sample.image is None:
        return GenerationRequest([Turn("user", sample.prompt)], [])
    # The task confined the path to its benchmark's image folder when it read the record
    # (eval/tasks/files.image_inside, which names the record); open_image also refuses the file if
    # it has since become a symlink out of its folder.
    image = open_image(sample.image.parent, sample.image.name)
    return GenerationRequest([Turn("user", f"{IMAGE_PLACEHOLDER}\n{sample.prompt}")], [image])


def _same_images_together(todo: list[tuple[EvalSample, str]]) -> list[tuple[EvalSample, str]]:
    """`todo` with the questions about one image next to each other (images in order of first
    appearance, questions in task order), so that a chunk, and the engine's batches cut from it, hold
    all of an image's questions: the engine then computes their shared prompt prefix (system prompt and
    image) once. Answers are keyed by sample id, so the order changes nothing else."""
    first_seen: dict[str, int] = {}
    for sample, _ in todo:
        first_seen.setdefault(str(sample.image), len(first_seen))
    return sorted(todo, key=lambda item: first_seen[str(item[0].image)])  # stable: task order within an image


def task_decoding(decoding: DecodingConfig, task: Task) -> DecodingConfig:
    """The decoding settings with the task's generation budget (the official harness's, or the override
    the task was built with): one `decoding` serves tasks with different budgets."""
    return decoding if decoding.max_new_tokens == task.max_new_tokens else _with_max_tokens(decoding, task.max_new_tokens)


def settings_fingerprint(model_id: str, config: DecodingConfig, model_revision: str | None = None) -> str:
    identity = {"model": model_id, "decoding": asdict(config)}
    if model_revision is not None:
        identity["revision"] = model_revision
    return json.dumps(identity, sort_keys=True)


def generate_answers(engine: GenerationEngine, task: Task, cache_dir: Path, decoding: DecodingConfig,
                     fingerprint: str, shard: Shard, progress: bool = True, chunk_size: int = CHUNK) -> dict[str, str]:
    """Answers for this rank's share of the task, reusing the cache; returns sample_id -> text.

    Answers are appended to the cache (and fsynced) after every `chunk_size` samples."""
    from tqdm.auto import tqdm

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_path = cache_dir / f"{task.name}.rank{shard.rank}.jsonl"
    cached = _read_cache(cache_path)
    mine = task.samples()[shard.rank::shard.world]
    config = task_decoding(decoding, task)
    answers: dict[str, str] = {}
    todo: list[tuple[EvalSample, str]] = []
    for sample in mine:
        key = _sample_key(sample, fingerprint)
        if key in cached:
            answers[sample.sample_id] = cached[key]
        else:
            todo.append((sample, key))
    todo = _same_images_together(todo)
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"eval {task.name}", disable=not progress,
               unit="sample")
    with open(cache_path, "a") as cache:
        if _ends_mid_line(cache_path):
            # A kill mid-write left a partial last line; appending to it would spoil the next entry too.
            cache.write("\n")
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start:start + chunk_size]
            results = engine.generate([_request(sample) for sample, _ in chunk], config)
            for (sample, key), result in zip(chunk, results):
                # Stripped as LLaVA-1.5's model_vqa scripts store answers (Python's str.strip()).
                text = result.text.strip()
                answers[sample.sample_id] = text
                cache.write(json.dumps({"key": key, "id": sample.sample_id, "text": text}) + "\n")
            cache.flush()
            os.fsync(cache.fileno())
            bar.update(len(chunk))
    bar.close()
    return answers


def _with_max_tokens(decoding: DecodingConfig, max_new_tokens: int) -> DecodingConfig:
    from dataclasses import replace

    return replace(decoding, max_new_tokens=max_new_tokens)


def _wait_for_shards(cache_dir: Path, task: Task, fingerprint: str, shard: Shard, timeout_s: float = 3600) -> None:
    # Markers carry the settings' hash, so a marker from an earlier run with other settings never counts.
    tag = hashlib.sha256(fingerprint.encode()).hexdigest()[:12]
    (cache_dir / f"{task.name}.{tag}.rank{shard.rank}.done").write_text("done")
    if shard.rank != 0:
        return
    deadline = time.time() + timeout_s
    while not all((cache_dir / f"{task.name}.{tag}.rank{r}.done").exists() for r in range(shard.world)):
        if time.time() > deadline:
            raise TimeoutError(f"{task.name}: not every rank finished within {timeout_s} s")
        time.sleep(0.5)


def _merged_answers(cache_dir: Path, task: Task, fingerprint: str, shard: Shard) -> dict[str, str]:
    by_key: dict[str, str] = {}
    for rank in range(shard.world):
        by_key.update(_read_cache(cache_dir / f"{task.name}.rank{rank}.jsonl"))
    answers = {}
    for sample in task.samples():
        key = _sample_key(sample, fingerprint)
        if key not in by_key:
            raise RuntimeError(f"{task.name}: sample {sample.sample_id} has no answer after merging the shards")
        answers[sample.sample_id] = by_key[key]
    return answers


def write_task_outputs(out_dir: Path, task: Task, answers: dict[str, str]) -> None:
    with open(out_dir / f"samples_{task.name}.jsonl", "w") as samples, \
            open(out_dir / f"answers_{task.name}.jsonl", "w") as llava_answers:
        for index, sample in enumerate(task.samples()):
            text = answers[sample.sample_id]
            samples.write(json.dumps({"doc_id": index, "sample_id": sample.sample_id, "prompt": sample.prompt,
                                      "image": str(sample.image) if sample.image else None,
                                      "target": sample.target, "response": text, "meta": sample.meta}) + "\n")
            llava_answers.write(json.dumps({"question_id": sample.sample_id, "prompt": sample.prompt, "text": text,
                                            "model_id": "crystalvlm", "metadata": {}}) + "\n")


class EvalResults(dict):
    """{task name: metrics}, plus `details[task name]`: the per-sample detail its scoring kept
    (`TaskScore.per_sample`), for reports."""

    def __init__(self) -> None:
        super().__init__()
        self.details: dict[str, list] = {}


def evaluate(engine: GenerationEngine, tasks: list[Task], out_dir: Path, decoding: DecodingConfig, model_id: str,
             scoring: str = "llava", progress: bool = True, shard: Shard | None = None,
             chunk_size: int = CHUNK, model_revision: str | None = None) -> "EvalResults":
    """Generate (with cache), merge shards, score, and write results.json and per-task logs.

    Each task generates with its own budget (`task.max_new_tokens`); `decoding.max_new_tokens` is
    replaced by it. `chunk_size` samples are generated between cache writes. `model_revision`
    (e.g. a stamp of the weight files) joins `model_id` in the cache key, so answers of other
    weights saved under the same path are not reused.
    """
    shard = shard or Shard.from_env()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = out_dir / "cache"
    results = EvalResults()
    for task in tasks:
        # The budget is part of the fingerprint: answers cut at 16 tokens are not reused for a 128-token run.
        fingerprint = settings_fingerprint(model_id, task_decoding(decoding, task), model_revision)
        generate_answers(engine, task, cache_dir, decoding, fingerprint, shard, progress, chunk_size)
        if shard.world > 1:
            _wait_for_shards(cache_dir, task, fingerprint, shard)
            if shard.rank != 0:
                continue
        answers = _merged_answers(cache_dir, task, fingerprint, shard)
        scored = task.score_samples(answers, scoring=scoring)
        results[task.name] = scored.metrics
        results.details[task.name] = scored.per_sample
        write_task_outputs(out_dir, task, answers)
    if shard.rank == 0:
        payload = {"results": results, "config": {"model": model_id, "model_revision": model_revision,
                                                  "decoding": asdict(decoding), "scoring": scoring,
                                                  "tasks": [t.name for t in tasks],
                                                  "samples": {t.name: len(t.samples()) for t in tasks},
                                                  "max_new_tokens": {t.name: t.max_new_tokens for t in tasks}}}
        (out_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    return results
