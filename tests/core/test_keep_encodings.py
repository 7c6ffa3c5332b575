"""`keep_encodings`: a record's ids and labels are encoded once (by the record check, or at its first
sample) and reused; the samples, the training and its resume are bitwise what re-encoding gives."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from crystalvlm.data import dataset as dataset_module
from crystalvlm.data.check_cache import CheckCache
from crystalvlm.data.dataset import ConversationDataset, DataSource, prepare_dataset
from crystalvlm.data.sample_encoder import SampleEncoder
from crystalvlm.data.templates import Template, get_template
from crystalvlm.train.recipe import load_recipe
from crystalvlm.train.trainer import TrainOptions, train_recipe
from tiny_fixtures import tiny_recipe


@pytest.fixture(scope="module")
def encoder(tiny_checkpoint):
    from transformers import AutoConfig, AutoProcessor

    processor, config = AutoProcessor.from_pretrained(tiny_checkpoint), AutoConfig.from_pretrained(tiny_checkpoint)
    return SampleEncoder.from_processor(processor, config, get_template("vicuna_v1"), "pad", max_length=256)


def _samples(dataset: ConversationDataset) -> list[dict]:
    return [dataset[index] for index in range(len(dataset))]


def _assert_same_samples(ours: ConversationDataset, reference: list[dict]) -> None:
    assert len(ours) == len(reference)
    for index, theirs in enumerate(reference):
        mine = ours[index]
        assert mine["input_ids"] == theirs["input_ids"] and mine["labels"] == theirs["labels"], index
        assert isinstance(mine["input_ids"], list) and isinstance(mine["labels"], list)
        if theirs["pixel_values"] is None:  # a text-only record
            assert mine["pixel_values"] is None, index
        else:
            assert torch.equal(mine["pixel_values"], theirs["pixel_values"]), index


def _refuse_tokenising(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a kept record was tokenised again")

    monkeypatch.setattr(Template, "encode_many", refuse)


def test_the_checks_encodings_are_kept_and_give_the_same_samples(encoder, colour_world, monkeypatch):
    sources = [DataSource(colour_world["qa"], colour_world["images"])]
    plain = ConversationDataset(prepare_dataset(sources, encoder), encoder)
    reference = _samples(plain)
    # Checked in two worker processes (the threshold lowered so this small file is spread over them).
    monkeypatch.setattr(dataset_module, "PARALLEL_MIN_RECORDS", 1)
    monkeypatch.setattr(dataset_module, "CHUNK", 3)
    prepared = prepare_dataset(sources, encoder, workers=2, keep_encodings=True)
    assert all(item.encoding is not None for item in prepared.items)
    assert [item.length for item in prepared.items] == [len(item.encoding[0]) for item in prepared.items]
    kept = ConversationDataset(prepared, encoder, keep_encodings=True)
    _refuse_tokenising(monkeypatch)  # from here on, a kept dataset must not tokenise
    _assert_same_samples(kept, reference)
    with pytest.raises(AssertionError, match="tokenised again"):
        plain[0]  # (the guard works: a dataset without kept encodings does tokenise)


def test_a_cached_check_keeps_each_encoding_at_its_first_sample(encoder, colour_world, tmp_path, monkeypatch):
    sources = [DataSource(colour_world["qa"], colour_world["images"])]
    cache = CheckCache(tmp_path / "cache")
    reference = _samples(ConversationDataset(prepare_dataset(sources, encoder, cache=cache), encoder))
    prepared = prepare_dataset(sources, encoder, cache=cache, keep_encodings=True)
    assert prepared.cached == [colour_world["qa"]] and all(item.encoding is None for item in prepared.items)
    kept = ConversationDataset(prepared, encoder, keep_encodings=True)
    assert kept.encodings == [None] * len(kept)
    _assert_same_samples(kept, reference)  # the first pass encodes and keeps
    assert all(encoding is not None for encoding in kept.encodings)
    _refuse_tokenising(monkeypatch)
    _assert_same_samples(kept, reference)  # the second pass reads the kept ids only


def _finetune_recipe(tmp_path, tokenizer_dir, world, **settings):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tiny_recipe(tmp_path, tokenizer_dir, world, epochs=2, batch_size=5, save_every=2, warmup_ratio=0.0)
    raw = yaml.safe_load(path.read_text())
    del raw["stages"]["align"]
    raw["stages"]["finetune"].update(settings)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_recipe(str(path))


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "finetune/metrics.jsonl").read_text().splitlines() if line]


def _assert_same_weights(folder, reference) -> None:
    expected = load_file(str(reference / "finetune/final/model.safetensors"))
    finished = load_file(str(folder / "finetune/final/model.safetensors"))
    assert finished.keys() == expected.keys()
    for name in expected:
        assert torch.equal(finished[name], expected[name]), name


def test_a_stage_with_kept_encodings_trains_and_resumes_bitwise(colour_world, tiny_tokenizer_dir, tmp_path,
                                                                monkeypatch):
    plain = _finetune_recipe(tmp_path / "a", tiny_tokenizer_dir, colour_world)
    kept = _finetune_recipe(tmp_path / "b", tiny_tokenizer_dir, colour_world, keep_encodings=True)
    assert kept.stage("finetune").keep_encodings and not plain.stage("finetune").keep_encodings
    monkeypatch.setenv("CRYSTALVLM_CACHE", str(tmp_path / "cache-plain"))
    train_recipe(plain, TrainOptions(run_dir=tmp_path / "plain", progress=False))
    # A fresh check cache: the encodings come from the check itself.
    monkeypatch.setenv("CRYSTALVLM_CACHE", str(tmp_path / "cache-kept"))
    train_recipe(kept, TrainOptions(run_dir=tmp_path / "kept", progress=False))
    assert _losses(tmp_path / "kept") == _losses(tmp_path / "plain")
    _assert_same_weights(tmp_path / "kept", tmp_path / "plain")

    # Killed after step 2, resumed (the check now cached: encodings kept at first sample): bitwise the same.
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "kept", resumed)
    shutil.rmtree(resumed / "finetune/final")
    train_recipe(kept, TrainOptions(run_dir=resumed, progress=False, resume=True, save_every=2))
    assert json.loads((resumed / "finetune/data_check.json").read_text())["cached_sources"]
    _assert_same_weights(resumed, tmp_path / "plain")
    assert _losses(resumed) == _losses(tmp_path / "plain")
