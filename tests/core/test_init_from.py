"""A stage may start from a full LLaVA model (`init_from:` in the stage, `--init-from` on train), a
folder or a Hub id already in the HF cache, instead of composing the recipe's parts."""

from __future__ import annotations

import pytest
import torch
import yaml

from test_model_resolution import _cache_tiny_checkpoint, hub_cache  # noqa: F401 - the fixture is used by name
from tiny_fixtures import tiny_recipe

from crystalvlm.cli import main
from crystalvlm.models.checkpoint import load_checkpoint
from crystalvlm.train import trainer
from crystalvlm.train.recipe import load_recipe
from crystalvlm.train.trainer import TrainOptions, train_recipe


def _spy_on_start(monkeypatch) -> dict:
    """Note every parameter of the model a stage starts with, right after build_or_load."""
    seen: dict = {}
    original = trainer.build_or_load

    def noting(run, init_from):
        model, processor = original(run, init_from)
        seen[run.stage.name] = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        return model, processor

    monkeypatch.setattr(trainer, "build_or_load", noting)
    return seen


def _assert_same_weights(start: dict, source) -> None:
    expected = source.state_dict()
    assert set(start) == set(expected)
    assert all(torch.equal(start[name], expected[name]) for name in expected)


def test_a_stage_with_init_from_starts_from_that_model_and_trains(tiny_checkpoint, tiny_tokenizer_dir, colour_world,
                                                                  tmp_path, monkeypatch):
    raw = yaml.safe_load(tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world, max_steps=2).read_text())
    del raw["model"]  # nothing to compose: the stage names a full model
    raw["stages"]["align"]["init_from"] = str(tiny_checkpoint)
    path = tmp_path / "from_model.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    seen = _spy_on_start(monkeypatch)
    results = train_recipe(load_recipe(str(path)), TrainOptions(run_dir=tmp_path / "run", stages=["align"], progress=False))

    source, _, _ = load_checkpoint(tiny_checkpoint)
    _assert_same_weights(seen["align"], source)
    trained, _, info = load_checkpoint(results[0].checkpoint)
    assert info.template == "plain" and results[0].steps == 2
    projector = "model.multi_modal_projector.linear_1.weight"
    assert not torch.equal(trained.state_dict()[projector], source.state_dict()[projector])  # it trained
    vision = next(name for name in source.state_dict() if "vision_tower" in name)
    assert torch.equal(trained.state_dict()[vision], source.state_dict()[vision])  # frozen parts stay the source's


def test_init_from_flag_takes_a_cached_hub_id(tiny_checkpoint, tiny_tokenizer_dir, colour_world, tmp_path, hub_cache,
                                              monkeypatch, capsys):
    _cache_tiny_checkpoint(hub_cache, tiny_checkpoint, "someone/tiny-llava")
    recipe = tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world)
    seen = _spy_on_start(monkeypatch)
    status = main(["train", str(recipe), "--stage", "finetune", "--init-from", "someone/tiny-llava",
                   "--max-steps", "1", "--out", str(tmp_path / "run"), "--quiet"])
    assert status == 0, capsys.readouterr().err
    source, _, _ = load_checkpoint(tiny_checkpoint)
    _assert_same_weights(seen["finetune"], source)  # not align's output (there is none) nor the recipe's parts
    assert (tmp_path / "run/finetune/final/config.json").is_file()


def test_an_uncached_hub_id_is_refused_before_any_work(tiny_tokenizer_dir, colour_world, tmp_path, hub_cache, capsys):
    recipe = tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world)
    status = main(["train", str(recipe), "--init-from", "someone/not-downloaded", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2
    assert "'someone/not-downloaded' is not a local folder and is not in the Hugging Face cache" in err
    assert "hf download someone/not-downloaded" in err
    assert not (tmp_path / "run").exists()


def test_a_recipe_without_parts_or_init_from_is_refused(tiny_tokenizer_dir, colour_world, tmp_path):
    raw = yaml.safe_load(tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world).read_text())
    del raw["model"]
    path = tmp_path / "no_model.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ValueError, match="no 'model' section.*init_from"):
        train_recipe(load_recipe(str(path)), TrainOptions(run_dir=tmp_path / "run", progress=False))
