"""Partial LoRA (PLoRA, InternLM-XComposer2): low-rank updates applied only at image-token positions.

The language model's Linear layers are wrapped so that

    out[b, t] = base(x[b, t]) + scaling * B(A(dropout(x[b, t])))   where position (b, t) holds an image feature
    out[b, t] = base(x[b, t])                                       everywhere else (bitwise: torch.where picks it)

so text positions see the frozen base weights exactly, while the model learns to read images. Text
positions still *attend* to image positions, so their outputs change after an image, as they should.

Own layer, not PEFT: PEFT has no per-position mask (aLoRA masks only a suffix), a `LoraConfig._register_custom_module` layer would be all ours anyway, and its adapter would reload in plain PEFT as ordinary LoRA applied at every position.

Where the mask comes from. `LlavaModel.get_placeholder_mask` is the one place transformers decides
which positions get image features (from `input_ids == config.image_token_id`, or for an
`inputs_embeds` call by comparing embeddings with the image token's). We wrap that method on the
instance to record its answer, and a forward pre-hook on the LlavaModel clears the record at each
call. Hence:

* prefill of a generation: the image positions of the prompt get the update;
* decoding steps with a KV cache: no image features are scattered, so no mask and no update (new
  tokens are text); their keys/values of earlier image positions come from the cache, computed with it;
* text-only calls (no pixel_values): no mask, the model is exactly the base model;
* `inputs_embeds` calls with images: HF's own embedding-comparison rule finds the positions;
  `inputs_embeds` without images: no mask, no update.

The mask stays recorded after a forward until the next one, so gradient checkpointing's
recomputation during backward sees it. Calling `model.model.language_model` directly (bypassing
LlavaModel) after an image forward is therefore not supported: a layer refuses a mask whose shape
does not match its input, but cannot tell a stale mask of the same shape.

Freezing the base weights is the caller's freeze policy; `add_partial_lora` only adds parameters.

Checkpoint: a normal checkpoint folder (base weights, processor, sidecar) plus `partial_lora.json`
(format version, r, alpha, dropout, wrapped module names) and `partial_lora.safetensors` (A and B).
PLoRA cannot be merged into plain weights, since the update depends on position. A plain
`from_pretrained` of the folder gives the base model only; its config says so
(`crystalvlm_partial_lora`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from crystalvlm.models.checkpoint import CheckpointInfo, load_checkpoint, read_sidecar, save_checkpoint

PARTIAL_LORA_CONFIG = "partial_lora.json"
PARTIAL_LORA_WEIGHTS = "partial_lora.safetensors"
FORMAT_VERSION = 1


class ImagePositions:
    """Shared between the wrapped layers of one model: which positions hold image features.

    `mask` is a bool tensor (B, T), or None when the current forward scatters no image features.
    """

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None


class PartialLoraLinear(nn.Module):
    """A frozen-base Linear plus a LoRA update that applies only where `positions.mask` is True."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float, positions: ImagePositions) -> None:
        super().__init__()
        self.base_layer = base_layer
        weight = base_layer.weight
        # A: (r, in_features), B: (out_features, r); B = 0 so the wrapped layer starts as the base.
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, device=weight.device, dtype=weight.dtype)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, device=weight.device, dtype=weight.dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as PEFT and the LoRA paper's code
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / r
        # A plain attribute, not a submodule: the context is shared by every wrapped layer.
        self.__dict__["positions"] = positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, in_features)
        result = self.base_layer(x)  # (B, T, out_features)
        mask = self.positions.mask
        if mask is None:
            return result
        if mask.shape != x.shape[:-1]:
            raise RuntimeError(
                f"Partial LoRA: image-position mask of shape {tuple(mask.shape)} does not match this layer's input "
                f"{tuple(x.shape)}; call the model through LlavaForConditionalGeneration / LlavaModel, not its "
                f"language model directly")
        update = self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling  # (B, T, out_features)
        # torch.where, not result + update * mask: text positions get the base output bit for bit
        # (even where the update is inf/nan), and gradients reach A/B only through image positions.
        mask = mask.to(result.device)  # a no-op unless the model is split over devices
        return torch.where(mask.unsqueeze(-1), result + update.to(result.dtype), result)


