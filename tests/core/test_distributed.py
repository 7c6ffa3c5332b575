"""A 2-process torchrun run (gloo, CPU) trains like one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tiny_fixtures import tiny_recipe

# Losses are normalised by the trained tokens of the whole global batch, so two ranks with half
# the batch each compute the same gradient as one rank with all of it; only the order of float
# additions differs. Stated tolerance: 1e-4 relative per logged step.
TOLERANCE = 1e-4


def _losses(run_dir, stage):
    return [json.loads(line)["loss"] for line in (run_dir / stage / "metrics.jsonl").read_text().splitlines()]


def test_two_process_torchrun_matches_single_process(colour_world, tiny_tokenizer_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single_recipe = tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world, epochs=2, batch_size=4)
    single = subprocess.run([sys.executable, "-m", "crystalvlm.cli", "train", str(single_recipe), "--out",
                             str(tmp_path / "single"), "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stdout + single.stderr

    (tmp_path / "ddp").mkdir()
    ddp_recipe = tiny_recipe(tmp_path / "ddp", tiny_tokenizer_dir, colour_world, epochs=2, batch_size=2)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                          "-m", "crystalvlm.cli", "train", str(ddp_recipe), "--out", str(tmp_path / "ddp_run"), "--quiet"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    for stage in ("align", "finetune"):
        expected, got = _losses(tmp_path / "single", stage), _losses(tmp_path / "ddp_run", stage)
        assert len(expected) == len(got) > 5
        for step, (a, b) in enumerate(zip(expected, got), start=1):
            assert abs(a - b) <= TOLERANCE * abs(a), f"{stage} step {step}: single {a} vs 2-process {b}"
    assert (tmp_path / "ddp_run/finetune/final/model.safetensors").is_file()


def test_two_processes_train_the_vision_tower(colour_world, tiny_tokenizer_dir, tmp_path):
    """Llava reads image features from an inner tower layer (-2), so the tower's top layer and
    post-layernorm never reach the loss: a stage that trains the tower must still run under DDP."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    recipe = tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world, batch_size=2, max_steps=2)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519",
                          "-m", "crystalvlm.cli", "train", str(recipe), "--stage", "align", "--out", str(tmp_path / "run"),
                          "--quiet", "--set", "stages.align.tunable=[vision, projector]",
                          "--set", "stages.align.lr.vision=1e-4"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    summary = json.loads((tmp_path / "run/align/freeze_summary.json").read_text())
    assert summary["parts"]["vision"]["trains"] and summary["parts"]["vision"]["lr"] == 1e-4
    assert len(_losses(tmp_path / "run", "align")) == 2
