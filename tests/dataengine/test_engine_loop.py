"""The closed loop: summary.json's layout, every round's files, and a run killed during round 2 that
finishes, resumed, with the files of an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from process_tree import kill_tree


SCRIPT = Path(__file__).with_name("colour_engine.py")
ROUNDS = 2


def _command(tiny_checkpoint: Path, colour_world: dict, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), str(tiny_checkpoint), str(colour_world["images"]), str(out), str(ROUNDS), *extra]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")])}


def _in_process(tiny_checkpoint: Path, colour_world: dict, out: Path, *extra: str) -> None:
    """The script's run in this process (one torch thread, as the script sets): no second import of torch."""
    import colour_engine

    colour_engine.main([str(tiny_checkpoint), str(colour_world["images"]), str(out), str(ROUNDS), *extra])


@pytest.fixture(scope="module")
def uninterrupted(tiny_checkpoint, colour_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("engine") / "run"
    _in_process(tiny_checkpoint, colour_world, out)
    return out


def test_summary_layout(uninterrupted):
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert list(summary) == ["rounds"]
    assert [entry["round"] for entry in summary["rounds"]] == list(range(ROUNDS + 1))
    for entry in summary["rounds"]:
        assert set(entry) == {"round", "overall", "scores", "weights", "records"}
        assert set(entry["scores"]) == {"red", "green", "blue", "yellow"}
        assert entry["overall"] == pytest.approx(sum(entry["scores"].values()) / 4)
    start, later = summary["rounds"][0], summary["rounds"][1:]
    assert start["weights"] == {} and start["records"] == 0
    for entry in later:
        assert entry["records"] == 4  # the budget
        assert sum(entry["weights"].values()) == pytest.approx(1.0)
        assert min(entry["weights"].values()) >= 0.05 - 1e-12  # the floor
        round_dir = uninterrupted / f"round_{entry['round']}"
        assert (round_dir / "train" / "finetune" / "final" / "config.json").is_file()
        dropped = (round_dir / "data" / "dropped.jsonl").read_text().splitlines()
        assert json.loads(dropped[0])["reason"] == "an example of a dropped record"
        profile = json.loads((round_dir / "weakness_profile.json").read_text())
        assert set(profile["capabilities"]) == set(entry["scores"])


def test_killed_in_round_two_resumes_to_the_same_result(uninterrupted, tiny_checkpoint, colour_world, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(_command(tiny_checkpoint, colour_world, out), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "round_2" / "train").exists():  # round 2 is finetuning
        assert process.poll() is None, "the run ended before round 2 started training"
        assert time.time() < deadline
        time.sleep(0.02)
    kill_tree(process.pid)
    process.wait()
    assert not (out / "round_2" / "scores.json").exists()
    with pytest.raises(FileExistsError, match="--resume"):  # a rerun without --resume is refused
        _in_process(tiny_checkpoint, colour_world, out)
    subprocess.run(_command(tiny_checkpoint, colour_world, out, "--resume"), env=_env(), check=True, capture_output=True)
    assert json.loads((out / "summary.json").read_text()) == json.loads((uninterrupted / "summary.json").read_text())
    for index in range(1, ROUNDS + 1):
        name = f"round_{index}/train/finetune/final/model.safetensors"
        assert (out / name).read_bytes() == (uninterrupted / name).read_bytes(), name
