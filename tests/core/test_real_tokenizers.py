"""Templates with real-style tokenizers built on the spot: SentencePiece (Llama-2/Vicuna, legacy and
non-legacy) and Llama-3-style byte-level BPE. The ids must equal the rendered chat template tokenised
as one string (what inference sees) and the labels must cover exactly each answer and its end-of-turn
token."""

from __future__ import annotations

import pytest
from jinja2 import Environment

from test_templates import CONVERSATION, assert_ids_and_labels_are_exact
from tiny_fixtures import llama3_style_tokenizer, sentencepiece_llama_tokenizer

from crystalvlm.data.templates import Turn, get_template

TEXT_ONLY = [Turn("user", "Name a colour."), Turn("assistant", "Red")]
WITH_SYSTEM = [Turn("system", "Be terse."), *CONVERSATION]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("real_tokenizers")
    return {
        "sentencepiece-legacy": sentencepiece_llama_tokenizer(folder / "legacy", legacy=True),
        "sentencepiece": sentencepiece_llama_tokenizer(folder / "nonlegacy", legacy=False),
        "llama3-bpe": llama3_style_tokenizer(),
    }


CASES = [("sentencepiece-legacy", "vicuna_v1"), ("sentencepiece", "vicuna_v1"),
         ("sentencepiece-legacy", "plain"), ("sentencepiece", "plain"),
         ("llama3-bpe", "llama3"), ("llama3-bpe", "plain")]


@pytest.mark.parametrize("kind, name", CASES)
def test_ids_are_the_whole_string_and_labels_the_answers(kind, name, tokenizers):
    tokenizer, template = tokenizers[kind], get_template(name)
    template.check_tokenizer(tokenizer)
    conversations = [CONVERSATION[:2]] if template.first_turn_only_image else [CONVERSATION, TEXT_ONLY, WITH_SYSTEM]
    for conversation in conversations:
        assert_ids_and_labels_are_exact(template, conversation, tokenizer)


@pytest.mark.parametrize("kind, name", CASES)
def test_saved_chat_template_gives_the_training_prompt_ids(kind, name, tokenizers):
    """What a plain transformers user builds with the saved Jinja template tokenises to the prompt ids."""
    tokenizer, template = tokenizers[kind], get_template(name)
    jinja = Environment().from_string(template.chat_template_jinja())
    history = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the square?"}]}]
    turns = [Turn("user", "<image>\nWhat colour is the square?")]
    if not template.first_turn_only_image:
        history += [{"role": "assistant", "content": "Red"}, {"role": "user", "content": "Is it a square?"}]
        turns += [Turn("assistant", "Red"), Turn("user", "Is it a square?")]
    rendered = jinja.render(messages=history, add_generation_prompt=True)
    prompt_ids, prompt_labels = template.encode(turns, tokenizer, add_generation_prompt=True)
    assert prompt_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert prompt_ids.count(tokenizer.convert_tokens_to_ids("<image>")) == 1


def test_segment_wise_encoding_would_mismatch(tokenizers):
    """Why whole-string tokenisation matters: the non-legacy SentencePiece tokenizer gives a piece tokenised
    alone other ids than the same text inside the conversation ("▁USER" alone, "USER" after `</s>`), and
    the legacy and non-legacy modes disagree after `</s>`."""
    template = get_template("vicuna_v1")
    tokenizer = tokenizers["sentencepiece"]
    segment_wise = [i for segment in template.segments(CONVERSATION)
                    for i in tokenizer(segment.text, add_special_tokens=False)["input_ids"]]
    plain, _ = template.encode(CONVERSATION, tokenizer)
    assert segment_wise != plain
    legacy, _ = template.encode(CONVERSATION, tokenizers["sentencepiece-legacy"])
    assert legacy != plain


def test_boundary_inside_a_token_is_refused_with_the_boundary_named(tokenizers):
    """A template whose answer is glued to the prompt text lets the tokenizer merge across the boundary."""
    from dataclasses import replace

    from crystalvlm.data.templates import TokenizationMismatch

    glued = replace(get_template("vicuna_v1"), name="glued", user_format="USER: {content} ASSISTANT: Re",
                    assistant_format="{content}</s>")
    with pytest.raises(TokenizationMismatch, match="tokenization mismatch with template 'glued'"):
        glued.encode([Turn("user", "hi"), Turn("assistant", "d")], tokenizers["sentencepiece"])
