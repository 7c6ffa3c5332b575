"""`crystalvlm data balance`: frequent concepts capped, rare ones kept, coverage reported, resume."""

from __future__ import annotations

import json

from crystalvlm.cli import main
from crystalvlm.data.curation.balance import BalanceSettings, balance_file, coverage, noun_phrases
from crystalvlm.data.curation.stream import removed_path


def test_noun_phrases():
    assert noun_phrases('A black arrow, a red circle and the word "SUN" on a gray background') == [
        "black arrow", "red circle", "word", "sun", "gray background"]
    assert noun_phrases("A man riding a brown horse next to 3 tall trees.") == ["man", "brown horse", "tall trees"]


def write_captions(path):
    captions = []
    for i in range(400):
        captions.append(f"a red ball on the grass number{i % 7}" if i % 2 else "a red ball")  # frequent
        if i % 100 == 0:
            captions.append("a blue cube near a wooden table")  # rare: 4 times
    captions.append("...")  # no concept at all
    path.write_text("\n".join(json.dumps({"caption": c, "i": i}) for i, c in enumerate(captions)) + "\n")
    return path, captions


def test_balance_caps_frequent_and_keeps_rare(tmp_path, capsys):
    source, captions = write_captions(tmp_path / "caps.jsonl")
    out = tmp_path / "bal.jsonl"
    assert main(["data", "balance", str(source), "--out", str(out), "--text-key", "caption", "--cap", "20",
                 "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    kept_captions = [record["caption"] for record in kept]
    assert [record["i"] for record in kept] == sorted(record["i"] for record in kept)  # input order
    assert kept_captions.count("a blue cube near a wooden table") == 4  # rare: all kept
    only_ball = kept_captions.count("a red ball")  # 200 records whose one concept is "red ball" (count 400)
    assert 5 <= only_ball <= 40  # ~ 200 * 20/400 = 10 expected
    assert len(kept) < 120
    removed = [json.loads(line) for line in removed_path(out).read_text().splitlines()]
    assert {r["reason"] for r in removed} == {"frequent concepts capped", "no concept"}
    assert len(kept) + len(removed) == len(captions) == summary["lines"]
    before, after = summary["coverage"]["before"], summary["coverage"]["after"]
    assert before["concepts"] == after["concepts"]  # every concept still present
    assert after["normalised_entropy"] > before["normalised_entropy"]  # more even
    assert json.loads((tmp_path / "bal.jsonl.concepts.json").read_text())["counts"]["red ball"] == 400


def test_balance_workers_and_resume_match(tmp_path):
    source, _ = write_captions(tmp_path / "caps.jsonl")
    settings = BalanceSettings(text_key="caption", cap=20)
    one = tmp_path / "one.jsonl"
    balance_file(source, one, settings, batch_size=16, progress=False)
    two = tmp_path / "two.jsonl"
    balance_file(source, two, settings, workers=2, batch_size=16, progress=False)
    assert two.read_bytes() == one.read_bytes()
    assert removed_path(two).read_bytes() == removed_path(one).read_bytes()
    # the counts are reused by a rerun (pass 1 is not redone), the selection equals the first run's
    again = balance_file(source, one, settings, batch_size=16, progress=False)
    assert again["kept"] == len(one.read_text().splitlines())


def test_coverage_measures():
    even = coverage({"a": 5, "b": 5, "c": 5, "d": 5})
    skewed = coverage({"a": 97, "b": 1, "c": 1, "d": 1})
    assert even["normalised_entropy"] == 1.0 and skewed["normalised_entropy"] < 0.2
    assert skewed["top1pct_share"] == 0.97 and skewed["concepts_seen_once"] == 3


def test_balance_cli_errors(tmp_path, capsys):
    source, _ = write_captions(tmp_path / "caps.jsonl")
    assert main(["data", "balance", str(source), "--out", str(tmp_path / "b.jsonl"), "--cap", "0"]) == 2
    assert "--cap and --min-count must be at least 1" in capsys.readouterr().err
    assert main(["data", "balance", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "b.jsonl")]) == 2
    assert "no such input file" in capsys.readouterr().err
