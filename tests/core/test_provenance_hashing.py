"""Provenance hashing never holds a run up: images are hashed in the background while training runs,
and file digests are reused while (size, modification time) are unchanged."""

from __future__ import annotations

import json
import os
import shutil
import threading


from tiny_fixtures import tiny_recipe

from crystalvlm.train import provenance, trainer
from crystalvlm.train.recipe import load_recipe
from crystalvlm.train.trainer import TrainOptions, train_recipe


def test_folder_digests_are_reused_until_a_file_changes(colour_world, tmp_path, monkeypatch):
    folder = tmp_path / "images"
    shutil.copytree(colour_world["images"], folder)
    plain = provenance.sha256_folder(folder)
    cache = tmp_path / "hashes"
    assert provenance.sha256_folder(folder, cache) == plain

    hashed: list[str] = []
    real = provenance.sha256_file

    def counting(path):
        hashed.append(path.name)
        return real(path)

    monkeypatch.setattr(provenance, "sha256_file", counting)
    assert provenance.sha256_folder(folder, cache) == plain and hashed == []  # nothing read again
    (folder / "img005.png").write_bytes(b"changed")
    os.utime(folder / "img005.png", ns=(1, 1))
    changed = provenance.sha256_folder(folder, cache)
    assert hashed == ["img005.png"] and changed != plain
    monkeypatch.setattr(provenance, "sha256_file", real)
    assert provenance.sha256_folder(folder) == changed


def test_training_starts_while_images_are_hashed(colour_world, tiny_tokenizer_dir, tmp_path, monkeypatch):
    stage_started = threading.Event()
    seen = {}
    real_folder = provenance.sha256_folder
    real_stage = trainer.train_stage

    def slow_hashing(folder, cache_dir=None):
        # Returns only once training has started (or after 30 s, when something made the run wait for it).
        seen["training_started_first"] = stage_started.wait(timeout=30)
        return real_folder(folder, cache_dir)

    def noting_stage(*args, **kwargs):
        stage_started.set()
        return real_stage(*args, **kwargs)

    monkeypatch.setattr(provenance, "sha256_folder", slow_hashing)
    monkeypatch.setattr(trainer, "train_stage", noting_stage)
    recipe = load_recipe(str(tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world, max_steps=1)))
    train_recipe(recipe, TrainOptions(run_dir=tmp_path / "run", stages=["align"], progress=False))
    assert seen["training_started_first"] is True
    record = json.loads((tmp_path / "run/provenance.json").read_text())  # written by the time the run returns
    assert record["image_folders"][str(colour_world["images"])]["files"] == 24