@dataclass
class PartialLoraState:
    """What `add_partial_lora` attached to a model (kept on it as `model._partial_lora`)."""

    r: int
    alpha: float
    dropout: float
    module_names: list[str]  # wrapped layers, relative to the top model ("model.language_model.layers.0.self_attn.q_proj")
    positions: ImagePositions = field(default_factory=ImagePositions)
    hook_handles: list = field(default_factory=list)


def _language_model(model) -> nn.Module:
    try:
        return model.model.language_model
    except AttributeError:
        raise TypeError(f"Partial LoRA needs a LlavaForConditionalGeneration (model.model.language_model); "
                        f"got {type(model).__name__}") from None


LANGUAGE_MODEL_PREFIX = "model.language_model."


def _resolve_targets(model, target_modules: list[str] | None) -> list[str]:
    """Full module names of the Linear layers to wrap. A target is a module-name suffix (PEFT's rule:
    "q_proj" matches "...self_attn.q_proj") inside the language model; lm_head is outside it."""
    linear_names = [LANGUAGE_MODEL_PREFIX + name for name, module in _language_model(model).named_modules()
                    if isinstance(module, nn.Linear)]
    if target_modules is None:
        if not linear_names:
            raise ValueError("Partial LoRA: the language model has no nn.Linear layers to wrap")
        return linear_names
    if isinstance(target_modules, str) or not target_modules:
        raise ValueError(f"Partial LoRA: target_modules must be a non-empty list of module names, got {target_modules!r}")
    chosen = []
    available = sorted({name.rsplit(".", 1)[-1] for name in linear_names})
    for target in target_modules:
        matches = [name for name in linear_names if name == LANGUAGE_MODEL_PREFIX + target or name.endswith("." + target)]
        if not matches:
            raise ValueError(f"Partial LoRA: target module {target!r} matches no nn.Linear of the language model; "
                             f"its Linear layers are named {available}")
        chosen += [name for name in matches if name not in chosen]
    return chosen


class _ImagePositionRecorder:
    """Stands in for `LlavaModel.get_placeholder_mask` (on the instance) and records its answer.

    An object, not a closure: `copy.deepcopy` of the model (a reference model, say) then gives the
    copy a recorder bound to the copy's LlavaModel and positions, not to the original's.
    """

    def __init__(self, original_placeholder_mask, positions: ImagePositions) -> None:
        self.original_placeholder_mask = original_placeholder_mask  # the bound method of the LlavaModel
        self.positions = positions

    def __call__(self, input_ids, inputs_embeds, image_features):
        special_image_mask = self.original_placeholder_mask(input_ids, inputs_embeds=inputs_embeds,
                                                            image_features=image_features)
        self.positions.mask = special_image_mask.squeeze(-1)  # (B, T, 1) -> (B, T)
        return special_image_mask

    def clear(self, module, args, kwargs) -> None:
        """Forward pre-hook of the LlavaModel: no image positions unless this call scatters features."""
        self.positions.mask = None


