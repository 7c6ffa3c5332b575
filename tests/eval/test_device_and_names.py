"""`--device auto --dtype auto` (infer/launch.py) in generate, chat, eval and serve, and the names outputs carry."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from crystalvlm.cli import main
from crystalvlm.infer.engine import GenerationEngine
from crystalvlm.infer.launch import checkpoint_name, resolve_device, resolve_device_and_dtype, resolve_dtype


def machine(monkeypatch, cuda: bool = False, mps: bool = False, capability: tuple[int, int] = (8, 0)) -> list:
    """Pretend the machine has (or lacks) a CUDA GPU of `capability` and Apple's mps; returns the
    devices whose capability was asked for."""
    asked: list = []

    def get_device_capability(device=None):
        asked.append(device)
        return capability

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", get_device_capability)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    return asked


# ---------------------------------------------------------------------------- resolution rules
@pytest.mark.parametrize("cuda, mps, environ, device", [
    (True, True, {}, "cuda"),
    (True, False, {"LOCAL_RANK": "3", "RANK": "11", "WORLD_SIZE": "16"}, "cuda:3"),  # torchrun: this rank's GPU
    (False, True, {}, "mps"),
    (False, True, {"LOCAL_RANK": "1"}, "mps"),
    (False, False, {}, "cpu"),
    (False, False, {"LOCAL_RANK": "2"}, "cpu"),
])
def test_auto_device(monkeypatch, cuda, mps, environ, device):
    machine(monkeypatch, cuda=cuda, mps=mps)
    assert resolve_device("auto", environ) == device


def test_explicit_devices_are_kept_but_bare_cuda_is_per_rank_under_torchrun(monkeypatch):
    machine(monkeypatch, cuda=True)
    assert resolve_device("cpu", {"LOCAL_RANK": "1"}) == "cpu"
    assert resolve_device("cuda:0", {"LOCAL_RANK": "1"}) == "cuda:0"  # the user named the GPU
    assert resolve_device("cuda", {"LOCAL_RANK": "1"}) == "cuda:1"
    assert resolve_device("cuda", {}) == "cuda"


@pytest.mark.parametrize("device, capability, dtype", [
    ("cpu", (9, 0), "float32"),
    ("cuda", (9, 0), "bfloat16"),  # H100
    ("cuda:2", (8, 0), "bfloat16"),  # A100
    ("cuda", (7, 5), "float16"),  # T4: bfloat16 only emulated
    ("cuda:1", (7, 0), "float16"),  # V100
    ("mps", (9, 0), "float16"),
])
def test_auto_dtype(monkeypatch, device, capability, dtype):
    asked = machine(monkeypatch, cuda=device.startswith("cuda"), capability=capability)
    assert resolve_dtype("auto", device) == dtype
    if device.startswith("cuda"):
        assert asked == [torch.device(device)]  # the GPU the model goes to, not the current one


def test_explicit_dtype_is_kept_and_a_bad_one_refused(monkeypatch):
    machine(monkeypatch, cuda=True, capability=(9, 0))
    assert resolve_dtype("float32", "cuda") == "float32"
    assert resolve_dtype("float16", "cpu") == "float16"
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", "cpu")
    assert resolve_device_and_dtype("auto", "auto", {"LOCAL_RANK": "5"}) == ("cuda:5", "bfloat16")


def test_asking_for_a_gpu_on_a_machine_without_one_is_a_clear_error(tiny_checkpoint, shapes_world, tmp_path,
                                                                    monkeypatch, capsys):
    machine(monkeypatch, cuda=False)
    with pytest.raises(ValueError, match="--device cuda: no CUDA GPU is available"):
        resolve_device_and_dtype("cuda", "auto", {})
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    for command in ("eval", "generate", "chat"):
        code = main(command_argv(command, tiny_checkpoint, shapes_world, tmp_path) + ["--device", "cuda"])
        assert code == 2 and "error: --device cuda: no CUDA GPU is available" in capsys.readouterr().err, command


# ---------------------------------------------------------------------------- the commands
@pytest.mark.parametrize("command", ["generate", "chat", "eval", "serve"])
def test_help_shows_the_auto_defaults(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--device DEVICE" in text and "--dtype {auto,float32,float16,bfloat16}" in text
    assert text.count("(default: auto)") == 2


class Loaded(Exception):
    """Raised by the patched loader once it has recorded what it was asked for."""


@pytest.fixture()
def load_calls(monkeypatch) -> list[dict]:
    calls: list[dict] = []

    def record(cls, path, **kwargs):
        calls.append({"path": Path(path), **kwargs})
        raise Loaded

    monkeypatch.setattr(GenerationEngine, "from_checkpoint", classmethod(record))
    return calls


def command_argv(command: str, checkpoint: Path, world: Path, tmp_path: Path) -> list[str]:
    if command == "generate":
        return ["generate", str(checkpoint), "--prompt", "hi"]
    if command == "eval":
        return ["eval", str(checkpoint), "--tasks", "mme", "--benchmarks", str(world), "--out", str(tmp_path / "out"),
                "--quiet"]
    return [command, str(checkpoint)]


@pytest.mark.parametrize("command", ["generate", "chat", "eval", "serve"])
def test_every_command_loads_on_this_ranks_gpu_in_its_dtype(command, tiny_checkpoint, shapes_world, tmp_path,
                                                            monkeypatch, load_calls):
    """Under torchrun on a machine with bfloat16 GPUs, each command loads on cuda:$LOCAL_RANK in bfloat16."""
    machine(monkeypatch, cuda=True, capability=(9, 0))
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(Loaded):
        main(command_argv(command, tiny_checkpoint, shapes_world, tmp_path))
    assert [(call["path"], call["device"], call["dtype"]) for call in load_calls] == [(tiny_checkpoint, "cuda:1", "bfloat16")]


@pytest.mark.parametrize("command", ["generate", "chat", "eval", "serve"])
def test_without_a_gpu_the_defaults_load_on_the_cpu_in_float32(command, tiny_checkpoint, shapes_world, tmp_path,
                                                               monkeypatch, load_calls):
    machine(monkeypatch)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(Loaded):
        main(command_argv(command, tiny_checkpoint, shapes_world, tmp_path))
    assert [(call["device"], call["dtype"]) for call in load_calls] == [("cpu", "float32")]


def test_generate_runs_on_the_cpu_with_the_defaults(tiny_checkpoint, capsys):
    """Not patched: the real defaults on this machine (no GPU in the test environment) load and answer,
    the same answer as an explicit --device cpu --dtype float32."""
    assert main(["generate", str(tiny_checkpoint), "--prompt", "Name a colour.", "--max-new-tokens", "4"]) == 0
    with_defaults = capsys.readouterr().out
    assert main(["generate", str(tiny_checkpoint), "--prompt", "Name a colour.", "--max-new-tokens", "4",
                 "--device", "cpu", "--dtype", "float32"]) == 0
    assert capsys.readouterr().out == with_defaults != ""


# ---------------------------------------------------------------------------- names of outputs
def stage_checkpoint(folder: Path, stage: str | None, recipe: str | None = "tiny") -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if stage is not None:
        (folder / "crystalvlm.json").write_text(json.dumps({"stage": stage, "recipe": recipe, "template": "vicuna_v1"}))
    return folder


def test_checkpoint_names(tmp_path):
    runs = tmp_path / "runs"
    assert checkpoint_name(stage_checkpoint(runs / "crystalchat" / "finetune" / "final", "finetune")) == "crystalchat-finetune"
    assert checkpoint_name(stage_checkpoint(runs / "crystalchat" / "align" / "final", "align")) == "crystalchat-align"
    assert checkpoint_name(stage_checkpoint(runs / "other" / "finetune" / "final", "finetune")) == "other-finetune"
    # A checkpoint named after its stage (the quickstart's RUN/initial).
    assert checkpoint_name(stage_checkpoint(runs / "quick" / "initial", "initial")) == "quick-initial"
    # A `final` folder moved out of its run layout: named after the folder above it and the stage.
    assert checkpoint_name(stage_checkpoint(tmp_path / "exports" / "final", "finetune")) == "exports-finetune"
    # Renamed by the user: the user's name wins.
    assert checkpoint_name(stage_checkpoint(tmp_path / "my-model", "finetune")) == "my-model"
    # Foreign checkpoints (no sidecar): the folder name, even when it is `final`.
    assert checkpoint_name(stage_checkpoint(tmp_path / "llava-1.5-7b-hf", None)) == "llava-1.5-7b-hf"
    assert checkpoint_name(stage_checkpoint(tmp_path / "foreign" / "final", None)) == "final"
    # An unreadable sidecar: the folder name (loading the checkpoint reports the sidecar).
    broken = stage_checkpoint(runs / "broken" / "finetune" / "final", None)
    (broken / "crystalvlm.json").write_text("{not json")
    assert checkpoint_name(broken) == "final"
    # Not a folder here (a Hub id, resolved elsewhere): its last part.
    assert checkpoint_name("llava-hf/llava-1.5-7b-hf") == "llava-1.5-7b-hf"


def copy_as_stage(tiny_checkpoint: Path, run: Path, stage: str) -> Path:
    final = run / stage / "final"
    shutil.copytree(tiny_checkpoint, final)
    sidecar = json.loads((final / "crystalvlm.json").read_text()) | {"stage": stage, "recipe": "tiny"}
    (final / "crystalvlm.json").write_text(json.dumps(sidecar))
    return final


def test_eval_outputs_of_two_stages_do_not_collide(tiny_checkpoint, shapes_world, tmp_path, monkeypatch, capsys):
    """Both stages' checkpoints sit in folders called `final`; their evaluations land in runs/eval/<run>-<stage>."""
    run = tmp_path / "runs" / "shapes-run"
    stages = {stage: copy_as_stage(tiny_checkpoint, run, stage) for stage in ("align", "finetune")}
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for stage, checkpoint in stages.items():
        assert main(["eval", str(checkpoint), "--tasks", "pope_random", "--benchmarks", str(shapes_world),
                     "--limit", "2", "--max-new-tokens", "2", "--quiet"]) == 0
        out = work / "runs" / "eval" / f"shapes-run-{stage}"
        assert f"results: {Path('runs') / 'eval' / f'shapes-run-{stage}' / 'results.json'}" in capsys.readouterr().out
        assert json.loads((out / "results.json").read_text())["config"]["model"] == str(checkpoint.resolve())
        # lmms-eval's layout names its model folder the same way.
        assert len(list((out / "lmms-eval" / f"shapes-run-{stage}").glob("*_results.json"))) == 1
    assert sorted(path.name for path in (work / "runs" / "eval").iterdir()) == ["shapes-run-align", "shapes-run-finetune"]


def test_served_model_id_is_named_after_run_and_stage(tiny_checkpoint, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    import uvicorn

    checkpoint = copy_as_stage(tiny_checkpoint, tmp_path / "runs" / "shapes-run", "finetune")
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append(app))
    monkeypatch.delenv("CRYSTALVLM_API_KEY", raising=False)
    assert main(["serve", str(checkpoint)]) == 0
    with TestClient(apps[0], base_url="http://localhost") as client:
        assert [model["id"] for model in client.get("/v1/models").json()["data"]] == ["shapes-run-finetune"]

    assert main(["serve", str(checkpoint), "--model-name", "mine"]) == 0
    with TestClient(apps[1], base_url="http://localhost") as client:
        assert [model["id"] for model in client.get("/v1/models").json()["data"]] == ["mine"]
