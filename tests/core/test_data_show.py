"""`crystalvlm data show`: a record's ids exactly as the model sees them, with the trained ones marked."""

from __future__ import annotations

import json

from transformers import AutoConfig, AutoTokenizer

from crystalvlm.cli import main
from crystalvlm.data.templates import get_template


def _show(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(["data", "show", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_json_line_is_the_model_input_and_its_labels(tiny_checkpoint, colour_world, capsys):
    status, out, _ = _show(capsys, str(colour_world["qa"]), "--model", str(tiny_checkpoint),
                           "--image-folder", str(colour_world["images"]), "--index", "1", "--json")
    assert status == 0
    shown = json.loads(out.strip().splitlines()[-1])
    assert set(shown) == {"input_ids", "labels"}
    ids, labels = shown["input_ids"], shown["labels"]
    # Record 1 of the colour world: green square, two QA turns, one image.
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    config = AutoConfig.from_pretrained(tiny_checkpoint)
    image_id = config.image_token_id
    rendered = ("<s>" + get_template("vicuna_v1").default_system + " USER: <image>\nWhat colour is the square?\n"
                "Answer the question using a single word or phrase. ASSISTANT: Green</s>USER: Is it a square? "
                "ASSISTANT: Yes</s>")
    whole = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    at = whole.index(image_id)
    assert ids == whole[:at] + [image_id] * config.image_seq_length + whole[at + 1:]
    assert len(labels) == len(ids)
    trained = [(i, label) for i, label in enumerate(labels) if label != -100]
    assert all(ids[i] == label for i, label in trained)
    assert tokenizer.decode([label for _, label in trained]).replace(" ", "") == "Green</s>Yes</s>"
    # the human view marks the trained tokens
    assert f"{len(trained)} trained" in out
    assert f"<image> x{config.image_seq_length}" in out
    assert "T " in out


def test_bad_index_and_malformed_record_are_named(tiny_checkpoint, colour_world, tmp_path, capsys):
    status, _, err = _show(capsys, str(colour_world["qa"]), "--model", str(tiny_checkpoint), "--index", "999")
    assert status == 2 and "no record at index 999" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "b0", "conversations": [{"from": "gpt", "value": "hi"}]}) + "\n")
    status, _, err = _show(capsys, str(bad), "--model", str(tiny_checkpoint))
    assert status == 2 and "bad.jsonl:1" in err and "malformed" in err
