"""Running benchmark tasks through the generation engine: batched, cached, resumable, sharded.

Layout of an evaluation folder (outputs.py writes the files, atomically):

    OUT/results.json                      {"results": {task: metrics}, "config": {...}}
    OUT/samples_<task>.jsonl              one line per sample: id, prompt, target, response, meta
    OUT/answers_<task>.jsonl              LLaVA-1.5 answer files (question_id, prompt, text), which
                                          `crystalvlm eval score` re-scores
    OUT/lmms-eval/<model>/<date>_results.json, <date>_samples_<task>.jsonl
                                          the same scores and answers in lmms-eval's layout
    OUT/cache/<task>.rank<R>.jsonl        finished answers, appended after every chunk

The cache is keyed by sample id and the hash of everything that decides the answer (checkpoint,
decoding with the task's generation budget, prompt, image path); an interrupted evaluation
restarted with the same settings reuses every finished sample. A cache line counts only once its
newline is on disk, so the line a kill cut short is generated again, never read as an answer.
results.json is removed when an evaluation starts and written when it ends: present, it describes
the answer files beside it.

Under torchrun each rank takes whole images (`shard_samples`: an image's questions stay on one rank,
where their shared prompt prefix is computed once) and rank 0 merges the shards once all ranks are
done. Ranks read every rank's cache, so a restart with another number of ranks reuses all answers.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from crystalvlm.data.images import open_image
from crystalvlm.data.templates import IMAGE_PLACEHOLDER, Turn
from crystalvlm.eval import outputs
from crystalvlm.eval.tasks.base import EvalSample, Task
from crystalvlm.infer.engine import DecodingConfig, GenerationEngine, GenerationRequest

CHUNK = 64  # default samples generated between cache writes: an interruption loses at most this many


@dataclass
class Shard:
    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> "Shard":
        # The global RANK (not LOCAL_RANK, which picks the GPU; infer/launch.py): on several machines
        # LOCAL_RANK repeats and two ranks would take the same share.
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


def shard_samples(samples: list[EvalSample], shard: Shard) -> list[EvalSample]:
    """This rank's share of `samples`, in task order: whole images, never an image split between ranks.

    All questions about one image go to one rank, so that the engine there computes their shared
    prompt prefix (system prompt and image) once; split across ranks, each would encode the image
    again. Images go, the largest question group first, to the rank with the fewest samples so far
    (ties: the lower rank), which keeps the ranks within one image's questions of each other. The
    assignment depends only on the samples and the world size, so every rank computes the same one.
    A text-only sample is a group of its own.
    """
    if not 0 <= shard.rank < shard.world:
        raise ValueError(f"rank {shard.rank} is not in a world of {shard.world}")
    if shard.world == 1:
        return list(samples)
    groups: dict[str, list[int]] = {}
    for index, sample in enumerate(samples):
        key = f"image:{sample.image}" if sample.image is not None else f"text:{index}"
        groups.setdefault(key, []).append(index)
    load = [0] * shard.world
    mine: list[int] = []
    for members in sorted(groups.values(), key=len, reverse=True):  # stable: equal sizes keep first-seen order
        rank = min(range(shard.world), key=lambda r: (load[r], r))
        load[rank] += len(members)
        if rank == shard.rank:
            mine.extend(members)
    return [samples[index] for index in sorted(mine)]


def _sample_key(sample: EvalSample, fingerprint: str) -> str:
    text = json.dumps([fingerprint, sample.sample_id, sample.prompt, str(sample.image)])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _read_cache(path: Path) -> dict[str, str]:
    """key -> answer of every finished line of a cache file.

    Only lines ended by their newline count: a kill can stop the last write anywhere in a line, even
    just after its closing brace, and the entry is trusted only once all of it is on disk. Lines
    that are not entries (a cut line that a newer writer ended, stray text) are skipped; their
    samples are generated again.
    """
    done: dict[str, str] = {}
    if not path.is_file():
        return done
    for line in path.read_bytes().decode("utf-8", errors="replace").split("\n")[:-1]:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("key"), str) and isinstance(entry.get("text"), str):
            done[entry["key"]] = entry["text"]
    return done


def _drop_unfinished_line(path: Path) -> None:
    """Cut what follows the last newline (a write stopped by a kill), so that the next entry starts a
    line of its own and the fragment, which _read_cache ignores, is not completed into a line it would read."""
    if not path.is_file():
        return
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)
            os.fsync(handle.fileno())


def _cache_files(cache_dir: Path, task: Task) -> list[Path]:
    """Every rank's cache file of `task`, whatever the number of ranks that wrote them."""
    return sorted(cache_dir.glob(f"{glob.escape(task.name)}.rank*.jsonl"))


