"""Shared fixtures: a tiny world of coloured squares and a tiny tokenizer, built on the spot."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny_fixtures import corpus, write_colour_world


@pytest.fixture(scope="session")
def colour_world(tmp_path_factory) -> dict[str, Path]:
    return write_colour_world(tmp_path_factory.mktemp("colour_world"))


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    from crystalvlm.worlds.parts.tiny import train_tiny_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    train_tiny_tokenizer(corpus(), folder, vocab_size=400)
    return folder


@pytest.fixture(scope="session")
def smoke_quickstart(tmp_path_factory) -> Path:
    """The quickstart at `--scale smoke` (same path, small sizes), run once per test session."""
    from crystalvlm.worlds.quickstart import run_quickstart

    out = tmp_path_factory.mktemp("quickstart") / "run"
    run_quickstart(out, scale="smoke", seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny random Llava checkpoint (vicuna_v1 template, pad images): the same as tests/infer's fixture
    of this name, shared here so tests outside tests/infer can use it."""
    import torch
    from transformers import AutoTokenizer

    from crystalvlm.data.templates import get_template
    from crystalvlm.models.build import ModelSpec, PartSpec, build_llava
    from crystalvlm.models.checkpoint import CheckpointInfo, save_checkpoint
    from crystalvlm.worlds.parts.tiny import tiny_llm_config, tiny_vision_config

    vocab = len(AutoTokenizer.from_pretrained(tiny_tokenizer_dir))
    torch.manual_seed(1234)
    spec = ModelSpec(
        vision=PartSpec(config=tiny_vision_config(32, 8, 64, 2)),
        llm=PartSpec(config=tiny_llm_config(vocab, 64, 2)),
        tokenizer=str(tiny_tokenizer_dir),
    )
    model, processor = build_llava(spec, chat_template=get_template("vicuna_v1").chat_template_jinja())
    folder = tmp_path_factory.mktemp("tiny_llava") / "checkpoint"
    save_checkpoint(model, processor, folder, CheckpointInfo(template="vicuna_v1", image_mode="pad"))
    return folder


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread for the whole suite: tiny matrices on a 2-core machine shared with Chromium
    and subprocesses run several times slower with two threads spinning against each other."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_configure(config):
    """crystalvlm's caches (record checks, file hashes) go to a temporary folder of this session, never the
    user's ~/.cache. Set before collection, so environments that test modules copy at import (for
    training subprocesses) carry it too."""
    import os
    import tempfile

    config._crystalvlm_cache = tempfile.mkdtemp(prefix="crystalvlm-test-cache-")
    os.environ["CRYSTALVLM_CACHE"] = config._crystalvlm_cache


def pytest_unconfigure(config):
    import shutil

    folder = getattr(config, "_crystalvlm_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
