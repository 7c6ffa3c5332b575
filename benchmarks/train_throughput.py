"""Training throughput of crystalvlm's trainer: bf16 mixed precision against fp32, same process.

    PYTHONPATH=src python benchmarks/train_throughput.py --shape all        # on a GPU: reference, then small
    .venv/bin/python benchmarks/train_throughput.py --shape tiny --steps 8 --warmup 2   # CPU smoke run

What runs is the project's own training loop, `crystalvlm.train.trainer.train_recipe`, on a `Recipe`
built in code, once per precision (`bf16`: accelerate mixed precision, bf16 autocast over fp32 master
weights, the trainer's default on GPUs; `fp32`: the baseline), one after the other in one process on
the same synthetic data. Every part is randomly initialised from a config dict; nothing is downloaded.

Shapes (`--shape`):

- reference: CLIP ViT-L/14-336 (1024 wide, 24 layers, 576 image tokens) + a Llama-2-7B-shaped LLM
  (4096 wide, 32 layers, vocab 32000), stage `align` as LLaVA-1.5's pretraining: projector tunable,
  gradient checkpointing on, `plain` template, batch 16.
- small: the same tower + a TinyLlama-1.1B-shaped LLM (2048 wide, 22 layers, 32 heads, 4 KV heads,
  vocab 32000), stage `finetune` as LLaVA-1.5's instruction tuning: projector and LLM tunable,
  `vicuna_v1` template, batch 8, no gradient checkpointing (it fits without).
- tiny: CPU smoke sizes (CLIP 64 px / patch 8 / 128 wide, Llama 256 wide / 4 layers, a
  1024-token vocabulary), stage `finetune`, for a CPU smoke run.
- all: reference, then small.

Data: LLaVA conversation records (JSON) with one random-noise PNG each at the tower's resolution;
answers of 30-60 tokens (captions in `align`, answers to 8-24-token questions in `finetune`), words
drawn Zipf-like from a generated lexicon. The tokenizer is a byte-level BPE trained on that text to
the LLM's real vocabulary size (32000), so the embedding and the LM head have their real shapes.

Timing: step times come from the trainer's own `metrics.jsonl` (`elapsed_s` is written after each
step's loss is read back, which waits for the GPU). The first `--warmup` steps are left out. Each
step's token counts are recomputed here from the same records and the same batch order the trainer
uses (`data.batching.epoch_batches`, a pure function of seed and step), and checked against the
trained-token counts the trainer logs (`token_counts_match_trainer`).

The fp32 baseline of the 7B shape runs ~10x slower than bf16, so fp32 runs `--fp32-steps` steps
(default: --steps, at most 12) after `--fp32-warmup` (default: --warmup, at most 2); a step's time is
steady after the first. If a precision does not fit in GPU memory, that is recorded and the run goes on.

Two things of the trainer are replaced for the benchmark, both outside the timed steps: the model is
constructed directly on the GPU (random init of 7B parameters on the CPU takes minutes; users load
pretrained weights instead), and the final checkpoint is not written (2 x 28 GB of fp32 weights for
the 7B shape would take most of the time budget and disk).

Results, with device, versions, threads and settings, go to benchmarks/results/train_throughput.json,
one entry per shape (entries of other shapes already in the file are kept).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
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
from crystalvlm.data.dataset import DataSource, prepare_dataset
from crystalvlm.data.sample_encoder import SampleEncoder
from crystalvlm.data.templates import IGNORE_INDEX, IMAGE_PLACEHOLDER, get_template
from crystalvlm.models.build import extra_vision_tokens, image_token_count
from crystalvlm.worlds.parts.tiny import (
    tiny_llm_config,
    tiny_vision_config,
    train_tiny_tokenizer,
)
from crystalvlm.train import trainer as trainer_module
from crystalvlm.train.provenance import environment
from crystalvlm.train.recipe import Recipe, StageConfig
from crystalvlm.train.trainer import TrainOptions, train_recipe

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"
PRECISIONS = ("bf16", "fp32")
ANSWER_TOKENS = (30, 60)  # LLaVA-1.5 answers and detailed captions are mostly of this order
QUESTION_TOKENS = (8, 24)
GIB = 1024 ** 3

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
    "reference": Shape("reference", "CLIP ViT-L/14-336 + Llama-2-7B shape, align (projector tunable)",
                       CLIP_L_336, LLAMA2_7B, "align", True, 40_000, 20_000),
    "small": Shape("small", "CLIP ViT-L/14-336 + TinyLlama-1.1B shape, finetune (projector + LLM tunable)",
                   CLIP_L_336, TINYLLAMA_1B, "finetune", False, 40_000, 20_000),
    "tiny": Shape("tiny", "CPU smoke sizes (CLIP 64px/8/128w/4L, Llama 256w/4L), finetune",
                  tiny_vision_config(image_size=64, patch_size=8, hidden=128, layers=4),
                  tiny_llm_config(1024, hidden=256, layers=4, max_positions=512), "finetune", False, 3_000, 2_000),
}


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


def write_synthetic_data(shape: Shape, folder: Path, records: int, seed: int, distinct_images: int = 128) -> SyntheticData:
    """Tokenizer, records and noise images for `shape`; `records` LLaVA conversation records."""
    rng = random.Random(seed)
    language = SyntheticLanguage(shape.lexicon_words, seed)
    corpus = [language.sentence(rng, rng.randint(6, 30)) for _ in range(shape.tokenizer_sentences)]
    # Every word once more, so that the merges can reach the requested vocabulary size.
    corpus += [" ".join(language.words[i:i + 40]) for i in range(0, len(language.words), 40)]
    tokenizer_dir = folder / "tokenizer"
    train_tiny_tokenizer(corpus, tokenizer_dir, vocab_size=shape.llm["vocab_size"])
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    image_size = int(shape.vision["image_size"])
    image_folder = folder / "images"
    image_folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed)
    images = min(records, distinct_images)
    for index in range(images):
        noise = pixels.integers(0, 256, size=(image_size, image_size, 3), dtype=np.uint8)  # (S, S, 3)
        Image.fromarray(noise).save(image_folder / f"{index:04d}.png", compress_level=1)

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


# ---------------------------------------------------------------------------- tokens of each step
@dataclass
class StepTokens:
    samples: int
    images: int
    sequence_tokens: int  # sum of the samples' lengths, image tokens included
    padded_positions: int  # batch x longest sample: the positions the model computes
    labelled_tokens: int  # trained tokens, as the trainer counts them (labels[:, 1:] != IGNORE_INDEX)
    lengths: list[int] = field(default_factory=list)


def planned_steps(data: SyntheticData, shape: Shape, batch_size: int, seed: int, steps: int,
                  max_length: int) -> tuple[list[StepTokens], dict[str, float]]:
    """The samples of each step, in the trainer's order (one process, no gradient accumulation)."""
    template = get_template(STAGES[shape.stage].template)
    tokenizer = AutoTokenizer.from_pretrained(data.tokenizer_dir)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    tokens_per_image = image_token_count(CLIPVisionConfig(**_without_type(shape.vision)), "default")
    encoder = SampleEncoder(tokenizer, template, image_token_id, tokens_per_image, max_length=max_length)
    prepared = prepare_dataset([DataSource(data.records_file, data.image_folder)], encoder)
    if prepared.problems:
        raise RuntimeError(f"synthetic records were refused: {[str(p) for p in prepared.problems[:3]]}")
    lengths, labelled, images = [], [], []
    for item in prepared.items:
        ids, labels = encoder.encode(item.record.turns)
        lengths.append(len(ids))
        labelled.append(sum(1 for label in labels[1:] if label != IGNORE_INDEX))
        images.append(len(item.record.images))
    has_image = [count > 0 for count in images]
    per_epoch = len(epoch_batches(lengths, has_image, batch_size, seed, 0, True))
    plan = []
    for step in range(steps):
        epoch, within = divmod(step, per_epoch)
        batch = epoch_batches(lengths, has_image, batch_size, seed, epoch, True)[within]
        batch_lengths = [lengths[i] for i in batch]
        plan.append(StepTokens(len(batch), sum(images[i] for i in batch), sum(batch_lengths),
                               len(batch) * max(batch_lengths), sum(labelled[i] for i in batch), batch_lengths))
    answer_lengths = sorted(labelled)
    stats = {**prepared.length_stats(), "tokens_per_image": tokens_per_image,
             "trained_tokens_mean": round(statistics.fmean(answer_lengths), 1),
             "trained_tokens_min": answer_lengths[0], "trained_tokens_max": answer_lengths[-1]}
    return plan, stats


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
                gradient_checkpointing: bool, seed: int, max_length: int) -> Recipe:
    plan = STAGES[shape.stage]
    llm = {**shape.llm, "vocab_size": data.tokenizer_vocab}
    stage = {"template": plan.template, "data": ["synthetic"], "tunable": list(plan.tunable), "lr": dict(plan.lr),
             "max_steps": steps, "batch_size": batch_size, "precision": precision, "max_length": max_length,
             "gradient_checkpointing": gradient_checkpointing, "group_by_modality_length": True, "log_every": 1}
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


