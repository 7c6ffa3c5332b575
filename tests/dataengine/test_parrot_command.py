"""`crystalvlm data parrot`: ground-truth spotted text, a pluggable image reader, bad records
reported per record, and the multi-worker path giving the one-worker output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from crystalvlm.cli import main
from tiny_fixtures import COLOURS


class ColourNameReader:
    """A stand-in for OCR: 'reads' the colour name of the square in a colour-world image."""

    def read(self, images):
        found = []
        for image in images:
            pixel = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
            name = min(COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLOURS[c], pixel)))
            found.append([name.upper()])
        return found


def colour_reader(model):
    return ColourNameReader()


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def summary_of(capsys) -> dict:
    out = capsys.readouterr().out
    return json.loads(out[out.index("{"):])


def test_ground_truth_spotted_text_removes_parrots_and_reports_bad_records(tmp_path, capsys):
    source = tmp_path / "pairs.jsonl"
    lines = [json.dumps({"image": "a.png", "caption": "CAT", "ocr": ["CAT"]}),
             json.dumps({"image": "b.png", "caption": "a red circle", "ocr": ["CAT"]}),
             json.dumps({"image": "c.png", "caption": "a sign that says STOP", "ocr": "STOP"}),
             "{broken",
             json.dumps({"image": "d.png", "caption": "   ", "ocr": []}),
             json.dumps({"image": "e.png", "caption": "a dog"})]
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "kept.jsonl"
    assert main(["data", "parrot", str(source), "--out", str(out), "--spotted-key", "ocr", "--quiet"]) == 0
    summary = summary_of(capsys)
    kept = read_lines(out)
    assert [r["caption"] for r in kept] == ["a red circle", "a sign that says STOP"]
    assert kept[1]["parrot"] == {"co_emb_text_rate": 0.2, "spotted": ["STOP"], "parroted": ["stop"]}
    removed = read_lines(tmp_path / "kept.removed.jsonl")
    assert [(r["line"], r["reason"]) for r in removed] == [
        (1, "parrot caption"), (4, "broken JSON"), (5, "empty caption"), (6, "missing spotted text")]
    assert removed[0]["co_emb_text_rate"] == 1.0 and removed[0]["record"]["caption"] == "CAT"
    assert summary["kept"] == 2 and summary["removed"] == 4
    assert "parrot caption" in (tmp_path / "kept.jsonl.report.html").read_text()
    assert summary["parrot"]["scored"] == 3 and summary["parrot"]["parrot_captions"] == 1


def test_rewrite_mode_and_unannotated_records_stay_byte_for_byte(tmp_path, capsys):
    source = tmp_path / "pairs.jsonl"
    plain = '{"caption":"a  red circle","ocr":[]}\n'  # odd spacing: kept lines are copied, not re-serialised
    source.write_text(plain + json.dumps({"caption": 'the word "CAT"', "ocr": ["CAT"]}) + "\n")
    out = tmp_path / "kept.jsonl"
    assert main(["data", "parrot", str(source), "--out", str(out), "--spotted-key", "ocr", "--mode", "rewrite",
                 "--threshold", "0.3", "--annotate-key", "", "--quiet"]) == 0
    assert summary_of(capsys)["parrot"]["rewritten"] == 1
    first, second = out.read_text().splitlines(keepends=True)
    assert first == plain
    assert json.loads(second)["caption"] == "the word"


@pytest.fixture()
def colour_pairs(colour_world, tmp_path) -> Path:
    """Colour-world pairs: captions 0, 4, 8 ... spell the colour (parrots), the rest describe the image."""
    images = sorted(p.name for p in colour_world["images"].iterdir())[:12]
    source = tmp_path / "colour_pairs.jsonl"
    with open(source, "w") as handle:
        for index, image in enumerate(images):
            colour = list(COLOURS)[index % len(COLOURS)]
            caption = colour.upper() if index % 4 == 0 else "a square on a white background"
            handle.write(json.dumps({"image": image, "caption": caption}) + "\n")
        handle.write(json.dumps({"image": "missing.png", "caption": "a square"}) + "\n")
        handle.write(json.dumps({"image": "../outside.png", "caption": "a square"}) + "\n")
    return source


@pytest.mark.parametrize("workers", [1, 2])
def test_an_image_reader_plugs_in_and_workers_give_the_same_output(colour_world, colour_pairs, tmp_path, capsys, workers):
    out = tmp_path / f"kept{workers}.jsonl"
    assert main(["data", "parrot", str(colour_pairs), "--out", str(out), "--image-folder", str(colour_world["images"]),
                 "--reader", "test_parrot_command:colour_reader", "--workers", str(workers), "--batch-size", "4",
                 "--quiet"]) == 0
    summary = summary_of(capsys)
    kept = read_lines(out)
    assert len(kept) == 9 and all(r["caption"].startswith("a square") for r in kept)
    reasons = [r["reason"] for r in read_lines(tmp_path / f"kept{workers}.removed.jsonl")]
    assert reasons == ["parrot caption"] * 3 + ["missing image", "bad image"]
    assert summary["workers"] == workers and summary["parrot"]["parrot_captions"] == 3


def test_a_reader_that_cannot_load_is_a_clear_error(tmp_path, capsys):
    source = tmp_path / "pairs.jsonl"
    source.write_text(json.dumps({"image": "a.png", "caption": "CAT"}) + "\n")
    code = main(["data", "parrot", str(source), "--out", str(tmp_path / "o.jsonl"), "--reader", "no_such_module:factory"])
    assert code == 2
    assert "cannot import" in capsys.readouterr().err


def test_a_cut_run_resumes_to_the_uninterrupted_output_and_summary(tmp_path):
    from crystalvlm.data.curation.stream import run_stream
    from crystalvlm.dataengine.parrot import ParrotSettings
    from crystalvlm.dataengine.steps import ParrotStep

    source = tmp_path / "pairs.jsonl"
    with open(source, "w") as handle:
        for index in range(60):
            caption = "CAT" if index % 3 == 0 else f"a circle number {index}"
            handle.write(json.dumps({"caption": caption, "ocr": ["CAT"]}) + "\n")
    settings = ParrotSettings(spotted_key="ocr")
    whole = run_stream(source, tmp_path / "whole.jsonl", ParrotStep(settings), batch_size=8, commit_every=10, progress=False)
    cut = run_stream(source, tmp_path / "cut.jsonl", ParrotStep(settings), batch_size=8, commit_every=10, progress=False,
                     stop_after_lines=20)
    assert not cut["complete"]
    resumed = run_stream(source, tmp_path / "cut.jsonl", ParrotStep(settings), batch_size=8, commit_every=10,
                         progress=False)
    assert resumed["complete"] and resumed["resumed_from_line"] > 0
    assert (tmp_path / "cut.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert resumed["parrot"] == whole["parrot"] and whole["parrot"]["parrot_captions"] == 20
