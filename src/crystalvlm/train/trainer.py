"""Stage training on accelerate: the same loop runs on a laptop CPU and under torchrun/FSDP.

Why a small loop of our own instead of HF Trainer: exact resume (batch order is a pure function of
seed and step, see `data.batching`), atomic checkpoints, a loss normalised by the number of
trained tokens of the whole global batch (so gradient accumulation and DDP give the same gradient
as one big batch), and per-part learning rates, each of which Trainer makes awkward.
accelerate still owns devices, DDP/FSDP wrapping, mixed precision and trackers.

A stage runs as named steps, each a function below, in this order:

    accelerator   one per stage, in the stage's precision        (stage_accelerator)
    build_or_load the recipe's model, the stage's init_from model, or the previous stage's checkpoint
    adapters      LoRA / QLoRA / Partial LoRA on the stage's `lora.parts`, if it has `lora` (adapters)
    check_data    every record (a dpo stage: every pair) checked before any step; bad ones reported
    freeze        the stage's freeze policy; what trains is written and printed; frozen parts
                  stored in the compute dtype
    memory        estimated memory per GPU for this launch, printed; refused if it cannot fit
    anchor        text-only micro-batches keep the trained image path in the graph (image_path_anchor)
    plan_steps    batches per epoch, total and warm-up steps
    optimise      AdamW over the trained parts, cosine schedule
    reference     the objective: next-token loss (full or chunked logits), or for a dpo stage DPO with the
                  starting model's log-probs of every pair (train/preference.py)
    resume        model, optimizer, scheduler and RNG from the latest resume state
    loop          the optimizer steps, with resume states every `save_every`; micro-batches padded, or
                  packed (the stage's `packing`: data.collate, data.packing)
    save          the final Hugging Face checkpoint (merged, or the adapter folder: see adapters)
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, set_seed
from transformers import get_cosine_schedule_with_warmup

from crystalvlm.data.batching import epoch_batches
from crystalvlm.data.collate import collate_conversations, collate_packed, input_token_count, model_inputs
from crystalvlm.data.check_cache import CheckCache
from crystalvlm.data.dataset import ConversationDataset, DataSource, default_check_workers, prepare_dataset
from crystalvlm.data.records import RecordProblem
from crystalvlm.data.sample_encoder import SampleEncoder
from crystalvlm.data.templates import IGNORE_INDEX, get_template
from crystalvlm.models.build import ModelSpec, build_llava
from crystalvlm.models.checkpoint import CheckpointInfo, checkpoint_revision, load_checkpoint, resolve_model, save_checkpoint
from crystalvlm.train.adapters import (StageAdapters, add_adapters, is_adapter_folder, refuse_impossible_adapters,
                                       save_stage_final)
from crystalvlm.train.chunked_loss import (chunked_cross_entropy_sum, trained_hidden_states,
                                           trained_positions_cross_entropy_sum)
from crystalvlm.train.freeze import FreezeSummary, apply_stage_policy, store_frozen_parts
from crystalvlm.train.fsdp import plain_module_classes, resume_shards
from crystalvlm.train.image_path_anchor import keep_image_path_in_graph
from crystalvlm.train.memory_estimate import check_stage_memory
from crystalvlm.train.preference import DpoObjective, PreferenceDataset, collate_pairs, prepare_pairs, reference_logps
from crystalvlm.train.provenance import sha256_file, start_provenance
from crystalvlm.train.recipe import Recipe, StageConfig
from crystalvlm.train.resume_state import latest_resume_state, load_resume_state, save_resume_state
from crystalvlm.train.stage_accelerator import stage_accelerator
from crystalvlm.train.tracking import step_metrics, tracker_config, tracker_init_kwargs


COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # accelerate's mixed precision -> dtype


class BadDataError(RuntimeError):
    """--strict: the data has bad records; nothing was trained."""


@dataclass
class TrainOptions:
    run_dir: Path
    stages: list[str] | None = None  # None: every stage in recipe order
    data: DataSource | None = None  # replaces the stage's datasets
    max_steps: int | None = None
    save_every: int | None = None
    resume: bool = False
    strict: bool = False
    report_to: list[str] = field(default_factory=list)
    progress: bool = True
    num_workers: int = 0
    init_from: str | None = None  # a full model the first stage run starts from (over the stage's init_from)
    fsdp: bool = False  # shard every stage with the FSDP plugin of configs/accelerate/fsdp.yaml (train/fsdp.py)


@dataclass
class StageResult:
    name: str
    checkpoint: Path
    steps: int
    final_loss: float | None
    problems: list[RecordProblem]


def stage_dir(run_dir: Path, stage: str) -> Path:
    return run_dir / stage


def final_checkpoint(run_dir: Path, stage: str) -> Path:
    return stage_dir(run_dir, stage) / "final"


@dataclass
class StageRun:
    """What every step of one stage reads: the recipe, the stage, the options, its accelerator."""

    recipe: Recipe
    stage: StageConfig
    options: TrainOptions
    accelerator: Accelerator
    adapters: StageAdapters | None = None  # set by the adapters step when the stage has `lora`

    @property
    def folder(self) -> Path:
        return stage_dir(self.options.run_dir, self.stage.name)

    @property
    def metrics_path(self) -> Path:
        return self.folder / "metrics.jsonl"

    @property
    def resume_folder(self) -> Path:
        return self.folder / "checkpoints"

    def say(self, text: str) -> None:
        """Print on the main process only (the CLI silences loggers; this is the console)."""
        if self.accelerator.is_main_process:
            print(text)


@dataclass
class StepPlan:
    global_micro_batch: int  # samples per micro-step over all ranks: the unit `epoch_batches` cuts
    batches_per_epoch: int  # global micro-batches per epoch
    total_steps: int  # optimizer steps
    warmup_steps: int
    save_every: int | None


def _sources(recipe: Recipe, stage: StageConfig, options: TrainOptions) -> list[DataSource]:
    if options.data is not None:
        return [options.data]
    sources = []
    for name in stage.data:
        entry = recipe.datasets[name]
        folder = entry.get("image_folder")
        sources.append(DataSource(Path(entry["file"]), Path(folder) if folder else None))
    return sources


@dataclass
class NextTokenObjective:
    """A sft stage's loss: summed cross entropy over trained tokens; the loop divides by the trained
    tokens of the whole global batch. With `lm_head` and `chunk_size` (the stage's `loss: chunked`)
    the full logits are never built; with `trained_positions_only` (the same under FSDP) only the
    trained positions' logits are (train/chunked_loss.py)."""

    unit: str = "tokens"
    lm_head: torch.nn.Module | None = None
    chunk_size: int | None = None
    trained_positions_only: bool = False

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def loss_sum(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs = model_inputs(batch)
        if self.chunk_size is not None:
            hidden, targets = trained_hidden_states(model, inputs, batch["labels"])  # (N, D), (N,)
            return chunked_cross_entropy_sum(hidden, targets, self.lm_head, self.chunk_size), {}
        if self.trained_positions_only:
            return trained_positions_cross_entropy_sum(model, inputs, batch["labels"]), {}
        logits = model(**inputs, use_cache=False).logits  # (B, T, V)
        return _ce_sum(logits, batch["labels"]), {}


def _ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross entropy over trained tokens. logits (B, T, V), labels (B, T)."""
    shifted_logits = logits[:, :-1, :].float()  # (B, T-1, V)
    shifted_labels = labels[:, 1:]  # (B, T-1)
    return torch.nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]), shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="sum",
    )


# ----------------------------------------------------------------------------- the named steps
def build_or_load(run: StageRun, init_from: Path | None):
    """The recipe's model composed from its parts, or the full model at `init_from` (the stage's
    init_from, or the previous stage's final checkpoint)."""
    template = get_template(run.stage.template)
    set_seed(run.recipe.seed)
    if init_from is None:
        if not run.recipe.model:
            raise ValueError(f"stage {run.stage.name!r}: the recipe has no 'model' section to compose and the stage "
                             "starts from no model; give it init_from (or --init-from)")
        model, processor = build_llava(ModelSpec.from_dict(run.recipe.model), chat_template=template.chat_template_jinja(),
                                       image_mode=run.recipe.image_mode)
    else:
        model, processor, _ = load_checkpoint(init_from)
        processor.chat_template = template.chat_template_jinja()
        wanted = (run.recipe.model or {}).get("image_grid_pinpoints")
        trained = getattr(model.config, "image_grid_pinpoints", None)
        if wanted is not None and [list(p) for p in wanted] != [list(p) for p in (trained or [])]:
            raise ValueError(f"stage {run.stage.name!r}: the recipe tiles images by the grid {wanted} but {init_from} "
                             f"was trained with {trained}; a checkpoint keeps the sub-image layout it was trained with")
    model.train()
    model.config.use_cache = False
    return model, processor


def _report_problems(run: StageRun, problems: list[RecordProblem]) -> None:
    if not run.accelerator.is_main_process:
        return
    with open(run.folder / "data_problems.jsonl", "w") as handle:
        for problem in problems:
            handle.write(json.dumps({"source": problem.source, "id": problem.record_id, "reason": problem.reason}) + "\n")
    if problems:
        print(f"{len(problems)} bad record(s) skipped (listed in {run.folder / 'data_problems.jsonl'}):")
        for problem in problems[:20]:
            print(f"  - {problem}")
        if len(problems) > 20:
            print(f"  ... and {len(problems) - 20} more")


def _checkpoint_info(run: StageRun) -> CheckpointInfo:
    return CheckpointInfo(template=run.stage.template, image_mode=run.recipe.image_mode, stage=run.stage.name,
                          recipe=run.recipe.name)


def adapters(run: StageRun, model, processor, init_from: Path | None):
    """The model with the stage's low-rank adapters (noted in `run.adapters`), before any data is read."""
    if run.stage.lora is None:
        return model
    if run.accelerator.distributed_type == DistributedType.FSDP:
        # Merging needs each adapted Linear whole on one rank; FSDP shards them (DDP keeps full copies).
        raise ValueError(f"stage {run.stage.name!r}: lora under FSDP is not supported yet; run it under DDP")
    model, run.adapters = add_adapters(model, run.stage.lora, run.folder, init_from, processor, _checkpoint_info(run),
                                       run.accelerator.device, run.stage.gradient_checkpointing)
    return model


def check_data(run: StageRun, model, processor):
    """Every record (or, in a dpo stage, every pair) encoded and checked before any step; bad ones
    listed in data_problems.jsonl. Returns (ConversationDataset or PreferenceDataset, problems).
    Records are checked in parallel and cached by content (a second run on the same data skips the
    check): the first process of each machine checks and fills the cache, using all its CPUs; the
    others then read the cache."""
    encoder = SampleEncoder.from_processor(processor, model.config, get_template(run.stage.template),
                                           run.recipe.image_mode, max_length=run.stage.max_length)
    progress = run.options.progress and run.accelerator.is_main_process
    if run.stage.kind == "dpo":
        prepared = prepare_pairs(_sources(run.recipe, run.stage, run.options), encoder, progress=progress)
        dataset, usable = PreferenceDataset(prepared, encoder), prepared.pairs
    else:
        started = time.perf_counter()
        with run.accelerator.local_main_process_first():
            prepared = prepare_dataset(_sources(run.recipe, run.stage, run.options), encoder, progress=progress,
                                       workers=default_check_workers(shared=False), cache=CheckCache(),
                                       keep_encodings=run.stage.keep_encodings)
        if run.accelerator.is_main_process:
            summary = {"seconds": round(time.perf_counter() - started, 3),
                       "records": len(prepared.items) + len(prepared.problems), "bad": len(prepared.problems),
                       "cached_sources": [str(path) for path in prepared.cached]}
            (run.folder / "data_check.json").write_text(json.dumps(summary, indent=2) + "\n")
        dataset, usable = ConversationDataset(prepared, encoder, run.stage.keep_encodings), prepared.items
    _report_problems(run, prepared.problems)
    if prepared.problems and run.options.strict:
        reasons = Counter(p.reason.split(":")[0] for p in prepared.problems)
        raise BadDataError(f"--strict: {len(prepared.problems)} bad record(s), nothing trained: {dict(reasons)}")
    if not usable:
        raise BadDataError(f"stage {run.stage.name!r}: no usable {'pair' if run.stage.kind == 'dpo' else 'record'}")
    return dataset, prepared.problems


def reference(run: StageRun, model, dataset, pad_token_id: int, init_from: Path | None):
    """The stage's objective: next-token loss, or (dpo) DPO against the starting model, whose log-probs
    of every pair are computed now, before any step and before a resume state is loaded."""
    if run.stage.kind != "dpo":
        if run.stage.loss != "chunked":
            return NextTokenObjective()
        if run.accelerator.distributed_type == DistributedType.FSDP:
            # Chunks call the LM head outside the model's forward, where FSDP keeps it sharded.
            run.say(f"stage {run.stage.name}: loss: chunked under FSDP: logits of the trained positions only, "
                    "built whole (not in chunks)")
            return NextTokenObjective(trained_positions_only=True)
        return NextTokenObjective(lm_head=run.accelerator.unwrap_model(model).get_output_embeddings(),
                                  chunk_size=run.stage.loss_chunk_size)
    sources = _sources(run.recipe, run.stage, run.options)
    key = {"pairs": {str(s.file): sha256_file(s.file) for s in sources},
           "start": str(init_from) if init_from is not None else "recipe model",
           "start_revision": checkpoint_revision(init_from) if init_from is not None else None,
           "template": run.stage.template, "max_length": run.stage.max_length}
    with run.accelerator.autocast():  # the precision the loop's policy log-probs are computed in
        values = reference_logps(run.accelerator.unwrap_model(model), dataset, run.folder, key, run.stage.batch_size,
                                 pad_token_id, run.accelerator.device,
                                 progress=run.options.progress and run.accelerator.is_main_process)
    sft = f", SFT term rpo_alpha {run.stage.rpo_alpha}" if run.stage.rpo_alpha is not None else ""
    run.say(f"stage {run.stage.name}: dpo on {len(dataset)} pairs, beta {run.stage.beta}{sft}, "
            "reference = the stage's start")
    return DpoObjective(run.stage.beta, values, rpo_alpha=run.stage.rpo_alpha)


def freeze(run: StageRun, model) -> list[dict]:
    """Apply the stage's freeze policy; write <stage>/freeze_summary.json and print it. Returns
    the optimizer groups (one per trained part, with its learning rate); an adapted part trains
    its adapter parameters only."""
    stage = run.stage
    groups = apply_stage_policy(model, stage.tunable, stage.lr, stage.weight_decay)
    if run.adapters is not None:
        groups = run.adapters.restrict(groups)
    compute_dtype = COMPUTE_DTYPES.get(run.accelerator.mixed_precision)
    if compute_dtype is not None and run.accelerator.distributed_type != DistributedType.FSDP:
        store_frozen_parts(model, stage.tunable, compute_dtype)
    if stage.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    summary = FreezeSummary.of(model, stage.name, run.accelerator.mixed_precision, stage.lr)
    if run.accelerator.is_main_process:
        summary.write(run.folder / "freeze_summary.json")
    precision = "fp32" if summary.precision == "no" else summary.precision
    run.say(f"stage {stage.name}: template {stage.template}, precision {precision}, "
            f"tunable {stage.tunable}\n{summary.table()}\nimage tokens per image: {model.config.image_seq_length}"
            + (" (the whole view; anyres sub-images add tokens by image size, grid "
               f"{model.config.image_grid_pinpoints})" if getattr(model.config, "image_grid_pinpoints", None) else ""))
    return groups


def plan_steps(run: StageRun, dataset: ConversationDataset) -> StepPlan:
    stage, options = run.stage, run.options
    global_micro_batch = stage.batch_size * run.accelerator.num_processes
    batches_per_epoch = len(epoch_batches(dataset.lengths, dataset.has_image, global_micro_batch, run.recipe.seed, 0,
                                          stage.group_by_modality_length))
    max_steps = options.max_steps or stage.max_steps
    total_steps = max_steps or max(1, math.floor(stage.epochs * batches_per_epoch / stage.grad_accum))
    return StepPlan(global_micro_batch, batches_per_epoch, total_steps, math.ceil(stage.warmup_ratio * total_steps),
                    options.save_every or stage.save_every)


def optimise(groups: list[dict], plan: StepPlan):
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, plan.warmup_steps, plan.total_steps)


def _truncate_metrics(path: Path, keep_through_step: int) -> None:
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= keep_through_step]
    path.write_text("".join(line + "\n" for line in kept))


