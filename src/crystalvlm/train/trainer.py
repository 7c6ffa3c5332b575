"""Stage training on accelerate: the same loop runs on a laptop CPU and under torchrun/FSDP.

Why a small loop of our own instead of HF Trainer: exact resume (batch order is a pure function of
seed and step, see `data.batching`), atomic checkpoints, a loss normalised by the number of
trained tokens of the whole global batch (so gradient accumulation and DDP give the same gradient
as one big batch), and per-part learning rates, each of which Trainer makes awkward.
accelerate still owns devices, DDP/FSDP wrapping, mixed precision and trackers.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from transformers import get_cosine_schedule_with_warmup

from crystalvlm.data.batching import epoch_batches
from crystalvlm.data.collate import collate_conversations
from crystalvlm.data.dataset import ConversationDataset, DataSource, prepare_dataset
from crystalvlm.data.records import RecordProblem
from crystalvlm.data.sample_encoder import SampleEncoder
from crystalvlm.data.templates import IGNORE_INDEX, get_template
from crystalvlm.models.build import ModelSpec, build_llava, format_summary
from crystalvlm.models.checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from crystalvlm.train.freeze import apply_stage_policy
from crystalvlm.train.provenance import write_provenance
from crystalvlm.train.recipe import Recipe, StageConfig
from crystalvlm.train.resume_state import latest_resume_state, load_resume_state, save_resume_state

logger = logging.getLogger(__name__)


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


def _precision(stage: StageConfig) -> str:
    if stage.precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return {"fp32": "no"}.get(stage.precision, stage.precision)


def _sources(recipe: Recipe, stage: StageConfig, options: TrainOptions) -> list[DataSource]:
    if options.data is not None:
        return [options.data]
    sources = []
    for name in stage.data:
        entry = recipe.datasets[name]
        folder = entry.get("image_folder")
        sources.append(DataSource(Path(entry["file"]), Path(folder) if folder else None))
    return sources


def _report_problems(problems: list[RecordProblem], folder: Path, accelerator: Accelerator) -> None:
    if not accelerator.is_main_process:
        return
    with open(folder / "data_problems.jsonl", "w") as handle:
        for problem in problems:
            handle.write(json.dumps({"source": problem.source, "id": problem.record_id, "reason": problem.reason}) + "\n")
    if problems:
        print(f"{len(problems)} bad record(s) skipped (listed in {folder / 'data_problems.jsonl'}):")
        for problem in problems[:20]:
            print(f"  - {problem}")
        if len(problems) > 20:
            print(f"  ... and {len(problems) - 20} more")


def _ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross entropy over trained tokens. logits (B, T, V), labels (B, T)."""
    shifted_logits = logits[:, :-1, :].float()  # (B, T-1, V)
    shifted_labels = labels[:, 1:]  # (B, T-1)
    return torch.nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]), shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="sum",
    )


def _truncate_metrics(path: Path, keep_through_step: int) -> None:
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= keep_through_step]
    path.write_text("".join(line + "\n" for line in kept))


