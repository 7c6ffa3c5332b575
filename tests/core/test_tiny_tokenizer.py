"""The tiny tokenizer's `isolate_spaces`: a word is one and the same token whatever precedes it."""

from __future__ import annotations

from pathlib import Path

from crystalvlm.worlds.parts.tiny import train_tiny_tokenizer

CORPUS = ['<p style="color:gray">help order news</p>', "body gray p help order news",
          '<button style="background:red">order</button>', "news help order"] * 50


def test_isolated_spaces_give_a_word_one_token_after_markup_and_after_a_space(tmp_path: Path):
    tokenizer = train_tiny_tokenizer(CORPUS, tmp_path / "isolated", vocab_size=2000, isolate_spaces=True)
    after_markup = tokenizer.tokenize('">order')
    after_space = tokenizer.tokenize("news order")
    assert after_markup[-1] == after_space[-1] == "order"
    # the text comes back exactly, spaces included
    for text in CORPUS[:3] + ["a  double  space", " leading"]:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.decode(ids) == text


def test_without_isolation_a_word_after_a_space_is_another_token(tmp_path: Path):
    # the default, byte-level BPE as before: " order" and "order" are two different tokens, the
    # reason the web world asks for isolation
    tokenizer = train_tiny_tokenizer(CORPUS, tmp_path / "plain", vocab_size=2000)
    assert tokenizer.tokenize('">order')[-1] != tokenizer.tokenize("news order")[-1]


def test_a_world_tokenizer_knows_only_the_world_templates(tmp_path):
    """A template added to the library must not change a world's tokenizer (and so its parts and
    figures): with `templates` given, other templates' markers and scaffolding stay out."""
    from crystalvlm.data.templates import TEMPLATES
    from crystalvlm.worlds.parts.tiny import WORLD_TEMPLATES

    every = train_tiny_tokenizer(CORPUS, tmp_path / "every", vocab_size=2000)
    world = train_tiny_tokenizer(CORPUS, tmp_path / "world", vocab_size=2000, templates=WORLD_TEMPLATES)
    outside = {m for name, template in TEMPLATES.items() if name not in WORLD_TEMPLATES for m in template.markers}
    inside = {m for name in WORLD_TEMPLATES for m in TEMPLATES[name].markers}
    assert inside <= set(world.get_vocab()) and inside <= set(every.get_vocab())
    assert (outside - inside) <= set(every.get_vocab())
    assert not (outside - inside) & set(world.get_vocab())
