"""benchmarks/gpu_suite.sh: a failed step is recorded and the others still run; the record is written
whole; the exit status says whether every step succeeded. The measurements are replaced by a stub
interpreter (the real ones need minutes); the dry run itself was run by hand (benchmarks/README.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_suite.sh"

# Runs the suite's own Python (its summary) for real; for the benchmark scripts: the train step fails,
# the others print a JSON line as the real scripts do last.
STUB = f"""#!/usr/bin/env bash
case "${{1:-}}" in
  benchmarks/train_throughput.py) echo "train: something broke" >&2; exit 3 ;;
  benchmarks/gpu_inference.py) echo '{{"ratio_over_batched_hf_generate": 2.5, "step": "'"$2"'"}}' ;;
  benchmarks/*) echo '{{"ratio_over_hf_generate_batched": 1.5}}' ;;
  *) exec {sys.executable} "$@" ;;
esac
"""


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_a_failed_step_is_recorded_and_the_rest_run(tmp_path):
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    out = tmp_path / "results"
    env = {**os.environ, "PYTHON": str(stub), "OUT_DIR": str(out)}
    done = subprocess.run(["bash", str(SUITE), "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    record = json.loads((out / "gpu_suite.json").read_text())
    steps = {step["step"]: step for step in record["steps"]}
    assert list(steps) == ["train", "eval", "decode", "generation"]
    assert steps["train"]["status"] == "failed" and steps["train"]["exit_code"] == 3
    assert "train: something broke" in steps["train"]["log_tail"]
    assert steps["eval"]["status"] == steps["decode"]["status"] == steps["generation"]["status"] == "ok"
    assert steps["eval"]["last_json_line"] == {"ratio_over_batched_hf_generate": 2.5, "step": "eval"}
    assert steps["decode"]["last_json_line"]["step"] == "decode"
    assert "ratio_over_batched_hf_generate 2.5" in done.stdout  # the summary
    assert not list(out.glob("*.partial"))


def test_unknown_arguments_are_refused():
    done = subprocess.run(["bash", str(SUITE), "--fast"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "unknown argument --fast" in done.stderr
