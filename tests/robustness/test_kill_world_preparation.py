"""A kill at any moment of world preparation resumes: `crystalvlm train tiny --out R` killed with
SIGKILL while it writes the world or pretrains a part, then `--resume`, ends with the same world
(data hashes) and bitwise the same weights as a run that was never interrupted.

Kill points are drawn from a seed that the test prints, so a failure reproduces with
CRYSTALVLM_KILL_SEED=<seed>."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crystalvlm.worlds.shapes.world import ShapesWorld

SMOKE = [*ShapesWorld.smoke_overrides]
# (phase, the path whose appearance says the phase is under way)
# (The tokenizer step takes a fraction of a second at this size: too short to aim a kill at.)
PHASES = [("world", "world/data.partial-*"), ("clip", "world/parts/clip.partial-*"), ("lm", "world/parts/lm.partial-*")]


def _command(out: Path, *extra: str) -> list[str]:
    sets = [arg for override in SMOKE for arg in ("--set", override)]
    return [sys.executable, "-m", "crystalvlm.cli", "train", "tiny", "--out", str(out), "--quiet", *sets, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _weights(run: Path) -> dict[str, str]:
    """sha256 of every weight file of the final checkpoints and of the world's parts."""
    files = sorted(run.glob("*/final/*.safetensors")) + sorted((run / "world" / "parts").rglob("*.safetensors"))
    return {str(path.relative_to(run)): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


def _kill_during(out: Path, pattern: str, rng: random.Random, timeout_s: float = 240.0) -> bool:
    """Start the run, wait until `pattern` appears under `out`, wait a random moment more, SIGKILL.
    False when the run finished before the phase was seen (then nothing was killed)."""
    process = subprocess.Popen(_command(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline and process.poll() is None:
            if list(out.glob(pattern)):
                time.sleep(rng.uniform(0.0, 0.3))
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
                return True
            time.sleep(0.002)
        return False
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    subprocess.run(_command(out), env=_env(), check=True, capture_output=True, timeout=600)
    return out


@pytest.mark.parametrize("phase,pattern", PHASES, ids=[phase for phase, _ in PHASES])
def test_a_kill_while_preparing_the_world_resumes_to_the_same_run(phase, pattern, reference, tmp_path):
    seed = int(os.environ.get("CRYSTALVLM_KILL_SEED", random.SystemRandom().randrange(1_000_000)))
    print(f"kill seed {seed} (rerun with CRYSTALVLM_KILL_SEED={seed})")
    out = tmp_path / "run"
    killed = _kill_during(out, pattern, random.Random(seed))
    assert killed, f"the run finished before phase {phase} was seen"
    resumed = subprocess.run(_command(out, "--resume"), env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not list(out.rglob("*.partial-*")), "a half-written step was left behind"
    expected = json.loads((reference / "world" / "manifest.json").read_text())["sha256"]
    assert json.loads((out / "world" / "manifest.json").read_text())["sha256"] == expected
    assert _weights(out) == _weights(reference)
    assert set(json.loads((out / "world" / "prepared.json").read_text())["steps"]) == {"world", "tokenizer", "clip", "lm"}


def test_a_folder_that_is_not_a_prepared_world_is_refused(tmp_path):
    from crystalvlm.worlds.base import PreparedFolder

    (tmp_path / "world").mkdir()
    (tmp_path / "world" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no prepared world"):
        PreparedFolder(tmp_path / "world", {"n": 1}, 0).open()
    assert (tmp_path / "world" / "notes.txt").read_text() == "mine"


def test_a_cut_step_is_redone_and_finished_steps_are_kept(tmp_path):
    from crystalvlm.worlds.base import PreparedFolder, staged

    calls: list[str] = []

    def step(name: str, fail: bool = False):
        def work():
            calls.append(name)
            with staged(tmp_path / "w" / name) as folder:
                (folder / "out.txt").write_text(name)
                if fail:
                    raise KeyboardInterrupt  # stands in for a kill in the middle of the step
            return {"name": name}
        return work

    folder = PreparedFolder(tmp_path / "w", {"n": 1}, 0).open()
    folder.run("a", step("a"))
    with pytest.raises(KeyboardInterrupt):
        folder.run("b", step("b", fail=True))
    assert not (tmp_path / "w" / "b").exists()  # the cut step left nothing that looks finished
    again = PreparedFolder(tmp_path / "w", {"n": 1}, 0).open()
    again.run("a", step("a"))
    again.run("b", step("b"))
    assert calls == ["a", "b", "b"] and (tmp_path / "w" / "b" / "out.txt").read_text() == "b"
    assert not list((tmp_path / "w").glob("b.partial-*"))
    # Other settings start the folder afresh.
    PreparedFolder(tmp_path / "w", {"n": 2}, 0).open()
    assert not (tmp_path / "w" / "a").exists()