def train_once(shape: Shape, data: SyntheticData, plan: list[StepTokens], precision: str, warmup: int,
               batch_size: int, gradient_checkpointing: bool, seed: int, max_length: int, num_workers: int,
               run_dir: Path, device: torch.device, peak_flops: float | None) -> dict:
    """One `train_recipe` run of `len(plan)` steps; its figures over the steps after `warmup`."""
    steps = len(plan)
    recipe = make_recipe(shape, data, precision, batch_size, steps, gradient_checkpointing, seed, max_length)
    record = BuildRecord()
    reset_between_runs(device)
    started = time.perf_counter()
    error = None
    try:
        with benchmark_trainer(device, STAGES[shape.stage].tunable, record):
            train_recipe(recipe, TrainOptions(run_dir=run_dir, progress=False, num_workers=num_workers))
    except torch.cuda.OutOfMemoryError as oom:
        error = f"{type(oom).__name__}: {str(oom).splitlines()[0]}"
    wall = time.perf_counter() - started
    peak = {}
    if device.type == "cuda":
        peak = {"peak_memory_allocated_gib": round(torch.cuda.max_memory_allocated(device) / GIB, 2),
                "peak_memory_reserved_gib": round(torch.cuda.max_memory_reserved(device) / GIB, 2)}
    reset_between_runs(device)  # the exception (if any) is gone, and with it the model
    if device.type == "cuda":
        peak["memory_allocated_after_cleanup_gib"] = round(torch.cuda.memory_allocated(device) / GIB, 3)
    settings = {"precision": precision, "steps": steps, "warmup_steps": warmup, "batch_size": batch_size,
                "gradient_checkpointing": gradient_checkpointing, "num_workers": num_workers,
                "model_dtype": record.dtype, "attention": record.attention}
    if error is not None:
        return {**settings, "status": "out_of_memory", "error": error, "wall_s": round(wall, 1), **peak}

    metrics = [json.loads(line) for line in (run_dir / shape.stage / "metrics.jsonl").read_text().splitlines() if line]
    if [m["step"] for m in metrics] != list(range(1, steps + 1)):
        raise RuntimeError(f"{run_dir}: metrics.jsonl has steps {[m['step'] for m in metrics]}, expected 1..{steps}")
    elapsed = [0.0] + [float(m["elapsed_s"]) for m in metrics]
    step_seconds = [elapsed[i + 1] - elapsed[i] for i in range(steps)]
    timed = range(warmup, steps)
    seconds = elapsed[steps] - elapsed[warmup]
    samples = sum(plan[i].samples for i in timed)
    tokens = sum(plan[i].sequence_tokens for i in timed)
    padded = sum(plan[i].padded_positions for i in timed)
    labelled = sum(plan[i].labelled_tokens for i in timed)
    flops = [record.flops.training_flops(plan[i].lengths, plan[i].images) for i in timed]
    total_flops = sum(f["total"] for f in flops)
    achieved = total_flops / seconds
    losses = [m["loss"] for m in metrics]
    return {
        **settings,
        "status": "ok",
        "timed_steps": len(timed),
        "seconds_per_step": round(seconds / len(timed), 4),
        "step_seconds_median": round(statistics.median(step_seconds[warmup:]), 4),
        "step_seconds_min_max": [round(min(step_seconds[warmup:]), 4), round(max(step_seconds[warmup:]), 4)],
        "warmup_step_seconds": [round(s, 3) for s in step_seconds[:warmup]],
        "samples_per_s": round(samples / seconds, 3),
        "sequence_tokens_per_s": round(tokens / seconds, 1),
        "padded_positions_per_s": round(padded / seconds, 1),
        "trained_tokens_per_s": round(labelled / seconds, 1),
        "sequence_tokens_per_step_mean": round(tokens / len(timed), 1),
        "padding_fraction": round(1 - tokens / padded, 4),
        "model_tflop_per_step_mean": significant(total_flops / len(timed) / 1e12),
        "model_tflop_per_step_by_part": {part: significant(sum(f[part] for f in flops) / len(timed) / 1e12)
                                         for part in flops[0]},
        "achieved_tflop_per_s": significant(achieved / 1e12),
        "mfu_vs_bf16_dense_peak": round(achieved / peak_flops, 4) if peak_flops else None,
        "token_counts_match_trainer": [m["tokens"] for m in metrics] == [p.labelled_tokens for p in plan],
        "losses": losses,
        "loss_finite": all(math.isfinite(loss) for loss in losses),
        "final_checkpoint_skipped": record.final_checkpoint_skipped,
        "wall_s": round(wall, 1),
        "setup_s": round(wall - elapsed[steps], 1),  # build, move to the device, data checks
        **peak,
        "parameters": record.parameters,
        "trainable_parts": list(STAGES[shape.stage].tunable),
        "flop_model": asdict(record.flops),
    }


