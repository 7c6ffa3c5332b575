"""A streaming, resumable, optionally parallel map over a JSON-lines file.

`run_stream(IN, OUT, step)` reads IN one line at a time (memory holds one window of batches, never
the file), asks `step` what to do with each record, and writes

- OUT: the kept records, byte for byte as they were in IN (or the step's rewrite), in input order;
- OUT.removed.jsonl: one line per removed input line, `{"line": N, "reason": ..., "record": {...}}`
  (`"raw"` instead of `"record"` for a line that is not JSON, `"raw_base64"` for one that is not
  UTF-8); nothing is dropped without a line here, and a bad line never stops the run;

and returns a JSON-able summary (counts by reason, the step's own figures, speed).

A step has two halves so that the same code runs on one core or many:

- `prepare(records)`: pure and picklable, the expensive per-record work (hashing, parsing, scoring).
  With `workers > 1` it runs in a `multiprocessing` pool, one batch per task, results in input order.
- `decide(lines, records, prepared)`: runs in the main process in input order and may keep
  state (seen hashes, concept counts). What it must remember across a kill it hands to the runner
  as journal entries (`take_journal`), which are committed with the outputs and given back to
  `restore` on resume. A step whose state is too large for a journal keeps it in a file of its own
  (`open` tells it where the outputs go and whether the run resumes; `clean`'s SQLite index).

Resume: every `commit_every` records the runner flushes and fsyncs both outputs and the journal,
then atomically replaces OUT.resume.json (input byte offset, line number, output sizes, counts).
A rerun after a kill truncates the outputs to the committed sizes, restores the step from the
journal and continues at the committed offset, so the result equals an uninterrupted run. The
resume files are deleted when the run completes.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tqdm import tqdm


@dataclass(frozen=True)
class Verdict:
    """A step's decision about one record."""

    reason: str | None = None  # None keeps the record; a short category ("near duplicate") removes it
    detail: dict | None = None  # removed: facts written beside the reason, e.g. {"duplicate_of": 12}
    replacement: dict | None = None  # kept: written instead of the input line (a rewrite step)


KEEP = Verdict()


class StreamStep:
    """One map over a stream of records; subclass and override what you need.

    The default `prepare` does nothing, so a step whose work is cheap can do it all in `decide`."""

    name = "step"

    def prepare(self, records: list[dict]) -> list[Any]:
        """Per-record work without shared state; runs in worker processes when workers > 1."""
        return [None] * len(records)

    def decide(self, lines: list[int], records: list[dict], prepared: list[Any]) -> list[Verdict]:
        """One Verdict per record, in input order; `lines[i]` is record i's 1-based line number in IN."""
        raise NotImplementedError

    def open(self, out_path: Path, resuming: bool) -> None:
        """Called before the first record: where the outputs go (a step may keep files beside them)
        and whether an interrupted run is being continued (`restore` follows)."""

    def close(self, complete: bool) -> None:
        """Called when the run stops, complete or not."""

    def encode_prepared(self, item: Any) -> Any:
        """`prepare`'s result for one record as JSON (for engines that pass it through files)."""
        return item

    def decode_prepared(self, encoded: Any) -> Any:
        return encoded

    def take_journal(self) -> list:
        """JSON-able entries describing state learned since the last call (committed with the outputs)."""
        return []

    def restore(self, entries: Iterable) -> None:
        """Rebuild the state from the journal of an interrupted run."""

    def settings(self) -> dict:
        """What must be equal for a rerun to continue an interrupted run (else it is refused)."""
        return {}

    def summary(self) -> dict:
        """The step's own figures and notes for the final summary."""
        return {}


class RecordStep(StreamStep):
    """A stateless step from a function `record -> Verdict | reason str | None (keep)`, run in `prepare`
    so that it parallelises. The function must be picklable (a module-level function) for workers > 1."""

    def __init__(self, function: Callable[[dict], Verdict | str | None], name: str | None = None):
        self.function = function
        self.name = name or getattr(function, "__name__", "step")

    def prepare(self, records: list[dict]) -> list[Verdict]:
        verdicts = []
        for record in records:
            verdict = self.function(record)
            verdicts.append(verdict if isinstance(verdict, Verdict) else Verdict(reason=verdict))
        return verdicts

    def decide(self, lines: list[int], records: list[dict], prepared: list[Any]) -> list[Verdict]:
        return prepared

    def settings(self) -> dict:
        return {"function": f"{getattr(self.function, '__module__', '')}.{self.name}"}


class ResumeMismatchError(ValueError):
    """The interrupted run's input or settings differ from this one's."""


