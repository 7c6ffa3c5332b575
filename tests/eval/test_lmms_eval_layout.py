"""`crystalvlm eval` writes lmms-eval's results and per-sample logs beside its own files, with the same numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from crystalvlm.cli import main
from crystalvlm.eval.outputs import LMMS_EVAL_METRIC_NAMES, sanitized_model_name, write_atomically

TASKS = ["pope_random", "pope_popular", "pope_adversarial", "mme", "scienceqa", "textvqa", "chair"]
LMMS_TOP_LEVEL = {"results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples",
                  "config", "git_hash", "date"}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run_eval(checkpoint: Path, world: Path, out: Path, *extra: str) -> None:
    assert main(["eval", str(checkpoint), "--tasks", "pope,mme,scienceqa,textvqa,chair", "--benchmarks", str(world),
                 "--limit", "3", "--max-new-tokens", "3", "--batch-size", "4", "--out", str(out), "--quiet",
                 *extra]) == 0


def lmms_files(out: Path, model: str) -> tuple[Path, dict[str, Path]]:
    folder = out / "lmms-eval" / model
    results = list(folder.glob("*_results.json"))
    assert len(results) == 1, sorted(p.name for p in folder.iterdir())
    date_id = results[0].name[:-len("_results.json")]
    assert re.fullmatch(r"\d{8}_\d{6}", date_id)  # lmms-eval's stamp
    samples = {path.name[len(f"{date_id}_samples_"):-len(".jsonl")]: path for path in folder.glob(f"{date_id}_samples_*.jsonl")}
    assert sorted(path.name for path in folder.iterdir()) == sorted([results[0].name] + [p.name for p in samples.values()])
    return results[0], samples


def test_lmms_eval_results_and_samples_carry_the_projects_scores_and_answers(tiny_checkpoint, shapes_world, tmp_path,
                                                                              capsys):
    out = tmp_path / "out"
    run_eval(tiny_checkpoint, shapes_world, out)
    printed = capsys.readouterr().out
    own = json.loads((out / "results.json").read_text())
    model = tiny_checkpoint.name  # a checkpoint without a stage in its sidecar: its folder name
    assert f"lmms-eval layout: {out / 'lmms-eval' / model}" in printed
    results_path, sample_paths = lmms_files(out, model)
    lmms = json.loads(results_path.read_text())

    assert LMMS_TOP_LEVEL <= set(lmms)
    assert list(lmms["results"]) == TASKS and sorted(sample_paths) == sorted(TASKS)
    for task in TASKS:
        metrics = own["results"][task]
        entry = lmms["results"][task]
        assert entry["alias"] == task
        aliases = LMMS_EVAL_METRIC_NAMES.get(task, {})
        written = {key[:-len(",none")]: value for key, value in entry.items()
                   if key.endswith(",none") and "_stderr" not in key}
        # Every crystalvlm metric under its own name, and under lmms-eval's name where it has one.
        assert written == metrics | {aliases[metric]: value for metric, value in metrics.items() if metric in aliases}
        assert all(entry[f"{metric}_stderr,none"] == "N/A" for metric in written)
        assert set(lmms["higher_is_better"][task]) == set(written)
        assert lmms["n-shot"][task] == 0 and lmms["group_subtasks"][task] == []
        assert lmms["configs"][task]["generation_kwargs"]["max_new_tokens"] == 3
        assert lmms["n-samples"][task]["effective"] == own["config"]["samples"][task]
    assert lmms["higher_is_better"]["chair"] == {"chair_s": False, "chair_i": False, "recall": True}
    # The keys scripts written for lmms-eval's logs look up.
    assert lmms["results"]["pope_adversarial"]["pope_f1_score,none"] == own["results"]["pope_adversarial"]["f1"]
    assert lmms["results"]["mme"]["mme_percetion_score,none"] == own["results"]["mme"]["perception"]
    assert lmms["results"]["textvqa"]["exact_match,none"] == own["results"]["textvqa"]["accuracy"]
    assert lmms["config"]["limit"] == 3 and lmms["config"]["batch_size"] == 4
    assert lmms["config"]["model_args"] == f"pretrained={tiny_checkpoint.resolve()},device=cpu,dtype=float32"
    assert isinstance(lmms["date"], float)

    for task in TASKS:
        ours = read_jsonl(out / f"samples_{task}.jsonl")
        theirs = read_jsonl(sample_paths[task])
        assert [line["doc_id"] for line in theirs] == list(range(len(ours)))
        for mine, line in zip(ours, theirs):
            assert line["resps"] == [[mine["response"]]] and line["filtered_resps"] == [mine["response"]]
            assert line["doc"]["question_id"] == mine["sample_id"] and line["input"] == mine["prompt"]
            assert line["arguments"][0][0] == mine["prompt"]
            target = mine["target"] if isinstance(mine["target"], str) else json.dumps(mine["target"])
            assert line["target"] == target
            assert re.fullmatch(r"[0-9a-f]{64}", line["doc_hash"])


def test_a_rerun_replaces_the_earlier_lmms_eval_files(tiny_checkpoint, shapes_world, tmp_path, capsys):
    out = tmp_path / "out"
    run_eval(tiny_checkpoint, shapes_world, out)
    folder = out / "lmms-eval" / tiny_checkpoint.name
    # An earlier run's files under another stamp, and a file a killed writer left behind.
    for path in list(folder.iterdir()):
        (folder / path.name.replace(path.name[:15], "20000101_000000")).write_text(path.read_text())
    (folder / ".20000101_000000_results.json.tmp-123").write_text("{")
    run_eval(tiny_checkpoint, shapes_world, out, "--scoring", "lmms-eval")
    capsys.readouterr()
    results_path, _ = lmms_files(out, tiny_checkpoint.name)  # exactly one run's files are left
    assert json.loads(results_path.read_text())["config"]["scoring"] == "lmms-eval"


def test_sanitized_model_names():
    assert sanitized_model_name("runs/x/finetune") == "runs__x__finetune"
    assert sanitized_model_name("shapes-run-finetune") == "shapes-run-finetune"
    assert sanitized_model_name('a:b*c?"d') == "a__b__c__d"


def test_an_atomic_write_leaves_the_old_file_when_it_fails(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    path.write_text("old")

    def failing_replace(source, target):
        raise OSError("disk gone")

    monkeypatch.setattr("os.replace", failing_replace)
    with pytest.raises(OSError):
        write_atomically(path, "new")
    assert path.read_text() == "old"


def test_a_batch_of_atomic_writes_is_renamed_in_order_once_all_are_written(tmp_path, monkeypatch):
    from crystalvlm.eval.outputs import write_all_atomically

    files = [(tmp_path / f"part{index}.jsonl", f"text {index}\n") for index in range(3)] + [(tmp_path / "results.json", "{}")]
    renamed = []
    real_replace = __import__("os").replace

    def recording_replace(source, target):
        # Every file of the batch is complete in its staging file before the first rename.
        assert all(path.exists() or path.with_name(f".{path.name}.tmp-{__import__('os').getpid()}").read_text() == text
                   for path, text in files)
        renamed.append(Path(target).name)
        real_replace(source, target)

    monkeypatch.setattr("os.replace", recording_replace)
    write_all_atomically(files, before_last=lambda: renamed.append("before last"))
    assert renamed == [path.name for path, _ in files[:-1]] + ["before last", "results.json"]
    assert [path.read_text() for path, _ in files] == [text for _, text in files]
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_a_failed_batch_of_atomic_writes_replaces_no_file(tmp_path):
    from crystalvlm.eval.outputs import write_all_atomically

    kept = tmp_path / "samples.jsonl"
    kept.write_text("old")
    with pytest.raises(OSError):
        # The second file's folder does not exist: its staging file cannot be written.
        write_all_atomically([(kept, "new"), (tmp_path / "missing" / "results.json", "{}")])
    assert kept.read_text() == "old"
    assert not list(tmp_path.glob(".*.tmp-*"))