# ---------------------------------------------------------------------------- a shape, both precisions
def measure_shape(shape: Shape, args, device: torch.device, peak_flops: float | None, work: Path) -> dict:
    stage_plan = STAGES[shape.stage]
    batch_size = args.batch_size or stage_plan.batch_size
    gradient_checkpointing = {"on": True, "off": False, "auto": shape.gradient_checkpointing}[args.gradient_checkpointing]
    fp32_steps = args.fp32_steps if args.fp32_steps is not None else min(args.steps, 12)
    fp32_warmup = args.fp32_warmup if args.fp32_warmup is not None else min(args.warmup, 2)
    if fp32_warmup >= fp32_steps:
        raise SystemExit(f"--fp32-warmup ({fp32_warmup}) must be below --fp32-steps ({fp32_steps})")
    schedule = {"bf16": (args.steps, args.warmup), "fp32": (fp32_steps, fp32_warmup)}
    # One record per sample of the longest run, a multiple of the batch: every step sees new records.
    records = batch_size * max(steps for steps, _ in schedule.values())

    started = time.perf_counter()
    data = write_synthetic_data(shape, work / shape.name, records, args.seed)
    plan, data_stats = planned_steps(data, shape, batch_size, args.seed, records // batch_size, args.max_length)
    data_seconds = time.perf_counter() - started
    # Tokenizer training ran the tokenizers library's thread pool; the data-loader workers fork after it.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"[{shape.name}] data: {records} records, {data.images} noise images {data.image_size}px, tokenizer "
          f"vocab {data.tokenizer_vocab}, sequence length mean {data_stats['mean']} ({data_seconds:.1f} s)", flush=True)

    runs = {}
    for precision in PRECISIONS:
        steps, warmup = schedule[precision]
        print(f"[{shape.name}] {precision}: {steps} steps ({warmup} warm-up) of batch {batch_size} ...", flush=True)
        runs[precision] = train_once(shape, data, plan[:steps], precision, warmup, batch_size, gradient_checkpointing,
                                     args.seed, args.max_length, args.num_workers, work / shape.name / f"run_{precision}",
                                     device, peak_flops)
        print(f"[{shape.name}] {precision}: {describe_run(runs[precision])}", flush=True)
    both_ok = all(run["status"] == "ok" for run in runs.values())
    ratio = round(runs["bf16"]["sequence_tokens_per_s"] / runs["fp32"]["sequence_tokens_per_s"], 2) if both_ok else None
    return {
        "shape": shape.name,
        "description": shape.description,
        "stage": shape.stage,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "device": describe_device(device),
        "environment": run_environment(device, peak_flops),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "model": {"vision": shape.vision, "llm": {**shape.llm, "vocab_size": data.tokenizer_vocab},
                  "projector": "mlp2x_gelu", "vision_feature_layer": -2, "image_mode": "pad"},
        "data": {"records": records, "distinct_images": data.images, "image_size": data.image_size,
                 "image_format": "random-noise PNG", "tokenizer": "byte-level BPE trained on the synthetic text",
                 "tokenizer_vocab": data.tokenizer_vocab, "answer_tokens_target": list(ANSWER_TOKENS),
                 "question_tokens_target": list(QUESTION_TOKENS), "template": stage_plan.template,
                 "sequence_length_stats": data_stats, "seconds_to_write": round(data_seconds, 1)},
        "runs": runs,
        "speed_ratio_bf16_over_fp32": ratio,
        "ratio_measure": "sequence tokens/s (image tokens included) over the timed steps",
    }


