"""Templates: trained tokens are exactly what the model must emit after the generation prompt."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from crystalvlm.data.templates import IGNORE_INDEX, TEMPLATES, ConversationError, Turn, get_template

CONVERSATION = [
    Turn("user", "<image>\nWhat colour is the square?"),
    Turn("assistant", "Red"),
    Turn("user", "Is it a square? Answer yes or no."),
    Turn("assistant", "Yes, it is a square."),
]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def assert_ids_and_labels_are_exact(template, conversation, tokenizer):
    """The ids are the rendered conversation tokenised as one string; each trained run starts where the
    generation prompt (tokenised alone, as inference does) ends and is exactly the answer and its
    end-of-turn marker; nothing else is trained."""
    ids, labels = template.encode(conversation, tokenizer)
    assert len(ids) == len(labels)
    whole = "".join(segment.text for segment in template.segments(conversation))
    assert ids == tokenizer(whole, add_special_tokens=False)["input_ids"]
    expected_trained = set()
    for turn_index in [i for i, t in enumerate(conversation) if t.role == "assistant"]:
        prompt_ids, _ = template.encode(conversation[:turn_index], tokenizer, add_generation_prompt=True)
        assert prompt_ids == tokenizer(template.prompt_text(conversation[:turn_index]), add_special_tokens=False)["input_ids"]
        assert ids[: len(prompt_ids)] == prompt_ids  # training starts with exactly the inference prompt
        assert labels[len(prompt_ids) - 1] == IGNORE_INDEX  # the generation prompt is never trained
        run_end = len(prompt_ids)
        while run_end < len(labels) and labels[run_end] != IGNORE_INDEX:
            run_end += 1
        answer_and_end = template.assistant_format.format(content=conversation[turn_index].text)
        trained_text = tokenizer.decode(ids[len(prompt_ids): run_end], skip_special_tokens=False)
        assert trained_text.strip() == answer_and_end.strip()
        expected_trained |= set(range(len(prompt_ids), run_end))
    assert {i for i, label in enumerate(labels) if label != IGNORE_INDEX} == expected_trained
    assert all(labels[i] == ids[i] for i in expected_trained)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_trained_tokens_are_what_follows_the_generation_prompt(name, tokenizer):
    template = get_template(name)
    conversation = CONVERSATION[:2] if template.first_turn_only_image else CONVERSATION
    assert_ids_and_labels_are_exact(template, conversation, tokenizer)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_hf_chat_template_renders_the_training_prompt(name, tokenizer):
    """The Jinja template saved in the processor builds the same prompt, string and ids."""
    from jinja2 import Environment

    template = get_template(name)
    jinja = Environment().from_string(template.chat_template_jinja())
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the square?"}]}]
    rendered = jinja.render(messages=messages, add_generation_prompt=True)
    turns = [Turn("user", "<image>\nWhat colour is the square?")]
    assert rendered == template.prompt_text(turns)
    whole = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    piecewise, _ = template.encode(turns, tokenizer, add_generation_prompt=True)
    assert whole == piecewise
    # multi-turn history renders the same way too
    if not template.first_turn_only_image:
        history = [{"role": "user", "content": "<image>\nWhat colour is the square?"},
                   {"role": "assistant", "content": "Red"}, {"role": "user", "content": "Is it a square?"}]
        turns = [Turn("user", "<image>\nWhat colour is the square?"), Turn("assistant", "Red"), Turn("user", "Is it a square?")]
        assert jinja.render(messages=history) == template.prompt_text(turns)


def test_system_turn_replaces_the_default():
    template = get_template("vicuna_v1")
    text = template.prompt_text([Turn("system", "Be terse."), Turn("user", "hi")])
    assert text.startswith("<s>Be terse. USER: hi ASSISTANT:")


@pytest.mark.parametrize("bad, message", [
    ([], "empty"),
    ([Turn("assistant", "hi")], "expected 'user'"),
    ([Turn("user", "a"), Turn("user", "b")], "alternate"),
    ([Turn("user", "  ")], "empty"),
])
def test_malformed_conversations_are_refused(bad, message):
    with pytest.raises(ConversationError, match=message):
        get_template("chatml").segments(bad, add_generation_prompt=True)


def test_tokenizer_that_splits_a_marker_is_refused(tiny_tokenizer_dir):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({"<": 0, "|": 1, "im_start": 2, ">": 3, "[UNK]": 4}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    plain = PreTrainedTokenizerFast(tokenizer_object=backend)
    with pytest.raises(ValueError, match="single token"):
        get_template("chatml").check_tokenizer(plain)


def test_unknown_template_lists_the_known_ones():
    with pytest.raises(KeyError, match="chatml"):
        get_template("vicuna")
