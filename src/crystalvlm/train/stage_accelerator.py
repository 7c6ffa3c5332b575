"""One accelerate `Accelerator` per stage, so each stage runs in its own precision.

accelerate keeps mixed precision in a process-wide singleton (`AcceleratorState`) and refuses a
second Accelerator with another precision. A recipe may align in fp32 and fine-tune in bf16, so
before a stage whose precision differs from the current state's, the accelerator-level state is
cleared. The process-level state (`PartialState`: process group, device, rank) is kept, so a
torchrun launch stays one process group across stages.

DDP and unused parameters. Every micro-batch reaches every trained projector parameter (a
text-only one through `image_path_anchor`), and a decoder LLM uses all of its parameters, so DDP
needs no search for unused parameters, which would walk the whole autograd graph every step. A
trained vision tower is the exception: Llava takes image features from an inner layer
(`vision_feature_layer`, -2 by default), so the tower's last layer and post-layernorm never reach
the loss. Only a stage that trains the tower asks DDP to look for unused parameters.

FSDP. Under `accelerate launch --config_file configs/accelerate/fsdp.yaml` accelerate builds the FSDP
plugin itself. With `fsdp=True` (`crystalvlm train --fsdp`) the stage's Accelerator gets the same
plugin (train/fsdp.py), which also shards a torchrun launch on CPUs; a launch of one process has
nothing to shard over and trains unsharded, as it says.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs

from crystalvlm.train.fsdp import restore_fsdp_plugin, shipped_fsdp_plugin, use_fsdp_on_cpu
from crystalvlm.train.recipe import StageConfig


def stage_precision(stage: StageConfig) -> str:
    """accelerate's mixed-precision name for the stage: no, bf16 or fp16."""
    if stage.precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return {"fp32": "no"}.get(stage.precision, stage.precision)


def needs_unused_parameter_search(stage: StageConfig) -> bool:
    return "vision" in stage.tunable


def stage_accelerator(stage: StageConfig, log_with: list[str], project_dir: str, fsdp: bool = False) -> Accelerator:
    precision = stage_precision(stage)
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if PartialState().distributed_type == DistributedType.DEEPSPEED and stage.grad_accum > 1:
        # DeepSpeed accumulates (and rescales the loss) itself, which the trainer's exact per-token
        # normalisation over the global batch does not expect.
        raise ValueError(f"stage {stage.name!r}: grad_accum {stage.grad_accum} under DeepSpeed; set grad_accum: 1 "
                         "(raise batch_size or the GPU count), or launch with configs/accelerate/fsdp.yaml")
    distributed = PartialState().distributed_type
    if fsdp and distributed == DistributedType.DEEPSPEED:
        raise ValueError("--fsdp under a DeepSpeed launch: use one of them (drop --fsdp, or launch without "
                         "configs/accelerate/zero3.yaml)")
    plugin = shipped_fsdp_plugin() if fsdp and distributed != DistributedType.NO else None
    ddp = DistributedDataParallelKwargs(find_unused_parameters=needs_unused_parameter_search(stage))
    # cpu=True lets accelerate see a torchrun launch on a machine without GPUs (gloo backend).
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision, kwargs_handlers=[ddp],
                              log_with=log_with or None, project_dir=project_dir, fsdp_plugin=plugin)
    if plugin is not None and accelerator.distributed_type == DistributedType.MULTI_CPU:
        use_fsdp_on_cpu(accelerator, plugin)
    restore_fsdp_plugin(accelerator, plugin)
    return accelerator