def train_stage(recipe: Recipe, stage: StageConfig, options: TrainOptions, init_from: Path | None,
                accelerator: Accelerator) -> StageResult:
    folder = stage_dir(options.run_dir, stage.name)
    folder.mkdir(parents=True, exist_ok=True)
    template = get_template(stage.template)
    set_seed(recipe.seed)

    if init_from is None:
        model, processor = build_llava(ModelSpec.from_dict(recipe.model), chat_template=template.chat_template_jinja())
    else:
        model, processor, _ = load_checkpoint(init_from)
        processor.chat_template = template.chat_template_jinja()
    model.train()
    model.config.use_cache = False

    # --- data: every record checked before any step --------------------------------------
    encoder = SampleEncoder.from_processor(processor, model.config, template, recipe.image_mode, max_length=stage.max_length)
    prepared = prepare_dataset(_sources(recipe, stage, options), encoder, progress=options.progress and accelerator.is_main_process)
    _report_problems(prepared.problems, folder, accelerator)
    if prepared.problems and options.strict:
        reasons = Counter(p.reason.split(":")[0] for p in prepared.problems)
        raise BadDataError(f"--strict: {len(prepared.problems)} bad record(s), nothing trained: {dict(reasons)}")
    if not prepared.items:
        raise BadDataError(f"stage {stage.name!r}: no usable record")
    dataset = ConversationDataset(prepared, encoder)

    # --- freeze policy and optimizer --------------------------------------------------------
    groups = apply_stage_policy(model, stage.tunable, stage.lr, stage.weight_decay)
    if stage.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if accelerator.is_main_process:
        print(f"stage {stage.name}: template {stage.template}, tunable {stage.tunable}")
        print(format_summary(model))
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)

    world = accelerator.num_processes
    global_batch = stage.batch_size * world
    batches_per_epoch = len(epoch_batches(dataset.lengths, dataset.has_image, global_batch, recipe.seed, 0,
                                          stage.group_by_modality_length))
    max_steps = options.max_steps or stage.max_steps
    total_steps = max_steps or max(1, math.floor(stage.epochs * batches_per_epoch / stage.grad_accum))
    warmup = math.ceil(stage.warmup_ratio * total_steps)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    resume_folder = folder / "checkpoints"
    start_step = 0
    metrics_path = folder / "metrics.jsonl"
    if options.resume and (latest := latest_resume_state(resume_folder)) is not None:
        start_step = load_resume_state(latest, unwrapped, optimizer, scheduler)
        if accelerator.is_main_process:
            print(f"resumed stage {stage.name} from {latest} at step {start_step}")
            _truncate_metrics(metrics_path, start_step)
    elif accelerator.is_main_process and metrics_path.exists():
        metrics_path.unlink()

    # --- the batches of each step: pure function of (seed, step) ------------------------------
    epoch_cache: dict[int, list[list[int]]] = {}

    def global_batch_at(index: int) -> list[int]:
        epoch, within = divmod(index, batches_per_epoch)
        if epoch not in epoch_cache:
            epoch_cache.clear()
            epoch_cache[epoch] = epoch_batches(dataset.lengths, dataset.has_image, global_batch, recipe.seed, epoch,
                                               stage.group_by_modality_length)
        return epoch_cache[epoch][within]

    def rank_micro_batches():
        for step in range(start_step, total_steps):
            for micro in range(stage.grad_accum):
                indices = global_batch_at(step * stage.grad_accum + micro)
                yield indices[accelerator.process_index::world] or indices[:1]

    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=list(rank_micro_batches()), num_workers=options.num_workers,
        collate_fn=partial(collate_conversations, pad_token_id=processor.tokenizer.pad_token_id),
    )
    batches = iter(loader)
    save_every = options.save_every or stage.save_every
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=start_step, desc=f"train {stage.name}",
               disable=not (options.progress and accelerator.is_main_process))
    started = time.time()
    loss_value = None
    for step in range(start_step, total_steps):
        micro_batches = [next(batches) for _ in range(stage.grad_accum)]
        # Normalise by the trained tokens of the whole global batch (all ranks, all micro-batches).
        local_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)
        global_tokens = accelerator.reduce(torch.tensor(local_tokens, device=accelerator.device), "sum").item()
        step_loss = torch.zeros((), device=accelerator.device)
        for index, batch in enumerate(micro_batches):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            labels = batch.pop("labels")
            sync = index == len(micro_batches) - 1
            context = accelerator.no_sync(model) if not sync and world > 1 else _null()
            with context, accelerator.autocast():
                logits = model(**batch, use_cache=False).logits  # (B, T, V)
                loss_sum = _ce_sum(logits, labels)
                # DDP averages gradients over ranks, hence the factor `world`.
                accelerator.backward(loss_sum * world / max(global_tokens, 1))
            step_loss += loss_sum.detach()
        grad_norm = accelerator.clip_grad_norm_([p for g in groups for p in g["params"]], stage.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = accelerator.reduce(step_loss, "sum").item() / max(global_tokens, 1)
        done = step + 1
        if accelerator.is_main_process:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            if done % stage.log_every == 0 or done == total_steps:
                record = {"step": done, "loss": round(loss_value, 6), "tokens": global_tokens,
                          "grad_norm": round(float(grad_norm), 6),
                          "lr": {g["part"]: g["lr"] for g in optimizer.param_groups},
                          "elapsed_s": round(time.time() - started, 3)}
                with open(metrics_path, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                accelerator.log({"loss": loss_value, "grad_norm": float(grad_norm)}, step=done)
        if save_every and done % save_every == 0 and done < total_steps:
            state = accelerator.get_state_dict(model)
            if accelerator.is_main_process:
                save_resume_state(resume_folder, done, state, optimizer, scheduler)
            accelerator.wait_for_everyone()
    bar.close()

    final = final_checkpoint(options.run_dir, stage.name)
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped.config.use_cache = True
        # `state` is the full state dict gathered from every rank (FSDP shards it otherwise).
        save_checkpoint(unwrapped, processor, final,
                        CheckpointInfo(template=stage.template, image_mode=recipe.image_mode, stage=stage.name,
                                       recipe=recipe.name), state_dict=state)
    accelerator.wait_for_everyone()
    return StageResult(stage.name, final, total_steps, loss_value, prepared.problems)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def train_recipe(recipe: Recipe, options: TrainOptions) -> list[StageResult]:
    """Run the recipe's stages in order; each starts from the previous stage's final checkpoint."""
    # cpu=True lets accelerate see a torchrun launch on a machine without GPUs (gloo backend).
    # Text-only batches leave the projector without gradients, hence find_unused_parameters.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=_precision(recipe.stages[0]),
                              kwargs_handlers=[ddp],
                              log_with=options.report_to or None, project_dir=str(options.run_dir))
    options.run_dir.mkdir(parents=True, exist_ok=True)
    names = [s.name for s in recipe.stages]
    wanted = options.stages or names
    for name in wanted:
        recipe.stage(name)  # raises on an unknown stage
    if accelerator.is_main_process:
        (options.run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.raw, sort_keys=False))
        data_files, folders = [], []
        for stage in recipe.stages:
            if stage.name in wanted:
                for source in _sources(recipe, stage, options):
                    data_files.append(source.file)
                    if source.image_folder:
                        folders.append(source.image_folder)
        write_provenance(options.run_dir, recipe.seed, sorted(set(data_files)), sorted(set(folders)))
    if options.report_to:
        accelerator.init_trackers(recipe.name)
    results = []
    for name in wanted:
        index = names.index(name)
        done = final_checkpoint(options.run_dir, name)
        if options.resume and (done / "config.json").is_file():
            # Final checkpoints are renamed into place whole, so one that exists is complete.
            if accelerator.is_main_process:
                print(f"stage {name}: already complete at {done}")
            results.append(StageResult(name, done, 0, None, []))
            continue
        init_from = None
        if index > 0:
            init_from = final_checkpoint(options.run_dir, names[index - 1])
            if not (init_from / "config.json").is_file():
                raise FileNotFoundError(
                    f"stage {name!r} starts from stage {names[index - 1]!r}, but {init_from} does not exist; "
                    f"run that stage first"
                )
        results.append(train_stage(recipe, recipe.stage(name), options, init_from, accelerator))
    if options.report_to:
        accelerator.end_training()
    return results
