"""FSDP2 full sharding through accelerate, on GPUs and on CPUs alike.

What shards the model. `accelerate launch --config_file configs/accelerate/fsdp.yaml` makes
accelerate build a `FullyShardedDataParallelPlugin` from that file; `crystalvlm train --fsdp` builds
the same plugin here (`shipped_fsdp_plugin`, checked field by field against the YAML by
tests/core/test_fsdp.py). Either way `Accelerator.prepare` then runs accelerate's own FSDP2 wrapping
(`fsdp2_prepare_model`): `fully_shard` on every module whose class the model names in
`_no_split_modules` (the LLM's decoder layers and the vision tower's encoder layers), on the input
embedding and on the output head with the final norm, then on the root, which keeps the projector
and whatever else is left. There is no wrapping code of crystalvlm's own: the CPU path and the GPU
path are one path.

Why a flag is needed at all. accelerate turns FSDP on only for accelerator devices: its launcher
sends a `--cpu` launch to one process, and `AcceleratorState` ignores an FSDP plugin under a
multi-process CPU launch (torchrun with the gloo backend). torch's `fully_shard` itself runs on CPU
over gloo, so `use_fsdp_on_cpu` marks the state as FSDP after accelerate has set up the process
group, and everything downstream (prepare, no_sync, clip_grad_norm_, get_state_dict) takes
accelerate's FSDP2 branches as on a GPU.

What a sharded stage saves. The final checkpoint is the full state dict gathered on rank 0 (HF
native). A resume state holds the gathered weights too, plus each rank's own shard of the AdamW
state in a file of its own (`resume_shards` below; the files: train/resume_state.py): a
parameter's moments live only on the rank that holds its shard, so rank 0's optimizer alone would
lose the others'.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from crystalvlm.train.resume_state import Shards

# The fsdp_config of configs/accelerate/fsdp.yaml, as FullyShardedDataParallelPlugin arguments.
SHIPPED_FSDP_CONFIG = {
    "fsdp_version": 2,
    "reshard_after_forward": True,  # FULL_SHARD
    "auto_wrap_policy": "transformer_based_wrap",  # the classes in the model's `_no_split_modules`
    "state_dict_type": "FULL_STATE_DICT",
    "cpu_ram_efficient_loading": False,  # every rank builds or loads the model itself
    "cpu_offload": False,  # fsdp_offload_params
    "activation_checkpointing": False,  # the stage's gradient_checkpointing is used instead
}


def shipped_fsdp_plugin() -> FullyShardedDataParallelPlugin:
    """A fresh plugin as configs/accelerate/fsdp.yaml describes it (fresh: accelerate resolves its
    wrap policy against the model it prepares, in place)."""
    return FullyShardedDataParallelPlugin(**SHIPPED_FSDP_CONFIG)


def use_fsdp_on_cpu(accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin) -> None:
    """Mark a multi-process CPU accelerator's state as FSDP with `plugin`, as accelerate does itself
    for a multi-GPU launch (see the module docstring for why it does not on CPUs): the type goes
    into both states, as accelerate writes it (each `AcceleratorState()` re-reads the process-level
    one), so a later stage's fresh state starts as FSDP too (see `restore_fsdp_plugin`)."""
    from accelerate.state import AcceleratorState, PartialState

    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        raise ValueError(f"use_fsdp_on_cpu: expected a multi-process CPU launch, got {accelerator.distributed_type}")
    _attach_plugin(accelerator, plugin)
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP


def restore_fsdp_plugin(accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin | None) -> None:
    """A fresh accelerator-level state over a launch already marked FSDP (accelerate writes FSDP into
    the process-level state after the first stage) skips accelerate's plugin set-up: give it
    `plugin`, or the one `accelerate launch` described in the environment."""
    from accelerate.state import AcceleratorState

    state = AcceleratorState()
    if accelerator.distributed_type == DistributedType.FSDP and getattr(state, "fsdp_plugin", None) is None:
        _attach_plugin(accelerator, plugin if plugin is not None else FullyShardedDataParallelPlugin())