def resume(run: StageRun, unwrapped_model, optimizer, scheduler) -> int:
    """The optimizer steps already taken: 0 for a fresh stage (whose old metrics log is removed),
    else those of the latest resume state (the log is cut back to them)."""
    latest = latest_resume_state(run.resume_folder) if run.options.resume else None
    if latest is None:
        if run.accelerator.is_main_process and run.metrics_path.exists():
            run.metrics_path.unlink()
        return 0
    start_step = load_resume_state(latest, unwrapped_model, optimizer, scheduler,
                                   resume_shards(run.accelerator, unwrapped_model, optimizer))
    run.say(f"resumed stage {run.stage.name} from {latest} at step {start_step}")
    if run.accelerator.is_main_process:
        _truncate_metrics(run.metrics_path, start_step)
    return start_step


def _micro_batch_loader(run: StageRun, dataset, plan: StepPlan, start_step: int,
                        pad_token_id: int) -> torch.utils.data.DataLoader:
    """This rank's micro-batches from `start_step` on: a pure function of (seed, step)."""
    stage, accelerator = run.stage, run.accelerator
    world = accelerator.num_processes
    epoch_cache: dict[int, list[list[int]]] = {}

    def global_batch_at(index: int) -> list[int]:
        epoch, within = divmod(index, plan.batches_per_epoch)
        if epoch not in epoch_cache:
            epoch_cache.clear()
            epoch_cache[epoch] = epoch_batches(dataset.lengths, dataset.has_image, plan.global_micro_batch,
                                               run.recipe.seed, epoch, stage.group_by_modality_length)
        return epoch_cache[epoch][within]

    def rank_micro_batches():
        for step in range(start_step, plan.total_steps):
            for micro in range(stage.grad_accum):
                indices = global_batch_at(step * stage.grad_accum + micro)
                yield indices[accelerator.process_index::world] or indices[:1]

    # Its own generator: iterating a DataLoader draws a worker base seed, which from the global RNG
    # would shift every later dropout mask (LoRA's dropout) between a resumed and an uninterrupted run.
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=list(rank_micro_batches()), num_workers=run.options.num_workers,
        collate_fn=partial(_collate_function(run.stage), pad_token_id=pad_token_id),
        generator=torch.Generator().manual_seed(run.recipe.seed + start_step),
    )


