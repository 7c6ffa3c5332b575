"""`crystalvlm eval` killed with SIGKILL at a random point, then run again with the same command, ends
exactly where an uninterrupted run ends: same scores, same per-sample answers, in both layouts.

The kill point is drawn from a seed printed by the test (set CRYSTALVLM_KILL_SEED to replay one):
the kill lands once a drawn number of answers is in the cache, after a drawn delay, so it may hit
generation, a cache write, scoring or the writing of the output files. After the kill, the last
cache line is replaced by a half-written one (cut at a drawn length, possibly just before its
newline) whose answer is forged: the rerun must generate that sample again, never read it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from process_tree import kill_tree

from crystalvlm.cli import main

TASKS = "pope_random,mme"
LIMIT = 8  # pope_random 8, mme 8 (an image's two questions stay together)
FORGED = "FORGED ANSWER"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from crystalvlm.worlds.shapes.writer import write_shapes_world

    folder = tmp_path_factory.mktemp("kill_world") / "world"
    write_shapes_world(folder, n_train=2, n_eval=4, seed=0, image_size=32, progress=False)
    return folder


def eval_args(checkpoint: Path, world: Path, out: Path) -> list[str]:
    # One sample per chunk: many cache writes for the kill to land among.
    return ["eval", str(checkpoint), "--tasks", TASKS, "--benchmarks", str(world), "--limit", str(LIMIT),
            "--max-new-tokens", "3", "--batch-size", "2", "--save-every", "1", "--out", str(out), "--quiet"]


def command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "crystalvlm.cli", *args]


def environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    source = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join([source, env.get("PYTHONPATH", "")])  # this tree's crystalvlm
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    return env


def cached_answers(out: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in (out / "cache").glob("*.jsonl")) if (out / "cache").is_dir() else 0


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def outputs(out: Path) -> dict[str, object]:
    """What a user reads: scores, per-sample logs and answer files, and the lmms-eval logs' answers."""
    found: dict[str, object] = {"results": json.loads((out / "results.json").read_text())["results"]}
    for path in sorted(out.glob("samples_*.jsonl")) + sorted(out.glob("answers_*.jsonl")):
        found[path.name] = path.read_text()
    for path in sorted((out / "lmms-eval").rglob("*_samples_*.jsonl")):
        task = path.name.split("_samples_", 1)[1]
        found[f"lmms-eval {task}"] = [(line["doc_id"], line["filtered_resps"]) for line in read_lines(path)]
    return found


def tear_last_cache_line(out: Path, rng: random.Random) -> dict:
    """Replace the last complete line of one cache file by a forged answer cut at a drawn length
    (from one character to the whole entry without its newline). Returns the entry torn."""
    files = sorted(path for path in (out / "cache").glob("*.jsonl") if path.read_bytes().count(b"\n"))
    path = rng.choice(files)
    text = path.read_bytes().decode()
    end = text.rfind("\n") + 1  # what a killed write may have left after the last newline is dropped too
    lines = text[:end].splitlines(keepends=True)
    victim = json.loads(lines[-1])
    forged = json.dumps(victim | {"text": FORGED})
    cut = rng.randint(1, len(forged))
    path.write_text("".join(lines[:-1]) + forged[:cut])
    print(f"tore the cache line of sample {victim['id']} in {path.name} at {cut} of {len(forged)} characters")
    return victim