def _attach_plugin(accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin) -> None:
    from accelerate.state import AcceleratorState

    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    AcceleratorState().fsdp_plugin = plugin


# ----------------------------------------------------------------------------- sharded optimizer state
def local_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """This rank's optimizer state with every DTensor replaced by its local shard: plain tensors
    only, so the file loads with `torch.load(weights_only=True)`. A shard of a parameter's AdamW
    moment has the shape of that parameter's local shard."""
    from torch.distributed.tensor import DTensor

    state = optimizer.state_dict()  # {"state": {index: {name: tensor}}, "param_groups": [...]}
    return {
        "state": {index: {name: value.to_local() if isinstance(value, DTensor) else value for name, value in entry.items()}
                  for index, entry in state["state"].items()},
        "param_groups": state["param_groups"],
    }


def load_local_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict, source: Path) -> None:
    """Restore what `local_optimizer_state` wrote on this rank: each local shard goes back into a
    DTensor laid out like its parameter (same mesh, placements, global shape)."""
    from torch.distributed.tensor import DTensor

    params = [p for group in optimizer.param_groups for p in group["params"]]  # the indices of `state`
    restored = {}
    for index, entry in saved["state"].items():
        param = params[int(index)]
        values = {}
        for name, value in entry.items():
            if isinstance(param, DTensor) and value.dim() > 0:
                if value.shape != param.to_local().shape:
                    raise ValueError(f"{source}: optimizer state {name!r} of parameter {index} has local shape "
                                     f"{tuple(value.shape)}, this rank's shard is {tuple(param.to_local().shape)}; "
                                     "resume with the same number of processes as the run that saved it")
                value = DTensor.from_local(value.to(param.device), param.device_mesh, param.placements,
                                           shape=param.shape, stride=param.stride())
            values[name] = value
        restored[index] = values
    optimizer.load_state_dict({"state": restored, "param_groups": saved["param_groups"]})


def load_full_model_state(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Put rank 0's full (unsharded) state dict into a sharded model: rank 0 broadcasts each tensor
    and every rank keeps its own slices. The other ranks pass an empty dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    expected = set(weights)
    result = set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                            strict=False))
    if expected:  # rank 0: the file must hold every parameter (trained or frozen) and nothing else
        missing = [name for name, _ in model.named_parameters() if name not in expected]
        if missing or result.unexpected_keys:
            raise ValueError(f"resume weights do not match the model (missing {missing[:3]}, "
                             f"unexpected {list(result.unexpected_keys)[:3]})")


def resume_shards(accelerator: Accelerator, model: torch.nn.Module, optimizer) -> Shards | None:
    """This rank's part in a sharded resume state, or None when the stage is not sharded (every rank
    then holds the whole optimizer state and the main process alone writes it)."""
    if accelerator.distributed_type != DistributedType.FSDP:
        return None
    return Shards(rank=accelerator.process_index, world=accelerator.num_processes,
                  barrier=accelerator.wait_for_everyone,
                  local_optimizer_state=lambda: local_optimizer_state(optimizer),
                  load_local_optimizer_state=lambda saved, source: load_local_optimizer_state(optimizer, saved, source),
                  load_full_weights=lambda weights: load_full_model_state(model, weights))


@contextlib.contextmanager
def plain_module_classes(model: torch.nn.Module):
    """While inside, every module `fully_shard` wrapped has its own class back.

    `fully_shard` gives each wrapped module a subclass named FSDP<Class>. transformers looks up how
    to name the saved keys by class name first, so `save_pretrained` on the wrapped model would
    write keys in another layout (still loadable, but not the one a plain run writes, which HF
    loaders outside transformers expect). The state dict saved is the gathered one, passed in."""
    from torch.distributed.fsdp import FSDPModule

    swapped = []
    for module in model.modules():
        if isinstance(module, FSDPModule):
            wrapped_class = type(module)
            module.__class__ = next(cls for cls in wrapped_class.__mro__ if not issubclass(cls, FSDPModule))
            swapped.append((module, wrapped_class))
    try:
        yield model
    finally:
        for module, wrapped_class in swapped:
            module.__class__ = wrapped_class
