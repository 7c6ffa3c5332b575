"""Training throughput: crystalvlm's trainer (packing, chunked loss) against HF `Trainer`, same process.

    PYTHONPATH=src python benchmarks/train_throughput.py --device cpu      # tiny shape, a few minutes
    PYTHONPATH=src python benchmarks/train_throughput.py --device cuda     # CLIP-L/336 + 7B finetune

Two runs, one after the other in one process, on the same model, data, steps and hyperparameters:

- baseline: `transformers.Trainer` as LLaVA's own training script uses it: padded batches (each batch
  padded to its longest sample, images stacked: the collator LLaVA passes to Trainer, which is what
  Trainer needs for this data; `group_by_length` off, Trainer's default), random order from Trainer's
  sampler, the model's own loss over the full logits, Trainer's default optimizer (AdamW, fused where
  torch has it).
- ours: `crystalvlm.train.trainer.train_recipe` on a `Recipe` built in code, with its defaults
  (modality-length grouping) plus `packing: true` and `loss: chunked`.

Both start from the same weights (the recipe's parts composed by `build_llava` after the same seed),
train the same parts (the `finetune` stage: projector and LLM; the vision tower frozen), see the same
records once each (steps x batch), with the same learning rate, cosine schedule with 3% warm-up,
AdamW betas and epsilon, weight decay 0, gradient clipping at 1.0, precision (bf16 autocast on a GPU,
fp32 on a CPU) and gradient checkpointing.

Data: LLaVA-665K's length spread. Records are drawn from a mixture shaped like its sources: short
VQA (VQAv2, GQA, OKVQA, OCR-VQA, A-OKVQA; one-to-few-word answers, several questions per image), region
and grounding QA (RefCOCO, Visual Genome), LLaVA-Instruct conversations and detailed descriptions or
reasoning, TextCaps captions, and long text-only ShareGPT conversations (up to the stage's max length).
Words are drawn Zipf-like from a generated lexicon; the tokenizer is a byte-level BPE trained on that
text to the LLM's vocabulary size; images are random-noise PNGs at the tower's resolution.

Figures (each run, over the steps after `--warmup`):
- tokens_per_s: non-padding tokens (prompt, image tokens included, and answer) per second;
- trained_tokens_per_s: answer tokens trained on per second;
- positions_per_s: tokens the model computed, padding included ("total");
- padding_share: 1 - non-padding / computed positions;
- memory: peak GPU memory allocated, or on a CPU the process's peak resident memory during the run;
- mfu (GPU): model FLOPs of the non-padding tokens (see FlopModel) per second over the bf16 dense peak.
`ratio` = ours' tokens_per_s / the baseline's. Step times are taken at the end of each optimizer step
(after the loss is read back, which waits for the GPU).

Shapes (`--shape`; default: tiny with `--device cpu`, finetune-7b with `--device cuda`):
- finetune-7b: CLIP ViT-L/14-336 (576 image tokens) + a Llama-2-7B-shaped LLM (Vicuna-7B), LLaVA-1.5's
  instruction tuning (projector + LLM, `vicuna_v1`), batch 8, gradient checkpointing. Full finetuning
  keeps fp32 master weights and AdamW state (16 bytes per parameter, ~108 GiB for 6.8B): it needs an
  80+ GB-class GPU with room to spare (H200). If either run does not fit, finetune-3.5b runs instead.
- finetune-3.5b: the same with 16 of the 32 decoder layers (the largest that fits a smaller GPU).
- reference, small: the earlier shapes (7B `align`; TinyLlama-1.1B `finetune`).
- tiny: CPU sizes (CLIP 64 px / patch 8 / 128 wide / 4 layers, Llama 256 wide / 4 layers, a 1024-token
  vocabulary, positions up to 2048).

Two things of our trainer are replaced, both outside the timed steps: the model is constructed
directly on the device (random init of 7B parameters on the CPU takes minutes), and the final
checkpoint is not written. The baseline builds its model the same way and saves nothing.

Results, with device, versions, threads, load average and settings, go to
benchmarks/results/train_throughput.json (one entry per shape; entries of other shapes are kept).
The last line printed is one JSON object: ratio, tokens_per_s, baseline_tokens_per_s, mfu (null on CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import math
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPVisionConfig

from crystalvlm.data.batching import epoch_batches
from crystalvlm.data.collate import collate_conversations
from crystalvlm.data.dataset import ConversationDataset, DataSource, prepare_dataset
from crystalvlm.data.packing import pack_rows
from crystalvlm.data.sample_encoder import SampleEncoder
from crystalvlm.data.templates import IGNORE_INDEX, IMAGE_PLACEHOLDER, get_template
from crystalvlm.models.build import ModelSpec, build_llava, extra_vision_tokens, image_token_count
from crystalvlm.train import trainer as trainer_module
from crystalvlm.train.freeze import apply_stage_policy
from crystalvlm.train.provenance import environment
from crystalvlm.train.recipe import Recipe, StageConfig
from crystalvlm.train.trainer import TrainOptions, train_recipe
from crystalvlm.worlds.parts.tiny import tiny_llm_config, tiny_vision_config, train_tiny_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_names import describe_device  # noqa: E402  (shared with gpu_inference.py)

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"
ANSWER_TOKENS = (30, 60)  # write_synthetic_data's answers (finetune_7b_memory.py's data)
QUESTION_TOKENS = (8, 24)
GIB = 1024 ** 3
WARMUP_RATIO = 0.03  # LLaVA-1.5's, and StageConfig's default

# Dense bf16 tensor-core peak (no sparsity) by GPU name, as NVIDIA's data sheets give it. The most
# specific name comes first; `--peak-tflops` overrides.
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4))

CLIP_L_336 = {
    "model_type": "clip_vision_model", "image_size": 336, "patch_size": 14, "hidden_size": 1024,
    "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16, "projection_dim": 768,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
# Token ids of the BPE trained here (models/tiny.py): <unk> 0, <pad> 1, <s> 2, </s> 3.
LLAMA_SPECIAL_IDS = {"bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 1}
LLAMA2_7B = {
    "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, **LLAMA_SPECIAL_IDS,
}
TINYLLAMA_1B = {
    "model_type": "llama", "vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632,
    "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, **LLAMA_SPECIAL_IDS,
}


@dataclass(frozen=True)
class StagePlan:
    """What LLaVA-1.5 trains in a stage: template, tunable parts, learning rates, batch size."""

    template: str
    tunable: tuple[str, ...]
    lr: dict[str, float]
    batch_size: int


STAGES = {
    "align": StagePlan("plain", ("projector",), {"projector": 1e-3}, 16),
    "finetune": StagePlan("vicuna_v1", ("projector", "llm"), {"projector": 2e-5, "llm": 2e-5}, 8),
}


@dataclass(frozen=True)
class Shape:
    name: str
    description: str
    vision: dict[str, Any]
    llm: dict[str, Any]
    stage: str
    gradient_checkpointing: bool
    lexicon_words: int  # distinct words of the synthetic language
    tokenizer_sentences: int  # Zipf sentences the tokenizer is trained on


SHAPES = {
    "finetune-7b": Shape("finetune-7b", "CLIP ViT-L/14-336 + Vicuna-7B (Llama-2-7B shape), finetune (projector + LLM)",
                         CLIP_L_336, LLAMA2_7B, "finetune", True, 40_000, 20_000),
    "finetune-3.5b": Shape("finetune-3.5b", "CLIP ViT-L/14-336 + Llama-2-7B width with 16 layers, finetune",
                           CLIP_L_336, {**LLAMA2_7B, "num_hidden_layers": 16}, "finetune", True, 40_000, 20_000),
    "reference": Shape("reference", "CLIP ViT-L/14-336 + Llama-2-7B shape, align (projector tunable)",
                       CLIP_L_336, LLAMA2_7B, "align", True, 40_000, 20_000),
    "small": Shape("small", "CLIP ViT-L/14-336 + TinyLlama-1.1B shape, finetune (projector + LLM tunable)",
                   CLIP_L_336, TINYLLAMA_1B, "finetune", False, 40_000, 20_000),
    "tiny": Shape("tiny", "CPU sizes (CLIP 64px/8/128w/4L, Llama 256w/4L, vocab 1024), finetune",
                  tiny_vision_config(image_size=64, patch_size=8, hidden=128, layers=4),
                  tiny_llm_config(1024, hidden=256, layers=4, max_positions=2048), "finetune", False, 3_000, 2_000),
}
GPU_FALLBACK = {"finetune-7b": "finetune-3.5b"}  # the shape run when one does not fit


# ---------------------------------------------------------------------------- synthetic data
class SyntheticLanguage:
    """Pseudo-words from syllables, drawn with Zipf frequencies (rank r has weight 1/r), so a BPE
    trained on the text merges common words whole and splits rare ones, as in natural text."""

    ONSETS = ("", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
              "br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "st", "str", "th", "tr")
    VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ee", "oa", "ou", "io")
    CODAS = ("", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "st", "ck")

    def __init__(self, size: int, seed: int):
        rng = random.Random(seed)
        words: set[str] = set()
        while len(words) < size:
            syllables = rng.choice((1, 2, 2, 3, 3, 4))
            words.add("".join(rng.choice(self.ONSETS) + rng.choice(self.VOWELS) + rng.choice(self.CODAS)
                              for _ in range(syllables)))
        self.words = sorted(words)
        rng.shuffle(self.words)  # the rank order
        self.cumulative = list(itertools.accumulate(1.0 / rank for rank in range(1, size + 1)))

    def sentence(self, rng: random.Random, words: int) -> str:
        chosen = rng.choices(self.words, cum_weights=self.cumulative, k=words)
        return " ".join(chosen).capitalize() + "."

    def text_of_tokens(self, rng: random.Random, tokenizer, tokens: int) -> str:
        """Sentences of 6-16 words until the text is at least `tokens` tokens long."""
        sentences: list[str] = []
        while len(tokenizer(" ".join(sentences), add_special_tokens=False)["input_ids"]) < tokens:
            sentences.append(self.sentence(rng, rng.randint(6, 16)))
            # Trim the last sentence word by word to land on the target, not a sentence past it.
            while len(tokenizer(" ".join(sentences), add_special_tokens=False)["input_ids"]) > tokens:
                words = sentences[-1].rstrip(".").split(" ")
                if len(words) == 1:
                    break
                sentences[-1] = " ".join(words[:-1]) + "."
        return " ".join(sentences)


@dataclass
class SyntheticData:
    folder: Path
    records_file: Path
    image_folder: Path
    tokenizer_dir: Path
    tokenizer_vocab: int
    records: int
    images: int
    image_size: int


def write_noise_images(image_folder: Path, count: int, image_size: int, seed: int) -> tuple[Path, int]:
    """`count` random-noise PNGs of (image_size, image_size), named 0000.png...; the folder and the count."""
    image_folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed)
    for index in range(count):
        noise = pixels.integers(0, 256, size=(image_size, image_size, 3), dtype=np.uint8)  # (S, S, 3)
        Image.fromarray(noise).save(image_folder / f"{index:04d}.png", compress_level=1)
    return image_folder, count


def write_synthetic_tokenizer(shape: Shape, folder: Path, language: SyntheticLanguage, rng: random.Random):
    """A BPE of the shape's vocabulary trained on `language`'s sentences (drawn with `rng`) into
    folder/tokenizer; (its folder, the loaded tokenizer, the corpus it was trained on)."""
    corpus = [language.sentence(rng, rng.randint(6, 30)) for _ in range(shape.tokenizer_sentences)]
    # Every word once more, so that the merges can reach the requested vocabulary size.
    corpus += [" ".join(language.words[i:i + 40]) for i in range(0, len(language.words), 40)]
    tokenizer_dir = folder / "tokenizer"
    train_tiny_tokenizer(corpus, tokenizer_dir, vocab_size=shape.llm["vocab_size"])
    return tokenizer_dir, AutoTokenizer.from_pretrained(tokenizer_dir), corpus


def write_synthetic_data(shape: Shape, folder: Path, records: int, seed: int, distinct_images: int = 128) -> SyntheticData:
    """Tokenizer, records and noise images for `shape`; `records` LLaVA conversation records."""
    rng = random.Random(seed)
    language = SyntheticLanguage(shape.lexicon_words, seed)
    tokenizer_dir, tokenizer, _ = write_synthetic_tokenizer(shape, folder, language, rng)

    image_size = int(shape.vision["image_size"])
    image_folder, images = write_noise_images(folder / "images", min(records, distinct_images), image_size, seed)

    rows = []
    for index in range(records):
        answer = language.text_of_tokens(rng, tokenizer, rng.randint(*ANSWER_TOKENS))
        question = language.text_of_tokens(rng, tokenizer, rng.randint(*QUESTION_TOKENS))
        # In `align` the `plain` template drops the user's words, as LLaVA's pretraining does.
        rows.append({"id": f"synthetic-{index:06d}", "image": f"{index % images:04d}.png",
                     "conversations": [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{question}"},
                                       {"from": "gpt", "value": answer}]})
    records_file = folder / "records.json"
    records_file.write_text(json.dumps(rows))
    return SyntheticData(folder, records_file, image_folder, tokenizer_dir, len(tokenizer), records, images, image_size)


# ---------------------------------------------------------------------------- LLaVA-665K-like mixture
@dataclass(frozen=True)
class Source:
    """One kind of record of the mixture: its share, whether it has an image, and token ranges."""

    name: str
    share: float
    image: bool
    turns: tuple[int, int]
    question_tokens: tuple[int, int]
    answer_tokens: tuple[int, int]


# Shares follow LLaVA-665K's sources (LLaVA-1.5 paper, table 7): VQA sets 310K, RefCOCO + VG 134K,
# LLaVA-Instruct 158K, TextCaps 22K, ShareGPT 40K. VQA-style sets merge several questions of one image
# into one multi-turn record, as LLaVA-1.5 does.
MIXTURE = (
    Source("short_vqa", 0.47, True, (1, 6), (6, 20), (1, 4)),
    Source("grounding", 0.20, True, (2, 8), (6, 16), (4, 14)),
    Source("instruct_conversation", 0.12, True, (2, 5), (8, 30), (30, 120)),
    Source("instruct_detail", 0.12, True, (1, 1), (8, 24), (100, 300)),
    Source("textcaps", 0.03, True, (1, 1), (8, 14), (10, 30)),
    Source("sharegpt", 0.06, False, (2, 8), (20, 150), (80, 400)),
)


def write_mixture_data(shape: Shape, folder: Path, records: int, seed: int, max_length: int,
                       tokens_per_image: int, batch_size: int, distinct_images: int = 128) -> SyntheticData:
    """`records` LLaVA conversation records drawn from MIXTURE, each under `max_length` tokens."""
    rng = random.Random(seed)
    language = SyntheticLanguage(shape.lexicon_words, seed)
    tokenizer_dir, tokenizer, corpus = write_synthetic_tokenizer(shape, folder, language, rng)
    sample = " ".join(corpus[:300])
    tokens_per_word = len(tokenizer(sample, add_special_tokens=False)["input_ids"]) / len(sample.split())

    def text(tokens: int) -> str:
        return language.sentence(rng, max(1, round(tokens / tokens_per_word)))

    image_size = int(shape.vision["image_size"])
    image_folder, images = write_noise_images(folder / "images", min(records, distinct_images), image_size, seed)

    budget = max_length - tokens_per_image - 64  # room for the template's system prompt and role words
    rows = []
    # Text-only records come in whole batches: modality grouping then cuts `records / batch_size` full
    # batches, so both trainers see every record in the same number of steps.
    text_only = [source for source in MIXTURE if not source.image]
    with_image = [source for source in MIXTURE if source.image]
    text_records = batch_size * round(records * sum(s.share for s in text_only) / batch_size)
    sources = (rng.choices(text_only, weights=[s.share for s in text_only], k=text_records)
               + rng.choices(with_image, weights=[s.share for s in with_image], k=records - text_records))
    rng.shuffle(sources)
    for index, source in enumerate(sources):
        turns, used = [], 0
        for turn in range(rng.randint(*source.turns)):
            question, answer = rng.randint(*source.question_tokens), rng.randint(*source.answer_tokens)
            if turn and used + question + answer + 8 > budget:
                break
            answer = min(answer, budget - used - question - 8)
            used += question + answer + 8
            prefix = f"{IMAGE_PLACEHOLDER}\n" if source.image and turn == 0 else ""
            turns += [{"from": "human", "value": prefix + text(question)}, {"from": "gpt", "value": text(answer)}]
        row = {"id": f"{source.name}-{index:06d}", "conversations": turns}
        if source.image:
            row["image"] = f"{index % images:04d}.png"
        rows.append(row)
    records_file = folder / "records.json"
    records_file.write_text(json.dumps(rows))
    return SyntheticData(folder, records_file, image_folder, tokenizer_dir, len(tokenizer), records, images, image_size)


# ---------------------------------------------------------------------------- tokens of each step
@dataclass
class StepTokens:
    samples: int
    images: int
    sequence_tokens: int  # non-padding tokens: the samples' lengths, image tokens included
    positions: int  # what the model computed: rows x row width, padding included
    trained_tokens: int  # as the trainers count them (labels[:, 1:] != IGNORE_INDEX)
    lengths: list[int] = field(default_factory=list)


@dataclass
class EncodedRecords:
    lengths: list[int]
    trained: list[int]
    images: list[int]
    stats: dict[str, Any]

    @property
    def has_image(self) -> list[bool]:
        return [count > 0 for count in self.images]


def encode_records(data: SyntheticData, shape: Shape, max_length: int) -> EncodedRecords:
    """Every record's length and trained tokens, as the trainers' encoder makes them."""
    template = get_template(STAGES[shape.stage].template)
    tokenizer = AutoTokenizer.from_pretrained(data.tokenizer_dir)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    tokens_per_image = image_token_count(CLIPVisionConfig(**_without_type(shape.vision)), "default")
    encoder = SampleEncoder(tokenizer, template, image_token_id, tokens_per_image, max_length=max_length)
    prepared = prepare_dataset([DataSource(data.records_file, data.image_folder)], encoder)
    if prepared.problems:
        raise RuntimeError(f"synthetic records were refused: {[str(p) for p in prepared.problems[:3]]}")
    lengths, trained, images = [], [], []
    for item in prepared.items:
        ids, labels = encoder.encode(item.record.turns)
        lengths.append(len(ids))
        trained.append(sum(1 for label in labels[1:] if label != IGNORE_INDEX))
        images.append(len(item.record.images))
    by_source: dict[str, list[int]] = {}
    for item, length in zip(prepared.items, lengths):
        by_source.setdefault(item.record.record_id.rsplit("-", 1)[0], []).append(length)
    stats = {**prepared.length_stats(), "tokens_per_image": tokens_per_image,
             "trained_tokens_mean": round(statistics.fmean(trained), 1),
             "by_source": {name: {"records": len(values), "mean_length": round(statistics.fmean(values), 1),
                                  "max_length": max(values)} for name, values in sorted(by_source.items())}}
    return EncodedRecords(lengths, trained, images, stats)


def our_steps(records: EncodedRecords, batch_size: int, seed: int, steps: int, packing: bool) -> list[StepTokens]:
    """The samples of each of our trainer's steps (one process, no accumulation): its batch order
    (`epoch_batches`, grouped by modality and length) and, packed, its rows (`pack_rows`)."""
    batches = epoch_batches(records.lengths, records.has_image, batch_size, seed, 0, True)
    plan = []
    for batch in batches[:steps]:
        lengths = [records.lengths[i] for i in batch]
        if packing:
            rows = pack_rows(lengths)
            positions = len(rows) * max(sum(lengths[i] for i in row) for row in rows)
        else:
            positions = len(batch) * max(lengths)
        plan.append(StepTokens(len(batch), sum(records.images[i] for i in batch), sum(lengths), positions,
                               sum(records.trained[i] for i in batch), lengths))
    return plan


def significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def _without_type(config: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in config.items() if key != "model_type"}


# ---------------------------------------------------------------------------- model FLOPs
# Convention (model FLOPs, as in MFU; gradient-checkpointing recomputation is not counted):
# - A matmul with a weight of P entries costs 2*P FLOPs per position it is applied to, forward. The
#   weights counted are every nn.Linear (biases, norms, activations, the embedding lookup, softmax and
#   the loss are left out) plus the vision patch-embedding convolution (per patch).
# - Attention's quadratic term is included: scores Q K^T and the weighted sum P V cost 2*2*d*T^2
#   per layer forward (d = heads x head dim) in the bidirectional vision tower (T = patches + CLS), and
#   half of that, 2*d*T*(T+1), in the causal LLM (only the lower triangle is needed). T is each
#   sample's own length; padding positions are not counted (see `padded_positions` for those).
# - Backward: a part whose weights train costs 2x its forward (weight gradients + activation
#   gradients). A frozen part that the gradient must pass through (the LLM in `align`, where the
#   projector's gradient comes back through all 32 layers and the LM head) costs 1x its forward in its
#   matmuls (activation gradients only) and still 2x in attention (which has no weights: dQ, dK, dV
#   and dP are four matmuls). A frozen part before every trained part (the vision tower unless it
#   trains) runs forward only. The projector's first layer skips its input gradient when the tower is
#   frozen; it is counted as 2x anyway (under 0.05% of a step).
# - The vision tower is counted over all its layers: HF runs them all although LLaVA reads the second
#   to last.
@dataclass(frozen=True)
class FlopModel:
    vision_linear: int  # weight entries applied per vision position
    vision_conv: int  # patch-embedding weight entries applied per patch
    vision_layers: int
    vision_width: int
    vision_positions: int  # patches + CLS
    patches: int
    projector_linear: int
    image_tokens: int
    llm_linear: int  # decoder layers + LM head
    llm_layers: int
    llm_attention_width: int
    tunable: tuple[str, ...]

    @classmethod
    def of(cls, model, tunable: tuple[str, ...]) -> FlopModel:
        def linear_entries(module) -> int:
            return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))

        vision_config = model.config.vision_config
        text_config = model.config.text_config
        tower = model.model.vision_tower
        patches = (vision_config.image_size // vision_config.patch_size) ** 2
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        return cls(
            vision_linear=linear_entries(tower),
            vision_conv=sum(m.weight.numel() for m in tower.modules() if isinstance(m, torch.nn.Conv2d)),
            vision_layers=vision_config.num_hidden_layers,
            vision_width=vision_config.hidden_size,
            vision_positions=patches + extra_vision_tokens(vision_config),
            patches=patches,
            projector_linear=linear_entries(model.model.multi_modal_projector),
            image_tokens=model.config.image_seq_length,
            llm_linear=linear_entries(model.model.language_model) + linear_entries(model.lm_head),
            llm_layers=text_config.num_hidden_layers,
            llm_attention_width=text_config.num_attention_heads * head_dim,
            tunable=tunable,
        )

    def training_flops(self, lengths: list[int], images: int) -> dict[str, float]:
        """Model FLOPs of one optimizer step over samples of these lengths, by part."""
        grad_through_llm = bool({"projector", "vision"} & set(self.tunable))
        llm_matmul = 3 if "llm" in self.tunable else 2 if grad_through_llm else 1
        llm_attention = 3 if "llm" in self.tunable or grad_through_llm else 1
        vision = 3 if "vision" in self.tunable else 1
        projector = 3 if "projector" in self.tunable or "vision" in self.tunable else 1

        vision_forward = images * (2 * self.vision_linear * self.vision_positions + 2 * self.vision_conv * self.patches
                                   + self.vision_layers * 4 * self.vision_width * self.vision_positions ** 2)
        projector_forward = images * 2 * self.projector_linear * self.image_tokens
        llm_matmul_forward = sum(2 * self.llm_linear * length for length in lengths)
        llm_attention_forward = sum(self.llm_layers * 2 * self.llm_attention_width * length * (length + 1)
                                    for length in lengths)
        parts = {"vision": vision * vision_forward, "projector": projector * projector_forward,
                 "llm_matmuls": llm_matmul * llm_matmul_forward, "llm_attention": llm_attention * llm_attention_forward}
        return {**parts, "total": sum(parts.values())}


# ---------------------------------------------------------------------------- one training run
@dataclass
class BuildRecord:
    """What the patched builder saw (no reference to the model is kept, so it can be freed)."""

    flops: FlopModel | None = None
    parameters: dict[str, int] = field(default_factory=dict)
    dtype: str | None = None
    attention: dict[str, str | None] = field(default_factory=dict)
    final_checkpoint_skipped: bool = False


@contextlib.contextmanager
def benchmark_trainer(device: torch.device, tunable: tuple[str, ...], record: BuildRecord) -> Iterator[None]:
    """The trainer with its model constructed on `device` and its final save skipped (see the docstring)."""
    from crystalvlm.train.freeze import FreezeSummary

    build_llava = trainer_module.build_llava
    save_checkpoint = trainer_module.save_checkpoint

    def build_on_device(spec, chat_template=None, image_mode=None):
        with torch.device(device):
            model, processor = build_llava(spec, chat_template=chat_template, image_mode=image_mode)
        record.flops = FlopModel.of(model, tunable)
        record.parameters = {part: counts.parameters for part, counts in FreezeSummary.of(model, "", "no", {}).parts.items()}
        record.dtype = str(model.dtype)
        record.attention = {"llm": getattr(model.config.text_config, "_attn_implementation", None),
                            "vision": getattr(model.config.vision_config, "_attn_implementation", None)}
        return model, processor

    def skip_final_save(model, processor, folder, info, state_dict=None):
        record.final_checkpoint_skipped = True
        return Path(folder)

    trainer_module.build_llava = build_on_device
    trainer_module.save_checkpoint = skip_final_save
    try:
        yield
    finally:
        trainer_module.build_llava = build_llava
        trainer_module.save_checkpoint = save_checkpoint


def make_recipe(shape: Shape, data: SyntheticData, precision: str, batch_size: int, steps: int,
                gradient_checkpointing: bool, seed: int, max_length: int, *, packing: bool = False,
                loss: str = "full") -> Recipe:
    plan = STAGES[shape.stage]
    llm = {**shape.llm, "vocab_size": data.tokenizer_vocab}
    stage = {"template": plan.template, "data": ["synthetic"], "tunable": list(plan.tunable), "lr": dict(plan.lr),
             "max_steps": steps, "batch_size": batch_size, "precision": precision, "max_length": max_length,
             "gradient_checkpointing": gradient_checkpointing, "group_by_modality_length": True, "log_every": 1,
             "warmup_ratio": WARMUP_RATIO, "weight_decay": 0.0, "max_grad_norm": 1.0, "packing": packing,
             "loss": loss}
    raw = {
        "name": f"train_throughput_{shape.name}_{precision}",
        "seed": seed,
        "model": {"vision": {"config": dict(shape.vision)}, "llm": {"config": llm},
                  "tokenizer": str(data.tokenizer_dir), "projector": "mlp2x_gelu",
                  "vision_feature_layer": -2, "vision_feature_select_strategy": "default"},
        "image_mode": "pad",
        "datasets": {"synthetic": {"file": str(data.records_file), "image_folder": str(data.image_folder)}},
        "stages": {shape.stage: stage},
    }
    return Recipe(name=raw["name"], seed=seed, model=raw["model"], image_mode="pad", datasets=raw["datasets"],
                  stages=[StageConfig(name=shape.stage, **stage)], raw=raw)


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Peak GPU memory allocated, or on a CPU the peak resident memory of the process (sampled every
    50 ms), while the block runs; the figures are filled in when it ends."""
    figures: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield figures
        finally:
            figures["peak_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 2)
            figures["peak_memory_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / GIB, 2)
        return
    import psutil

    process, done, peak = psutil.Process(), threading.Event(), [0]

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield figures
    finally:
        done.set()
        sampler.join()
        figures["peak_resident_memory_gib"] = round(peak[0] / GIB, 3)


def summarise(step_ends: list[float], plan: list[StepTokens], warmup: int, flops: FlopModel | None,
              peak_flops: float | None, losses: list[float]) -> dict:
    """Figures over the steps after `warmup`; step_ends[i] is the time step i ended (step_ends[0]: start)."""
    steps = len(plan)
    timed = range(warmup, steps)
    seconds = step_ends[steps] - step_ends[warmup]
    step_seconds = [step_ends[i + 1] - step_ends[i] for i in range(steps)]
    tokens = sum(plan[i].sequence_tokens for i in timed)
    positions = sum(plan[i].positions for i in timed)
    trained = sum(plan[i].trained_tokens for i in timed)
    figures = {
        "timed_steps": len(timed),
        "seconds": round(seconds, 3),
        "seconds_per_step": round(seconds / len(timed), 4),
        "step_seconds_median": round(statistics.median(step_seconds[warmup:]), 4),
        "warmup_step_seconds": [round(s, 3) for s in step_seconds[:warmup]],
        "samples_per_s": round(sum(plan[i].samples for i in timed) / seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "trained_tokens_per_s": round(trained / seconds, 1),
        "positions_per_s": round(positions / seconds, 1),
        "padding_share": round(1 - tokens / positions, 4),
        "tokens_per_step_mean": round(tokens / len(timed), 1),
        "positions_per_step_mean": round(positions / len(timed), 1),
        "losses": [round(loss, 5) for loss in losses],
        "loss_finite": all(math.isfinite(loss) for loss in losses),
    }
    if flops is not None:
        total = sum(flops.training_flops(plan[i].lengths, plan[i].images)["total"] for i in timed)
        figures["model_tflop_per_s"] = significant(total / seconds / 1e12)
        figures["mfu"] = round(total / seconds / peak_flops, 4) if peak_flops else None
    return figures


def run_ours(shape: Shape, data: SyntheticData, records: EncodedRecords, args, device: torch.device,
             peak_flops: float | None, run_dir: Path, packing: bool = True, loss: str = "chunked") -> dict:
    """crystalvlm's trainer, by default with packing and the chunked loss, over `args.steps` steps."""
    precision = "bf16" if device.type == "cuda" else "fp32"
    recipe = make_recipe(shape, data, precision, args.batch_size, args.steps, args.gradient_checkpointing, args.seed,
                         args.max_length, packing=packing, loss=loss)
    plan = our_steps(records, args.batch_size, args.seed, args.steps, packing=packing)
    if sum(step.samples for step in plan) != len(records.lengths):
        raise RuntimeError("our trainer's steps would not see every record once")
    record = BuildRecord()
    reset_between_runs(device)
    settings = {"trainer": "crystalvlm train_recipe", "precision": precision, "packing": packing, "loss": loss,
                "loss_chunk_size": recipe.stages[0].loss_chunk_size, "group_by_modality_length": True,
                "optimizer": "torch.optim.AdamW (foreach)"}
    started = time.perf_counter()
    with peak_memory(device) as memory:
        try:
            with benchmark_trainer(device, STAGES[shape.stage].tunable, record):
                train_recipe(recipe, TrainOptions(run_dir=run_dir, progress=False, num_workers=args.num_workers))
        except (torch.cuda.OutOfMemoryError, ValueError) as error:  # ValueError: the trainer's memory refusal
            return {**settings, "status": "did_not_fit", "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
    metrics = [json.loads(line) for line in (run_dir / shape.stage / "metrics.jsonl").read_text().splitlines() if line]
    if [m["step"] for m in metrics] != list(range(1, args.steps + 1)):
        raise RuntimeError(f"{run_dir}: metrics.jsonl has steps {[m['step'] for m in metrics]}, expected 1..{args.steps}")
    step_ends = [0.0] + [float(m["elapsed_s"]) for m in metrics]
    figures = summarise(step_ends, plan, args.warmup, record.flops, peak_flops, [m["loss"] for m in metrics])
    return {**settings, "status": "ok", **figures, **memory, "wall_s": round(time.perf_counter() - started, 1),
            "token_counts_match_trainer": [m["tokens"] for m in metrics] == [p.trained_tokens for p in plan],
            "attention": record.attention, "parameters": record.parameters}


def run_hf_trainer(shape: Shape, data: SyntheticData, args, device: torch.device, peak_flops: float | None,
                   run_dir: Path) -> dict:
    """HF `Trainer` on the same model, data and hyperparameters, with padded batches."""
    from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

    stage_plan = STAGES[shape.stage]
    if len(set(stage_plan.lr.values())) != 1:
        raise ValueError(f"{shape.stage}: HF Trainer takes one learning rate; the stage has {stage_plan.lr}")
    (learning_rate,) = set(stage_plan.lr.values())
    template = get_template(stage_plan.template)
    recipe = make_recipe(shape, data, "fp32", args.batch_size, args.steps, args.gradient_checkpointing, args.seed,
                         args.max_length)
    reset_between_runs(device)
    set_seed(args.seed)  # as our trainer's build step: the same initial weights
    with torch.device(device):
        model, processor = build_llava(ModelSpec.from_dict(recipe.model), chat_template=template.chat_template_jinja(),
                                       image_mode="pad")
    model.config.use_cache = False
    apply_stage_policy(model, list(stage_plan.tunable), stage_plan.lr, 0.0)  # the same frozen vision tower
    flops = FlopModel.of(model, stage_plan.tunable)
    encoder = SampleEncoder.from_processor(processor, model.config, template, "pad", max_length=args.max_length)
    dataset = ConversationDataset(prepare_dataset([DataSource(data.records_file, data.image_folder)], encoder), encoder)
    pad_token_id = processor.tokenizer.pad_token_id
    plan: list[StepTokens] = []
    step_ends: list[float] = []
    losses: list[float] = []

    def synchronise() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    class CountingTrainer(Trainer):
        """Trainer unchanged; each step's tokens are noted from the batch it receives."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs["attention_mask"]  # (B, T)
            plan.append(StepTokens(mask.shape[0], int(inputs["pixel_values"].shape[0]) if "pixel_values" in inputs else 0,
                                   int(mask.sum()), mask.numel(), int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum()),
                                   mask.sum(dim=1).tolist()))
            return super().training_step(model, inputs, num_items_in_batch)

    class StepClock(TrainerCallback):
        def on_train_begin(self, arguments, state, control, **kwargs):
            step_ends.append(synchronise())

        def on_step_end(self, arguments, state, control, **kwargs):
            step_ends.append(synchronise())

        def on_log(self, arguments, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    arguments = TrainingArguments(
        output_dir=str(run_dir), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=learning_rate, lr_scheduler_type="cosine",
        warmup_steps=math.ceil(WARMUP_RATIO * args.steps), weight_decay=0.0, max_grad_norm=1.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, bf16=device.type == "cuda",
        use_cpu=device.type == "cpu", gradient_checkpointing=args.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=1, save_strategy="no",
        report_to=[], disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=args.num_workers,
        seed=args.seed)
    trainer = CountingTrainer(model=model, args=arguments, train_dataset=dataset,
                              data_collator=lambda samples: collate_conversations(samples, pad_token_id),
                              callbacks=[StepClock()])
    settings = {"trainer": "transformers.Trainer", "precision": "bf16" if device.type == "cuda" else "fp32",
                "collator": "padded to the batch's longest sample (LLaVA's collator)", "group_by_length": False,
                "loss": "the model's (full logits)", "optimizer": arguments.optim.value
                if hasattr(arguments.optim, "value") else str(arguments.optim)}
    started = time.perf_counter()
    with peak_memory(device) as memory:
        try:
            trainer.train()
        except torch.cuda.OutOfMemoryError as error:
            return {**settings, "status": "did_not_fit", "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
    del trainer, model
    if len(plan) != args.steps or len(step_ends) != args.steps + 1:
        raise RuntimeError(f"HF Trainer ran {len(plan)} steps ({len(step_ends) - 1} timed), expected {args.steps}")
    figures = summarise(step_ends, plan, args.warmup, flops if device.type == "cuda" else None, peak_flops, losses)
    return {**settings, "status": "ok", **figures, **memory, "wall_s": round(time.perf_counter() - started, 1)}


# ---------------------------------------------------------------------------- a shape, both trainers
def with_load(run, *arguments, **keywords) -> dict:
    """`run`'s figures with the machine's 1-minute load average before and after it (a shared machine's
    load moves between the runs; it is recorded beside each)."""
    before = os.getloadavg()[0]
    figures = run(*arguments, **keywords)
    return {**figures, "load_average_1min_before_after": [round(before, 2), round(os.getloadavg()[0], 2)]}


def measure_shape(shape: Shape, args, device: torch.device, peak_flops: float | None, work: Path) -> dict:
    records_count = args.batch_size * args.steps  # one epoch: every record once in each run
    started = time.perf_counter()
    tokens_per_image = image_token_count(CLIPVisionConfig(**_without_type(shape.vision)), "default")
    data = write_mixture_data(shape, work / shape.name, records_count, args.seed, args.max_length, tokens_per_image,
                              args.batch_size)
    records = encode_records(data, shape, args.max_length)
    data_seconds = time.perf_counter() - started
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # data-loader workers fork after tokenizer training
    print(f"[{shape.name}] data: {records_count} records ({records.stats['with_image']} with an image), sequence "
          f"length mean {records.stats['mean']}, max {records.stats['max']} ({data_seconds:.1f} s)", flush=True)
    runs = {}
    print(f"[{shape.name}] baseline (HF Trainer, padded): {args.steps} steps of batch {args.batch_size} ...", flush=True)
    runs["baseline"] = with_load(run_hf_trainer, shape, data, args, device, peak_flops, work / shape.name / "run_hf")
    print(f"[{shape.name}] baseline: {describe_run(runs['baseline'])}", flush=True)
    print(f"[{shape.name}] ours (packing, chunked loss): {args.steps} steps of batch {args.batch_size} ...", flush=True)
    runs["ours"] = with_load(run_ours, shape, data, records, args, device, peak_flops, work / shape.name / "run_ours")
    print(f"[{shape.name}] ours: {describe_run(runs['ours'])}", flush=True)
    if args.ablation:
        print(f"[{shape.name}] ours without packing or chunked loss (grouping only) ...", flush=True)
        runs["ours_padded"] = with_load(run_ours, shape, data, records, args, device, peak_flops,
                                        work / shape.name / "run_ours_padded", packing=False, loss="full")
        print(f"[{shape.name}] ours_padded: {describe_run(runs['ours_padded'])}", flush=True)
    both = runs["baseline"]["status"] == runs["ours"]["status"] == "ok"
    return {
        "shape": shape.name,
        "description": shape.description,
        "stage": shape.stage,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "device": describe_device(device),
        "environment": run_environment(device, peak_flops),
        "load_average_1_5_15min": [round(value, 2) for value in os.getloadavg()],
        "model": {"vision": shape.vision, "llm": {**shape.llm, "vocab_size": data.tokenizer_vocab},
                  "projector": "mlp2x_gelu", "vision_feature_layer": -2, "image_mode": "pad",
                  "trainable_parts": list(STAGES[shape.stage].tunable)},
        "data": {"records": records_count, "mixture": [asdict(source) for source in MIXTURE],
                 "distinct_images": data.images, "image_size": data.image_size, "image_format": "random-noise PNG",
                 "tokenizer_vocab": data.tokenizer_vocab, "template": STAGES[shape.stage].template,
                 "sequence_length_stats": records.stats, "seconds_to_write": round(data_seconds, 1)},
        "hyperparameters": {"batch_size": args.batch_size, "steps": args.steps, "warmup_steps_left_out": args.warmup,
                            "learning_rate": STAGES[shape.stage].lr, "schedule": "cosine", "warmup_ratio": WARMUP_RATIO,
                            "weight_decay": 0.0, "max_grad_norm": 1.0, "gradient_checkpointing":
                                args.gradient_checkpointing, "max_length": args.max_length,
                            "num_workers": args.num_workers},
        "runs": runs,
        "ratio": round(runs["ours"]["tokens_per_s"] / runs["baseline"]["tokens_per_s"], 3) if both else None,
        "ratio_measure": "non-padding tokens (prompt incl. image tokens, and answer) per second, ours / HF Trainer",
    }


def describe_run(run: dict) -> str:
    if run["status"] != "ok":
        return f"did not fit ({run['error']})"
    mfu = f", MFU {100 * run['mfu']:.1f}%" if run.get("mfu") else ""
    memory = (f", peak {run['peak_memory_allocated_gib']} GiB" if "peak_memory_allocated_gib" in run
              else f", peak RSS {run.get('peak_resident_memory_gib')} GiB")
    return (f"{run['seconds_per_step']:.3f} s/step, {run['tokens_per_s']:.0f} tokens/s "
            f"({run['trained_tokens_per_s']:.0f} trained, {run['positions_per_s']:.0f} computed), "
            f"padding {100 * run['padding_share']:.1f}%{mfu}{memory}; loss {run['losses'][0]:.4f} -> {run['losses'][-1]:.4f}")


def reset_between_runs(device: torch.device) -> None:
    """Forget the previous run: accelerate's process-wide state (it refuses a second Accelerator with
    another mixed precision otherwise), the freed model's memory, the peak-memory counter."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ---------------------------------------------------------------------------- device and environment
def assumed_peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override is not None:
        return override, "given with --peak-tflops"
    if device.type != "cuda":
        return None, "no peak for a CPU: MFU is not reported"
    name = torch.cuda.get_device_name(device)
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in name:
            return tflops, f"dense bf16 tensor-core peak of {key} (NVIDIA data sheet, no sparsity)"
    return None, f"no known peak for {name}: pass --peak-tflops"


def run_environment(device: torch.device, peak_flops: float | None) -> dict:
    info = environment()
    info.update({"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                 "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM")})
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update({"gpu": properties.name, "gpu_memory_gib": round(properties.total_memory / GIB, 1),
                     "compute_capability": f"{properties.major}.{properties.minor}",
                     "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                     "float32_matmul_precision": torch.get_float32_matmul_precision(),
                     "bf16_dense_peak_tflops_assumed": peak_flops / 1e12 if peak_flops else None})
    return info


def read_entries(path: Path) -> dict:
    """Entries of earlier runs of other shapes in this layout (others, of an older layout, are dropped)."""
    try:
        entries = dict(json.loads(path.read_text()).get("shapes", {}))
    except (OSError, ValueError, AttributeError):
        return {}
    return {name: entry for name, entry in entries.items() if "ratio" in entry}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where both trainers run (default: cuda when a GPU is visible)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None,
                        help="default: tiny on cpu; finetune-7b on cuda (finetune-3.5b if that does not fit)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps of each run (default: 40 cpu, 14 cuda)")
    parser.add_argument("--warmup", type=int, default=None, help="first steps left out of the timing (default: 3)")
    parser.add_argument("--batch-size", type=int, default=None, help="per step (default: the stage's, 8 for finetune)")
    parser.add_argument("--gradient-checkpointing", choices=("auto", "on", "off"), default="auto",
                        help="auto: the shape's (on for the 7B shapes)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="data-loader workers of both trainers (default: 4 on cuda, as LLaVA's scripts; 0 on cpu)")
    parser.add_argument("--max-length", type=int, default=2048, help="the stage's max_length; ShareGPT records reach it")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak, TFLOP/s (default by GPU name)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, fixed for both runs")
    parser.add_argument("--seed", type=int, default=0, help="data, initial weights and batch order")
    parser.add_argument("--ablation", action="store_true",
                        help="also run our trainer without packing and with the full loss (modality grouping only)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (entries of other shapes are kept)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible")
    if device.type == "cpu" and args.shape not in (None, "tiny"):
        parser.error("on a CPU only --shape tiny is practical (the others are 1-7B parameters)")
    torch.set_num_threads(args.threads)
    args.steps = args.steps or (40 if device.type == "cpu" else 14)
    args.warmup = 3 if args.warmup is None else args.warmup
    if args.warmup < 0 or args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup")
    if args.num_workers is None:
        args.num_workers = 4 if device.type == "cuda" else 0
    peak_tflops, peak_source = assumed_peak_tflops(device, args.peak_tflops)
    peak_flops = peak_tflops * 1e12 if peak_tflops else None
    name = args.shape or ("tiny" if device.type == "cpu" else "finetune-7b")
    chosen_batch, chosen_checkpointing = args.batch_size, args.gradient_checkpointing

    entries = read_entries(args.out)
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as tmp:
        while True:
            shape = SHAPES[name]
            args.batch_size = chosen_batch or STAGES[shape.stage].batch_size
            args.gradient_checkpointing = {"on": True, "off": False, "auto": shape.gradient_checkpointing}[chosen_checkpointing]
            entry = measure_shape(shape, args, device, peak_flops, Path(tmp))
            entry["peak_assumed"] = {"bf16_dense_tflops": peak_tflops, "source": peak_source}
            entry["settings"] = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
            entries[name] = entry
            fallback = GPU_FALLBACK.get(name) if args.shape is None else None
            if entry["ratio"] is not None or fallback is None:
                break
            print(f"[{name}] did not fit; the largest that fits is tried next: {fallback}", flush=True)
            entries[name]["note"] = f"did not fit on this GPU; {fallback} was measured instead"
            name = fallback

    report = {
        "benchmark": "train_throughput",
        "what": "crystalvlm's trainer (modality-length grouping, packing, chunked loss) against HF Trainer with padded "
                "batches, same model init, data, steps and hyperparameters, one after the other in one process; one "
                "entry per model shape",
        "flop_convention": "model FLOPs (MFU) of the non-padding tokens: 2 FLOPs per weight entry of every Linear (and "
                           "the patch conv) per position forward; attention per sample (bidirectional 4*d*T^2 per "
                           "vision layer, causal 2*d*T*(T+1) per LLM layer); backward 2x forward for trained parts, 0 "
                           "for the frozen vision tower; gradient-checkpointing recomputation not counted",
        "shapes": dict(sorted(entries.items())),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.out.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    temporary.replace(args.out)

    entry = entries[name]
    print(f"device: {describe_device(device)}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"load average {entry['load_average_1_5_15min']}; bf16 peak assumed: {peak_tflops} TFLOP/s ({peak_source})")
    for label, run in entry["runs"].items():
        print(f"  {name} {label}: {describe_run(run)}")
    ours, baseline = entry["runs"]["ours"], entry["runs"]["baseline"]
    ratio_text = f"{entry['ratio']:.2f}x" if entry["ratio"] else "n/a (a run did not fit)"
    print(f"  {name}: ours / HF Trainer (non-padding tokens/s): {ratio_text}")
    print(f"written: {args.out}")
    ok = entry["ratio"] is not None and ours["token_counts_match_trainer"] and ours["loss_finite"] and baseline["loss_finite"]
    print(json.dumps({"shape": name, "ratio": entry["ratio"], "tokens_per_s": ours.get("tokens_per_s"),
                      "baseline_tokens_per_s": baseline.get("tokens_per_s"), "mfu": ours.get("mfu"),
                      "baseline_mfu": baseline.get("mfu"), "padding_share": ours.get("padding_share"),
                      "baseline_padding_share": baseline.get("padding_share")}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
