"""A stage with `packing: true` and `loss: chunked` trains the same steps as the padded full-loss stage
(the same trained tokens per step, close losses) and resumes bitwise; the recipe refuses bad settings."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from safetensors.torch import load_file

from crystalvlm.data.collate import collate_packed
from crystalvlm.train import trainer
from crystalvlm.train.recipe import RecipeError, load_recipe
from crystalvlm.train.trainer import TrainOptions, train_recipe
from tiny_fixtures import tiny_recipe


def _varied_qa(world, folder):
    """The colour world's QA records with 1-4 copies of their turns: lengths that can share a row."""
    records = [json.loads(line) for line in world["qa"].read_text().splitlines() if line]
    for index, record in enumerate(records):
        record["conversations"] = record["conversations"] + [
            turn | {"value": turn["value"].replace("<image>\n", "")} for turn in record["conversations"]] * (index % 4)
    path = folder / "varied_qa.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _finetune_recipe(tmp_path, tokenizer_dir, world, **settings):
    """The tiny recipe's finetune stage alone, on QA of varied lengths with a text-only record."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tiny_recipe(tmp_path, tokenizer_dir, world, epochs=2, batch_size=5, save_every=2, warmup_ratio=0.0)
    raw = yaml.safe_load(path.read_text())
    del raw["stages"]["align"]
    raw["datasets"]["qa"]["file"] = str(_varied_qa(world, tmp_path))
    raw["stages"]["finetune"].update(settings)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_recipe(str(path))


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "finetune/metrics.jsonl").read_text().splitlines() if line]


def test_packed_chunked_stage_matches_padded_and_resumes_bitwise(colour_world, tiny_tokenizer_dir, tmp_path,
                                                                  monkeypatch):
    padded = _finetune_recipe(tmp_path / "a", tiny_tokenizer_dir, colour_world, group_by_modality_length=False)
    packed = _finetune_recipe(tmp_path / "b", tiny_tokenizer_dir, colour_world, group_by_modality_length=False,
                              packing=True, loss="chunked", loss_chunk_size=16)
    train_recipe(padded, TrainOptions(run_dir=tmp_path / "padded", progress=False))
    layouts = []  # (rows, samples) of each packed micro-batch

    def noting_collate(samples, pad_token_id):
        batch = collate_packed(samples, pad_token_id)
        layouts.append((batch["input_ids"].shape[0], len(samples)))
        return batch

    monkeypatch.setattr(trainer, "collate_packed", noting_collate)
    train_recipe(packed, TrainOptions(run_dir=tmp_path / "packed", progress=False))
    assert sum(rows for rows, _ in layouts) < sum(samples for _, samples in layouts)  # samples did share rows
    reference, ours = _metrics(tmp_path / "padded"), _metrics(tmp_path / "packed")
    assert [m["tokens"] for m in ours] == [m["tokens"] for m in reference]  # the same samples at each step
    # Same data, same initial weights: the losses agree up to float noise growing over the steps.
    for mine, theirs in zip(ours, reference):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-3)

    # Killed after step 2 (the final checkpoint and later metrics gone), resumed: bitwise the same weights.
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "packed", resumed)
    shutil.rmtree(resumed / "finetune/final")
    assert (resumed / "finetune/checkpoints").is_dir()
    train_recipe(packed, TrainOptions(run_dir=resumed, progress=False, resume=True, save_every=2))
    expected = load_file(str(tmp_path / "packed/finetune/final/model.safetensors"))
    finished = load_file(str(resumed / "finetune/final/model.safetensors"))
    assert finished.keys() == expected.keys()
    for name in expected:
        assert (finished[name] == expected[name]).all(), name
    assert [m["loss"] for m in _metrics(resumed)] == [m["loss"] for m in ours]


@pytest.mark.parametrize("settings, message", [
    ({"loss": "fused"}, "loss must be one of full, chunked"),
    ({"loss_chunk_size": 0}, "loss_chunk_size must be a positive integer"),
    ({"kind": "dpo", "packing": True}, "apply to sft stages"),
])
def test_recipe_refuses_bad_packing_and_loss_settings(colour_world, tiny_tokenizer_dir, tmp_path, settings, message):
    with pytest.raises((RecipeError, ValueError), match=message):
        _finetune_recipe(tmp_path, tiny_tokenizer_dir, colour_world, **settings)
