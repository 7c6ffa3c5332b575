"""Training killed with SIGKILL, in a step or while it writes a checkpoint, resumes with --resume to
bitwise the weights, and exactly the metrics log, of a run that was never interrupted.

Kill points are drawn from a seed that each test prints, so a failure reproduces with
CRYSTALVLM_KILL_SEED=<seed>. Two ways to kill:
  - inside checkpoint writing, at an exact point: this file, run as a script, wraps the functions
    the checkpoint writers call and SIGKILLs its own process at the chosen one (CRYSTALVLM_KILL_AT);
  - at a random moment: the test SIGKILLs the run a random delay after the n-th new resume
    checkpoint of this attempt appears (for torchrun, the launcher and every rank: each rank has a session of its own, so
    the whole process tree is killed, see tests/process_tree.py).
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

# (stage, optimizer steps) of the recipe below: one epoch each; a resume state after every step
# except the last (the final checkpoint follows it).
STAGES = {"align": 6, "finetune": 7}
# Points inside checkpoint writing, in the order a save passes them:
#   weights  the staging folder holds model.safetensors, not yet trainer.pt
#   trainer  trainer.pt written, not yet state.json or the rename
#   rename   the staging folder complete, not yet renamed to step-NNNNNNN
#   latest   step-NNNNNNN in place, the `latest` pointer still names the previous one
#   final    the stage's final checkpoint complete in its staging folder, not yet renamed to final/
PHASES = ("weights", "trainer", "rename", "latest", "final")
TIMING_FIELDS = ("elapsed_s", "tokens_per_s")


def _seed() -> int:
    seed = int(os.environ.get("CRYSTALVLM_KILL_SEED", random.SystemRandom().randrange(1_000_000)))
    print(f"kill seed {seed} (rerun with CRYSTALVLM_KILL_SEED={seed})")
    return seed


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _train_args(recipe: Path, out: Path) -> list[str]:
    return ["train", str(recipe), "--out", str(out), "--save-every", "1", "--quiet"]


def _weights(run: Path) -> dict[str, bytes]:
    return {str(path.relative_to(run)): path.read_bytes() for path in sorted(run.glob("*/final/model.safetensors"))}


def _metrics(run: Path) -> dict[str, list[dict]]:
    """Each stage's metrics log without its wall-clock fields."""
    logs = {}
    for path in sorted(run.glob("*/metrics.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        logs[path.parent.name] = [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]
    return logs


def _assert_same_run(resumed: Path, reference: Path) -> None:
    expected, got = _weights(reference), _weights(resumed)
    assert len(expected) == len(STAGES) and got.keys() == expected.keys()
    for name in expected:
        assert got[name] == expected[name], f"{name} differs from the uninterrupted run's"
    assert _metrics(resumed) == _metrics(reference)
    assert [len(rows) for rows in _metrics(resumed).values()] == list(STAGES.values())


@pytest.fixture(scope="module")
def recipe(colour_world, tiny_tokenizer_dir, tmp_path_factory) -> Path:
    from tiny_fixtures import tiny_recipe

    return tiny_recipe(tmp_path_factory.mktemp("kill_recipe"), tiny_tokenizer_dir, colour_world, epochs=1)


@pytest.fixture(scope="module")
def two_rank_recipe(colour_world, tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """The same global batch of 4 as `recipe`, as 2 ranks of 2: the same 6 align steps."""
    from tiny_fixtures import tiny_recipe

    return tiny_recipe(tmp_path_factory.mktemp("kill_recipe_2"), tiny_tokenizer_dir, colour_world, epochs=1,
                       batch_size=2)


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory) -> Path:
    """The uninterrupted run, through the same command line."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = subprocess.run([sys.executable, "-m", "crystalvlm.cli", *_train_args(recipe, out)], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


# ----------------------------------------------------------------------------- kills inside checkpoint writing
def _timeline_position(event: tuple[str, str, int | None]) -> tuple[int, float, int]:
    phase, stage, step = event
    return list(STAGES).index(stage), float("inf") if step is None else step, PHASES.index(phase)


def _draw_write_kills(rng: random.Random, count: int) -> list[tuple[str, str, int | None]]:
    """`count` (phase, stage, step) kill points in the order a run passes them."""
    events = []
    for phase in rng.sample(PHASES, count):
        stage = rng.choice(list(STAGES))
        events.append((phase, stage, None if phase == "final" else rng.randint(1, STAGES[stage] - 1)))
    return sorted(events, key=_timeline_position)


def _assert_cut_where_aimed(out: Path, phase: str, stage: str, step: int | None) -> None:
    """The folder shows the kill happened at the aimed point, not before or after it."""
    checkpoints = out / stage / "checkpoints"
    if phase == "final":
        assert list((out / stage).glob("final.tmp-*")) and not (out / stage / "final").exists()
        return
    name = f"step-{step:07d}"
    if phase in ("weights", "trainer", "rename"):
        staged = list(checkpoints.glob(f".{name}.tmp-*"))
        assert len(staged) == 1 and not (checkpoints / name).exists()
        files = {path.name for path in staged[0].iterdir()}
        assert files == {"weights": {"model.safetensors"}, "trainer": {"model.safetensors", "trainer.pt"},
                         "rename": {"model.safetensors", "trainer.pt", "state.json"}}[phase]
    else:
        pointer = checkpoints / "latest"  # absent before the first save
        assert (checkpoints / name).is_dir() and (not pointer.exists() or pointer.read_text().strip() != name)


def test_kills_while_writing_checkpoints_resume_to_the_uninterrupted_run(recipe, reference, tmp_path):
    rng = random.Random(_seed())
    kills = _draw_write_kills(rng, count=2)
    print(f"kill points: {kills}")
    out = tmp_path / "run"
    for phase, stage, step in kills:
        killed = subprocess.run([sys.executable, __file__, *_train_args(recipe, out), "--resume"],
                                env=_env(CRYSTALVLM_KILL_AT=f"{phase}:{stage}:{step or 0}"),
                                capture_output=True, text=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, f"{phase} {stage} {step}: not killed\n{killed.stderr[-2000:]}"
        _assert_cut_where_aimed(out, phase, stage, step)
    resumed = subprocess.run([sys.executable, "-m", "crystalvlm.cli", *_train_args(recipe, out), "--resume"],
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_run(out, reference)


# ----------------------------------------------------------------------------- kills at random moments
def _kill_tree(pid: int) -> None:
    from process_tree import kill_tree  # here: this file also runs as a script, without tests/ on its path

    kill_tree(pid)


def _kill_after_new_checkpoints(command: list[str], out: Path, nth: int, fraction: float, env: dict,
                                timeout_s: float = 300.0) -> bool:
    """Run `command` and SIGKILL its whole process group `fraction` of a step after the nth resume
    checkpoint this attempt writes appears (nth >= 2: a step's length is the time between the last
    two, so the kill lands inside the next step on a fast machine or a slow one). False when the
    run finished first (nothing was killed)."""
    existing = set(out.glob("*/checkpoints/step-*"))
    appeared: dict[Path, float] = {}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.time() + timeout_s
    try:
        while process.poll() is None and time.time() < deadline:
            for path in set(out.glob("*/checkpoints/step-*")) - existing - set(appeared):
                appeared[path] = time.time()
            if len(appeared) >= nth:
                times = sorted(appeared.values())
                time.sleep(fraction * (times[nth - 1] - times[nth - 2]))
                if process.poll() is not None:
                    return False
                _kill_tree(process.pid)
                process.wait(timeout=30)
                return True
            time.sleep(0.002)
        assert process.returncode == 0, process.stderr.read()[-2000:]
        return False
    finally:
        if process.poll() is None:
            _kill_tree(process.pid)
            process.wait(timeout=30)
        process.stderr.close()


def test_kills_at_random_moments_resume_to_the_uninterrupted_run(recipe, reference, tmp_path):
    rng = random.Random(_seed())
    out = tmp_path / "run"
    command = [sys.executable, "-m", "crystalvlm.cli", *_train_args(recipe, out), "--resume"]
    points = [(rng.randint(2, 4), rng.random()) for _ in range(2)]
    print(f"kill points (nth new checkpoint, then this fraction of a step): {points}")
    kills = sum(_kill_after_new_checkpoints(command, out, nth, fraction, _env()) for nth, fraction in points)
    assert kills >= 1, "the test must actually interrupt the run"
    resumed = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_run(out, reference)


# ----------------------------------------------------------------------------- two processes
def test_a_killed_two_process_run_resumes_to_the_uninterrupted_one(two_rank_recipe, tmp_path):
    """torchrun, 2 ranks on gloo: the launcher and both ranks SIGKILLed at a random moment after a
    checkpoint, then resumed: the same weights and metrics as a 2-process run never interrupted."""
    rng = random.Random(_seed())
    nth, fraction = rng.randint(2, 4), rng.random()
    print(f"kill after new checkpoint {nth}, then {fraction:.3f} of a step")
    stage_args = ["--stage", "align"]  # the first stage alone keeps three 2-process launches short

    def torchrun(out: Path, port: int) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                "-m", "crystalvlm.cli", *_train_args(two_rank_recipe, out), *stage_args, "--resume"]

    uninterrupted = tmp_path / "uninterrupted"
    done = subprocess.run(torchrun(uninterrupted, 29541), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "run"
    assert _kill_after_new_checkpoints(torchrun(out, 29542), out, nth, fraction, _env()), "finished before the kill"
    assert not (out / "align/final").exists()
    resumed = subprocess.run(torchrun(out, 29543), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed stage align" in resumed.stdout
    assert (out / "align/final/model.safetensors").read_bytes() == \
        (uninterrupted / "align/final/model.safetensors").read_bytes()
    assert _metrics(out) == _metrics(uninterrupted)


# ----------------------------------------------------------------------------- this file as the kill-point runner
def _install_kill_point(spec: str) -> None:
    """SIGKILL this process at `phase:stage:step` of checkpoint writing (see PHASES)."""
    import torch

    from crystalvlm.train import resume_state

    phase, stage, step = spec.split(":")
    step = int(step)

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def aimed_at(staging: Path) -> bool:  # <run>/<stage>/checkpoints/.step-NNNNNNN.tmp-PID
        return (staging.name.startswith(f".step-{step:07d}.tmp-") and staging.parent.name == "checkpoints"
                and staging.parent.parent.name == stage)

    if phase == "weights":
        save_file = resume_state.save_file

        def save_weights_then_die(tensors, filename, *args, **kwargs):
            save_file(tensors, filename, *args, **kwargs)
            if aimed_at(Path(filename).parent):
                die()

        resume_state.save_file = save_weights_then_die
    elif phase == "trainer":
        save = torch.save

        def save_then_die(obj, f, *args, **kwargs):
            save(obj, f, *args, **kwargs)
            if isinstance(f, (str, Path)) and Path(f).name == "trainer.pt" and aimed_at(Path(f).parent):
                die()

        torch.save = save_then_die
    elif phase in ("rename", "final"):
        replace = os.replace

        def die_before_rename(source, destination, *args, **kwargs):
            source, destination = Path(source), Path(destination)
            if phase == "rename" and aimed_at(source):
                die()
            if phase == "final" and destination.name == "final" and destination.parent.name == stage:
                die()
            return replace(source, destination, *args, **kwargs)

        os.replace = die_before_rename
    elif phase == "latest":
        write_pointer = resume_state._atomic_write_text

        def die_before_pointer(path: Path, text: str) -> None:
            if path.name == "latest" and path.parent.parent.name == stage and text == f"step-{step:07d}":
                die()
            write_pointer(path, text)

        resume_state._atomic_write_text = die_before_pointer
    else:
        raise SystemExit(f"unknown kill phase {phase!r}; phases: {PHASES}")


if __name__ == "__main__":
    from crystalvlm import cli

    if os.environ.get("CRYSTALVLM_KILL_AT"):
        _install_kill_point(os.environ["CRYSTALVLM_KILL_AT"])
    sys.exit(cli.main(sys.argv[1:]))