def _collate_function(stage: StageConfig):
    if stage.kind == "dpo":
        return collate_pairs
    return collate_packed if stage.packing else collate_conversations


def loop(run: StageRun, model, optimizer, scheduler, groups: list[dict], batches, plan: StepPlan,
         start_step: int, objective=None) -> float | None:
    """The optimizer steps from `start_step`; returns the last step's loss (None if none ran)."""
    from tqdm.auto import tqdm

    stage, accelerator = run.stage, run.accelerator
    world = accelerator.num_processes
    batches = iter(batches)
    bar = tqdm(total=plan.total_steps, initial=start_step, desc=f"train {stage.name}",
               disable=not (run.options.progress and accelerator.is_main_process))
    objective = objective or NextTokenObjective()
    started = time.time()
    loss_value = None
    for step in range(start_step, plan.total_steps):
        step_started = time.time()
        micro_batches = [next(batches) for _ in range(stage.grad_accum)]
        # Normalise by the objective's units (trained tokens, or pairs) of the whole global batch
        # (all ranks, all micro-batches).
        local_counts = torch.tensor([sum(objective.units(b) for b in micro_batches),
                                     sum(input_token_count(b) for b in micro_batches)],
                                    device=accelerator.device)  # (units, input tokens)
        global_tokens, global_input_tokens = accelerator.reduce(local_counts, "sum").tolist()
        step_loss = torch.zeros((), device=accelerator.device)
        step_stats: dict[str, torch.Tensor] = {}
        for index, batch in enumerate(micro_batches):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            sync = index == len(micro_batches) - 1
            context = accelerator.no_sync(model) if not sync and world > 1 else contextlib.nullcontext()
            with context, accelerator.autocast():
                loss_sum, stats = objective.loss_sum(model, batch)
                # DDP averages gradients over ranks, hence the factor `world`.
                accelerator.backward(loss_sum * world / max(global_tokens, 1))
            step_loss += loss_sum.detach()
            for name, value in stats.items():
                step_stats[name] = step_stats.get(name, 0) + value.detach().float()
        # The optimizer's own groups: FSDP swaps in its sharded parameters when it wraps the model.
        grad_norm = accelerator.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                                stage.max_grad_norm)
        grad_norm = float("nan") if grad_norm is None else grad_norm  # DeepSpeed reports it after its step
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = accelerator.reduce(step_loss, "sum").item() / max(global_tokens, 1)
        extra = {name: round(accelerator.reduce(value, "sum").item() / max(global_tokens, 1), 6)
                 for name, value in step_stats.items()}
        tokens_per_s = global_input_tokens / max(time.time() - step_started, 1e-9)
        done = step + 1
        if accelerator.is_main_process:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            if done % stage.log_every == 0 or done == plan.total_steps:
                lr_per_part = {g["part"]: g["lr"] for g in optimizer.param_groups}
                record = {"step": done, "loss": round(loss_value, 6), objective.unit: global_tokens, **extra,
                          "grad_norm": round(float(grad_norm), 6), "lr": lr_per_part,
                          "elapsed_s": round(time.time() - started, 3), "tokens_per_s": round(tokens_per_s, 1)}
                with open(run.metrics_path, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                accelerator.log(step_metrics(stage.name, loss_value, float(grad_norm), lr_per_part, tokens_per_s),
                                step=done)
        if plan.save_every and done % plan.save_every == 0 and done < plan.total_steps:
            state = accelerator.get_state_dict(model)
            shards = resume_shards(accelerator, model, optimizer)  # FSDP: every rank writes its optimizer shard
            if accelerator.is_main_process or shards is not None:
                save_resume_state(run.resume_folder, done, state, optimizer, scheduler, shards=shards)
            accelerator.wait_for_everyone()
    bar.close()
    return loss_value


def save(run: StageRun, model, processor) -> Path:
    """The stage's final checkpoint, a Hugging Face Llava folder renamed into place whole."""
    accelerator = run.accelerator
    final = final_checkpoint(run.options.run_dir, run.stage.name)
    if run.adapters is not None:
        # Adapters are merged (or saved) from the unwrapped model: DDP keeps a full copy on each rank.
        if accelerator.is_main_process:
            save_stage_final(accelerator.unwrap_model(model), processor, final, run.adapters, run.stage.tunable,
                             _checkpoint_info(run), run.say)
        accelerator.wait_for_everyone()
        return final
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.config.use_cache = True
        state = _in_save_dtype(run, unwrapped, state)
        # `state` is the full state dict gathered from every rank (FSDP shards it otherwise).
        with plain_module_classes(unwrapped):  # FSDP: keys named as a plain run names them
            save_checkpoint(unwrapped, processor, final, _checkpoint_info(run), state_dict=state)
    accelerator.wait_for_everyone()
    return final


def save_dtype(run: StageRun) -> torch.dtype:
    """The final checkpoint's dtype: the stage's `save_dtype`, by default the training dtype (bf16
    under bf16 mixed precision: a 7B checkpoint of 14 GB, not 28)."""
    if run.stage.save_dtype != "auto":
        return {"fp32": torch.float32, **COMPUTE_DTYPES}[run.stage.save_dtype]
    return COMPUTE_DTYPES.get(run.accelerator.mixed_precision, torch.float32)


def _in_save_dtype(run: StageRun, model, state: dict) -> dict:
    dtype = save_dtype(run)
    model.config.dtype = dtype  # config.json states what the weights are
    for sub_config in (model.config.get_text_config(), getattr(model.config, "vision_config", None)):
        if sub_config is not None:
            sub_config.dtype = dtype
    return {key: value.to(dtype) if value.is_floating_point() else value for key, value in state.items()}


# ----------------------------------------------------------------------------- a stage, a recipe
def train_stage(recipe: Recipe, stage: StageConfig, options: TrainOptions, init_from: Path | None) -> StageResult:
    accelerator = stage_accelerator(stage, options.report_to, str(options.run_dir), fsdp=options.fsdp)
    run = StageRun(recipe, stage, options, accelerator)
    run.folder.mkdir(parents=True, exist_ok=True)

    model, processor = build_or_load(run, init_from)
    model = adapters(run, model, processor, init_from)
    dataset, problems = check_data(run, model, processor)
    groups = freeze(run, model)
    check_stage_memory(run, model)  # printed; a launch that cannot fit stops here, before any GPU work
    anchor = keep_image_path_in_graph(model)  # text-only micro-batches still reach the trained image path
    plan = plan_steps(run, dataset)
    optimizer, scheduler = optimise(groups, plan)
    model, optimizer = accelerator.prepare(model, optimizer)
    objective = reference(run, model, dataset, processor.tokenizer.pad_token_id, init_from)  # before resume: the start
    start_step = resume(run, accelerator.unwrap_model(model), optimizer, scheduler)

    if options.report_to:
        accelerator.init_trackers(recipe.name, config=tracker_config(recipe, stage.name),
                                  init_kwargs=tracker_init_kwargs(options.run_dir.name, stage.name))
    batches = _micro_batch_loader(run, dataset, plan, start_step, processor.tokenizer.pad_token_id)
    final_loss = loop(run, model, optimizer, scheduler, groups, batches, plan, start_step, objective)
    if anchor is not None:
        anchor.remove()
    checkpoint = save(run, model, processor)
    if options.report_to:
        accelerator.end_training()
    return StageResult(stage.name, checkpoint, plan.total_steps, final_loss, problems)


def start_model(recipe: Recipe, stage_name: str, options: TrainOptions) -> Path | None:
    """The folder of the full model a stage starts from by name, or None (it builds from parts or
    continues the previous stage): --init-from for the first stage run, else the stage's init_from.
    A Hub id is looked up in the HF cache only; one not there raises ModelNotFoundError."""
    wanted = options.stages or [stage.name for stage in recipe.stages]
    name = options.init_from if (options.init_from and stage_name == wanted[0]) else recipe.stage(stage_name).init_from
    if not name:
        return None
    folder = resolve_model(name)
    if is_adapter_folder(folder):
        raise ValueError(f"stage {stage_name!r}: init_from {name} is an unmerged adapter folder; merge it first "
                         f"(`crystalvlm merge {name} --out DST`)")
    return folder


def train_recipe(recipe: Recipe, options: TrainOptions) -> list[StageResult]:
    """Run the recipe's stages in order; each starts from the previous stage's final checkpoint."""
    # The process group (torchrun) is set up once; each stage then gets its own accelerator.
    process = PartialState(cpu=not torch.cuda.is_available())
    if options.fsdp and process.num_processes == 1 and process.is_main_process:
        print("--fsdp: one process, nothing to shard over; training unsharded. Shard over N processes with "
              "`torchrun --nproc_per_node N -m crystalvlm.cli train ... --fsdp`")
    options.run_dir.mkdir(parents=True, exist_ok=True)
    names = [s.name for s in recipe.stages]
    wanted = options.stages or names
    for name in wanted:
        recipe.stage(name)  # raises on an unknown stage
    refuse_impossible_adapters(recipe, wanted)  # QLoRA without a GPU: refused before any work
    for name in wanted:
        start_model(recipe, name, options)  # a model that is not there is refused before any work
    if not recipe.model and names.index(wanted[0]) == 0 and start_model(recipe, wanted[0], options) is None:
        raise ValueError(f"recipe {recipe.name!r} has no 'model' section to compose its first stage from; add one, "
                         "or start the stage from a full model (init_from in the stage, or --init-from)")
    provenance = None
    if process.is_main_process:
        (options.run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.raw, sort_keys=False))
        data_files, folders = [], []
        for stage in recipe.stages:
            if stage.name in wanted:
                for source in _sources(recipe, stage, options):
                    data_files.append(source.file)
                    if source.image_folder:
                        folders.append(source.image_folder)
        # Hashed in the background: no rank waits on a collective while the main process reads every image.
        provenance = start_provenance(options.run_dir, recipe.seed, sorted(set(data_files)), sorted(set(folders)))
    results = []
    try:
        for name in wanted:
            index = names.index(name)
            done = final_checkpoint(options.run_dir, name)
            if options.resume and ((done / "config.json").is_file() or is_adapter_folder(done)):
                # Final checkpoints are renamed into place whole, so one that exists is complete.
                if process.is_main_process:
                    print(f"stage {name}: already complete at {done}")
                results.append(StageResult(name, done, 0, None, []))
                continue
            init_from = start_model(recipe, name, options)
            if init_from is None and index > 0:
                init_from = final_checkpoint(options.run_dir, names[index - 1])
                if is_adapter_folder(init_from):
                    raise FileNotFoundError(
                        f"stage {name!r} starts from stage {names[index - 1]!r}, which kept its adapters unmerged "
                        f"(lora.merge: false) in {init_from}; merge them first (`crystalvlm merge {init_from} --out DST`)"
                        f" or set lora.merge: true"
                    )
                if not (init_from / "config.json").is_file():
                    raise FileNotFoundError(
                        f"stage {name!r} starts from stage {names[index - 1]!r}, but {init_from} does not exist; "
                        f"run that stage first"
                    )
            results.append(train_stage(recipe, recipe.stage(name), options, init_from))
    finally:
        if provenance is not None:
            provenance.finish()  # the run's only wait for the hashing, at its very end
    return results
