"""`crystalvlm data clean`: the contract (kept lines unchanged and in order, every removed line with a
reason, first of a near-duplicate group kept, JSON summary last), resume, workers, PII, errors."""

from __future__ import annotations

import json

import pytest

from crystalvlm.cli import main
from crystalvlm.data.curation import clean as clean_module
from crystalvlm.data.curation.clean import CleanSettings, CleanStep, find_pii, scrub_pii
from crystalvlm.data.curation.stream import removed_path, run_stream

BASE = "a small red circle sits above a large blue square near the left edge of a gray picture"
TEXTS = [
    BASE,                                                            # 1 kept: first of its group
    "the green star is next to two yellow hexagons on a white background",  # 2 kept
    BASE,                                                            # 3 exact duplicate of 1
    "A small red circle sits above a LARGE blue square near the left edge of a gray picture",  # 4 exact after normalising
    BASE + " today",                                                 # 5 near duplicate of 1
    BASE + " today again",                                           # 6 near duplicate (of 5, whose group starts at 1)
    "0x3f 0x2a 1024 2048 4096 8192 e1 e2 65536 131072 0x00 255",      # 7 quality: few words with letters
    "ok",                                                            # 8 quality: too short
    "please write to jane.doe@mail.example.com or call +44 20 7946 0958 about the purple moon shape in the lower corner",  # 9 kept, PII counted
    "an orange diamond and a black arrow point towards the number seven in the corner",  # 10 kept
]


def write_corpus(path, texts=TEXTS, extra_lines=()):
    lines = [json.dumps({"id": i, "text": text, "meta": {"n": [i, i]}}, separators=(", ", ": "))
             for i, text in enumerate(texts)]
    path.write_text("\n".join(list(lines) + list(extra_lines)) + "\n", encoding="utf-8")
    return path