def removed_path(out: Path) -> Path:
    """OUT.jsonl -> OUT.removed.jsonl (the removed lines, each with its reason)."""
    out = Path(out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(f"{stem}.removed.jsonl")


def resume_paths(out: Path) -> tuple[Path, Path]:
    """The state file and the step's journal beside OUT (deleted when a run completes)."""
    out = Path(out)
    return out.with_name(out.name + ".resume.json"), out.with_name(out.name + ".journal.jsonl")


# ----------------------------------------------------------------------------- reading
@dataclass
class _Line:
    number: int  # 1-based line number in IN
    raw: bytes  # the line as read, newline included
    record: dict | None  # parsed record, or None when the line is bad
    problem: dict | None  # for a bad line: {"reason": ..., "raw"/"raw_base64": ...}


def _parse_line(number: int, raw: bytes, text_key: str | None) -> _Line:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return _Line(number, raw, None, {"reason": "not UTF-8", "error": f"byte {error.start}: {error.reason}",
                                         "raw_base64": base64.b64encode(raw).decode("ascii")})
    if number == 1:
        text = text.removeprefix("\ufeff")  # a byte-order mark is not part of the first record
    if not text.strip():
        return _Line(number, raw, None, {"reason": "blank line", "raw": text})
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        return _Line(number, raw, None, {"reason": "broken JSON", "error": f"{error.msg} at column {error.colno}",
                                         "raw": text.rstrip("\r\n")})
    if not isinstance(record, dict):
        return _Line(number, raw, None, {"reason": "not a JSON object", "record": record})
    if text_key is not None:
        value = record.get(text_key)
        if value is None:
            return _Line(number, raw, None, {"reason": "missing text", "error": f"no '{text_key}' field",
                                             "record": record})
        if not isinstance(value, str):
            return _Line(number, raw, None, {"reason": "missing text",
                                             "error": f"'{text_key}' is a {type(value).__name__}, not a string",
                                             "record": record})
        if not value.strip():
            return _Line(number, raw, None, {"reason": "empty text", "record": record})
    return _Line(number, raw, record, None)


def _read_lines(handle, start_line: int) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) from the handle's current position; line numbers continue from start_line."""
    number = start_line
    for raw in handle:
        number += 1
        yield number, raw


# ----------------------------------------------------------------------------- workers
_WORKER_STEP: StreamStep | None = None


def _init_worker(step: StreamStep) -> None:
    global _WORKER_STEP
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER_STEP = step


def _prepare_in_worker(records: list[dict]) -> list[Any]:
    return _WORKER_STEP.prepare(records)


# ----------------------------------------------------------------------------- state
def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class _NullSink:
    """Stands in for an output file when a pass writes nothing."""

    def write(self, data: bytes) -> int:
        return len(data)

    def close(self) -> None:
        pass


def _sync(handle) -> int:
    if isinstance(handle, _NullSink):
        return 0
    handle.flush()
    os.fsync(handle.fileno())
    return handle.tell()


