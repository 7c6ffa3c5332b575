"""An interrupted evaluation, restarted, generates only what it had not finished; changed settings
or weights are generated again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from crystalvlm.cli import main
from crystalvlm.eval.runner import evaluate
from crystalvlm.eval.tasks.registry import build_task
from crystalvlm.infer.engine import DecodingConfig, GenerationEngine

POPE_QUESTIONS = 24  # 4 held-out images x 6 questions (shapes_world fixture)


class Interrupted(Exception):
    """Stands for Ctrl-C or a crash in the middle of a run."""


@pytest.fixture()
def generated(monkeypatch) -> list[int]:
    """Patches the engine to record how many requests each `generate` call received."""
    original = GenerationEngine.generate
    sizes: list[int] = []

    def counting(self, requests, config, *args, **kwargs):
        sizes.append(len(requests))
        return original(self, requests, config, *args, **kwargs)

    monkeypatch.setattr(GenerationEngine, "generate", counting)
    return sizes


def eval_argv(checkpoint: Path, world: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", str(checkpoint), "--tasks", "pope_random", "--benchmarks", str(world), "--max-new-tokens", "3",
            "--save-every", "5", "--batch-size", "5", "--out", str(out), "--quiet", *extra]


def cache_lines(out: Path) -> int:
    return len((out / "cache" / "pope_random.rank0.jsonl").read_text().splitlines())


def test_restarted_evaluation_generates_only_the_unfinished_samples(tiny_checkpoint, shapes_world, tmp_path,
                                                                    generated, monkeypatch, capsys):
    out = tmp_path / "out"
    counting = GenerationEngine.generate

    def crash_in_third_chunk(self, requests, config, *args, **kwargs):
        if len(generated) == 2:
            raise Interrupted
        return counting(self, requests, config, *args, **kwargs)

    monkeypatch.setattr(GenerationEngine, "generate", crash_in_third_chunk)
    with pytest.raises(Interrupted):
        main(eval_argv(tiny_checkpoint, shapes_world, out))
    assert generated == [5, 5]
    assert cache_lines(out) == 10  # both finished chunks were saved before the crash
    assert not (out / "results.json").exists()

    monkeypatch.setattr(GenerationEngine, "generate", counting)
    generated.clear()
    assert main(eval_argv(tiny_checkpoint, shapes_world, out)) == 0
    assert sum(generated) == POPE_QUESTIONS - 10
    assert cache_lines(out) == POPE_QUESTIONS

    # The resumed run's answers are those of a run that was never interrupted.
    fresh = tmp_path / "fresh"
    assert main(eval_argv(tiny_checkpoint, shapes_world, fresh)) == 0
    assert (out / "samples_pope_random.jsonl").read_text() == (fresh / "samples_pope_random.jsonl").read_text()

    generated.clear()
    assert main(eval_argv(tiny_checkpoint, shapes_world, out)) == 0
    assert generated == []  # everything cached
    capsys.readouterr()


def test_other_budget_or_rewritten_weights_are_generated_again(tiny_checkpoint, shapes_world, tmp_path,
                                                               generated, capsys):
    import shutil

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint)
    out = tmp_path / "out"
    assert main(eval_argv(checkpoint, shapes_world, out)) == 0
    assert sum(generated) == POPE_QUESTIONS

    generated.clear()
    assert main(eval_argv(checkpoint, shapes_world, out, "--max-new-tokens", "2")) == 0
    assert sum(generated) == POPE_QUESTIONS  # answers cut at 3 tokens are not answers cut at 2

    # Training again into the same folder rewrites the weights (here: only their modification time).
    weights = checkpoint / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    generated.clear()
    assert main(eval_argv(checkpoint, shapes_world, out)) == 0
    assert sum(generated) == POPE_QUESTIONS
    capsys.readouterr()


def test_a_cache_line_cut_by_a_kill_costs_one_sample(tiny_checkpoint, shapes_world, tmp_path):
    """SIGKILL during a cache write leaves a partial last line: that sample is generated again, the cut
    line is removed, and the answers appended after it stay readable."""
    task = build_task("pope_popular", shapes_world / "benchmarks", image_folder=shapes_world / "images" / "eval",
                      max_new_tokens=3)
    task = task.select([sample.sample_id for sample in task.samples()[:8]])
    engine = GenerationEngine.from_checkpoint(tiny_checkpoint, batch_size=4)

    class Counting:
        requests = 0

        def generate(self, requests, config):
            Counting.requests += len(requests)
            return engine.generate(requests, config)

    out = tmp_path / "out"
    decoding = DecodingConfig.parse("greedy")
    first = evaluate(Counting(), [task], out, decoding, model_id="tiny", progress=False, chunk_size=4)
    cache = out / "cache" / "pope_popular.rank0.jsonl"
    text = cache.read_text()
    last_line_start = text.rstrip("\n").rfind("\n") + 1
    cache.write_text(text[:last_line_start + 15])  # the last entry cut mid-write, no newline

    Counting.requests = 0
    assert evaluate(Counting(), [task], out, decoding, model_id="tiny", progress=False, chunk_size=4) == first
    assert Counting.requests == 1
    Counting.requests = 0
    assert evaluate(Counting(), [task], out, decoding, model_id="tiny", progress=False, chunk_size=4) == first
    assert Counting.requests == 0
    lines = cache.read_text().splitlines()
    assert len(lines) == 8 and all(_is_json(line) for line in lines)


def test_a_last_cache_line_without_its_newline_is_not_trusted(tiny_checkpoint, shapes_world, tmp_path):
    """A kill can stop a write right after an entry's closing brace: the entry parses, but it is not
    known to be complete until its newline is written, so the sample is generated again."""
    task = build_task("pope_random", shapes_world / "benchmarks", image_folder=shapes_world / "images" / "eval",
                      max_new_tokens=3)
    task = task.select([sample.sample_id for sample in task.samples()[:4]])
    engine = GenerationEngine.from_checkpoint(tiny_checkpoint, batch_size=4)
    requests: list[int] = []

    class Counting:
        def generate(self, batch, config):
            requests.append(len(batch))
            return engine.generate(batch, config)

    out = tmp_path / "out"
    decoding = DecodingConfig.parse("greedy")
    first = evaluate(Counting(), [task], out, decoding, model_id="tiny", progress=False, chunk_size=4)
    cache = out / "cache" / "pope_random.rank0.jsonl"
    lines = cache.read_text().splitlines()
    forged = json.loads(lines[-1]) | {"text": "FORGED"}
    cache.write_text("".join(line + "\n" for line in lines[:-1]) + json.dumps(forged))  # no newline after it

    requests.clear()
    again = evaluate(Counting(), [task], out, decoding, model_id="tiny", progress=False, chunk_size=4)
    assert requests == [1] and again == first
    samples = [json.loads(line) for line in (out / "samples_pope_random.jsonl").read_text().splitlines()]
    assert "FORGED" not in {sample["response"] for sample in samples}
    assert "FORGED" not in cache.read_text()


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def test_results_written_into_the_checkpoint_folder_do_not_void_the_cache(tiny_checkpoint, tmp_path, generated,
                                                                          shapes_world, capsys):
    import shutil

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint)
    argv = eval_argv(checkpoint, shapes_world, checkpoint)  # --out is the checkpoint folder itself
    assert main(argv) == 0
    generated.clear()
    assert main(argv) == 0
    assert generated == []
    capsys.readouterr()
