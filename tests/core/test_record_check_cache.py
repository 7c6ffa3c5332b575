"""The record check runs in parallel and is cached by content: a second run on the same data skips
it, and any change to the data, its images or the encoder checks again. Results are the same either way."""

from __future__ import annotations

import json

import pytest

from test_bad_records import bad_dataset  # noqa: F401 - the fixture is used by name
from tiny_fixtures import tiny_recipe

from crystalvlm.data import dataset as dataset_module
from crystalvlm.data.check_cache import CheckCache
from crystalvlm.data.dataset import DataSource, prepare_dataset
from crystalvlm.data.sample_encoder import SampleEncoder
from crystalvlm.infer.prompts import checkpoint_encoder
from crystalvlm.train.recipe import load_recipe
from crystalvlm.train.trainer import TrainOptions, train_recipe


def _outcomes(prepared) -> tuple[list, list]:
    return ([(item.record.record_id, item.length) for item in prepared.items],
            sorted((problem.record_id or "", problem.reason) for problem in prepared.problems))


@pytest.fixture()
def counting(monkeypatch) -> list:
    """Counts records the encoder really checks."""
    calls: list = []
    original = SampleEncoder.check_record

    def counted(self, record, image_folder):
        calls.append(record.record_id)
        return original(self, record, image_folder)

    monkeypatch.setattr(SampleEncoder, "check_record", counted)
    return calls


def test_second_check_comes_from_the_cache_with_the_same_results(bad_dataset, tiny_checkpoint, tmp_path, counting):
    path, _, _ = bad_dataset
    source = DataSource(path, path.parent / "images")
    encoder = checkpoint_encoder(tiny_checkpoint, max_length=200, require_template=True)
    cache = CheckCache(tmp_path / "cache")
    first = prepare_dataset([source], encoder, cache=cache)
    assert counting and first.cached == []
    checked = len(counting)
    second = prepare_dataset([source], encoder, cache=cache)
    assert len(counting) == checked, "the second run checked records again"
    assert second.cached == [path]
    assert _outcomes(second) == _outcomes(first)
    uncached = prepare_dataset([source], encoder)
    assert _outcomes(uncached) == _outcomes(first)


def test_changed_images_data_or_encoder_are_checked_again(colour_world, tiny_checkpoint, tmp_path, counting):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(colour_world["images"], images)
    data = tmp_path / "qa.jsonl"
    data.write_text(colour_world["qa"].read_text())
    source = DataSource(data, images)
    encoder = checkpoint_encoder(tiny_checkpoint, require_template=True)
    cache = CheckCache(tmp_path / "cache")
    prepare_dataset([source], encoder, cache=cache)
    assert prepare_dataset([source], encoder, cache=cache).cached == [data]

    (images / "img003.png").write_bytes(b"damaged since the last run")  # an image changed on disk
    again = prepare_dataset([source], encoder, cache=cache)
    assert again.cached == [] and any("img003" in p.reason or "not a readable image" in p.reason for p in again.problems)

    data.write_text(colour_world["qa"].read_text().replace('"Yes"', '"Yes, it is."'))  # the data changed
    assert prepare_dataset([source], encoder, cache=cache).cached == []
    assert prepare_dataset([source], encoder, cache=cache).cached == [data]

    shorter = checkpoint_encoder(tiny_checkpoint, max_length=40, require_template=True)  # the encoder changed
    assert prepare_dataset([source], shorter, cache=cache).cached == []


def test_parallel_check_gives_the_serial_results(bad_dataset, tiny_checkpoint, monkeypatch, counting):
    path, _, _ = bad_dataset
    source = DataSource(path, path.parent / "images")
    encoder = checkpoint_encoder(tiny_checkpoint, max_length=200, require_template=True)
    serial = prepare_dataset([source], encoder, workers=1)
    assert counting
    counting.clear()
    monkeypatch.setattr(dataset_module, "PARALLEL_MIN_RECORDS", 1)
    monkeypatch.setattr(dataset_module, "CHUNK", 4)  # several chunks, so order across workers matters
    parallel = prepare_dataset([source], encoder, workers=2)
    assert counting == []  # every record was checked in a worker process, none in this one
    assert _outcomes(parallel) == _outcomes(serial)
    assert [item.record.record_id for item in parallel.items] == [item.record.record_id for item in serial.items]


def test_a_second_train_skips_the_record_check(colour_world, tiny_tokenizer_dir, tmp_path, counting):
    recipe = load_recipe(str(tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world, max_steps=1)))
    train_recipe(recipe, TrainOptions(run_dir=tmp_path / "first", stages=["align"], progress=False))
    first = json.loads((tmp_path / "first/align/data_check.json").read_text())
    checked = len(counting)
    train_recipe(recipe, TrainOptions(run_dir=tmp_path / "second", stages=["align"], progress=False))
    second = json.loads((tmp_path / "second/align/data_check.json").read_text())
    assert len(counting) == checked
    assert second["cached_sources"] == [str(colour_world["captions"])] and second["records"] == first["records"]


def test_an_unwritable_cache_only_warns(colour_world, tiny_checkpoint, tmp_path, caplog):
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("a file where the cache folder would be")
    source = DataSource(colour_world["qa"], colour_world["images"])
    encoder = checkpoint_encoder(tiny_checkpoint, require_template=True)
    prepared = prepare_dataset([source], encoder, cache=CheckCache(blocked / "record-checks"))
    assert _outcomes(prepared) == _outcomes(prepare_dataset([source], encoder))
    assert "record-check cache not written" in caplog.text
