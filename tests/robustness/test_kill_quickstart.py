"""Rerunning the quickstart into the same folder after a SIGKILL continues from the last completed
step and ends with the scores and weights of an uninterrupted run. Kill points are drawn from a
printed seed (CRYSTALVLM_KILL_SEED reproduces one)."""

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

# (phase, a path whose appearance says the phase is under way)
PHASES = [("evaluation before training", "eval/before/cache"), ("training", "run/align"),
          ("evaluation after training", "eval/after/cache")]


def _command(out: Path) -> list[str]:
    return [sys.executable, "-m", "crystalvlm.cli", "quickstart", "--scale", "smoke", "--out", str(out)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _final_weights(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.glob("run/*/final/*.safetensors"))}


@pytest.mark.parametrize("phase,pattern", PHASES, ids=[phase for phase, _ in PHASES])
def test_a_killed_quickstart_rerun_into_its_folder_ends_like_an_uninterrupted_one(phase, pattern, smoke_quickstart,
                                                                                  tmp_path):
    seed = int(os.environ.get("CRYSTALVLM_KILL_SEED", random.SystemRandom().randrange(1_000_000)))
    print(f"kill seed {seed} (rerun with CRYSTALVLM_KILL_SEED={seed})")
    rng = random.Random(seed)
    out = tmp_path / "quickstart"
    process = subprocess.Popen(_command(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed = time.time() + 300, False
    try:
        while time.time() < deadline and process.poll() is None:
            if (out / pattern).exists():
                time.sleep(rng.uniform(0.0, 0.5))
                process.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.005)
    finally:
        if process.poll() is None and not killed:
            process.kill()
        process.wait(timeout=60)
    assert killed, f"the quickstart finished before {phase} was seen"
    assert not (out / "report.json").exists()
    rerun = subprocess.run(_command(out), env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    expected = json.loads((smoke_quickstart / "report.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert report["benchmarks"] == expected["benchmarks"]
    assert _final_weights(out) == _final_weights(smoke_quickstart)
