"""The tiny CLIP and LM pretrained side by side (`prepare.parallel_parts`): each in a process of its
own (one thread, the LM taking two once the CLIP is done), they come out bitwise the same as
pretrained one after the other on one thread, and a kill of the preparing process mid-way takes its
part processes with it and resumes to the same parts."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crystalvlm.train.recipe import apply_overrides, read_recipe
from crystalvlm.worlds.shapes.prepare import prepare_tiny_world
from crystalvlm.worlds.shapes.world import ShapesWorld
from process_tree import descendants


def _settings(parallel: bool) -> dict:
    settings = apply_overrides(read_recipe("tiny"), list(ShapesWorld.smoke_overrides))["prepare"]
    return {**settings, "parallel_parts": parallel, "n_train": 60, "n_eval": 6}


def _parts(world: Path) -> dict[str, str]:
    return {str(path.relative_to(world)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted((world / "parts").rglob("*.safetensors"))}


PREPARE = """
import sys, json
from pathlib import Path
from crystalvlm.worlds.shapes.prepare import prepare_tiny_world
if __name__ == "__main__":
    prepare_tiny_world(Path(sys.argv[1]), json.loads(sys.argv[2]), seed=0, progress=False)
"""


@pytest.mark.parametrize("precision, attention", [("fp32", None), ("bf16", "eager")])  # the default; recipe tiny's
def test_the_tiny_lm_steps_alike_on_one_and_two_threads(precision, attention):
    """What lets the LM change its thread count mid-run without changing the parts."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from crystalvlm.worlds.parts.tiny import tiny_llm_config

    def three_steps(threads: int) -> torch.Tensor:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        config = LlamaConfig(**{k: v for k, v in tiny_llm_config(300, hidden=128, layers=2).items() if k != "model_type"})
        model = (LlamaForCausalLM._from_config(config, attn_implementation=attention) if attention
                 else LlamaForCausalLM(config))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        batches = torch.Generator().manual_seed(1)
        for _ in range(3):
            ids = torch.randint(5, 300, (8, 128), generator=batches)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    threads = torch.get_num_threads()
    try:
        assert torch.equal(three_steps(1), three_steps(2))
    finally:
        torch.set_num_threads(threads)


def test_parts_side_by_side_match_one_thread_and_survive_a_kill(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prepare_tiny_world(tmp_path / "sequential", _settings(False), seed=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    expected = _parts(tmp_path / "sequential")
    assert {Path(p).parts[1] for p in expected} == {"clip", "lm"}

    world = tmp_path / "parallel"
    script = tmp_path / "prepare.py"
    script.write_text(PREPARE)
    process = subprocess.Popen([sys.executable, str(script), str(world), json.dumps(_settings(True))],
                               env={**os.environ, "OMP_NUM_THREADS": "2"},  # the LM takes 2 after the CLIP
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[int] = []
    deadline = time.time() + 300
    try:
        while time.time() < deadline and process.poll() is None:
            # A part's temporary folder: its process is training (the tokenizer's is the main process's).
            if list((world / "parts").glob("clip.partial-*")) or list((world / "parts").glob("lm.partial-*")):
                children = descendants(process.pid)
                process.send_signal(signal.SIGKILL)  # the preparing process only, as a crash would
                process.wait(timeout=30)
                break
            time.sleep(0.005)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert children, "the preparation finished (or never pretrained a part) before it could be killed"
    # The part processes die with the preparing process instead of training on as orphans.
    gone_by = time.time() + 30
    while time.time() < gone_by and any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in children):
        time.sleep(0.05)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)]

    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # read by the part processes this run spawns
    record = prepare_tiny_world(world, _settings(True), seed=0, progress=False)
    assert _parts(world) == expected
    assert not list(world.rglob("*.partial-*"))
    assert set(record["steps"]) == {"world", "tokenizer", "clip", "lm"}


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_an_unknown_pretraining_precision_is_refused(tmp_path):
    from crystalvlm.worlds.parts.clip import pretrain_tiny_clip
    from crystalvlm.worlds.parts.lm import pretrain_tiny_lm

    with pytest.raises(ValueError, match="precision must be one of"):
        pretrain_tiny_lm(["a line"], None, {}, tmp_path, steps=1, precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        pretrain_tiny_clip([], None, {}, tmp_path, steps=1, precision="fp16")
