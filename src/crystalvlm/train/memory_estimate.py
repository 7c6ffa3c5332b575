"""Per-GPU memory of a stage for the chosen launch, printed at its start; a launch that cannot fit
is refused before any weight reaches a GPU, with the change that would make it fit.

What is counted (bytes per GPU):

* weights — DDP/single GPU: trained parameters in fp32 (accelerate's mixed precision keeps fp32
  master weights and autocasts), frozen parts in the compute dtype (the trainer stores them so);
  FSDP full shard: every parameter in fp32, divided over the GPUs (FSDP flattens a unit into one
  tensor of one dtype, so frozen parts stay fp32 there), plus two gathered units in the compute
  dtype; ZeRO-3: every parameter in the compute dtype, divided over the GPUs, plus two gathered units;
* gradients — fp32 for each trained parameter (sharded under FSDP/ZeRO-3);
* optimizer — AdamW's two fp32 moments (8 bytes per trained parameter), and under ZeRO-3 also the
  fp32 master copy (4 more), sharded under FSDP/ZeRO-3;
* activations — a rough upper bound with every sample at `max_length`: per decoder layer
  ~17 values per token and hidden unit (Korthikanti et al. 2022, 34·s·b·h bytes at 16 bit, with
  memory-efficient attention dropping the s² term); with gradient checkpointing one saved input
  per layer plus one layer recomputed;
* logits — the LM head's output in the compute dtype, its fp32 copy, the log-softmax and its
  gradient (the cross entropy runs in fp32): tokens × vocabulary × (compute bytes + 12); with
  `loss: chunked` one chunk's worth (`loss_chunk_size` positions) instead of every token's;
* runtime — a fixed 2 GiB for the CUDA context and allocator slack.

It is an estimate for choosing a launch, not a measurement: benchmarks/ records measured peaks.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

GIB = 2**30
RUNTIME_BYTES = 2 * GIB
ACTIVATION_VALUES_PER_TOKEN_UNIT = 17  # per layer, without checkpointing (34 bytes at 16 bit)
SHARDINGS = ("none", "fsdp", "zero3")
ACCELERATE_CONFIGS = {"fsdp": "configs/accelerate/fsdp.yaml", "zero3": "configs/accelerate/zero3.yaml"}


class LaunchWontFitError(ValueError):
    """The stage's estimated memory per GPU exceeds the GPU's; the message names a fix."""


@dataclass(frozen=True)
class ModelShape:
    trainable: int  # parameters the stage trains
    frozen: int  # parameters it keeps fixed
    hidden_size: int  # the LLM's
    layers: int  # the LLM's decoder layers
    vocab_size: int


@dataclass(frozen=True)
class LaunchPlan:
    precision: str  # accelerate's mixed precision: no, bf16 or fp16
    sharding: str  # none (one GPU or DDP), fsdp (full shard) or zero3
    world_size: int
    batch_size: int  # per GPU micro-batch
    max_length: int
    gradient_checkpointing: bool
    loss_chunk_size: int | None = None  # the stage's `loss: chunked`: positions projected onto the vocabulary at once

    @property
    def compute_bytes(self) -> int:
        return 4 if self.precision == "no" else 2


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    runtime: int = RUNTIME_BYTES

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.runtime

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}

    def table(self, plan: LaunchPlan, capacity: int | None = None) -> str:
        precision = "fp32" if plan.precision == "no" else plan.precision
        lines = [f"estimated memory per GPU ({precision}, sharding {plan.sharding}, {plan.world_size} GPU(s), "
                 f"batch {plan.batch_size} x {plan.max_length} tokens, gradient checkpointing "
                 f"{'on' if plan.gradient_checkpointing else 'off'}):"]
        for name in ("weights", "gradients", "optimizer", "activations", "logits", "runtime"):
            lines.append(f"  {name:<12}{getattr(self, name) / GIB:>9.2f} GiB")
        lines.append(f"  {'total':<12}{self.total / GIB:>9.2f} GiB"
                     + (f" of {capacity / GIB:.1f} GiB" if capacity else " (no GPU: not checked)"))
        return "\n".join(lines)


def estimate_memory(shape: ModelShape, plan: LaunchPlan) -> MemoryEstimate:
    if plan.sharding not in SHARDINGS:
        raise ValueError(f"unknown sharding {plan.sharding!r}; known: {SHARDINGS}")
    half = plan.compute_bytes
    total_parameters = shape.trainable + shape.frozen
    shards = plan.world_size if plan.sharding != "none" else 1
    gathered = 2 * math.ceil(total_parameters / max(shape.layers, 1)) * half if plan.sharding != "none" else 0
    if plan.sharding == "none":
        weights = shape.trainable * 4 + shape.frozen * half
        optimizer = shape.trainable * 8
    elif plan.sharding == "fsdp":
        weights = math.ceil(total_parameters * 4 / shards) + gathered
        optimizer = math.ceil(shape.trainable * 8 / shards)
    else:  # zero3: 16-bit parameters, fp32 master copy kept with the optimizer state
        weights = math.ceil(total_parameters * half / shards) + gathered
        optimizer = math.ceil(shape.trainable * (12 if half == 2 else 8) / shards)
    gradients = math.ceil(shape.trainable * 4 / shards)
    tokens = plan.batch_size * plan.max_length
    one_layer = tokens * shape.hidden_size * ACTIVATION_VALUES_PER_TOKEN_UNIT * half
    if plan.gradient_checkpointing:
        activations = shape.layers * tokens * shape.hidden_size * half + one_layer
    else:
        activations = shape.layers * one_layer
    logit_positions = tokens if plan.loss_chunk_size is None else min(tokens, plan.loss_chunk_size)
    logits = logit_positions * shape.vocab_size * (half + 12)
    return MemoryEstimate(weights, gradients, optimizer, activations, logits)


def suggest_fix(shape: ModelShape, plan: LaunchPlan, capacity: int) -> str:
    """The first change, in order of least disruption, whose estimate fits `capacity`."""
    def fits(candidate: LaunchPlan) -> bool:
        return estimate_memory(shape, candidate).total <= capacity

    if not plan.gradient_checkpointing and fits(replace(plan, gradient_checkpointing=True)):
        return "turn on gradient checkpointing (stage field gradient_checkpointing: true)"
    checkpointed = replace(plan, gradient_checkpointing=True)
    if plan.sharding == "none":
        for sharding in ("fsdp", "zero3"):
            for world in sorted({max(plan.world_size, 1), 2, 4, 8, 16, 32, 64}):
                if world >= plan.world_size and fits(replace(checkpointed, sharding=sharding, world_size=world)):
                    return (f"shard weights, gradients and optimizer state: `accelerate launch --config_file "
                            f"{ACCELERATE_CONFIGS[sharding]} --num_processes {world} -m crystalvlm.cli train ...`"
                            + (f" (at least {world} GPUs)" if world > plan.world_size else ""))
    batch = plan.batch_size
    while batch > 1:
        batch //= 2
        if fits(replace(checkpointed, batch_size=batch)):
            factor = plan.batch_size // batch
            return (f"lower the per-GPU batch to {batch} and multiply grad_accum by {factor} "
                    f"(same global batch): --set stages.<stage>.batch_size={batch}")
    return ("train fewer parameters: LoRA or QLoRA on the LLM (stage field lora: {r: 128}), or more GPUs under "
            f"{ACCELERATE_CONFIGS['fsdp']}")


def check_launch(shape: ModelShape, plan: LaunchPlan, capacity: int | None, stage: str) -> MemoryEstimate:
    """The estimate; raises LaunchWontFitError naming a fix when it exceeds `capacity` (None: no GPU)."""
    estimate = estimate_memory(shape, plan)
    if capacity is not None and estimate.total > capacity:
        raise LaunchWontFitError(
            f"stage {stage!r} needs about {estimate.total / GIB:.1f} GiB per GPU for this launch and the GPU has "
            f"{capacity / GIB:.1f} GiB; fix: {suggest_fix(shape, plan, capacity)}. The estimate takes every sample at "
            f"max_length ({plan.max_length}); if yours are much shorter, lower max_length, or set the stage's "
            f"memory_check: false to try anyway\n{estimate.table(plan, capacity)}")
    return estimate


# ----------------------------------------------------------------------------- from a live stage
def shape_of(model, trainable: int, frozen: int) -> ModelShape:
    text = model.config.get_text_config()
    return ModelShape(trainable=trainable, frozen=frozen, hidden_size=int(text.hidden_size),
                      layers=int(text.num_hidden_layers), vocab_size=int(text.vocab_size))


def plan_of(accelerator, stage) -> LaunchPlan:
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    sharding = "none"
    if kind == DistributedType.FSDP:
        sharding = "fsdp"
    elif kind == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        sharding = "zero3" if plugin is not None and plugin.zero_stage == 3 else "none"
    return LaunchPlan(precision=accelerator.mixed_precision, sharding=sharding, world_size=accelerator.num_processes,
                      batch_size=stage.batch_size, max_length=stage.max_length,
                      gradient_checkpointing=stage.gradient_checkpointing,
                      # Under FSDP the trained positions' logits are built whole (train/chunked_loss.py).
                      loss_chunk_size=stage.loss_chunk_size if stage.loss == "chunked" and sharding != "fsdp" else None)


def gpu_capacity(accelerator) -> int | None:
    import torch

    if accelerator.device.type != "cuda":
        return None
    return int(torch.cuda.get_device_properties(accelerator.device).total_memory)


def check_stage_memory(run, model) -> MemoryEstimate:
    """The trainer's `memory` step, after `freeze`: print the estimate, write
    <stage>/memory_estimate.json, refuse a launch that cannot fit."""
    parameters = list(model.parameters())  # each tied parameter once
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    frozen = sum(p.numel() for p in parameters) - trainable
    plan = plan_of(run.accelerator, run.stage)
    shape = shape_of(model, trainable, frozen)
    capacity = gpu_capacity(run.accelerator)
    estimate = check_launch(shape, plan, capacity if run.stage.memory_check else None, run.stage.name)
    run.say(estimate.table(plan, capacity))
    if run.accelerator.is_main_process:
        record = {"plan": asdict(plan), "shape": asdict(shape), "estimate": estimate.to_dict(), "capacity": capacity}
        Path(run.folder / "memory_estimate.json").write_text(json.dumps(record, indent=2) + "\n")
    return estimate
