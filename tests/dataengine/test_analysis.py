"""Bad-case analysis: Wilson intervals, the weakness profile, and per-sample scores that agree with
the task's own metric."""

from __future__ import annotations

import json

import pytest

from crystalvlm.eval.analysis import Outcome, analyse, analyse_evaluation, wilson_interval, write_analysis


def test_wilson_interval_matches_the_textbook_value():
    # 3 errors in 10 at 95 %: Wilson's interval is [0.1078, 0.6032] (Newcombe 1998, method 3).
    low, high = wilson_interval(3, 10)
    assert low == pytest.approx(0.1078, abs=1e-4) and high == pytest.approx(0.6032, abs=1e-4)
    low, high = wilson_interval(0, 20)  # no error seen: the interval still admits some
    assert low == 0.0 and 0.15 < high < 0.17


def test_profile_ranks_capabilities_and_keeps_the_worst_examples(tmp_path):
    outcomes = [Outcome("easy", 1.0, f"e{i}", "q", "a", "a") for i in range(9)] + [Outcome("easy", 0.0, "e9", "q", "b", "a")]
    outcomes += [Outcome("hard", float(i < 2), f"h{i}", "q", "x", "y") for i in range(5)]
    profile = analyse(outcomes, worst=2)
    assert profile["ranking"] == ["hard", "easy"]
    assert profile["capabilities"]["hard"]["error_rate"] == pytest.approx(0.6)
    assert profile["capabilities"]["easy"]["samples"] == 10
    assert [e["sample_id"] for e in profile["worst_examples"]["hard"]] == ["h2", "h3"]
    assert profile["error_rate"] == pytest.approx(4 / 15)
    path, page = write_analysis(tmp_path, profile)
    assert json.loads(path.read_text())["ranking"] == ["hard", "easy"] and page.is_file()


def test_pope_sample_scores_agree_with_its_accuracy(tmp_path):
    from PIL import Image

    from crystalvlm.eval.outputs import write_task_outputs
    from crystalvlm.eval.tasks.pope import PopeTask

    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    labels = ["yes", "no", "no", "yes", "no", "yes", "yes", "no"]
    rows = [{"question_id": i, "image": "a.png", "text": f"Is there a thing {i} in the image?", "label": label}
            for i, label in enumerate(labels)]
    (tmp_path / "coco_pope_random.json").write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = PopeTask(tmp_path / "coco_pope_random.json", tmp_path / "images", "random")
    answers = {str(i): ("Yes" if i % 3 else "No") for i in range(len(labels))}
    scores = task.sample_scores(answers)
    assert sum(scores.values()) / len(scores) == pytest.approx(task.score(answers)["accuracy"])
    write_task_outputs(tmp_path, task, answers)  # the per-sample log --analyse reads
    profile, skipped = analyse_evaluation(tmp_path, [task])
    assert skipped == [] and profile["capabilities"]["pope_random"]["samples"] == len(labels)
    assert profile["error_rate"] == pytest.approx(1 - task.score(answers)["accuracy"])
