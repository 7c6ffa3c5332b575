"""`crystalvlm eval MODEL`: end to end on a tiny random checkpoint and a tiny shapes world; bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crystalvlm.cli import main
from crystalvlm.eval.runner import evaluate
from crystalvlm.eval.tasks.registry import build_task
from crystalvlm.infer.engine import DecodingConfig, GenerationEngine

EVERY_TASK = ["pope_random", "pope_popular", "pope_adversarial", "mme", "scienceqa", "textvqa", "chair"]
# Random weights rarely emit eos; a short budget keeps every answer at a few tokens.
BUDGET = 4


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def test_eval_end_to_end_on_a_shapes_world(tiny_checkpoint, shapes_world, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["eval", str(tiny_checkpoint), "--tasks", "pope,mme,scienceqa,textvqa,chair",
                 "--benchmarks", str(shapes_world), "--limit", "5", "--max-new-tokens", str(BUDGET),
                 "--batch-size", "3", "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    payload = json.loads((out / "results.json").read_text())
    config = payload["config"]
    assert config["tasks"] == EVERY_TASK  # `pope` = the three splits, in order
    # --limit 5; MME keeps the 5th question's partner (its image has two); the world has 4 of the others.
    assert config["samples"] == {"pope_random": 5, "pope_popular": 5, "pope_adversarial": 5, "mme": 6,
                                 "scienceqa": 4, "textvqa": 4, "chair": 4}
    assert config["max_new_tokens"] == {task: BUDGET for task in EVERY_TASK}
    assert set(payload["results"]) == set(EVERY_TASK)
    for task in EVERY_TASK:
        samples = read_jsonl(out / f"samples_{task}.jsonl")
        answers = read_jsonl(out / f"answers_{task}.jsonl")
        assert len(samples) == len(answers) == config["samples"][task]
        assert [a["text"] for a in answers] == [s["response"] for s in samples]
        assert all(Path(s["image"]).is_file() for s in samples)
    # A shapes world keeps POPE and CHAIR pictures in images/eval; its manifest says so.
    pope_image = Path(read_jsonl(out / "samples_pope_random.jsonl")[0]["image"])
    assert pope_image.parent == (shapes_world / "images" / "eval").resolve()

    # The printed table carries every metric of results.json, and the POPE mean over the splits.
    for task, metrics in payload["results"].items():
        for metric, value in metrics.items():
            shown = f"{value:.1f}" if task == "mme" else f"{value:.4f}"
            assert re.search(rf"^{re.escape(task)}\s+{metric}\s+{re.escape(shown)}$", printed, re.M), (task, metric)
    mean_f1 = sum(payload["results"][f"pope_{s}"]["f1"] for s in ("random", "popular", "adversarial")) / 3
    assert re.search(rf"^pope \(mean of 3 splits\)\s+f1\s+{mean_f1:.4f}$", printed, re.M)
    assert f"results: {out / 'results.json'}" in printed
    assert f"report:  {out / 'report.html'}" in printed

    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # the bar plot of fractions and the MME subtasks
    for task in EVERY_TASK:
        assert f"<td class=\"\">{task}</td>" in html


def test_cli_scores_equal_evaluate_in_process(tiny_checkpoint, shapes_world, tmp_path, capsys):
    """The command builds the same tasks and settings as a direct `evaluate` call (other batch sizes too)."""
    cli_out = tmp_path / "cli"
    code = main(["eval", str(tiny_checkpoint), "--tasks", "pope_adversarial,mme,textvqa",
                 "--benchmarks", str(shapes_world / "benchmarks"), "--image-folder", str(shapes_world / "images" / "eval"),
                 "--limit", "6", "--max-new-tokens", "6", "--batch-size", "4", "--out", str(cli_out), "--quiet",
                 "--analyse"])
    assert code == 0
    printed = capsys.readouterr().out

    tasks = []
    for name in ("pope_adversarial", "mme", "textvqa"):
        options = {"image_folder": shapes_world / "images" / "eval"} if name.startswith("pope") else {}
        task = build_task(name, shapes_world / "benchmarks", max_new_tokens=6, **options)
        tasks.append(task.select([sample.sample_id for sample in task.samples()[:6]]))
    engine = GenerationEngine.from_checkpoint(tiny_checkpoint, batch_size=7)
    direct_out = tmp_path / "direct"
    direct = evaluate(engine, tasks, direct_out, DecodingConfig.parse("greedy"), model_id="in-process", progress=False)

    assert json.loads((cli_out / "results.json").read_text())["results"] == direct
    for name in ("pope_adversarial", "mme", "textvqa"):
        # Same prompts, images, targets and generated text, sample for sample.
        assert read_jsonl(cli_out / f"samples_{name}.jsonl") == read_jsonl(direct_out / f"samples_{name}.jsonl")

    # --analyse: the weakness profile agrees with the task's own metric, sample for sample.
    profile = json.loads((cli_out / "weakness_profile.json").read_text())
    judged = sum(len(read_jsonl(cli_out / f"samples_{name}.jsonl")) for name in ("pope_adversarial", "mme", "textvqa"))
    assert profile["samples"] == judged and (cli_out / "analysis.html").is_file()
    assert "weakness profile:" in printed
    pope = [entry for capability, entry in profile["capabilities"].items() if "pope" in capability]
    assert sum(entry["samples"] for entry in pope) == 6
    pope_errors = sum(entry["errors"] for entry in pope)
    assert pope_errors == pytest.approx(6 * (1 - direct["pope_adversarial"]["accuracy"]))
    assert profile["ranking"] == sorted(profile["capabilities"], key=lambda c: -profile["capabilities"][c]["error_rate"])


def test_decoding_string_budget_is_the_task_budget(tiny_checkpoint, shapes_world, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["eval", str(tiny_checkpoint), "--tasks", "scienceqa", "--benchmarks", str(shapes_world),
                 "--decoding", "greedy:max_new_tokens=2", "--out", str(out), "--quiet"])
    assert code == 0
    assert json.loads((out / "results.json").read_text())["config"]["max_new_tokens"] == {"scienceqa": 2}


def _bad_input_cases(checkpoint: Path, world: Path, tmp: Path) -> list[tuple[list[str], str]]:
    model = str(checkpoint)
    return [
        ([model, "--tasks", "pope,gqa", "--benchmarks", str(world)], r"unknown task 'gqa'; known tasks: .*pope \(="),
        ([model, "--tasks", ",", "--benchmarks", str(world)], r"no task named"),
        ([model, "--tasks", "mme", "--benchmarks", str(tmp / "missing")], r"benchmark folder .*missing does not exist"),
        ([model, "--tasks", "textvqa", "--benchmarks", str(world / "benchmarks" / "pope")],
         r"task textvqa: .*no textvqa benchmark"),
        ([model, "--tasks", "pope", "--benchmarks", str(world), "--image-folder", str(tmp / "nope")],
         r"image folder .*nope does not exist"),
        ([model, "--tasks", "pope_random", "--benchmarks", str(world / "benchmarks"), "--image-folder",
          str(world / "images" / "train")], r"task pope_random: 24 of 24 images not found, e\.g\. .*eval_000000\.png"),
        ([str(tmp), "--tasks", "mme", "--benchmarks", str(world)], r"is not a checkpoint folder \(no config\.json\)"),
        ([model, "--tasks", "mme", "--benchmarks", str(world), "--decoding", "beam:beams=3"], r"unknown setting 'beams'"),
        ([model, "--tasks", "mme", "--benchmarks", str(world), "--limit", "0"], r"--limit must be at least 1"),
        ([model, "--tasks", "mme", "--benchmarks", str(world), "--batch-size", "0"], r"--batch-size must be at least 1"),
        ([model, "--tasks", "mme", "--benchmarks", str(world), "--decoding", "greedy:max_new_tokens=8",
          "--max-new-tokens", "4"], r"disagree"),
        # The tiny model has 512 positions; ScienceQA's official budget is 1024 new tokens.
        ([model, "--tasks", "scienceqa", "--benchmarks", str(world)],
         r"request 0: .*at most 512 positions .*--max-new-tokens"),
    ]


def test_bad_input_exits_2_with_a_message(tiny_checkpoint, shapes_world, tmp_path, capsys):
    for argv, message in _bad_input_cases(tiny_checkpoint, shapes_world, tmp_path):
        code = main(["eval", *argv, "--out", str(tmp_path / "out"), "--quiet"])
        captured = capsys.readouterr()
        assert code == 2, argv
        assert captured.err.startswith("error: "), argv
        assert re.search(message, captured.err), (argv, captured.err)
        assert captured.out == ""


def test_bad_input_in_a_real_process_has_no_traceback(shapes_world, tiny_checkpoint):
    result = subprocess.run([sys.executable, "-m", "crystalvlm.cli", "eval", str(tiny_checkpoint), "--tasks", "popes",
                             "--benchmarks", str(shapes_world)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown task 'popes'")
    assert "Traceback" not in result.stderr


def test_missing_required_options_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "some/checkpoint", "--benchmarks", "b"])
    assert exit_info.value.code == 2
    assert "the following arguments are required: --tasks" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines to the terminal width
    assert "crystalvlm eval MODEL --tasks" in text and "crystalvlm eval score --task" in text
    assert "pope (= the three POPE splits" in text and "pope_adversarial" in text

    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "score", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: crystalvlm eval score") and "--annotations PATH" in text
