"""The resume state holds tensors and plain values only: it loads with weights_only=True, restores
every RNG exactly, and a crafted trainer.pt that would run code is refused before it can."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys

import numpy as np
import torch

from tiny_fixtures import tiny_recipe
from crystalvlm.train.resume_state import load_resume_state, save_resume_state


def _draws() -> tuple:
    return random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist()


def _tiny_training_objects(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW([{"params": model.parameters(), "lr": 1e-2, "part": "projector"}])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def test_resume_state_restores_every_rng_and_loads_weights_only(tmp_path):
    model, optimizer, scheduler = _tiny_training_objects(0)
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    random.gauss(0, 1)  # python keeps a cached second gaussian: part of the state
    np.random.randn()  # numpy too
    path = save_resume_state(tmp_path / "checkpoints", 1, model.state_dict(), optimizer, scheduler)
    expected = _draws()

    saved = torch.load(path / "trainer.pt", weights_only=True)  # the point: no pickled objects
    assert saved["optimizer"]["param_groups"][0]["part"] == "projector"

    other_model, other_optimizer, other_scheduler = _tiny_training_objects(1)
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert load_resume_state(path, other_model, other_optimizer, other_scheduler) == 1
    assert _draws() == expected
    for name, tensor in model.state_dict().items():
        assert torch.equal(other_model.state_dict()[name], tensor)
    assert other_scheduler.state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"]
    state, other_state = optimizer.state_dict()["state"], other_optimizer.state_dict()["state"]
    for index in state:
        for key in state[index]:
            assert torch.equal(other_state[index][key], state[index][key])


class _WritesMarker:
    """Unpickling this runs `exec`, which writes a marker file: what a crafted trainer.pt could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def test_resume_refuses_a_trainer_state_that_would_run_code(colour_world, tiny_tokenizer_dir, tmp_path):
    recipe = tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "crystalvlm.cli", "train", str(recipe), "--stage", "align", "--out", str(run),
               "--max-steps", "2", "--save-every", "1", "--quiet"]
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    assert first.returncode == 0, first.stderr[-2000:]
    state = run / "align/checkpoints/step-0000001/trainer.pt"
    assert state.is_file()
    marker = tmp_path / "marker"
    torch.save({"optimizer": _WritesMarker(marker), "scheduler": {}, "rng": {}}, state)
    shutil.rmtree(run / "align/final")  # so --resume continues from the crafted state

    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, env=env, timeout=180)
    assert resumed.returncode == 2, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert str(state) in resumed.stderr and "refusing to resume" in resumed.stderr, resumed.stderr[-2000:]
    assert "Traceback" not in resumed.stderr
    assert not marker.exists(), "unpickling the crafted state ran its code"
    assert not (run / "align/final").exists()