def run_cli(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main(["data", "clean", *argv, "--quiet"])
    captured = capsys.readouterr()
    last = captured.out.strip()
    summary = json.loads(last[last.rindex("\n{") + 1:] if "\n{" in last else last) if code == 0 else None
    return code, summary, captured.err


def test_clean_contract(tmp_path, capsys):
    source = write_corpus(tmp_path / "in.jsonl", extra_lines=['{"id": 99, "text": ', '{"id": 100, "text": ""}'])
    out = tmp_path / "out.jsonl"
    code, summary, _ = run_cli(capsys, str(source), "--out", str(out))
    assert code == 0
    input_lines = source.read_text().splitlines()
    assert out.read_text().splitlines() == [input_lines[i] for i in (0, 1, 8, 9)]  # unchanged, in order
    removed = {r["line"]: r for r in map(json.loads, removed_path(out).read_text().splitlines())}
    assert {line: r["reason"] for line, r in removed.items()} == {
        3: "exact duplicate", 4: "exact duplicate", 5: "near duplicate", 6: "near duplicate",
        7: "quality: below_alpha_threshold", 8: "quality: short_doc", 11: "broken JSON", 12: "empty text"}
    assert removed[3]["duplicate_of"] == 1 and removed[4]["duplicate_of"] == 1 and removed[5]["duplicate_of"] == 1
    assert removed[6]["duplicate_of"] in (1, 5)
    assert removed[5]["record"] == json.loads(input_lines[4])
    assert summary["kept"] == 4 and summary["removed"] == 8 and summary["lines"] == 12
    assert summary["removed_by_reason"]["near duplicate"] == 2
    assert summary["pii"]["kept_records_with_pii"] == 1 and summary["pii"]["found_in_kept_records"] == {
        "email": 1, "phone": 1}
    assert (tmp_path / "out.jsonl.report.html").exists()
    # datatrove's executor for the per-record half: the same files, bad lines included
    other = tmp_path / "dt.jsonl"
    code, dt_summary, _ = run_cli(capsys, str(source), "--out", str(other), "--engine", "datatrove", "--workers", "2")
    assert other.read_bytes() == out.read_bytes() and removed_path(other).read_bytes() == removed_path(out).read_bytes()
    assert dt_summary["removed_by_reason"] == summary["removed_by_reason"]


def test_summary_is_the_last_line_printed(tmp_path, capsys):
    source = write_corpus(tmp_path / "in.jsonl")
    assert main(["data", "clean", str(source), "--out", str(tmp_path / "o.jsonl"), "--quiet"]) == 0
    out = capsys.readouterr().out
    start = out.rindex("\n{\n") + 1 if "\n{\n" in out else 0
    assert json.loads(out[start:])["kept"] == 4


def test_resume_and_workers_equal_one_uninterrupted_run(tmp_path):
    texts = []
    for i in range(400):  # groups of five near duplicates, some exact copies, interleaved
        group = i % 80
        words = (f"shape s{group} colour c{group * 7 % 13} has words w{group} w{group + 1} w{group + 2} "
                 f"and more words about it").split()
        if i >= 80 and i % 3 == 0:
            words.append(f"extra{i}")
        texts.append(" ".join(words))
    source = write_corpus(tmp_path / "in.jsonl", texts)
    settings = CleanSettings()
    whole = tmp_path / "whole.jsonl"
    s_whole = run_stream(source, whole, CleanStep(settings), text_key="text", batch_size=16, progress=False)
    assert s_whole["removed_by_reason"]["exact duplicate"] > 0 and s_whole["removed_by_reason"]["near duplicate"] > 0
    cut = tmp_path / "cut.jsonl"
    first = run_stream(source, cut, CleanStep(settings), text_key="text", batch_size=16, commit_every=32,
                       stop_after_lines=150, progress=False)
    assert not first["complete"]
    with open(cut, "ab") as handle:  # bytes written after the last commit, as a kill leaves them
        handle.write(b'{"id": 1')
    second = run_stream(source, cut, CleanStep(settings), text_key="text", batch_size=16, commit_every=32,
                        progress=False)
    parallel = tmp_path / "parallel.jsonl"
    s_parallel = run_stream(source, parallel, CleanStep(settings), text_key="text", batch_size=16, workers=2,
                            progress=False)
    # the per-record half as two datatrove tasks (LocalPipelineExecutor), then the ordered pass
    from crystalvlm.data.curation.datatrove_engine import run_with_datatrove, slice_bounds

    on_datatrove = tmp_path / "datatrove.jsonl"
    s_datatrove = run_with_datatrove(source, on_datatrove, CleanStep(settings), tasks=2, text_key="text",
                                     batch_size=16, progress=False)
    assert s_datatrove["engine"] == "datatrove" and not (tmp_path / "datatrove.jsonl.work").exists()
    start, end, before = slice_bounds(source, 1, 2)
    assert source.read_bytes()[start - 1:start] == b"\n" and before == source.read_bytes()[:start].count(b"\n")
    for other in (cut, parallel, on_datatrove):
        assert other.read_bytes() == whole.read_bytes()
        assert removed_path(other).read_bytes() == removed_path(whole).read_bytes()
    assert second["removed_by_reason"] == s_whole["removed_by_reason"] == s_parallel["removed_by_reason"]


def test_pii_modes(tmp_path, capsys):
    text = "mail jane.doe@mail.example.com from 8.8.8.8 or ring +1 415-555-0199, not 10.0.0.1 or 2024"
    assert find_pii(text) == {"email": 1, "ip": 1, "phone": 1}
    assert scrub_pii(text) == "mail <EMAIL> from <IP> or ring <PHONE>, not 10.0.0.1 or 2024"
    source = write_corpus(tmp_path / "in.jsonl")
    code, summary, _ = run_cli(capsys, str(source), "--out", str(tmp_path / "rm.jsonl"), "--pii", "remove")
    assert summary["removed_by_reason"]["pii: email+phone"] == 1
    code, summary, _ = run_cli(capsys, str(source), "--out", str(tmp_path / "scrub.jsonl"), "--pii", "scrub")
    kept = [json.loads(line) for line in (tmp_path / "scrub.jsonl").read_text().splitlines()]
    scrubbed = next(record for record in kept if record["id"] == 8)
    assert scrubbed["text"] == "please write to <EMAIL> or call <PHONE> about the purple moon shape in the lower corner"
    assert scrubbed["meta"] == {"n": [8, 8]}


def test_language_filter(tmp_path, capsys, monkeypatch):
    texts = TEXTS[:2] + ["der kleine rote Kreis liegt über dem großen blauen Quadrat am linken Rand des Bildes"]
    source = write_corpus(tmp_path / "in.jsonl", texts)
    code, summary, _ = run_cli(capsys, str(source), "--out", str(tmp_path / "a.jsonl"), "--languages", "en")
    assert summary["removed_by_reason"] == {"language: de": 1} and "language" in summary["filters"]
    # without the language model the filter is skipped, and the summary says so
    monkeypatch.setattr(clean_module, "_language_identifier", lambda: None)
    code, summary, _ = run_cli(capsys, str(source), "--out", str(tmp_path / "b.jsonl"), "--languages", "en")
    assert summary["kept"] == 3 and any("language filter skipped" in note for note in summary["notes"])


def test_cli_errors(tmp_path, capsys):
    source = write_corpus(tmp_path / "in.jsonl")
    assert main(["data", "clean", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "nope.jsonl: no such input file" in capsys.readouterr().err
    assert main(["data", "clean", str(source), "--out", str(source)]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert main(["data", "clean", str(source), "--out", str(tmp_path / "o.jsonl"), "--filters", "gopher,nonsense"]) == 2
    assert "unknown filter(s) gopher, nonsense" in capsys.readouterr().err
    assert main(["data", "clean", str(source), "--out", str(tmp_path / "o.jsonl"), "--near-threshold", "1.5"]) == 2
    assert "--near-threshold" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "clean", str(source)])  # --out is required


def test_key_index_keeps_first_lines_and_rolls_back(tmp_path):
    from crystalvlm.data.curation.key_index import KeyIndex

    index = KeyIndex(tmp_path / "index.sqlite")
    big = (1 << 64) - 5  # unsigned 64-bit keys beyond SQLite's signed range
    index.add("band", [7, big], 3)
    index.add("band", [big, 9], 8)  # `big` keeps its first line
    index.add("exact", [7], 12)  # tables are apart
    index.commit()
    assert index.first("band", [big]) == 3 and index.first("band", [9]) == 8 and index.first("band", [1]) is None
    assert index.first("band", [9, 7]) == 3 and index.first("exact", [7]) == 12
    index.rollback_after(5)  # a killed run's lines after its last commit are forgotten
    assert index.first("band", [9]) is None and index.first("exact", [7]) is None and index.first("band", [big]) == 3
    index.close(delete=True)
    assert not (tmp_path / "index.sqlite").exists()


def test_mean_word_length_threshold_is_an_option():
    short_words = "a red cat and a big dog sit on a mat"
    assert CleanStep(CleanSettings()).features(short_words).reason == "quality: below_avg_threshold"
    assert CleanStep(CleanSettings(min_mean_word_length=0)).features(short_words).reason is None
