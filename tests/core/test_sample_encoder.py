"""The SampleEncoder: one object, built from a processor and a template, encodes training samples,
checks records and builds generation prompts, and the three agree with each other."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from crystalvlm.data.dataset import DataSource, prepare_dataset
from crystalvlm.data.records import RecordProblem, parse_record
from crystalvlm.data.sample_encoder import SampleEncoder
from crystalvlm.data.templates import IGNORE_INDEX, IMAGE_PLACEHOLDER, ConversationError, Turn, get_template

QUESTION = f"{IMAGE_PLACEHOLDER}\nWhat colour is the square?"


@pytest.fixture(scope="module")
def processor_and_config(tiny_checkpoint):
    from transformers import AutoConfig, AutoProcessor

    return AutoProcessor.from_pretrained(tiny_checkpoint), AutoConfig.from_pretrained(tiny_checkpoint)


def _record(question: str = QUESTION, answer: str = "Red", image: str | None = "img000.png"):
    item = {"id": "r", "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image is not None:
        item["image"] = image
    return parse_record("test[0]", item)


def test_reads_the_image_token_id_and_count_from_the_config(processor_and_config):
    processor, config = processor_and_config
    encoder = SampleEncoder.from_processor(processor, config, get_template("vicuna_v1"), "square", max_length=99)
    assert encoder.image_token_id == config.image_token_id == processor.tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    assert encoder.tokens_per_image == config.image_seq_length == 16  # (32 / 8)^2 patches, CLS dropped
    assert (encoder.image_mode, encoder.max_length) == ("square", 99)
    # An older config that names the id image_token_index only.
    old = SimpleNamespace(image_token_index=7, image_seq_length=3)
    assert SampleEncoder.from_processor(processor, old, None).image_token_id == 7
    with pytest.raises(ValueError, match="unknown image preprocessing"):
        SampleEncoder.from_processor(processor, config, None, "stretch")


def test_training_sample_starts_with_the_generation_prompt(processor_and_config, colour_world):
    """The ids trained on begin with exactly the ids the model is prompted with, images included."""
    processor, config = processor_and_config
    encoder = SampleEncoder.from_processor(processor, config, get_template("vicuna_v1"), "pad")
    record = _record()
    sample = encoder.sample(record, colour_world["images"])
    image = Image.open(colour_world["images"] / "img000.png").convert("RGB")
    prompt_ids, prompt_pixels = encoder.prompt([Turn("user", QUESTION)], [image])

    ids, labels = sample["input_ids"], sample["labels"]
    assert ids[: len(prompt_ids)] == prompt_ids
    assert all(label == IGNORE_INDEX for label in labels[: len(prompt_ids)])
    answer = processor.tokenizer(" Red</s>", add_special_tokens=False)["input_ids"]
    assert ids[len(prompt_ids):] == labels[len(prompt_ids):] == answer
    # One `<image>` became the model's run of 16 image ids, never trained on.
    positions = [i for i, token in enumerate(ids) if token == encoder.image_token_id]
    assert len(positions) == 16 and positions == list(range(positions[0], positions[0] + 16))
    assert sample["pixel_values"].shape == prompt_pixels.shape == (1, 3, 32, 32)
    assert torch.equal(sample["pixel_values"], prompt_pixels)


def test_check_record_measures_and_refuses(processor_and_config, colour_world):
    processor, config = processor_and_config
    encoder = SampleEncoder.from_processor(processor, config, get_template("vicuna_v1"), "pad", max_length=200)
    length = encoder.check_record(_record(), colour_world["images"])
    assert length == len(encoder.sample(_record(), colour_world["images"])["input_ids"])

    short = SampleEncoder.from_processor(processor, config, get_template("vicuna_v1"), "pad", max_length=length - 1)
    problem = short.check_record(_record(), colour_world["images"])
    assert isinstance(problem, RecordProblem) and f"{length} tokens is over max_length {length - 1}" in problem.reason
    missing = encoder.check_record(_record(image="nowhere.png"), colour_world["images"])
    assert isinstance(missing, RecordProblem) and "not found" in missing.reason
    no_folder = encoder.check_record(_record(), None)
    assert isinstance(no_folder, RecordProblem) and "no image folder" in no_folder.reason


def test_training_data_needs_a_template(processor_and_config, colour_world):
    processor, config = processor_and_config
    encoder = SampleEncoder.from_processor(processor, config, None, "pad", max_length=200)
    with pytest.raises(ValueError, match="needs a conversation template"):
        prepare_dataset([DataSource(colour_world["qa"], colour_world["images"])], encoder)


def test_prompt_refusals_name_the_problem(processor_and_config):
    from crystalvlm.infer.prompts import PromptBuilder, RequestError

    processor, config = processor_and_config
    encoder = SampleEncoder.from_processor(processor, config, get_template("vicuna_v1"), "pad")
    with pytest.raises(ConversationError, match=r"1 <image> placeholder\(s\) but 0 image\(s\)"):
        encoder.prompt([Turn("user", QUESTION)], [])
    with pytest.raises(ConversationError, match="empty"):
        encoder.prompt([], [])
    # The engine's prompt builder passes the same message on as a RequestError.
    with pytest.raises(RequestError, match="ends with a user turn"):
        PromptBuilder(encoder).build([Turn("user", "hi"), Turn("assistant", "yes")], [])


def test_chat_template_fallback_builds_the_templates_prompt(processor_and_config):
    """Without a template name the processor's chat template (written from vicuna_v1) is used, and
    it gives the same ids as the template itself."""
    processor, config = processor_and_config
    image = Image.new("RGB", (40, 30), (200, 10, 10))
    turns = [Turn("user", QUESTION), Turn("assistant", "Red"), Turn("user", "Is it a square?")]
    named, named_pixels = SampleEncoder.from_processor(processor, config, get_template("vicuna_v1")).prompt(turns, [image])
    fallback, fallback_pixels = SampleEncoder.from_processor(processor, config, None).prompt(turns, [image])
    assert fallback == named
    assert torch.equal(fallback_pixels, named_pixels)


def test_checkpoint_encoder_reads_the_sidecar(tiny_checkpoint, tmp_path):
    import shutil

    from crystalvlm.infer.prompts import checkpoint_encoder

    encoder = checkpoint_encoder(tiny_checkpoint, max_length=64)
    assert (encoder.template.name, encoder.image_mode, encoder.max_length) == ("vicuna_v1", "pad", 64)
    assert checkpoint_encoder(tiny_checkpoint, "chatml").template.name == "chatml"
    # A foreign checkpoint (no sidecar): prompts fall back to the chat template; data check refuses.
    foreign = tmp_path / "foreign"
    shutil.copytree(tiny_checkpoint, foreign)
    (foreign / "crystalvlm.json").unlink()
    assert checkpoint_encoder(foreign).template is None
    with pytest.raises(ValueError, match="does not say which template it uses; pass --template"):
        checkpoint_encoder(foreign, require_template=True)
