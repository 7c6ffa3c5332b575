"""`crystalvlm train --fsdp`: FSDP2 full sharding under torchrun on CPUs (gloo), through accelerate's
own FSDP2 wrapping with the plugin configs/accelerate/fsdp.yaml describes.

One stage (align, training the projector and the whole LLM, so decoder layers that `fully_shard`
wrapped are trained) of 6 optimizer steps, each of 2 micro-batches (the accumulation runs under
FSDP's no-sync), global micro-batch 4: one process of batch 4, or 2 ranks of batch 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny_fixtures import tiny_recipe

STEPS = 6
# Trained parts: the projector and the LLM (its decoder layers are FSDP units of their own).
OVERRIDES = ["stages.align.tunable=[projector, llm]", "stages.align.lr.llm=5e-4"]
STAGE_ARGS = ["--stage", "align", *(arg for item in OVERRIDES for arg in ("--set", item)), "--save-every", "1", "--quiet"]
# Stated tolerances, 2 FSDP ranks against 1 plain process. The loss is normalised by the trained
# tokens of the whole global batch and FSDP averages the reduce-scattered gradients, so the two
# compute the same update; only the order of float additions differs (measured on the tiny recipe's
# two stages: weights within 2e-8, losses and gradient norms to the 6 logged digits). Weights:
# |a - b| <= 1e-6 + 1e-4 |b|.
# Losses and gradient norms: 1e-4 relative per step (the norm is taken over all shards: a norm of
# one rank's shards would be about 1/sqrt(2) of it, and clipping by it would change the weights).
WEIGHT_RTOL, WEIGHT_ATOL, LOG_RTOL = 1e-4, 1e-6, 1e-4
TIMING_FIELDS = ("elapsed_s", "tokens_per_s")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(recipe: Path, out: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            "-m", "crystalvlm.cli", "train", str(recipe), "--out", str(out), "--fsdp", *STAGE_ARGS, *extra]


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "align/metrics.jsonl").read_text().splitlines() if line]
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]


@pytest.fixture(scope="module")
def recipes(colour_world, tiny_tokenizer_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fsdp_recipes")
    (root / "one").mkdir()
    (root / "two").mkdir()
    common = {"max_steps": STEPS, "grad_accum": 2}
    return {"one": tiny_recipe(root / "one", tiny_tokenizer_dir, colour_world, batch_size=4, **common),
            "two": tiny_recipe(root / "two", tiny_tokenizer_dir, colour_world, batch_size=2, **common)}


@pytest.fixture(scope="module")
def fsdp_run(recipes, tmp_path_factory) -> Path:
    """The uninterrupted 2-process FSDP run (a resume state after every step)."""
    out = tmp_path_factory.mktemp("fsdp") / "run"
    done = subprocess.run(_torchrun(recipes["two"], out, 29561), env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "sharding fsdp, 2 GPU(s)" in done.stdout  # the stage really ran sharded
    return out


@pytest.fixture(scope="module")
def single_run(recipes, tmp_path_factory) -> tuple[Path, str]:
    """One process given --fsdp (no distributed launch): it trains unsharded, the plain run the
    sharded one is compared with. In this process (no start-up to pay); returns (run, console)."""
    from crystalvlm.train.recipe import load_recipe
    from crystalvlm.train.trainer import TrainOptions, train_recipe

    out = tmp_path_factory.mktemp("single") / "run"
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        train_recipe(load_recipe(str(recipes["one"]), OVERRIDES),
                     TrainOptions(run_dir=out, stages=["align"], save_every=1, fsdp=True, progress=False))
    return out, console.getvalue()


def test_fsdp_without_a_distributed_launch_says_so_and_trains_unsharded(single_run):
    out, console = single_run
    assert "--fsdp: one process, nothing to shard over; training unsharded" in console
    plan = json.loads((out / "align/memory_estimate.json").read_text())["plan"]
    assert plan["sharding"] == "none" and plan["world_size"] == 1
    assert len(_metrics(out)) == STEPS


def test_the_flag_builds_the_plugin_the_shipped_config_describes(monkeypatch):
    """accelerate's own launcher reads configs/accelerate/fsdp.yaml into the environment a GPU
    launch gets; the plugin accelerate builds from it equals the one `--fsdp` builds, field by field."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    from crystalvlm.train.fsdp import shipped_fsdp_plugin

    config = Path(__file__).parents[2] / "configs/accelerate/fsdp.yaml"
    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "crystalvlm.cli", "train", "tiny"])
    args, _, _ = _validate_launch_command(args)
    launch_env = prepare_multi_gpu_env(args)
    assert launch_env["ACCELERATE_USE_FSDP"] == "true"
    for name, value in launch_env.items():
        if name.startswith("FSDP_"):
            monkeypatch.setenv(name, value)
    from_config, from_flag = FullyShardedDataParallelPlugin(), shipped_fsdp_plugin()
    for field in dataclasses.fields(FullyShardedDataParallelPlugin):
        assert getattr(from_flag, field.name) == getattr(from_config, field.name), field.name


