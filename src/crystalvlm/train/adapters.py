"""Parameter-efficient stages: LoRA and QLoRA through PEFT, Partial LoRA through models.partial_lora.

A stage with `lora:` wraps each named part (the LLM, optionally the vision tower) in a PEFT model
in place, so the Llava model keeps its layout (`model.model.language_model` is then a PeftModel)
and the rest of the trainer (parts, freeze policy, image-path anchor, resume state) works on it
unchanged. The adapted parts train only their low-rank matrices; the projector trains fully at its
own learning rate, as in LLaVA's finetune_lora.sh (`mm_projector_lr`).

What the stage leaves in `RUN/<stage>/`:

* `merge: true` (default): `final/` is a plain HF checkpoint with the low-rank updates merged into
  the base weights (`merge_and_unload`); it loads with transformers alone.
* `merge: false`: `final/` is an adapter folder: PEFT's `save_pretrained` of each adapted part
  under `adapters/<part>/`, the fully trained parts' weights, the processor, and
  `crystalvlm_adapter.json` naming the base checkpoint; `crystalvlm merge` turns it into a plain
  checkpoint later.
* QLoRA (`quantize: 4bit`): the base is 4-bit, so merging into it would lose precision; the adapter
  folder is kept in `adapter/` and merged into the full-precision base into `final/`.
* Partial LoRA (`plora: true`): `final/` is written by `save_partial_lora` (it cannot be merged:
  its update applies only at image-token positions).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from crystalvlm.models.checkpoint import CheckpointInfo, load_checkpoint, read_sidecar, save_checkpoint, write_sidecar
from crystalvlm.train.recipe import LoraSettings, Recipe

ADAPTER_MANIFEST = "crystalvlm_adapter.json"
TRAINED_PARTS_FILE = "trained_parts.safetensors"  # fully trained parts (the projector), plain Llava keys


class AdapterError(ValueError):
    """A LoRA setting that cannot work here (unknown target module, QLoRA without a GPU, ...)."""


# ----------------------------------------------------------------------------- parts and targets
def adapted_part(model, part: str) -> torch.nn.Module:
    """The module an adapter part names, inside a LlavaForConditionalGeneration."""
    return {"llm": model.model.language_model, "vision": model.model.vision_tower}[part]


def _replace_part(model, part: str, module: torch.nn.Module) -> None:
    setattr(model.model, {"llm": "language_model", "vision": "vision_tower"}[part], module)


def linear_layer_names(module: torch.nn.Module) -> list[str]:
    """LLaVA's find_all_linear_names: the last name of every nn.Linear (q_proj, fc1, ...). The
    lm_head sits outside the LLM part (on the Llava model), so it is never a target."""
    return sorted({name.rsplit(".", 1)[-1] for name, child in module.named_modules()
                   if isinstance(child, torch.nn.Linear)})


def target_modules(model, settings: LoraSettings) -> dict[str, list[str]]:
    """The target names per adapted part. Each name the recipe gives must exist in some part, and
    each part must hold some target; otherwise an error names the culprit and what exists."""
    targets = {}
    for part in settings.parts:
        available = linear_layer_names(adapted_part(model, part))
        if settings.target_modules is None:
            targets[part] = available
        else:
            targets[part] = [name for name in settings.target_modules if name in available]
    if settings.target_modules is not None:
        everywhere = {name for part in settings.parts for name in linear_layer_names(adapted_part(model, part))}
        for name in settings.target_modules:
            if name not in everywhere:
                raise AdapterError(f"lora.target_modules: no Linear layer {name!r} in the "
                                   f"{' or '.join(settings.parts)}; Linear layers there: {', '.join(sorted(everywhere)[:12])}")
        for part, names in targets.items():
            if not names:
                raise AdapterError(f"lora.target_modules {settings.target_modules} match nothing in the {part}; "
                                   f"its Linear layers: {', '.join(linear_layer_names(adapted_part(model, part))[:12])}")
    return targets


# ----------------------------------------------------------------------------- checks before any work
def refuse_impossible_adapters(recipe: Recipe, stage_names: list[str] | None = None) -> None:
    """Raise AdapterError for a stage whose adapters cannot run on this machine: called before any
    world preparation, model loading or data checking."""
    for stage in recipe.stages:
        if stage.lora is None or (stage_names is not None and stage.name not in stage_names):
            continue
        if stage.lora.quantize:
            if not torch.cuda.is_available():
                raise AdapterError(f"stage {stage.name!r}: lora.quantize={stage.lora.quantize} (QLoRA) loads the base "
                                   "in 4-bit with bitsandbytes, which needs a CUDA GPU; this machine has none "
                                   "(drop lora.quantize to train plain LoRA)")
            if importlib.util.find_spec("bitsandbytes") is None:
                raise AdapterError(f"stage {stage.name!r}: lora.quantize={stage.lora.quantize} (QLoRA) needs "
                                   "bitsandbytes (pip install bitsandbytes)")


# ----------------------------------------------------------------------------- the adapters step
@dataclass
class StageAdapters:
    """What the adapters step did to the model, for the freeze and save steps."""

    settings: LoraSettings
    trainable: dict[str, list[torch.nn.Parameter]]  # part -> its adapter parameters (the only ones that train)
    base: Path | None  # the checkpoint the stage started from: kept adapters and QLoRA merge into it

    def restrict(self, groups: list[dict]) -> list[dict]:
        """The freeze policy's groups with each adapted part reduced to its adapter parameters."""
        restricted = []
        for group in groups:
            if group["part"] in self.trainable:
                adapter_ids = {id(p) for p in self.trainable[group["part"]]}
                for parameter in group["params"]:
                    parameter.requires_grad_(id(parameter) in adapter_ids)
                group = {**group, "params": [p for p in group["params"] if id(p) in adapter_ids]}
            restricted.append(group)
        return restricted


