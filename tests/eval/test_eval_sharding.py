"""Evaluation under torchrun: which rank answers which sample, on which device; shards merged on CPU."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from crystalvlm.eval.runner import Shard, evaluate, shard_samples
from crystalvlm.eval.tasks.base import EvalSample
from crystalvlm.eval.tasks.registry import build_task
from crystalvlm.infer.engine import DecodingConfig, GenerationEngine
from crystalvlm.infer.launch import resolve_device


def mixed_samples() -> list[EvalSample]:
    """Images with 6, 2 and 1 questions, interleaved as a benchmark file may list them, and text-only samples."""
    samples = []
    sizes = {"a": 6, "b": 2, "c": 2, "d": 1, "e": 6, "f": 2}
    for round_ in range(6):
        for image, size in sizes.items():
            if round_ < size:
                samples.append(EvalSample(f"{image}{round_}", Path(f"/images/{image}.png"), f"q{round_}", "yes", {}))
        samples.append(EvalSample(f"text{round_}", None, f"t{round_}", "A", {}))
    return samples


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_each_image_stays_on_one_rank_and_ranks_are_balanced(world):
    samples = mixed_samples()
    shares = [shard_samples(samples, Shard(rank, world)) for rank in range(world)]
    ids = [sample.sample_id for share in shares for sample in share]
    assert sorted(ids) == sorted(sample.sample_id for sample in samples)  # every sample once
    order = {sample.sample_id: index for index, sample in enumerate(samples)}
    for share in shares:
        assert [order[s.sample_id] for s in share] == sorted(order[s.sample_id] for s in share)  # task order
    for image in "abcdef":
        holders = {rank for rank, share in enumerate(shares) for s in share if s.image == Path(f"/images/{image}.png")}
        assert len(holders) == 1, (image, holders)
    loads = [len(share) for share in shares]
    assert max(loads) - min(loads) <= 6  # within the largest image's questions
    if world <= 3:
        assert max(loads) - min(loads) <= 1  # small groups fill in behind the large ones


def test_the_old_interleaving_would_split_images_and_this_does_not(shapes_world):
    """POPE asks 6 questions per image; every WORLD_SIZE-th sample put each image on both ranks."""
    task = build_task("pope_random", shapes_world / "benchmarks", image_folder=shapes_world / "images" / "eval")
    samples = task.samples()
    assert {s.image for s in samples[0::2]} == {s.image for s in samples[1::2]}  # the old assignment
    first, second = (shard_samples(samples, Shard(rank, 2)) for rank in range(2))
    assert len(first) == len(second) == 12
    assert not {s.image for s in first} & {s.image for s in second}


def test_a_rank_outside_the_world_is_refused():
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        shard_samples(mixed_samples(), Shard(2, 2))


def test_torchrun_environment_gives_rank_share_and_gpu(monkeypatch):
    """Second machine of two, second GPU: global RANK picks the share, LOCAL_RANK the device."""
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert Shard.from_env() == Shard(3, 4)
    assert resolve_device("auto") == "cuda:1"
    assert resolve_device("cuda") == "cuda:1"


class Counting:
    """An engine that counts the requests it is asked to answer."""

    def __init__(self, engine):
        self.engine, self.requests = engine, 0

    def generate(self, requests, config):
        self.requests += len(requests)
        return self.engine.generate(requests, config)


def test_two_ranks_merge_to_the_single_process_result_and_a_restart_with_one_reuses_both(tiny_checkpoint, shapes_world,
                                                                                          tmp_path):
    tasks = []
    for name in ("pope_adversarial", "mme"):
        options = {"image_folder": shapes_world / "images" / "eval"} if name.startswith("pope") else {}
        task = build_task(name, shapes_world / "benchmarks", max_new_tokens=3, **options)
        tasks.append(task.select([sample.sample_id for sample in task.samples()[:10]]))
    decoding = DecodingConfig.parse("greedy")
    single = evaluate(GenerationEngine.from_checkpoint(tiny_checkpoint, batch_size=4), tasks, tmp_path / "single",
                      decoding, model_id="tiny", progress=False)

    out = tmp_path / "sharded"
    engines = [Counting(GenerationEngine.from_checkpoint(tiny_checkpoint, batch_size=4)) for _ in range(2)]
    results: dict[int, dict] = {}
    errors: list[BaseException] = []

    def run(rank: int) -> None:
        try:
            results[rank] = evaluate(engines[rank], tasks, out, decoding, model_id="tiny", progress=False,
                                     shard=Shard(rank, 2))
        except BaseException as error:  # surfaced below; a thread's exception is otherwise lost
            errors.append(error)

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    assert results[0] == single and results[1] == {}  # rank 0 scores; rank 1 only answers
    total = sum(len(task.samples()) for task in tasks)
    assert engines[0].requests + engines[1].requests == total and min(e.requests for e in engines) > 0
    for task in tasks:
        lines = lambda folder: (folder / f"samples_{task.name}.jsonl").read_text()  # noqa: E731
        assert lines(out) == lines(tmp_path / "single")
    # Each rank's cache holds whole images only.
    for task in tasks:
        images = [{json.loads(line)["id"] for line in (out / "cache" / f"{task.name}.rank{rank}.jsonl").read_text().splitlines()}
                  for rank in range(2)]
        by_id = {sample.sample_id: sample.image for sample in task.samples()}
        assert not {by_id[i] for i in images[0]} & {by_id[i] for i in images[1]}

    # Restarted on one process: every answer is found in the two ranks' files.
    again = Counting(GenerationEngine.from_checkpoint(tiny_checkpoint, batch_size=4))
    assert evaluate(again, tasks, out, decoding, model_id="tiny", progress=False, shard=Shard(0, 1)) == single
    assert again.requests == 0
