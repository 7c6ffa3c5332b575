"""Run a step's per-record half on datatrove's executors, then its ordered half with `run_stream`.

    summary = run_with_datatrove(IN, OUT, step, tasks=8)

Stage 1 is a datatrove pipeline of one step (`PrepareSlice`): task r of `tasks` takes the lines whose
first byte falls in the r-th equal byte range of IN, runs `step.prepare` on them in batches and
writes `OUT.work/prepared-r.jsonl` (line number and the step's encoded result per good record). The
executor runs the tasks (here `LocalPipelineExecutor`, a process pool on this machine; the same
pipeline runs under datatrove's Slurm or Ray executors), records each finished task and skips it
when rerun, so a killed stage 1 redoes only its unfinished tasks.

Stage 2 is `run_stream` with a step that reads those files in line order instead of preparing:
`decide` (duplicates, counts: the part that needs input order) runs once, writes OUT and
OUT.removed.jsonl exactly as `run_stream(IN, OUT, step)` would, and resumes as it does. The work
folder is deleted when both stages are complete.

Why not datatrove end to end: its readers shard by file, its writers write datatrove's own document
layout rather than the input lines unchanged, and its MinHash deduplication keeps one document per
cluster chosen by its own order; the contract here is one input file in, its lines unchanged and in
order out, and the first record of a group kept.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from crystalvlm.data.curation.stream import StreamStep, Verdict, _parse_line, run_stream

try:  # the curate extra; without it only the plain runner is available
    from datatrove.pipeline.base import PipelineStep
except ImportError:  # pragma: no cover - exercised only where datatrove is not installed
    PipelineStep = object


def slice_bounds(path: Path, rank: int, world_size: int) -> tuple[int, int, int]:
    """(start byte, end byte, lines before start) of task `rank`'s share of the file: the lines whose
    first byte lies in [size*rank/world, size*(rank+1)/world)."""
    size = path.stat().st_size

    def line_start_at_or_after(offset: int) -> int:
        if offset <= 0:
            return 0
        with open(path, "rb") as handle:
            handle.seek(offset - 1)
            handle.readline()  # the rest of the line holding byte offset-1 belongs to the previous task
            return min(handle.tell(), size)

    start = line_start_at_or_after(size * rank // world_size)
    end = line_start_at_or_after(size * (rank + 1) // world_size)
    lines_before = 0
    with open(path, "rb") as handle:  # counted in chunks: constant memory
        remaining = start
        while remaining > 0:
            chunk = handle.read(min(remaining, 1 << 24))
            lines_before += chunk.count(b"\n")
            remaining -= len(chunk)
    return start, end, lines_before


class PrepareSlice(PipelineStep):
    """A datatrove pipeline step: `step.prepare` over this task's slice of the input, to a file."""

    name = "crystalvlm prepare"
    type = "curation"

    def __init__(self, in_path: str, work_dir: str, step: StreamStep, text_key: str | None, batch_size: int):
        super().__init__()
        self.in_path, self.work_dir, self.step = in_path, work_dir, step
        self.text_key, self.batch_size = text_key, batch_size

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        source = Path(self.in_path)
        start, end, line = slice_bounds(source, rank, world_size)
        target = Path(self.work_dir) / f"prepared-{rank:05d}.jsonl"
        tmp = target.with_name(target.name + ".tmp")
        with open(source, "rb") as handle, open(tmp, "w", encoding="utf-8") as out:
            handle.seek(start)
            batch: list = []
            while handle.tell() < end:
                raw = handle.readline()
                line += 1
                parsed = _parse_line(line, raw, self.text_key)
                if parsed.record is not None:
                    batch.append(parsed)
                if len(batch) >= self.batch_size:
                    self._write(batch, out)
                    batch = []
            self._write(batch, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
        return iter(())  # nothing for a following datatrove step

    def _write(self, batch: list, out) -> None:
        if not batch:
            return
        prepared = self.step.prepare([parsed.record for parsed in batch])
        for parsed, item in zip(batch, prepared):
            out.write(json.dumps([parsed.number, self.step.encode_prepared(item)]) + "\n")
        self.stat_update("records", value=len(batch))


class _Precomputed(StreamStep):
    """`step` with `prepare` replaced by reading stage 1's files in line order."""

    def __init__(self, step: StreamStep, files: list[Path]):
        self.inner, self.files = step, files
        self.name = step.name
        self._entries: Iterator | None = None

    def _read(self) -> Iterator[tuple[int, Any]]:
        for path in self.files:
            with open(path, encoding="utf-8") as handle:
                for text in handle:
                    line, encoded = json.loads(text)
                    yield line, encoded

    def decide(self, lines: list[int], records: list[dict], prepared: list[Any]) -> list[Verdict]:
        if self._entries is None:
            self._entries = self._read()
        items = []
        for wanted in lines:  # skip what a resumed run already decided
            line, encoded = next(self._entries)
            while line < wanted:
                line, encoded = next(self._entries)
            if line != wanted:
                raise RuntimeError(f"prepared results lack line {wanted}; delete the work folder and rerun")
            items.append(self.inner.decode_prepared(encoded))
        return self.inner.decide(lines, records, items)

    def open(self, out_path: Path, resuming: bool) -> None:
        self.inner.open(out_path, resuming)

    def close(self, complete: bool) -> None:
        self.inner.close(complete)

    def take_journal(self) -> list:
        return self.inner.take_journal()

    def restore(self, entries) -> None:
        self.inner.restore(entries)

    def settings(self) -> dict:
        return self.inner.settings()

    def summary(self) -> dict:
        return self.inner.summary()


def run_with_datatrove(in_path: Path, out_path: Path, step: StreamStep, *, tasks: int, text_key: str | None = None,
                       batch_size: int = 256, progress: bool = True, **stream_options) -> dict:
    """`run_stream(IN, OUT, step)` with `step.prepare` run as `tasks` datatrove tasks (see the module
    docstring); the outputs equal the plain runner's."""
    from datatrove.executor import LocalPipelineExecutor

    started = time.perf_counter()
    in_path, out_path = Path(in_path), Path(out_path)
    if not in_path.is_file():
        raise FileNotFoundError(f"{in_path}: no such input file")
    if tasks < 1:
        raise ValueError(f"--workers must be at least 1, got {tasks}")
    work = out_path.with_name(out_path.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    marker = work / "input.json"  # a work folder made for another input or settings is not reused
    identity = json.dumps({"input": str(in_path.resolve()), "size": in_path.stat().st_size,
                           "mtime_ns": in_path.stat().st_mtime_ns, "tasks": tasks, "text_key": text_key,
                           "settings": step.settings()}, sort_keys=True, default=str)
    if not marker.exists() or marker.read_text() != identity:
        shutil.rmtree(work)
        work.mkdir(parents=True)
        marker.write_text(identity)
    executor = LocalPipelineExecutor(
        pipeline=[PrepareSlice(str(in_path), str(work), step, text_key, batch_size)],
        tasks=tasks, workers=tasks, logging_dir=str(work / "logs"), skip_completed=True, start_method="fork")
    executor.run()
    prepare_seconds = time.perf_counter() - started
    files = [work / f"prepared-{rank:05d}.jsonl" for rank in range(tasks)]
    missing = [path.name for path in files if not path.exists()]
    if missing:
        raise RuntimeError(f"datatrove tasks did not finish: {', '.join(missing)} missing in {work} (see its logs/)")
    summary = run_stream(in_path, out_path, _Precomputed(step, files), text_key=text_key, batch_size=batch_size,
                         progress=progress, **stream_options)
    if summary["complete"]:
        shutil.rmtree(work)
    summary.update(workers=tasks, engine="datatrove", prepare_seconds=round(prepare_seconds, 3),
                   seconds=round(prepare_seconds + summary["seconds"], 3))
    summary["lines_per_second"] = round(summary["lines"] / summary["seconds"], 1) if summary["seconds"] else None
    return summary
