"""Tiny worlds, tokenizers and recipes built on the spot for tests (importable as `tiny_fixtures`)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def write_colour_world(root: Path, n: int = 24) -> dict[str, Path]:
    """n images of one coloured square; caption and QA records in the LLaVA format."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    captions, qa = [], []
    for index in range(n):
        colour = names[index % len(names)]
        image = Image.new("RGB", (48, 40), (245, 245, 245))
        image.paste(COLOURS[colour], (8, 8, 40, 32))
        file = f"img{index:03d}.png"
        image.save(images / file)
        captions.append({"id": f"cap{index}", "image": file, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image briefly."},
            {"from": "gpt", "value": f"a {colour} square"}]})
        qa.append({"id": f"qa{index}", "image": file, "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the square?\nAnswer the question using a single word or phrase."},
            {"from": "gpt", "value": colour.capitalize()},
            {"from": "human", "value": "Is it a square?"},
            {"from": "gpt", "value": "Yes"}]})
    qa.append({"id": "text0", "conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Red"}]})
    (root / "captions.json").write_text(json.dumps(captions))
    (root / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa))
    return {"images": images, "captions": root / "captions.json", "qa": root / "qa.jsonl"}


def corpus() -> list[str]:
    lines = []
    for colour in COLOURS:
        lines += [f"a {colour} square", f"What colour is the square? {colour.capitalize()}", "Is it a square? Yes",
                  "Describe the image briefly.", "Answer the question using a single word or phrase.", "Name a colour."]
    return lines * 20


def tiny_model_section(tokenizer_dir: Path, vocab_size: int) -> dict:
    from crystalvlm.worlds.parts.tiny import tiny_llm_config, tiny_vision_config

    return {
        "vision": {"config": tiny_vision_config(image_size=32, patch_size=8, hidden=32, layers=2)},
        "llm": {"config": tiny_llm_config(vocab_size, hidden=64, layers=2)},
        "tokenizer": str(tokenizer_dir),
        "projector": "mlp2x_gelu",
    }


def tiny_recipe(tmp: Path, tokenizer_dir: Path, world: dict[str, Path], **stage_overrides) -> Path:
    """A two-stage recipe file over the colour world."""
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    common = {"epochs": 2, "batch_size": 4, "warmup_ratio": 0.1, "max_length": 256, "log_every": 1}
    common.update(stage_overrides)
    recipe = {
        "name": "test-tiny",
        "seed": 7,
        "model": tiny_model_section(tokenizer_dir, vocab + 8),
        "image_mode": "pad",
        "datasets": {
            "captions": {"file": str(world["captions"]), "image_folder": str(world["images"])},
            "qa": {"file": str(world["qa"]), "image_folder": str(world["images"])},
        },
        "stages": {
            "align": {"template": "plain", "data": ["captions"], "tunable": ["projector"], "lr": {"projector": 1e-3}, **common},
            "finetune": {"template": "vicuna_v1", "data": ["qa"], "tunable": ["projector", "llm"],
                         "lr": {"projector": 5e-4, "llm": 5e-4}, **common},
        },
    }
    import yaml

    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# ---------------------------------------------------------------- real-style tokenizers, trained on the spot
def _chat_corpus() -> list[str]:
    from crystalvlm.data.templates import LLAMA3_SYSTEM, VICUNA_SYSTEM

    return corpus() + [VICUNA_SYSTEM, LLAMA3_SYSTEM, "USER: What colour is it? ASSISTANT: Red",
                       "user\n\nIs it a square?", "assistant\n\nYes, it is a square."] * 10


def sentencepiece_llama_tokenizer(folder: Path, legacy: bool):
    """A Llama-2/Vicuna-style tokenizer: a tiny SentencePiece BPE model (byte fallback, dummy prefix,
    <unk>/<s>/</s> at 0/1/2) loaded by transformers' LlamaTokenizer, with `<image>` added."""
    import io

    import sentencepiece
    from transformers import LlamaTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_chat_corpus()), model_writer=model, vocab_size=1000, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2, hard_vocab_limit=False)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    tokenizer = LlamaTokenizer.from_pretrained(folder, legacy=legacy)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer


# Llama-3's pre-tokenizer pattern (split before byte-level mapping).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def llama3_style_tokenizer():
    """A Llama-3-style tokenizer: byte-level BPE with Llama-3's split pattern and its header/turn
    special tokens, as a PreTrainedTokenizerFast."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<image>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(_chat_corpus(), trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   additional_special_tokens=specials)


IMAGE_TOKEN_ID = 99  # the tiny Llava's `<image>` id (vocabulary of 100)


def tiny_llava(seed: int = 0, attention: str = "sdpa"):
    """A random tiny LlavaForConditionalGeneration (CLIP 32 px / patch 8: 16 image tokens; Llama 64 wide,
    2 layers, vocabulary 100 with `<image>` = IMAGE_TOKEN_ID), built without a tokenizer, in train mode."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from crystalvlm.worlds.parts.tiny import tiny_llm_config, tiny_vision_config

    vision = {k: v for k, v in tiny_vision_config(image_size=32, patch_size=8, hidden=32, layers=2).items() if k != "model_type"}
    text = {k: v for k, v in tiny_llm_config(100, hidden=64, layers=2, max_positions=256).items() if k != "model_type"}
    config = LlavaConfig(vision_config=CLIPVisionConfig(**vision), text_config=LlamaConfig(**text),
                         image_token_id=IMAGE_TOKEN_ID, image_seq_length=16, projector_hidden_act="gelu")
    config._attn_implementation = attention
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config).train()


def tiny_samples(seed: int = 0, count: int = 7) -> list[dict]:
    """Encoded samples as `SampleEncoder.sample` gives them (input_ids, labels, pixel_values) for
    `tiny_llava`: some with one image (16 `<image>` tokens after BOS), some text-only; lengths 6-60."""
    import random

    import torch

    rng = random.Random(seed)
    samples = []
    for index in range(count):
        with_image = index % 3 != 2
        prompt = [1] + ([IMAGE_TOKEN_ID] * 16 if with_image else []) + [rng.randrange(3, 90) for _ in range(rng.randint(2, 12))]
        answer = [rng.randrange(3, 90) for _ in range(rng.randint(1, 30))]
        samples.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer,
                        "pixel_values": torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(index))
                        if with_image else None})
    return samples