def test_two_process_fsdp_trains_like_one_process(single_run, fsdp_run):
    single = single_run[0]

    expected, got = _metrics(single), _metrics(fsdp_run)
    assert len(expected) == len(got) == STEPS
    for a, b in zip(expected, got):
        for key in ("loss", "grad_norm"):
            assert abs(a[key] - b[key]) <= LOG_RTOL * abs(a[key]), f"step {a['step']} {key}: {a[key]} vs {b[key]}"
    assert max(row["grad_norm"] for row in got) > 1.0  # max_grad_norm 1.0: clipping by that global norm was active

    # The final checkpoint is gathered whole, with the keys a plain run writes, and loads in transformers.
    plain, sharded = (load_file(str(run / "align/final/model.safetensors")) for run in (single, fsdp_run))
    assert sharded.keys() == plain.keys()
    for name, value in plain.items():
        torch.testing.assert_close(sharded[name], value, rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL, msg=name)
    from crystalvlm.models.serving_compat import checkpoint_vllm_problems

    assert checkpoint_vllm_problems(fsdp_run / "align/final") == []
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(fsdp_run / "align/final")
    layer = model.model.language_model.layers[1].mlp.down_proj.weight
    torch.testing.assert_close(layer, plain["language_model.model.layers.1.mlp.down_proj.weight"],
                               rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL)


def _kill_when_checkpoint_appears(command: list[str], out: Path, step: int, timeout_s: float = 300.0) -> None:
    """Run `command` and SIGKILL it (the launcher and both ranks) as soon as the resume state of
    `step` is in place."""
    from process_tree import kill_tree

    target = out / "align/checkpoints" / f"step-{step:07d}"
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.time() + timeout_s
    try:
        while process.poll() is None and time.time() < deadline and not target.is_dir():
            time.sleep(0.002)
        assert process.poll() is None, f"ended before the kill:\n{process.stderr.read()[-3000:]}"
        kill_tree(process.pid)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            kill_tree(process.pid)
            process.wait(timeout=30)
        process.stderr.close()


def test_a_killed_fsdp_run_resumes_to_the_uninterrupted_one(recipes, fsdp_run, tmp_path):
    out = tmp_path / "run"
    _kill_when_checkpoint_appears(_torchrun(recipes["two"], out, 29562, "--resume"), out, step=2)
    assert not (out / "align/final").exists()
    latest = out / "align/checkpoints" / (out / "align/checkpoints/latest").read_text().strip()
    # Each rank's optimizer shard is saved: its own half of every AdamW moment.
    assert json.loads((latest / "state.json").read_text())["optimizer_shards"] == 2
    shards = [torch.load(latest / f"optimizer-rank{rank:05d}-of-00002.pt", weights_only=True)["optimizer"]
              for rank in (0, 1)]
    moments = [torch.cat([entry["exp_avg"].flatten() for entry in shard["state"].values()]) for shard in shards]
    assert moments[0].numel() == moments[1].numel() > 0 and not torch.equal(moments[0], moments[1])

    resumed = subprocess.run(_torchrun(recipes["two"], out, 29563, "--resume"), env=_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed stage align" in resumed.stdout
    assert (out / "align/final/model.safetensors").read_bytes() == \
        (fsdp_run / "align/final/model.safetensors").read_bytes()
    assert _metrics(out) == _metrics(fsdp_run)


def test_an_fsdp_resume_state_is_refused_by_an_unsharded_launch(tmp_path):
    from crystalvlm.train.resume_state import load_resume_state

    state = tmp_path / "step-0000002"
    state.mkdir()
    torch.save({"scheduler": {}, "rng": {}}, state / "trainer.pt")
    (state / "state.json").write_text(json.dumps({"step": 2, "optimizer_shards": 2}))
    with pytest.raises(ValueError, match="sharded \\(FSDP\\) run of 2 processes; this is an unsharded launch"):
        load_resume_state(state, model=None, optimizer=None, scheduler=None)