def test_killed_evaluation_resumes_to_the_uninterrupted_result(tiny_checkpoint, world, tmp_path):
    seed = int(os.environ.get("CRYSTALVLM_KILL_SEED", random.randrange(2**31)))
    rng = random.Random(seed)
    started = time.monotonic()

    reference = tmp_path / "reference"
    assert main(eval_args(tiny_checkpoint, world, reference)) == 0
    expected = outputs(reference)
    total = cached_answers(reference)
    print(f"kill seed {seed} (replay: CRYSTALVLM_KILL_SEED={seed}); uninterrupted run {time.monotonic() - started:.1f} s")

    out = tmp_path / "killed"
    wait_for = rng.randint(1, total)  # answers in the cache before the kill...
    delay = rng.uniform(0.0, 0.4)  # ...and then this long, which may reach scoring and the output files
    process = subprocess.Popen(command(eval_args(tiny_checkpoint, world, out)), env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and cached_answers(out) < wait_for and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        killed = process.poll() is None
        if killed:
            os.kill(process.pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    print(f"seed {seed}: waited for {wait_for} of {total} answers, then {delay:.3f} s "
          f"({time.monotonic() - started:.1f} s into the test); "
          + (f"killed with {cached_answers(out)} answers cached" if killed else "the run had already finished"))
    if not killed:
        assert process.returncode == 0, stderr.decode()
    else:
        assert process.returncode == -signal.SIGKILL
    # Written atomically: whatever results.json a kill leaves is whole, and it is this run's.
    if (out / "results.json").exists():
        assert json.loads((out / "results.json").read_text())["results"] == expected["results"]

    torn = tear_last_cache_line(out, rng)
    # The same command again; in this process, which saves a second start of torch (all the state a
    # resumed run has is on disk).
    assert main(eval_args(tiny_checkpoint, world, out)) == 0, f"seed {seed}"
    assert outputs(out) == expected, f"seed {seed}"
    print(f"seed {seed}: resumed run done {time.monotonic() - started:.1f} s into the test")

    # The torn entry was generated again: the cache holds each sample once, on whole lines, none forged.
    entries = [json.loads(line) for path in sorted((out / "cache").glob("*.jsonl"))
               for line in path.read_text().splitlines()]
    assert len(entries) == total, f"seed {seed}"
    assert len({entry["key"] for entry in entries}) == total
    assert [entry["text"] for entry in entries if entry["key"] == torn["key"]] == [torn["text"]]
    assert FORGED not in json.dumps(entries)


def test_a_killed_two_process_evaluation_resumes_to_the_single_process_result(tiny_checkpoint, world, tmp_path):
    """torchrun, 2 ranks: the launcher and both ranks SIGKILLed at a seeded moment after some
    answers are cached; the same torchrun command again ends with the single-process outputs."""
    seed = int(os.environ.get("CRYSTALVLM_KILL_SEED", random.randrange(2**31)))
    rng = random.Random(seed)
    print(f"kill seed {seed} (replay: CRYSTALVLM_KILL_SEED={seed})")
    reference = tmp_path / "reference"
    assert main(eval_args(tiny_checkpoint, world, reference)) == 0
    expected, total = outputs(reference), cached_answers(reference)

    def torchrun(out: Path, port: int) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                "-m", "crystalvlm.cli", *eval_args(tiny_checkpoint, world, out)]

    # Uninterrupted, 2 ranks: the single-process outputs, and the duration the kill moment is drawn from
    # (the ranks answer 16 samples in a blink, so a kill aimed by cache lines would always land late).
    started = time.monotonic()
    whole = subprocess.run(torchrun(tmp_path / "uninterrupted", 29560), env=environment(), capture_output=True,
                           text=True, timeout=300)
    duration = time.monotonic() - started
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert outputs(tmp_path / "uninterrupted") == expected

    out = tmp_path / "killed"
    delay = rng.uniform(0.5, 1.0) * duration  # the first half is mostly the start of Python and torch
    process = subprocess.Popen(torchrun(out, 29561), env=environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)  # its own group: launcher and ranks
    try:
        deadline = time.monotonic() + delay
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        killed = process.poll() is None
        if killed:
            kill_tree(process.pid)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            kill_tree(process.pid)
    print(f"seed {seed}: after {delay:.2f} of {duration:.2f} s, "
          + (f"killed with {cached_answers(out)} of {total} answers cached" if killed
                              else "the run had already finished"))
    if not killed:
        assert process.returncode == 0, stderr.decode()[-2000:]

    resumed = subprocess.run(torchrun(out, 29562), env=environment(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, f"seed {seed}: {resumed.stderr[-2000:]}"
    assert outputs(out) == expected, f"seed {seed}"