def _request(sample: EvalSample, opened: dict[Path, object] | None = None) -> GenerationRequest:
    """The sample as a request. `opened` (path -> image) lets a chunk's questions about one image share
    one opened image, which the engine then preprocesses once."""
    if sample.image is None:
        return GenerationRequest([Turn("user", sample.prompt)], [])
    image = opened.get(sample.image) if opened is not None else None
    if image is None:
        # The task confined the path to its benchmark's image folder when it read the record
        # (eval/tasks/files.image_inside, which names the record); open_image also refuses the file if
        # it has since become a symlink out of its folder.
        image = open_image(sample.image.parent, sample.image.name)
        if opened is not None:
            opened[sample.image] = image
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
                     fingerprint: str, shard: Shard, progress: bool = True, chunk_size: int = CHUNK,
                     sync_later: list[Path] | None = None) -> dict[str, str]:
    """Answers for this rank's share of the task, reusing the cache; returns sample_id -> text.

    Answers are appended to the cache after every `chunk_size` samples (handed to the OS at once, so a
    killed process loses at most the chunk it was generating) and synced to disk while the next chunk
    generates (a sync waits for the disk, which the model need not wait for). With `sync_later`, the
    last chunk's sync is left to the caller: the cache file is appended to it (evaluate syncs it with
    the result files, in one round)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_path = cache_dir / f"{task.name}.rank{shard.rank}.jsonl"
    _drop_unfinished_line(cache_path)
    # Every rank's file: after a restart with another number of ranks, a sample may now be this rank's
    # and its answer in another rank's file. (Another rank may be appending: its unfinished line is ignored.)
    cached: dict[str, str] = {}
    for path in _cache_files(cache_dir, task):
        cached.update(_read_cache(path))
    mine = shard_samples(task.samples(), shard)
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
    with open(cache_path, "a") as cache, ThreadPoolExecutor(1, thread_name_prefix="crystalvlm-cache-sync") as syncer:
        syncing = None  # the sync of the chunk before
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start:start + chunk_size]
            opened: dict[Path, object] = {}
            results = engine.generate([_request(sample, opened) for sample, _ in chunk], config)
            for (sample, key), result in zip(chunk, results):
                # Stripped as LLaVA-1.5's model_vqa scripts store answers (Python's str.strip()).
                text = result.text.strip()
                answers[sample.sample_id] = text
                cache.write(json.dumps({"key": key, "id": sample.sample_id, "text": text}) + "\n")
            cache.flush()
            if syncing is not None:
                syncing.result()  # raises what the sync raised
            last = start + chunk_size >= len(todo)
            syncing = None if last and sync_later is not None else syncer.submit(os.fsync, cache.fileno())
            bar.update(len(chunk))
        if syncing is not None:
            syncing.result()
    if todo and sync_later is not None:
        sync_later.append(cache_path)
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
    for path in _cache_files(cache_dir, task):
        by_key.update(_read_cache(path))
    answers = {}
    for sample in task.samples():
        key = _sample_key(sample, fingerprint)
        if key not in by_key:
            raise RuntimeError(f"{task.name}: sample {sample.sample_id} has no answer after merging the shards")
        answers[sample.sample_id] = by_key[key]
    return answers


def write_task_outputs(out_dir: Path, task: Task, answers: dict[str, str]) -> None:
    outputs.write_task_outputs(out_dir, task, answers)


def _clear_previous_results(out_dir: Path) -> None:
    """Remove results.json, and files a killed writer left half-written, before answers change beside them."""
    (out_dir / "results.json").unlink(missing_ok=True)
    for stale in out_dir.glob(".*.tmp-*"):
        stale.unlink(missing_ok=True)


class EvalResults(dict):
    """{task name: metrics}, plus `details[task name]`: the per-sample detail its scoring kept
    (`TaskScore.per_sample`), for reports."""

    def __init__(self) -> None:
        super().__init__()
        self.details: dict[str, list] = {}


def evaluate(engine: GenerationEngine, tasks: list[Task], out_dir: Path, decoding: DecodingConfig, model_id: str,
             scoring: str = "llava", progress: bool = True, shard: Shard | None = None,
             chunk_size: int = CHUNK, model_revision: str | None = None, model_name: str | None = None,
             settings: dict | None = None) -> "EvalResults":
    """Generate (with cache), merge shards, score, and write results.json and per-task logs, in
    crystalvlm's layout and in lmms-eval's (outputs.py).

    Each task generates with its own budget (`task.max_new_tokens`); `decoding.max_new_tokens` is
    replaced by it. `chunk_size` samples are generated between cache writes. `model_revision`
    (e.g. a stamp of the weight files) joins `model_id` in the cache key, so answers of other
    weights saved under the same path are not reused. `model_name` names the lmms-eval folder
    (default: the last part of `model_id`); `settings` (device, dtype, batch size, limit, ...) are
    recorded in both results files.
    """
    shard = shard or Shard.from_env()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = out_dir / "cache"
    started = time.time()
    if shard.rank == 0:
        _clear_previous_results(out_dir)
    results = EvalResults()
    merged: dict[str, dict[str, str]] = {}
    task_files: list[tuple[Path, str]] = []  # written with the other result files, in one batch
    # A single process syncs each answer cache's last lines with the result files (one round of syncs);
    # ranks read each other's caches, so there each rank syncs its own before it reports done.
    caches_to_sync: list[Path] | None = [] if shard.world == 1 else None
    for task in tasks:
        # The budget is part of the fingerprint: answers cut at 16 tokens are not reused for a 128-token run.
        fingerprint = settings_fingerprint(model_id, task_decoding(decoding, task), model_revision)
        generate_answers(engine, task, cache_dir, decoding, fingerprint, shard, progress, chunk_size, caches_to_sync)
        if shard.world > 1:
            _wait_for_shards(cache_dir, task, fingerprint, shard)
            if shard.rank != 0:
                continue
        answers = _merged_answers(cache_dir, task, fingerprint, shard)
        scored = task.score_samples(answers, scoring=scoring)
        results[task.name] = scored.metrics
        results.details[task.name] = scored.per_sample
        merged[task.name] = answers
        task_files += outputs.task_output_files(out_dir, task, answers)
    if shard.rank != 0:
        return results
    config = {"model": model_id, "model_revision": model_revision, "decoding": asdict(decoding), "scoring": scoring,
              "tasks": [t.name for t in tasks], "samples": {t.name: len(t.samples()) for t in tasks},
              "max_new_tokens": {t.name: t.max_new_tokens for t in tasks}, **(settings or {})}
    name, lmms_files = _lmms_eval_files(out_dir, tasks, results, merged, decoding, model_id, model_name, scoring,
                                        settings or {}, started)
    # One batch (outputs.write_all_atomically): every file staged and synced together, then renamed in
    # order: per-sample files before results files, lmms-eval's files of an earlier run removed once
    # the new ones are in place, and last results.json: present, every file above belongs to it.
    keep = {path.name for path, _ in lmms_files}
    outputs.write_all_atomically(task_files + lmms_files + [outputs.results_file(out_dir, results, config)],
                                 before_last=lambda: outputs.remove_earlier_lmms_eval_files(out_dir, name, keep),
                                 also_sync=caches_to_sync or [])
    return results


def _lmms_eval_files(out_dir: Path, tasks: list[Task], results: dict[str, dict[str, float]],
                     answers: dict[str, dict[str, str]], decoding: DecodingConfig, model_id: str,
                     model_name: str | None, scoring: str, settings: dict,
                     started: float) -> tuple[str, list[tuple[Path, str]]]:
    """The lmms-eval folder's model name and its files (path, text): per-sample logs, then results."""
    from crystalvlm import __version__

    name = model_name or Path(model_id).name or model_id
    generation = {task.name: asdict(task_decoding(decoding, task)) for task in tasks}
    lines = {task.name: outputs.lmms_eval_sample_lines(task, answers[task.name], generation[task.name])
             for task in tasks}
    # lmms-eval's `config` block: its command-line settings, here crystalvlm's.
    model_args = [f"pretrained={model_id}"] + [f"{key}={settings[key]}" for key in ("device", "dtype") if settings.get(key)]
    config = {"model": "crystalvlm", "model_args": ",".join(model_args), "batch_size": settings.get("batch_size"),
              "device": settings.get("device"), "limit": settings.get("limit"), "gen_kwargs": asdict(decoding),
              "scoring": scoring}
    document = outputs.lmms_eval_results(tasks, results, generation, lines, config, name, __version__,
                                         started, time.time())
    return name, outputs.lmms_eval_output_files(out_dir, name, outputs.lmms_eval_date_id(started), document, lines)
