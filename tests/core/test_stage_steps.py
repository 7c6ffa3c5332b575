"""Each stage runs in its own precision, writes and prints what it trains, and tells the trackers
its learning rate per part, its throughput and the resolved recipe."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tiny_fixtures import tiny_recipe
from crystalvlm.train import trainer
from crystalvlm.train.recipe import load_recipe
from crystalvlm.train.trainer import TrainOptions, train_recipe


def _two_precisions(tmp_path, tiny_tokenizer_dir, colour_world, align: str, finetune: str):
    path = tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world, max_steps=2)
    raw = yaml.safe_load(path.read_text())
    raw["stages"]["align"]["precision"] = align
    raw["stages"]["finetune"]["precision"] = finetune
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_recipe(str(path))


def test_each_stage_runs_in_its_own_precision(colour_world, tiny_tokenizer_dir, tmp_path, monkeypatch):
    recipe = _two_precisions(tmp_path, tiny_tokenizer_dir, colour_world, align="fp32", finetune="bf16")
    seen: list[tuple[str, bool, torch.dtype]] = []
    plain_loss = trainer._ce_sum
    current_stage = {}
    original_freeze = trainer.freeze

    def freeze_and_note_stage(run, model):
        current_stage["name"] = run.stage.name
        return original_freeze(run, model)

    def loss_noting_autocast(logits, labels):
        seen.append((current_stage["name"], torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return plain_loss(logits, labels)

    monkeypatch.setattr(trainer, "freeze", freeze_and_note_stage)
    monkeypatch.setattr(trainer, "_ce_sum", loss_noting_autocast)
    train_recipe(recipe, TrainOptions(run_dir=tmp_path / "run", progress=False))

    align = [(enabled, dtype) for stage, enabled, dtype in seen if stage == "align"]
    finetune = [(enabled, dtype) for stage, enabled, dtype in seen if stage == "finetune"]
    assert len(align) == len(finetune) == 2
    assert all(not enabled for enabled, _ in align), "fp32 stage ran under autocast"
    assert all(enabled and dtype == torch.bfloat16 for enabled, dtype in finetune), finetune
    summaries = {stage: json.loads((tmp_path / f"run/{stage}/freeze_summary.json").read_text())
                 for stage in ("align", "finetune")}
    assert summaries["align"]["precision"] == "no" and summaries["finetune"]["precision"] == "bf16"


def test_the_first_stage_precision_is_not_imposed_on_the_next(colour_world, tiny_tokenizer_dir, tmp_path):
    """bf16 then fp32: the second stage's accelerator really is fp32 (accelerate's state is reset)."""
    recipe = _two_precisions(tmp_path, tiny_tokenizer_dir, colour_world, align="bf16", finetune="fp32")
    train_recipe(recipe, TrainOptions(run_dir=tmp_path / "run", progress=False))
    precisions = [json.loads((tmp_path / f"run/{stage}/freeze_summary.json").read_text())["precision"]
                  for stage in ("align", "finetune")]
    assert precisions == ["bf16", "no"]


def test_freeze_summary_is_written_and_printed(colour_world, tiny_tokenizer_dir, tmp_path, capsys):
    from crystalvlm.models.checkpoint import load_checkpoint

    recipe = load_recipe(str(tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world, max_steps=1)))
    results = train_recipe(recipe, TrainOptions(run_dir=tmp_path / "run", progress=False))
    out = capsys.readouterr().out
    model, _, _ = load_checkpoint(results[-1].checkpoint)
    counts = {"vision": sum(p.numel() for p in model.model.vision_tower.parameters()),
              "projector": sum(p.numel() for p in model.model.multi_modal_projector.parameters())}

    align = json.loads((tmp_path / "run/align/freeze_summary.json").read_text())
    assert align["stage"] == "align"
    assert {name: part["trains"] for name, part in align["parts"].items()} == {"vision": False, "projector": True,
                                                                                 "llm": False}
    assert align["parts"]["projector"] == {"trains": True, "parameters": counts["projector"],
                                           "trainable": counts["projector"], "lr": 1e-3}
    assert align["parts"]["vision"] == {"trains": False, "parameters": counts["vision"], "trainable": 0, "lr": None}
    assert align["total"]["trainable"] == counts["projector"]
    finetune = json.loads((tmp_path / "run/finetune/freeze_summary.json").read_text())
    assert finetune["parts"]["llm"]["trains"] and finetune["parts"]["llm"]["lr"] == 5e-4
    assert finetune["total"]["parameters"] == align["total"]["parameters"]
    assert finetune["total"]["trainable"] == counts["projector"] + finetune["parts"]["llm"]["parameters"]
    # The console shows the same table, per stage.
    assert out.count("learning rate") == 2
    assert f"{'projector':<10}{counts['projector']:>14,}{counts['projector']:>14,}  0.001" in out
    assert "vision" in out and "frozen" in out


def test_trackers_get_lr_per_part_throughput_and_the_resolved_recipe(colour_world, tiny_tokenizer_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = load_recipe(str(tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world, max_steps=2)))
    train_recipe(recipe, TrainOptions(run_dir=tmp_path / "tb", progress=False, report_to=["tensorboard"]))
    tags: set[str] = set()
    values: dict[str, list[float]] = {}
    for events in (tmp_path / "tb").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            tags.add(tag)
            values.setdefault(tag, []).extend(event.value for event in accumulator.Scalars(tag))
    for stage, parts in (("align", ["projector"]), ("finetune", ["projector", "llm"])):
        assert {f"{stage}/loss", f"{stage}/grad_norm", f"{stage}/tokens_per_s"} <= tags, tags
        assert {f"{stage}/lr/{part}" for part in parts} <= tags, tags
        assert all(v > 0 for v in values[f"{stage}/tokens_per_s"])
    # The configuration: the resolved recipe, stage fields with their defaults filled in.
    configs = [yaml.safe_load(path.read_text()) for path in (tmp_path / "tb").rglob("hparams.yml")]
    assert len(configs) == 2
    config = configs[0]
    assert config["stages/align/lr/projector"] == pytest.approx(1e-3)
    assert config["stages/finetune/max_grad_norm"] == 1.0  # a default the YAML does not state
    assert config["seed"] == recipe.seed and config["name"] == recipe.name
    assert str(colour_world["captions"]) == config["datasets/captions/file"]
