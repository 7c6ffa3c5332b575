"""The `tiny` preset: a tokenizer trained on the spot and configs small enough for a laptop CPU.

The tokenizer is a byte-level BPE trained on the training text, with every template's special
markers reserved as single tokens, so any shipped template works with it. Byte-level
pre-tokenisation splits at the same places whether a prompt is tokenised whole or segment by
segment, which is what makes `Template.encode` agree with the saved processor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from crystalvlm.data.templates import IMAGE_PLACEHOLDER, TEMPLATES, Turn, all_template_markers

# "</s>" deliberately not at id 2: CLIP's text tower treats eos id 2 as "legacy" and pools at the
# highest token id instead of at the end marker.
BASE_SPECIAL_TOKENS = ["<unk>", "<pad>", "<s>", "</s>", IMAGE_PLACEHOLDER]

# The templates a world's tokenizer knows. Fixed, not "every shipped template": the tokenizer trains
# on the templates' scaffolding and reserves their markers, so a template added to the library would
# otherwise change every world's tokenizer, hence its pretrained parts and its measured figures (a
# tokenizer that also knew crystalchat's markers gave a quickstart model that never learned to look:
# POPE 0.50 instead of 0.96, same data and seed).
WORLD_TEMPLATES = ("plain", "vicuna_v1", "llama3", "chatml")


def template_texts(templates: Iterable[str] | None = None) -> list[str]:
    """The scaffolding (system prompt, role names) of `templates` (default: every shipped template)
    around a one-word turn."""
    turns = [Turn("user", "hello"), Turn("assistant", "yes"), Turn("user", "hello")]
    chosen = TEMPLATES.values() if templates is None else [TEMPLATES[name] for name in templates]
    return [template.prompt_text(turns) for template in chosen]


def train_tiny_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 1024,
                         isolate_spaces: bool = False, templates: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """Train, save to `out_dir` and return a byte-level BPE tokenizer.

    `isolate_spaces` makes every space a token of its own, so a word is the same token whether a
    space or markup precedes it: in HTML, `">cart` and ` cart` would otherwise give two tokens for
    "cart", and a tiny model writing HTML must learn each word twice from the screenshot (after
    the same summary pretraining, a probe put 0.27 of the words in place with one form and 0.03 with
    two; docs/web-world-status.md).

    The templates' scaffolding is weighted like a quarter of the corpus, so their words become
    whole tokens as they are in a real LLM's vocabulary: without it Vicuna's system prompt alone
    took ~100 tokens and doubled the length, and the cost, of every finetuning sample.

    `templates`: the templates whose scaffolding and markers the tokenizer knows (default: every
    shipped template; the worlds pass WORLD_TEMPLATES)."""
    templates = None if templates is None else tuple(templates)
    texts = list(texts)
    texts += template_texts(templates) * max(1, len(texts) // 4)
    markers = all_template_markers() if templates is None else [
        m for name in templates for m in TEMPLATES[name].markers]
    special = BASE_SPECIAL_TOKENS + [m for m in dict.fromkeys(markers) if m not in BASE_SPECIAL_TOKENS]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Split(" ", behavior="isolated"), byte_level])
                             if isolate_spaces else byte_level)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=[t for t in special if t not in ("<unk>", "<s>", "</s>", "<pad>")],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.model_max_length = 4096
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def tiny_vision_config(image_size: int = 64, patch_size: int = 8, hidden: int = 128, layers: int = 4) -> dict:
    return {
        "model_type": "clip_vision_model",
        "image_size": image_size,
        "patch_size": patch_size,
        "hidden_size": hidden,
        "intermediate_size": hidden * 4,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 32),
        "projection_dim": hidden,
    }


def tiny_llm_config(vocab_size: int, hidden: int = 256, layers: int = 4, max_positions: int = 512) -> dict:
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": hidden * 3,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),
        "num_key_value_heads": max(1, hidden // 64),
        "max_position_embeddings": max_positions,
        "tie_word_embeddings": False,
        "attention_dropout": 0.0,
        "bos_token_id": 2,
        "eos_token_id": 3,
        "pad_token_id": 1,
    }
