"""Interleaved, multi-image records: parsing, the count check, the record check, collation order, training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tiny_fixtures import tiny_recipe
from crystalvlm.data.dataset import DataSource, prepare_dataset
from crystalvlm.data.records import load_records, parse_record, read_record


def _record(rid, images, question, answer="First"):
    record = {"id": rid, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if images is not None:
        record["image"] = images
    return record


TWO_IMAGES = "Image 1: <image>\nImage 2: <image>\nWhich image is red? Answer first or second."


@pytest.fixture()
def multi_image_file(colour_world, tmp_path) -> Path:
    """Good two-image and one-image records beside records whose placeholders and images disagree."""
    records = [
        _record("pair0", ["img000.png", "img001.png"], TWO_IMAGES, "First"),  # red, green
        _record("pair1", ["img001.png", "img000.png"], TWO_IMAGES, "Second"),
        _record("pair2", ["img004.png", "img002.png"], TWO_IMAGES, "First"),  # red, blue
        _record("pair3", ["img002.png", "img004.png"], TWO_IMAGES, "Second"),
        _record("single", "img003.png", "<image>\nWhat colour is the square?", "Yellow"),
        _record("more_tags", ["img000.png"], TWO_IMAGES),
        _record("fewer_tags", ["img000.png", "img001.png", "img002.png"], TWO_IMAGES),
        _record("missing_second", ["img000.png", "nowhere.png"], TWO_IMAGES),
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_an_image_list_is_read_in_placeholder_order():
    record = parse_record("f:1", {"id": "r", "image": ["a.png", "b.png"], "conversations": [
        {"from": "human", "value": "<image>\nfirst"}, {"from": "gpt", "value": "ok"},
        {"from": "human", "value": "and <image> here?"}, {"from": "gpt", "value": "yes"}]})
    assert record.images == ("a.png", "b.png") and record.has_image


@pytest.mark.parametrize("images, text, counts", [
    (["a.png"], "<image>\n<image>\nWhich?", "2 <image> placeholder(s) in the conversation for 1 image(s)"),
    (["a.png", "b.png"], "<image>\nWhich?", "1 <image> placeholder(s) in the conversation for 2 image(s)"),
    (None, "<image>\nWhich?", "1 <image> placeholder(s) in the conversation for 0 image(s)"),
    (["a.png", "b.png"], "Which?", "0 <image> placeholder(s) in the conversation for 2 image(s)"),
])
def test_placeholder_and_image_counts_must_match(tmp_path, images, text, counts):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(_record("mismatch-7", images, text)) + "\n")
    loaded = load_records(path)
    assert not loaded.records
    (problem,) = loaded.problems
    assert problem.record_id == "mismatch-7" and counts in problem.reason
    assert f"{path}:1: record 'mismatch-7'" in str(problem)
    with pytest.raises(ValueError, match=re.escape(f"{path.name}:1: record 'mismatch-7' is malformed: {counts}")):
        read_record(path, 0)


def test_data_check_keeps_two_image_records_and_names_each_mismatch(multi_image_file, colour_world, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from crystalvlm.data.sample_encoder import SampleEncoder
    from crystalvlm.data.templates import get_template

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    encoder = SampleEncoder(tokenizer, get_template("vicuna_v1"), tokenizer.convert_tokens_to_ids("<image>"), 16)
    prepared = prepare_dataset([DataSource(multi_image_file, colour_world["images"])], encoder)
    assert [item.record.record_id for item in prepared.items] == ["pair0", "pair1", "pair2", "pair3", "single"]
    reasons = {problem.record_id: problem.reason for problem in prepared.problems}
    assert set(reasons) == {"more_tags", "fewer_tags", "missing_second"}
    assert "2 <image> placeholder(s)" in reasons["more_tags"] and "for 1 image(s)" in reasons["more_tags"]
    assert "for 3 image(s)" in reasons["fewer_tags"]
    assert "nowhere.png" in reasons["missing_second"]
    # Two images expand to two runs of 16 image tokens.
    pair = prepared.items[0]
    single = prepared.items[4]
    ids, _ = encoder.encode(pair.record.turns)
    assert ids.count(encoder.image_token_id) == 32 and pair.length == len(ids)
    assert encoder.encode(single.record.turns)[0].count(encoder.image_token_id) == 16


def test_plain_template_keeps_one_placeholder_per_image():
    from crystalvlm.data.templates import Turn, get_template

    plain = get_template("plain")
    turns = [Turn("user", "Image 1: <image>\nImage 2: <image>\nDescribe both."), Turn("assistant", "two squares")]
    assert "".join(segment.text for segment in plain.segments(turns)) == "<image><image>two squares\n"
    single = [Turn("user", "<image>\nDescribe."), Turn("assistant", "a square")]
    assert "".join(segment.text for segment in plain.segments(single)) == "<image>a square\n"


def test_collated_images_land_at_their_own_placeholders(multi_image_file, colour_world, tiny_checkpoint):
    """A batch of a two-image and a one-image sample: pixel values come in image order within sample
    order, and the model's logits equal those of a manual splice of each image's features into its
    own `<image>` run (so the second image's features sit at the second placeholder)."""
    from crystalvlm.data.collate import collate_conversations
    from crystalvlm.data.sample_encoder import SampleEncoder
    from crystalvlm.data.templates import get_template
    from crystalvlm.models.checkpoint import load_checkpoint

    model, processor, _ = load_checkpoint(tiny_checkpoint)
    model.eval()
    encoder = SampleEncoder.from_processor(processor, model.config, get_template("vicuna_v1"))
    records = {record.record_id: record for record in load_records(multi_image_file).records}
    samples = [encoder.sample(records[rid], colour_world["images"]) for rid in ("pair0", "single")]
    assert samples[0]["pixel_values"].shape[0] == 2
    batch = collate_conversations(samples, pad_token_id=processor.tokenizer.pad_token_id or 0)

    from PIL import Image

    files = ["img000.png", "img001.png", "img003.png"]  # pair0's two images, then single's
    alone = [encoder.pixel_values([Image.open(colour_world["images"] / f).convert("RGB")]) for f in files]
    assert torch.equal(batch["pixel_values"], torch.cat(alone))

    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"]).logits  # (B, T, V)
        features = model.model.get_image_features(
            pixel_values=torch.cat(alone), vision_feature_layer=model.config.vision_feature_layer,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy).pooler_output
        image_id = encoder.image_token_id
        embeds = model.get_input_embeddings()(batch["input_ids"].masked_fill(batch["input_ids"] == image_id, 0))
        features_of_row = [[features[0], features[1]], [features[2]]]
        for row, row_features in enumerate(features_of_row):
            positions = (batch["input_ids"][row] == image_id).nonzero().flatten()
            runs = positions.split(encoder.tokens_per_image)
            assert len(runs) == len(row_features)
            for run, feature in zip(runs, row_features):  # feature (tokens_per_image, hidden)
                embeds[row, run] = feature
        spliced = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
        swapped = embeds.clone()
        first, second = (batch["input_ids"][0] == image_id).nonzero().flatten().split(encoder.tokens_per_image)
        swapped[0, first], swapped[0, second] = embeds[0, second], embeds[0, first]
        swapped_logits = model(inputs_embeds=swapped, attention_mask=batch["attention_mask"]).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(logits[mask], spliced[mask], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits[0][mask[0]], swapped_logits[0][mask[0]], atol=1e-3)  # the order matters


def test_a_two_image_record_trains(multi_image_file, colour_world, tiny_tokenizer_dir, tmp_path):
    from crystalvlm.train.recipe import load_recipe
    from crystalvlm.train.trainer import TrainOptions, train_recipe

    # Both stages on the two-image records: `plain` (alignment) and `vicuna_v1` (instruction tuning).
    world = dict(colour_world, captions=multi_image_file, qa=multi_image_file)
    recipe = load_recipe(str(tiny_recipe(tmp_path, tiny_tokenizer_dir, world, batch_size=2)))
    results = train_recipe(recipe, TrainOptions(run_dir=tmp_path / "run", max_steps=2, progress=False))
    for result in results:
        assert {problem.record_id for problem in result.problems} == {"more_tags", "fewer_tags", "missing_second"}
    result = results[-1]
    losses = [json.loads(line) for line in (tmp_path / "run/finetune/metrics.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in losses if "loss" in entry]
    assert losses and all(loss == loss and loss > 0 for loss in losses)  # finite, not NaN
    assert (result.checkpoint / "model.safetensors").is_file()


def test_data_show_counts_images_side_by_side(multi_image_file, tiny_tokenizer_dir):
    """`plain` drops the words between the images, so their runs meet: the view still says two images."""
    from transformers import AutoTokenizer

    from crystalvlm.data.sample_encoder import SampleEncoder
    from crystalvlm.data.show import format_record, show_record
    from crystalvlm.data.templates import get_template

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    record = read_record(multi_image_file, 0)
    for template, expected in (("plain", "<image> x16 (x2 images)"), ("vicuna_v1", "<image> x16")):
        encoder = SampleEncoder(tokenizer, get_template(template), tokenizer.convert_tokens_to_ids("<image>"), 16)
        view = format_record(show_record(record, None, encoder), encoder)
        assert expected in view and "32 image tokens" in view
    assert "(x2 images)" not in view  # vicuna_v1 keeps the words between them: two runs of 16