def _quantized_reload(base: Path, settings: LoraSettings, device: torch.device, gradient_checkpointing: bool):
    """The base checkpoint with the adapted parts' Linear layers in 4-bit NF4 (QLoRA: double
    quantisation, bf16 compute); the projector, lm_head and unadapted parts stay full precision."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    keep_full = ["multi_modal_projector", "lm_head"] + (["vision_tower"] if "vision" not in settings.parts else [])
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=keep_full)
    model = AutoModelForImageTextToText.from_pretrained(base, quantization_config=quantization, dtype=torch.bfloat16,
                                                        device_map={"": device})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def add_adapters(model, settings: LoraSettings, stage_folder: Path, init_from: Path | None, processor,
                 info: CheckpointInfo, device: torch.device, gradient_checkpointing: bool = False):
    """(model, StageAdapters): the model with adapters on `settings.parts`. Target modules are
    checked first, so a typo fails before any data is read."""
    targets = target_modules(model, settings)
    base = init_from.resolve() if init_from is not None else None
    if base is None and (settings.quantize or not settings.merge):
        # A first stage starts from freshly composed parts: keep them, since the adapters refer to them.
        from accelerate import PartialState

        base = (stage_folder / "base").resolve()
        if PartialState().is_main_process:  # every rank composed the same parts (same seed)
            save_checkpoint(model, processor, base, info)
        PartialState().wait_for_everyone()
    if settings.quantize:
        model = _quantized_reload(base, settings, device, gradient_checkpointing)
        targets = target_modules(model, settings)  # bnb's Linear4bit is an nn.Linear
    if settings.plora:
        from crystalvlm.models.partial_lora import add_partial_lora

        parameters = add_partial_lora(model, r=settings.r, alpha=settings.alpha, dropout=settings.dropout,
                                      target_modules=settings.target_modules)
        return model, StageAdapters(settings, {"llm": list(parameters)}, base)
    from peft import LoraConfig, get_peft_model

    trainable = {}
    for part, names in targets.items():
        config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=names,
                            bias="none")
        wrapped = get_peft_model(adapted_part(model, part), config)
        _replace_part(model, part, wrapped)
        trainable[part] = [p for name, p in wrapped.named_parameters() if "lora_" in name]
    return model, StageAdapters(settings, trainable, base)


# ----------------------------------------------------------------------------- saving and merging
def _peft_parts(model) -> dict[str, torch.nn.Module]:
    from peft import PeftModel

    return {part: adapted_part(model, part) for part in ("llm", "vision")
            if isinstance(adapted_part(model, part), PeftModel)}


def merge_in_place(model) -> None:
    """Fold every PEFT adapter into its base weights and drop the wrappers: W <- W + (alpha/r) B A."""
    for part, wrapped in _peft_parts(model).items():
        _replace_part(model, part, wrapped.merge_and_unload())


def _rename_into_place(staging: Path, folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)
    return folder


def save_adapter_folder(model, processor, folder: Path, adapters: StageAdapters, tunable: list[str],
                        info: CheckpointInfo) -> Path:
    """PEFT adapters per part, the fully trained parts' weights and the processor, renamed into place."""
    from safetensors.torch import save_file

    from crystalvlm.train.freeze import model_parts

    staging = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for part, wrapped in _peft_parts(model).items():
        wrapped.save_pretrained(staging / "adapters" / part)
    fully_trained = [part for part in tunable if part not in adapters.trainable]
    wanted = {id(p) for part in fully_trained for p in model_parts(model)[part]}
    weights = {name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if id(p) in wanted}
    save_file(weights, str(staging / TRAINED_PARTS_FILE))
    processor.save_pretrained(staging)
    write_sidecar(staging, info)
    manifest = {"base": str(adapters.base), "parts": sorted(adapters.trainable), "fully_trained": fully_trained,
                "r": adapters.settings.r, "alpha": adapters.settings.alpha, "quantize": adapters.settings.quantize}
    (staging / ADAPTER_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return _rename_into_place(staging, folder)


def is_adapter_folder(folder: Path) -> bool:
    return (Path(folder) / ADAPTER_MANIFEST).is_file()


def merge_adapter(folder: Path, out: Path) -> Path:
    """A plain HF checkpoint at `out` from an adapter folder and the base checkpoint it names. The
    base is loaded in fp32 (never 4-bit), so QLoRA's update lands on full-precision weights."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoProcessor

    folder, out = Path(folder), Path(out)
    if not is_adapter_folder(folder):
        raise FileNotFoundError(f"{folder} is not an adapter folder (no {ADAPTER_MANIFEST}); "
                                "it is written by a stage with lora.merge: false")
    if out.exists():
        raise FileExistsError(f"{out} exists; refusing to overwrite it (choose another --out)")
    manifest = json.loads((folder / ADAPTER_MANIFEST).read_text())
    base = Path(manifest["base"])
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"the base checkpoint of {folder} is missing: {base} (the adapters are deltas to it); "
                                "nothing was written")
    model, _, _ = load_checkpoint(base)
    for part in manifest["parts"]:
        wrapped = PeftModel.from_pretrained(adapted_part(model, part), folder / "adapters" / part)
        _replace_part(model, part, wrapped.merge_and_unload())
    trained = load_file(str(folder / TRAINED_PARTS_FILE))
    _, unexpected = model.load_state_dict(trained, strict=False)
    if unexpected:
        raise ValueError(f"{folder / TRAINED_PARTS_FILE} does not match the base model (unexpected {unexpected[:3]})")
    model.config.use_cache = True
    return save_checkpoint(model, AutoProcessor.from_pretrained(folder), out, read_sidecar(folder))


def save_stage_final(model, processor, final: Path, adapters: StageAdapters, tunable: list[str],
                     info: CheckpointInfo, say) -> Path:
    """The stage's final output with adapters (see the module docstring for which form)."""
    settings = adapters.settings
    if settings.plora:
        from crystalvlm.models.partial_lora import save_partial_lora

        say("lora.plora: Partial LoRA applies its update only at image-token positions, so it cannot be merged "
            f"into the base weights; {final} is a Partial LoRA checkpoint (load it with load_partial_lora)")
        # It writes the processor (with the stage's chat template) and the sidecar, staged and renamed whole.
        save_partial_lora(model, final, processor=processor, info=info)
        return final
    if settings.quantize and settings.merge:
        kept = save_adapter_folder(model, processor, final.with_name("adapter"), adapters, tunable, info)
        shutil.rmtree(final, ignore_errors=True)
        say(f"lora.quantize: adapters kept in {kept}, merged into the full-precision base {adapters.base}")
        return merge_adapter(kept, final)
    if not settings.merge:
        say(f"lora.merge: false: {final} holds the adapters; `crystalvlm merge {final} --out DST` merges them")
        return save_adapter_folder(model, processor, final, adapters, tunable, info)
    merge_in_place(model)
    model.config.use_cache = True
    return save_checkpoint(model, processor, final, info)