def _input_identity(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _open_truncated(path: Path, size: int):
    handle = open(path, "r+b" if path.exists() else "w+b")
    handle.truncate(size)
    handle.seek(size)
    return handle


def run_stream(
    in_path: Path,
    out_path: Path,
    step: StreamStep,
    *,
    text_key: str | None = None,
    workers: int = 1,
    batch_size: int = 256,
    commit_every: int = 20_000,
    progress: bool = True,
    stop_after_lines: int | None = None,
    write_outputs: bool = True,
) -> dict:
    """Map `step` over IN (JSON lines) into OUT and OUT.removed.jsonl; resume an interrupted run.

    text_key: when set, a record without a non-blank string under this key is removed ("missing
    text", "empty text") before the step sees it. workers: processes for `step.prepare` (1: none).
    stop_after_lines: stop (as if killed) after committing at least this many lines; for tests and
    for processing a file in slices. write_outputs=False: a pass that only learns (its state is the
    journal), writing neither OUT nor OUT.removed.jsonl."""
    in_path, out_path = Path(in_path), Path(out_path)
    if not in_path.is_file():
        raise FileNotFoundError(f"{in_path}: no such input file")
    if in_path.resolve() == out_path.resolve():
        raise ValueError(f"--out {out_path} is the input file")
    if workers < 1 or batch_size < 1 or commit_every < 1:
        raise ValueError(f"workers, batch size and commit interval must be at least 1 "
                         f"(got {workers}, {batch_size}, {commit_every})")
    removed = removed_path(out_path)
    state_path, journal_path = resume_paths(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    identity = _input_identity(in_path)
    settings = {"step": step.name, "text_key": text_key, **step.settings()}

    state = {"input": identity, "settings": settings, "offset": 0, "line": 0, "out_size": 0,
             "removed_size": 0, "journal_size": 0, "kept": 0, "removed_by_reason": {}}
    resumed_from = 0
    if state_path.exists():
        previous = json.loads(state_path.read_text(encoding="utf-8"))
        if previous.get("input") != identity:
            raise ResumeMismatchError(f"{in_path} changed since the interrupted run recorded in {state_path}; "
                                      f"delete that file to start over")
        if previous.get("settings") != json.loads(json.dumps(settings)):
            raise ResumeMismatchError(f"the settings differ from the interrupted run's ({previous.get('settings')}); "
                                      f"rerun with those or delete {state_path} to start over")
        state = previous
        resumed_from = state["line"]
        step.open(out_path, resuming=True)
        with open(journal_path, "rb") as handle:
            journal_bytes = handle.read(state["journal_size"])
        step.restore(json.loads(line) for line in journal_bytes.splitlines())
    else:
        journal_path.unlink(missing_ok=True)
        step.open(out_path, resuming=False)

    removed_by_reason = Counter(state["removed_by_reason"])
    kept = state["kept"]
    started = time.perf_counter()
    lines_this_run = 0
    pool = multiprocessing.Pool(workers, initializer=_init_worker, initargs=(step,)) if workers > 1 else None
    out_handle = _open_truncated(out_path, state["out_size"]) if write_outputs else _NullSink()
    removed_handle = _open_truncated(removed, state["removed_size"]) if write_outputs else _NullSink()
    journal_handle = _open_truncated(journal_path, state["journal_size"])
    bar = tqdm(total=identity["size"], initial=state["offset"], unit="B", unit_scale=True,
               desc=f"{step.name} {in_path.name}", disable=not progress)
    finished = False
    offset, line_number, since_commit = state["offset"], state["line"], 0

    def commit() -> None:
        # outputs and journal on disk first, then the state that points at them
        for entry in step.take_journal():
            journal_handle.write(_json_line(entry))
        state.update(offset=offset, line=line_number, out_size=_sync(out_handle),
                     removed_size=_sync(removed_handle), journal_size=_sync(journal_handle),
                     kept=kept, removed_by_reason=dict(removed_by_reason))
        _write_json_atomic(state_path, state)

    try:
        with open(in_path, "rb") as source:
            source.seek(offset)
            lines = _read_lines(source, line_number)
            window_size = batch_size * workers * 4  # lines held in memory at once
            while True:
                window = [_parse_line(number, raw, text_key) for number, raw in _take(lines, window_size)]
                if not window:
                    finished = True
                    commit()
                    break
                good = [line for line in window if line.record is not None]
                batches = [good[i:i + batch_size] for i in range(0, len(good), batch_size)]
                records_of = [[line.record for line in batch] for batch in batches]
                prepared = (pool.map(_prepare_in_worker, records_of, chunksize=1) if pool is not None
                            else [step.prepare(records) for records in records_of])
                verdicts: dict[int, Verdict] = {}
                for batch, records, batch_prepared in zip(batches, records_of, prepared):
                    decided = step.decide([line.number for line in batch], records, batch_prepared)
                    if len(decided) != len(records):
                        raise RuntimeError(f"step {step.name} gave {len(decided)} verdicts for {len(records)} records")
                    verdicts.update((line.number, verdict) for line, verdict in zip(batch, decided))
                for line in window:
                    if line.problem is not None:
                        removed_by_reason[line.problem["reason"]] += 1
                        removed_handle.write(_json_line({"line": line.number, **line.problem}))
                        continue
                    verdict = verdicts[line.number]
                    if verdict.reason is None:
                        kept += 1
                        if verdict.replacement is not None:
                            out_handle.write(_json_line(verdict.replacement))
                        else:
                            out_handle.write(line.raw if line.raw.endswith(b"\n") else line.raw + b"\n")
                    else:
                        removed_by_reason[verdict.reason] += 1
                        removed_handle.write(_json_line({"line": line.number, "reason": verdict.reason,
                                                         **(verdict.detail or {}), "record": line.record}))
                offset += sum(len(line.raw) for line in window)
                line_number = window[-1].number
                lines_this_run += len(window)
                since_commit += len(window)
                if since_commit >= commit_every:
                    commit()
                    since_commit = 0
                    if stop_after_lines is not None and lines_this_run >= stop_after_lines:
                        break
                bar.update(offset - bar.n)
                bar.set_postfix(kept=kept, removed=sum(removed_by_reason.values()), refresh=False)
    finally:
        bar.close()
        for handle in (out_handle, removed_handle, journal_handle):
            handle.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        step.close(complete=finished)
    seconds = time.perf_counter() - started
    if finished:
        state_path.unlink(missing_ok=True)
        journal_path.unlink(missing_ok=True)
    total_removed = sum(removed_by_reason.values())
    return {
        "input": str(in_path),
        "output": str(out_path),
        "removed_output": str(removed),
        "complete": finished,
        "lines": line_number,
        "kept": kept,
        "removed": total_removed,
        "removed_by_reason": dict(removed_by_reason.most_common()),
        "step": step.name,
        **step.summary(),
        "workers": workers,
        "resumed_from_line": resumed_from,
        "seconds": round(seconds, 3),
        "lines_per_second": round(lines_this_run / seconds, 1) if seconds > 0 else None,
    }


def _take(iterator: Iterator, count: int) -> list:
    items = []
    for item in iterator:
        items.append(item)
        if len(items) >= count:
            break
    return items


def _json_line(payload: Any) -> bytes:
    return (json.dumps(payload, ensure_ascii=False) + "\n").encode("utf-8")