def _wrap(model, module_names: list[str], r: int, alpha: float, dropout: float) -> PartialLoraState:
    if getattr(model, "_partial_lora", None) is not None:
        raise ValueError("Partial LoRA: this model already has Partial LoRA layers")
    if r <= 0:
        raise ValueError(f"Partial LoRA: rank r must be positive, got {r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"Partial LoRA: dropout must be in [0, 1), got {dropout}")
    llava_model = model.model
    if not hasattr(llava_model, "get_placeholder_mask"):
        raise TypeError("Partial LoRA: this transformers version's LlavaModel has no get_placeholder_mask, "
                        "which decides the image positions")
    state = PartialLoraState(r=r, alpha=float(alpha), dropout=float(dropout), module_names=list(module_names))
    for name in module_names:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base_layer = getattr(parent, child_name)
        if not isinstance(base_layer, nn.Linear):
            raise ValueError(f"Partial LoRA: {name} is a {type(base_layer).__name__}, not an nn.Linear")
        setattr(parent, child_name, PartialLoraLinear(base_layer, r, alpha, dropout, state.positions))

    recorder = _ImagePositionRecorder(llava_model.get_placeholder_mask, state.positions)
    llava_model.get_placeholder_mask = recorder
    state.hook_handles.append(llava_model.register_forward_pre_hook(recorder.clear, with_kwargs=True))
    model._partial_lora = state
    return state


def add_partial_lora(model, r: int, alpha: float, dropout: float, target_modules: list[str] | None) -> list[nn.Parameter]:
    """Wrap the LLM's target Linear layers in place (default: every nn.Linear of the language model;
    lm_head is not part of it) and return the new trainable parameters (every A and B)."""
    state = _wrap(model, _resolve_targets(model, target_modules), r, alpha, dropout)
    return partial_lora_parameters(model, state)


def partial_lora_parameters(model, state: PartialLoraState | None = None) -> list[nn.Parameter]:
    state = state or model._partial_lora
    parameters = []
    for name in state.module_names:
        layer = model.get_submodule(name)
        parameters += [layer.lora_A.weight, layer.lora_B.weight]
    return parameters


def _lora_state_dict(model, state: PartialLoraState) -> dict[str, torch.Tensor]:
    tensors = {}
    for name in state.module_names:
        layer = model.get_submodule(name)
        tensors[f"{name}.lora_A.weight"] = layer.lora_A.weight.detach().contiguous().cpu()
        tensors[f"{name}.lora_B.weight"] = layer.lora_B.weight.detach().contiguous().cpu()
    return tensors


def _split_state_dict(state_dict: dict[str, torch.Tensor], state: PartialLoraState):
    """A wrapped model's state dict -> (the plain model's, with `.base_layer.` names undone; the A/B tensors)."""
    lora_keys = {f"{name}.lora_{part}.weight" for name in state.module_names for part in "AB"}
    missing = sorted(lora_keys - set(state_dict))
    if missing:
        raise ValueError(f"save_partial_lora: the state dict lacks Partial LoRA tensors, e.g. {missing[:3]}")
    lora_state = {key: state_dict[key].detach().contiguous().cpu() for key in sorted(lora_keys)}
    base_state = {key.replace(".base_layer.", "."): tensor for key, tensor in state_dict.items() if key not in lora_keys}
    return base_state, lora_state


class _BaseLayersInPlace:
    """Temporarily puts the base Linear layers back, so transformers saves a plain Llava model with
    its own parameter names (no `.base_layer.`, no lora tensors)."""

    def __init__(self, model, state: PartialLoraState) -> None:
        self.model, self.state, self.wrappers = model, state, {}

    def __enter__(self):
        # Hidden too, so save_checkpoint (which refuses a model with PLoRA layers) sees a plain model.
        del self.model._partial_lora
        for name in self.state.module_names:
            parent_name, _, child_name = name.rpartition(".")
            parent = self.model.get_submodule(parent_name)
            self.wrappers[name] = getattr(parent, child_name)
            setattr(parent, child_name, self.wrappers[name].base_layer)
        return self

    def __exit__(self, *exc):
        for name, wrapper in self.wrappers.items():
            parent_name, _, child_name = name.rpartition(".")
            setattr(self.model.get_submodule(parent_name), child_name, wrapper)
        self.model._partial_lora = self.state
        return False


def save_partial_lora(model, folder: Path, processor=None, info: CheckpointInfo | None = None,
                      state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write a checkpoint folder that `load_partial_lora` reloads: the base model as a normal checkpoint,
    plus partial_lora.json and partial_lora.safetensors. Written whole into a staging folder and
    renamed into place, so a killed writer leaves no half PLoRA checkpoint.

    `processor` defaults to the one of the checkpoint the model was loaded from (model.name_or_path);
    `info` (template, image mode, stage) defaults to that checkpoint's sidecar. `state_dict` is the
    wrapped model's full state dict where the parameters live elsewhere (gathered from FSDP ranks,
    `accelerator.get_state_dict`); by default the model's own tensors are saved.
    """
    from safetensors.torch import save_file

    state = getattr(model, "_partial_lora", None)
    if state is None:
        raise ValueError("save_partial_lora: this model has no Partial LoRA layers (call add_partial_lora first)")
    source = Path(str(getattr(model, "name_or_path", "") or ""))
    if processor is None:
        if not (source / "preprocessor_config.json").is_file() and not (source / "processor_config.json").is_file():
            raise ValueError("save_partial_lora: pass processor=...; the model was not loaded from a checkpoint "
                             f"folder holding one (name_or_path={str(source)!r})")
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(source)
    if info is None:
        info = read_sidecar(source) if source.is_dir() else CheckpointInfo()

    folder = Path(folder)
    staging = folder.with_name(folder.name + f".plora-tmp-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    settings = {"format_version": FORMAT_VERSION, "r": state.r, "alpha": state.alpha, "dropout": state.dropout,
                "module_names": state.module_names}
    config = model.config
    # The config says the folder is more than its native weights (a plain from_pretrained gives the base).
    config.crystalvlm_partial_lora = PARTIAL_LORA_CONFIG
    base_state, lora_state = (None, _lora_state_dict(model, state)) if state_dict is None else _split_state_dict(state_dict, state)
    try:
        with _BaseLayersInPlace(model, state):
            save_checkpoint(model, processor, staging, info, state_dict=base_state)
    finally:
        del config.crystalvlm_partial_lora
    save_file(lora_state, str(staging / PARTIAL_LORA_WEIGHTS), metadata={"format": "pt"})
    (staging / PARTIAL_LORA_CONFIG).write_text(json.dumps(settings, indent=2) + "\n")
    for name in (PARTIAL_LORA_WEIGHTS, PARTIAL_LORA_CONFIG):
        with open(staging / name, "rb") as handle:
            os.fsync(handle.fileno())
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)


def load_partial_lora(folder: Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    """(model, processor) from a folder written by `save_partial_lora`: the base checkpoint, re-wrapped,
    with the saved A and B loaded (every tensor must be present, none extra). The model is in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    missing = [name for name in (PARTIAL_LORA_CONFIG, PARTIAL_LORA_WEIGHTS) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a Partial LoRA checkpoint: it lacks {', '.join(missing)} "
                                f"(write one with save_partial_lora)")
    settings = json.loads((folder / PARTIAL_LORA_CONFIG).read_text())
    if settings.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{folder / PARTIAL_LORA_CONFIG}: format version {settings.get('format_version')!r} is not "
                         f"the one this crystalvlm reads ({FORMAT_VERSION})")
    model, processor, _ = load_checkpoint(folder, dtype=dtype, device="cpu", with_partial_lora=False)
    if hasattr(model.config, "crystalvlm_partial_lora"):
        del model.config.crystalvlm_partial_lora  # written back by save_partial_lora only
    state = _wrap(model, settings["module_names"], int(settings["r"]), float(settings["alpha"]), float(settings["dropout"]))
    saved = load_file(str(folder / PARTIAL_LORA_WEIGHTS))
    expected = _lora_state_dict(model, state)
    if set(saved) != set(expected):
        raise ValueError(f"{folder / PARTIAL_LORA_WEIGHTS} does not match {PARTIAL_LORA_CONFIG}: missing "
                         f"{sorted(set(expected) - set(saved))[:3]}, unexpected {sorted(set(saved) - set(expected))[:3]}")
    with torch.no_grad():
        for key, tensor in saved.items():
            parameter = model.get_parameter(key)
            if parameter.shape != tensor.shape:
                raise ValueError(f"{folder / PARTIAL_LORA_WEIGHTS}: {key} has shape {tuple(tensor.shape)}, "
                                 f"the model expects {tuple(parameter.shape)}")
            parameter.copy_(tensor)
    model.to(device).eval()
    return model, processor