def describe_run(run: dict) -> str:
    if run["status"] != "ok":
        return f"did not fit ({run['error']})"
    mfu = f", MFU {100 * run['mfu_vs_bf16_dense_peak']:.1f}% of bf16 peak" if run["mfu_vs_bf16_dense_peak"] else ""
    memory = f", peak {run['peak_memory_allocated_gib']} GiB" if "peak_memory_allocated_gib" in run else ""
    return (f"{run['seconds_per_step']:.3f} s/step, {run['samples_per_s']:.2f} samples/s, "
            f"{run['sequence_tokens_per_s']:.0f} tokens/s, {run['achieved_tflop_per_s']:.3g} TFLOP/s{mfu}{memory}; "
            f"loss {run['losses'][0]:.4f} -> {run['losses'][-1]:.4f}; "
            f"token counts match trainer: {run['token_counts_match_trainer']}")


# ---------------------------------------------------------------------------- device and environment
def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "cpu: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu: " + (platform.processor() or platform.machine())


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
    """Entries of earlier runs of other shapes (a file of another layout is replaced)."""
    try:
        return dict(json.loads(path.read_text()).get("shapes", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=(*SHAPES, "all"), default="all" if torch.cuda.is_available() else "tiny")
    parser.add_argument("--steps", type=int, default=30, help="steps of the bf16 run")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing")
    parser.add_argument("--fp32-steps", type=int, default=None,
                        help="steps of the fp32 run (default: --steps, at most 12: a 7B fp32 step takes seconds)")
    parser.add_argument("--fp32-warmup", type=int, default=None, help="default: --warmup, at most 2")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 for align, 8 for finetune")
    parser.add_argument("--gradient-checkpointing", choices=("auto", "on", "off"), default="auto",
                        help="auto: on for reference, off for small and tiny")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="data-loader workers (default: 4 on a GPU, as LLaVA's scripts; 0 on a CPU)")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak, TFLOP/s (default by GPU name)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = ["reference", "small"] if args.shape == "all" else [args.shape]
    if device.type == "cpu" and shapes != ["tiny"]:
        parser.error("without a GPU only --shape tiny is practical (the others are 1-7B parameters)")
    if args.num_workers is None:
        args.num_workers = 4 if device.type == "cuda" else 0
    peak_tflops, peak_source = assumed_peak_tflops(device, args.peak_tflops)
    peak_flops = peak_tflops * 1e12 if peak_tflops else None

    entries = read_entries(args.out)
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as tmp:
        for name in shapes:
            entry = measure_shape(SHAPES[name], args, device, peak_flops, Path(tmp))
            entry["peak_assumed"] = {"bf16_dense_tflops": peak_tflops, "source": peak_source,
                                     "note": "fp32 MFU is measured against the same bf16 peak"}
            entry["settings"] = {key: (str(value) if isinstance(value, Path) else value)
                                 for key, value in vars(args).items()}
            entries[name] = entry

    report = {
        "benchmark": "train_throughput",
        "what": "crystalvlm's trainer (train_recipe) with bf16 mixed precision vs fp32, same data, same process; "
                "one entry per model shape, each with its own device, versions and settings",
        "flop_convention": "model FLOPs (MFU): 2 FLOPs per weight entry of every Linear (and the patch conv) per "
                           "position forward; attention scores and weighted sum included (bidirectional 4*d*T^2 per "
                           "vision layer, causal 2*d*T*(T+1) per LLM layer); backward 2x forward for trained parts, "
                           "1x (matmuls) / 2x (attention) for the frozen LLM that gradients pass through in align, "
                           "0 for the frozen vision tower; gradient-checkpointing recomputation not counted; "
                           "padding positions not counted",
        "shapes": dict(sorted(entries.items())),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"device: {describe_device(device)}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"bf16 peak assumed: {peak_tflops} TFLOP/s ({peak_source})")
    for name in shapes:
        entry = entries[name]
        for precision, run in entry["runs"].items():
            print(f"  {name} {entry['stage']} {precision}: {describe_run(run)}")
        ratio = entry["speed_ratio_bf16_over_fp32"]
        print(f"  {name}: bf16 / fp32 speed ratio (sequence tokens/s): "
              f"{f'{ratio:.2f}x' if ratio is not None else 'n/a (a run did not fit)'}")
    print(f"written: {args.out}")
    ok = all(run["status"] != "ok" or (run["token_counts_match_trainer"] and run["loss_finite"])
             for name in shapes for run in entries[name]["runs"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
