"""Every command that takes a model accepts a checkpoint folder or a Hub id found in the Hugging Face
cache, offline; anything else is refused with a message that names it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crystalvlm.models.checkpoint import ModelNotFoundError, checkpoint_revision, load_checkpoint, resolve_model

REVISION = "0123456789abcdef0123456789abcdef01234567"


def _cache_tiny_checkpoint(hub_cache: Path, checkpoint: Path, repo_id: str) -> Path:
    """Lay a checkpoint out as huggingface_hub caches a download: the files as blobs, a snapshot
    folder of symlinks named by the commit, and refs/main naming that commit."""
    owner, name = repo_id.split("/")
    repo = hub_cache / f"models--{owner}--{name}"
    snapshot = repo / "snapshots" / REVISION
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for index, file in enumerate(sorted(p for p in checkpoint.iterdir() if p.is_file())):
        blob = repo / "blobs" / f"blob{index:04d}"
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache of this test's own, offline (HF_HOME and the hub's constant agree)."""
    import huggingface_hub.constants

    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_a_local_folder_is_used_as_it_is(tiny_checkpoint):
    assert resolve_model(tiny_checkpoint) == tiny_checkpoint
    assert resolve_model(str(tiny_checkpoint)) == tiny_checkpoint
    model, processor, info = load_checkpoint(str(tiny_checkpoint))
    assert info.template == "vicuna_v1" and model.config.image_seq_length == 16


def test_a_path_that_is_no_checkpoint_is_named(tmp_path, hub_cache):
    with pytest.raises(ModelNotFoundError, match=r"/nonexist/model is not a checkpoint folder \(it does not exist\)"):
        resolve_model("/nonexist/model")
    with pytest.raises(ModelNotFoundError, match=r"is not a checkpoint folder \(no config\.json\)"):
        load_checkpoint(tmp_path)


def test_an_uncached_hub_id_says_to_download_it(hub_cache):
    with pytest.raises(ModelNotFoundError) as caught:
        load_checkpoint("someone/not-downloaded")
    message = str(caught.value)
    assert "model 'someone/not-downloaded' is not a local folder and is not in the Hugging Face cache" in message
    assert "hf download someone/not-downloaded" in message
    assert isinstance(caught.value, FileNotFoundError)  # callers that catch OSError keep working


def test_a_cached_hub_id_resolves_to_its_snapshot(tiny_checkpoint, hub_cache):
    snapshot = _cache_tiny_checkpoint(hub_cache, tiny_checkpoint, "crystal/tiny-llava")
    assert resolve_model("crystal/tiny-llava") == snapshot
    model, processor, info = load_checkpoint("crystal/tiny-llava")
    assert info.template == "vicuna_v1"  # the sidecar is read from the snapshot
    assert model.config.image_seq_length == 16
    # The revision stamp reads the snapshot's files through their symlinks.
    assert len(checkpoint_revision(snapshot)) == 16
    assert checkpoint_revision(snapshot) != checkpoint_revision(tiny_checkpoint)  # other modification times


def test_data_check_takes_a_cached_hub_id(tiny_checkpoint, colour_world, tmp_path):
    """The command as a user runs it: a fresh process that finds the cache through HF_HOME."""
    home = tmp_path / "hf_home"
    _cache_tiny_checkpoint(home / "hub", tiny_checkpoint, "crystal/tiny-llava")
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-m", "crystalvlm.cli", "data", "check", str(colour_world["qa"]),
                           "--image-folder", str(colour_world["images"]), "--model", "crystal/tiny-llava", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["template"] == "vicuna_v1" and summary["bad"] == 0 and summary["good"] == 25


def test_commands_refuse_a_missing_model_with_the_message(hub_cache, colour_world, capsys):
    """generate (like chat and serve) and data check print the reason and exit 2, no traceback."""
    from crystalvlm.cli import main

    code = main(["generate", "someone/not-downloaded", "--prompt", "hi"])
    assert code == 2
    assert capsys.readouterr().err.startswith(
        "crystalvlm generate: error: model 'someone/not-downloaded' is not a local folder")
    code = main(["data", "check", str(colour_world["qa"]), "--model", "/nonexist/model", "--quiet"])
    assert code == 2
    assert "error: /nonexist/model is not a checkpoint folder" in capsys.readouterr().err
