"""`crystalvlm data caption`: captions written by the batched engine into each record, bad records
reported, and a captioner trained first from detailed captions."""

from __future__ import annotations

import json

import pytest

from crystalvlm.cli import main


@pytest.mark.parametrize("workers", [1, 2])
def test_caption_writes_records_and_reports_bad_ones(tiny_checkpoint, colour_world, tmp_path, capsys, workers):
    images = sorted(p.name for p in colour_world["images"].iterdir())[:5]
    source = tmp_path / "images.jsonl"
    lines = [json.dumps({"image": image, "keep": index}) for index, image in enumerate(images)]
    lines[2:2] = ["not json", json.dumps({"image": "missing.png"}), json.dumps({"caption": "no image"})]
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "captioned.jsonl"
    assert main(["data", "caption", str(source), "--out", str(out), "--model", str(tiny_checkpoint),
                 "--image-folder", str(colour_world["images"]), "--max-new-tokens", "4", "--caption-key", "detailed",
                 "--batch-size", "4", "--workers", str(workers), "--quiet"]) == 0
    output = capsys.readouterr().out
    summary = json.loads(output[output.index("{"):])
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["keep"] for r in kept] == [0, 1, 2, 3, 4]  # input order, every field kept
    assert all(isinstance(r["detailed"], str) and r["detailed"] for r in kept)
    removed = [json.loads(line) for line in (tmp_path / "captioned.removed.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in removed] == [(3, "broken JSON"), (4, "missing image"), (5, "missing image")]
    assert summary["caption"]["captioned"] == 5 and summary["kept"] == 5 and summary["removed"] == 3
    assert summary["workers"] == workers


def test_caption_trains_a_captioner_first_from_detailed_captions(tiny_checkpoint, colour_world, tmp_path, capsys):
    source = tmp_path / "images.jsonl"
    source.write_text("".join(json.dumps({"image": p.name}) + "\n" for p in sorted(colour_world["images"].iterdir())[:2]))
    out = tmp_path / "captioned.jsonl"
    assert main(["data", "caption", str(source), "--out", str(out), "--model", str(tiny_checkpoint),
                 "--train", str(colour_world["captions"]), "--train-image-folder", str(colour_world["images"]),
                 "--train-steps", "2", "--train-batch-size", "4", "--image-folder", str(colour_world["images"]),
                 "--max-new-tokens", "3", "--quiet"]) == 0
    output = capsys.readouterr().out
    summary = json.loads(output[output.index("{"):])
    captioner = tmp_path / "captioned.jsonl.captioner" / "captioner" / "final"
    assert (captioner / "config.json").is_file()
    assert summary["caption"]["trained_captioner"] == str(captioner)
    assert summary["caption"]["checkpoint"] == str(captioner) and summary["caption"]["captioned"] == 2
