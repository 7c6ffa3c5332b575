"""Every kind of bad record is reported with its reason and skipped; no good record is lost."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from tiny_fixtures import tiny_recipe
from crystalvlm.data.dataset import DataSource
from crystalvlm.train.recipe import load_recipe
from crystalvlm.train.trainer import BadDataError, TrainOptions, train_recipe


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels: a decompression bomb's signature."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _record(rid, image, question="<image>\nWhat colour is the square?", answer="Red"):
    record = {"id": rid, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image is not None:
        record["image"] = image
    return json.dumps(record)


@pytest.fixture()
def bad_dataset(colour_world, tmp_path) -> tuple[Path, set[str], dict[str, str]]:
    # A copy: the bad files must not land in the shared world other tests read.
    images = tmp_path / "images"
    shutil.copytree(colour_world["images"], images)
    good_png = (images / "img000.png").read_bytes()
    (images / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (images / "not_an_image.png").write_bytes(b"this is text, not a picture")
    (images / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    (tmp_path / "outside.png").write_bytes(good_png)
    good = [_record(f"good{i}", f"img{i:03d}.png") for i in range(12)] + [_record("good_text", None, "Name a colour.")]
    bad = {
        "truncated": _record("truncated", "truncated.png"),
        "corrupt": _record("corrupt", "not_an_image.png"),
        "missing": _record("missing", "nowhere.png"),
        "escape": _record("escape", "../../outside.png"),
        "bomb": _record("bomb", "bomb.png"),
        "two_placeholders": _record("two_placeholders", "img001.png", "<image>\n<image>\nWhat?"),
        "no_placeholder": _record("no_placeholder", "img001.png", "What colour?"),
        "empty_conversation": json.dumps({"id": "empty_conversation", "conversations": []}),
        "wrong_roles": json.dumps({"id": "wrong_roles", "conversations": [{"from": "gpt", "value": "hi"}]}),
        "empty_answer": _record("empty_answer", "img001.png", answer=" "),
        "too_long": _record("too_long", "img002.png", answer="square " * 400),
    }
    reasons = {"truncated": "not a readable image", "corrupt": "not a readable image", "missing": "not found",
               "escape": "escapes the image folder", "bomb": "decompression bomb", "two_placeholders": "placeholder",
               "no_placeholder": "placeholder", "empty_conversation": "non-empty list", "wrong_roles": "human",
               "empty_answer": "empty", "too_long": "over max_length"}
    lines = []
    for index, line in enumerate(good):
        lines.append(line)
        if index < len(bad):
            lines.append(list(bad.values())[index])
    lines.insert(5, "{not json at all")
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, {f"good{i}" for i in range(12)} | {"good_text"}, reasons


def test_bad_records_are_reported_and_skipped(bad_dataset, colour_world, tiny_tokenizer_dir, tmp_path):
    path, good_ids, reasons = bad_dataset
    recipe = load_recipe(str(tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world, max_length=200)))
    options = TrainOptions(run_dir=tmp_path / "run", stages=["align"], data=DataSource(path, path.parent / "images"),
                           max_steps=2, progress=False)
    result = train_recipe(recipe, options)[0]
    reported = {p.record_id: p.reason for p in result.problems}
    for rid, expected in reasons.items():
        assert rid in reported, f"{rid} was not reported"
        assert expected in reported[rid], (rid, reported[rid])
    invalid_json = [p for p in result.problems if p.record_id is None]
    assert len(invalid_json) == 1 and "invalid JSON" in invalid_json[0].reason and ":6" in invalid_json[0].source
    assert len(result.problems) == len(reasons) + 1
    # The report file lists the same problems, and the final checkpoint exists.
    listed = [json.loads(l) for l in (tmp_path / "run/align/data_problems.jsonl").read_text().splitlines()]
    assert {l["id"] for l in listed} == set(reasons) | {None}
    assert (result.checkpoint / "model.safetensors").is_file()


def test_no_good_record_is_lost(bad_dataset, colour_world, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from crystalvlm.data.dataset import prepare_dataset
    from crystalvlm.data.sample_encoder import SampleEncoder
    from crystalvlm.data.templates import get_template

    path, good_ids, _ = bad_dataset
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    # Checking needs token ids only: an encoder without an image processor will do.
    encoder = SampleEncoder(tokenizer, get_template("vicuna_v1"), tokenizer.convert_tokens_to_ids("<image>"), 16,
                            max_length=200)
    prepared = prepare_dataset([DataSource(path, path.parent / "images")], encoder)
    assert {item.record.record_id for item in prepared.items} == good_ids


def test_strict_refuses_before_training(bad_dataset, colour_world, tiny_tokenizer_dir, tmp_path):
    path, _, _ = bad_dataset
    recipe = load_recipe(str(tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world, max_length=200)))
    options = TrainOptions(run_dir=tmp_path / "strict", stages=["align"], data=DataSource(path, path.parent / "images"),
                           max_steps=2, strict=True, progress=False)
    with pytest.raises(BadDataError, match="12 bad record"):
        train_recipe(recipe, options)
    assert not (tmp_path / "strict/align/final").exists()
    assert not (tmp_path / "strict/align/metrics.jsonl").exists()


def test_data_check_lists_every_bad_record_before_training(bad_dataset, colour_world, tiny_tokenizer_dir, tmp_path,
                                                           capsys):
    from crystalvlm.cli import main as cli_main

    path, good_ids, reasons = bad_dataset
    recipe = load_recipe(str(tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world, max_length=200)))
    checkpoint = train_recipe(recipe, TrainOptions(run_dir=tmp_path / "run", stages=["align"], max_steps=1,
                                                   progress=False))[0].checkpoint
    code = cli_main(["data", "check", str(path), "--image-folder", str(path.parent / "images"), "--model",
                     str(checkpoint), "--template", "vicuna_v1", "--max-length", "200", "--quiet"])
    out = capsys.readouterr().out
    assert code == 1  # bad records found
    bad_lines = [line for line in out.splitlines() if line.startswith("BAD ")]
    assert len(bad_lines) == len(reasons) + 1  # + the invalid JSON line
    for rid, expected in reasons.items():
        assert any(rid in line and expected in line for line in bad_lines), rid
    summary = json.loads(out[out.index("{"):])
    assert summary["good"] == len(good_ids) and summary["bad"] == len(reasons) + 1
    assert summary["tokens"]["max"] <= 200


def test_tensorboard_logging_when_asked(colour_world, tiny_tokenizer_dir, tmp_path):
    pytest.importorskip("tensorboard")
    recipe = load_recipe(str(tiny_recipe(tmp_path, tiny_tokenizer_dir, colour_world)))
    train_recipe(recipe, TrainOptions(run_dir=tmp_path / "tb", stages=["align"], max_steps=2, progress=False,
                                      report_to=["tensorboard"]))
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))
