"""A run killed with SIGKILL at random moments and resumed ends with the uninterrupted weights."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from tiny_fixtures import tiny_recipe

CLI = [sys.executable, "-m", "crystalvlm.cli"]


def _train(recipe: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(CLI + ["train", str(recipe), "--out", str(out), "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _weights(run: Path) -> dict:
    return load_file(str(run / "finetune/final/model.safetensors"))


def test_killed_and_resumed_run_matches_uninterrupted(colour_world, tiny_tokenizer_dir, tmp_path):
    recipe = tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world, epochs=12, save_every=1)
    reference = _train(recipe, tmp_path / "reference")
    output = reference.communicate(timeout=300)[0].decode()
    assert reference.returncode == 0, output

    interrupted = tmp_path / "interrupted"
    rng = random.Random(1234)
    kills = 0
    for _ in range(4):
        process = _train(recipe, interrupted, "--resume")
        # Wait until this attempt is training (its metrics log grows), then kill at a random moment.
        metrics = list(interrupted.glob("*/metrics.jsonl"))
        seen = sum(len(m.read_text()) for m in metrics)
        deadline = time.time() + 120
        while process.poll() is None and time.time() < deadline:
            now = sum(len(m.read_text()) for m in interrupted.glob("*/metrics.jsonl"))
            if now > seen:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
    final = _train(recipe, interrupted, "--resume")
    output = final.communicate(timeout=300)[0].decode()
    assert final.returncode == 0, output
    assert kills >= 2, "the test must actually interrupt the run"
    finished = _weights(interrupted)
    expected = _weights(tmp_path / "reference")
    assert finished.keys() == expected.keys()
    for name in expected:
        assert (finished[name] == expected[name]).all(), f"{name} differs after resume"
    # The metrics log has each step once, as in the uninterrupted run.
    steps = [line for line in (interrupted / "finetune/metrics.jsonl").read_text().splitlines() if line]
    assert len(steps) == len((tmp_path / "reference/finetune/metrics.jsonl").read_text().splitlines())
