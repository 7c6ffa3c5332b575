"""The streaming map runner: bad lines reported, order kept, resume equals an uninterrupted run,
several workers give the one-worker output."""

from __future__ import annotations

import json

import pytest

from crystalvlm.data.curation.stream import (
    KEEP, RecordStep, ResumeMismatchError, StreamStep, Verdict, removed_path, resume_paths, run_stream,
)


def drop_multiples_of_three(record: dict) -> str | None:
    return "multiple of three" if record["n"] % 3 == 0 else None


class SeenBefore(StreamStep):
    """Stateful: removes a record whose text came earlier; what it has seen survives a kill through the journal."""

    name = "seen-before"

    def __init__(self):
        self.first_line: dict[str, int] = {}
        self.journal: list = []

    def prepare(self, records):
        return [record["text"].lower() for record in records]

    def decide(self, lines, records, prepared):
        verdicts = []
        for line, key in zip(lines, prepared):
            if key in self.first_line:
                verdicts.append(Verdict("seen before", {"duplicate_of": self.first_line[key]}))
            else:
                self.first_line[key] = line
                self.journal.append([key, line])
                verdicts.append(KEEP)
        return verdicts

    def take_journal(self):
        entries, self.journal = self.journal, []
        return entries

    def restore(self, entries):
        self.first_line = {key: line for key, line in entries}


def write_input(path, n=300):
    lines = []
    for i in range(n):
        if i % 50 == 7:
            lines.append(b"{not json")
        elif i % 50 == 8:
            lines.append(b'{"n": 1, "text": "caf\xe9"}')  # latin-1, not UTF-8
        elif i % 50 == 9:
            lines.append(json.dumps({"n": i, "text": "  "}).encode())
        else:
            lines.append(json.dumps({"n": i, "text": f"Item {i % 40}", "extra": [i]}).encode())
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def read_outputs(out):
    return out.read_bytes(), removed_path(out).read_bytes()


def test_bad_lines_reported_and_order_kept(tmp_path):
    source = write_input(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    summary = run_stream(source, out, RecordStep(drop_multiples_of_three), text_key="text", progress=False)
    kept = out.read_bytes().splitlines()
    removed = [json.loads(line) for line in removed_path(out).read_text().splitlines()]
    assert summary["lines"] == 300 and summary["kept"] + summary["removed"] == 300
    assert summary["kept"] == len(kept) and summary["removed"] == len(removed)
    assert summary["removed_by_reason"]["broken JSON"] == 6
    assert summary["removed_by_reason"]["not UTF-8"] == 6
    assert summary["removed_by_reason"]["empty text"] == 6
    # every input line is either kept byte for byte, in order, or removed with its line and reason
    source_lines = source.read_bytes().splitlines()
    assert kept == [source_lines[n - 1] for n in sorted(set(range(1, 301)) - {r["line"] for r in removed})]
    assert all(r["reason"] for r in removed)
    assert [r["line"] for r in removed] == sorted(r["line"] for r in removed)
    bad = next(r for r in removed if r["reason"] == "broken JSON")
    assert bad["line"] == 8 and bad["raw"] == "{not json"
    assert not any(path.exists() for path in resume_paths(out))  # a complete run leaves no resume files


def test_several_workers_equal_one(tmp_path):
    source = write_input(tmp_path / "in.jsonl", n=600)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    s1 = run_stream(source, one, SeenBefore(), text_key="text", batch_size=16, progress=False)
    s2 = run_stream(source, two, SeenBefore(), text_key="text", batch_size=16, workers=2, progress=False)
    assert read_outputs(one) == read_outputs(two)
    assert s1["removed_by_reason"] == s2["removed_by_reason"] and s1["removed_by_reason"]["seen before"] > 0
    assert s2["workers"] == 2


def test_resume_equals_uninterrupted(tmp_path):
    source = write_input(tmp_path / "in.jsonl", n=600)
    whole = tmp_path / "whole.jsonl"
    run_stream(source, whole, SeenBefore(), text_key="text", batch_size=16, commit_every=50, progress=False)
    cut = tmp_path / "cut.jsonl"
    first = run_stream(source, cut, SeenBefore(), text_key="text", batch_size=16, commit_every=50,
                       stop_after_lines=200, progress=False)
    assert not first["complete"] and 200 <= first["lines"] < 600
    # a kill after the commit leaves uncommitted bytes behind: the rerun must drop them
    with open(cut, "ab") as handle:
        handle.write(b'{"half written": ')
    with open(removed_path(cut), "ab") as handle:
        handle.write(b"garbage\n")
    second = run_stream(source, cut, SeenBefore(), text_key="text", batch_size=16, commit_every=50, progress=False)
    assert second["complete"] and second["resumed_from_line"] == first["lines"]
    assert read_outputs(cut) == read_outputs(whole)
    assert second["kept"] == len(whole.read_bytes().splitlines())


def test_resume_refuses_changed_settings(tmp_path):
    source = write_input(tmp_path / "in.jsonl", n=200)
    out = tmp_path / "out.jsonl"
    run_stream(source, out, SeenBefore(), text_key="text", batch_size=8, commit_every=20, stop_after_lines=40,
               progress=False)
    with pytest.raises(ResumeMismatchError, match="settings differ"):
        run_stream(source, out, SeenBefore(), text_key="other", progress=False)
    with pytest.raises(FileNotFoundError, match="no such input"):
        run_stream(tmp_path / "missing.jsonl", out, SeenBefore(), progress=False)


class SlowSeenBefore(SeenBefore):
    """SeenBefore that takes its time, so that a kill lands in the middle of a run."""

    def decide(self, lines, records, prepared):
        import time

        time.sleep(0.02)
        return super().decide(lines, records, prepared)


KILLED_CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from test_stream import SlowSeenBefore
from crystalvlm.data.curation.stream import run_stream
run_stream(sys.argv[2], sys.argv[3], SlowSeenBefore(), text_key="text", batch_size=8, commit_every=32, progress=False)
"""


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    source = write_input(tmp_path / "in.jsonl", n=1500)
    whole = tmp_path / "whole.jsonl"
    run_stream(source, whole, SeenBefore(), text_key="text", batch_size=8, commit_every=32, progress=False)
    cut = tmp_path / "cut.jsonl"
    state_path = resume_paths(cut)[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(Path(__file__).parent), str(source), str(cut)],
                             env=env)
    deadline = time.time() + 60
    while time.time() < deadline and child.poll() is None:
        if state_path.exists() and json.loads(state_path.read_text())["line"] >= 200:
            break
        time.sleep(0.05)
    assert child.poll() is None, "the run ended before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.wait()
    killed_at = json.loads(state_path.read_text())["line"]
    assert 200 <= killed_at < 1500
    summary = run_stream(source, cut, SeenBefore(), text_key="text", batch_size=8, commit_every=32, progress=False)
    assert summary["resumed_from_line"] == killed_at and summary["complete"]
    assert read_outputs(cut) == read_outputs(whole)
