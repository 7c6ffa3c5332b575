"""Recipes are data: a YAML file names the model parts, the datasets and each stage.

Every stage field is checked against `StageConfig`; an unknown key is an error rather than a
silently ignored typo. `--set a.b.c=value` overrides any field (value parsed as YAML). Strings may
use `${run_dir}` and `${world}` (the folder of the synthetic world, for the tiny recipe).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

PARTS = ("vision", "projector", "llm")
ADAPTER_PARTS = ("llm", "vision")  # the projector always trains fully, as in LLaVA's LoRA scripts
QUANTIZE = (None, "4bit")  # QLoRA: the frozen base in 4-bit NF4 (bitsandbytes, GPUs only)
STAGE_KINDS = ("sft", "dpo")  # next-token training on conversations; preference optimisation on pairs
LOSSES = ("full", "chunked")  # an sft stage's cross entropy: over full logits, or chunked over trained positions


@dataclass
class LoraSettings:
    """A stage's low-rank adapters (PEFT). Defaults follow LLaVA's finetune_lora.sh: r 128,
    alpha 2*r, dropout 0.05, every Linear layer of the LLM. The parts named here must be tunable;
    they train through adapters only (at the stage's lr for that part), while the other tunable
    parts (the projector) train fully at their own lr (LLaVA's mm_projector_lr)."""

    r: int = 128
    alpha: float | None = None  # None: 2 * r
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: every nn.Linear inside the parts (lm_head is outside the LLM part)
    parts: list[str] = field(default_factory=lambda: ["llm"])
    merge: bool = True  # the stage's final is a plain HF checkpoint; false keeps the adapter folder
    plora: bool = False  # Partial LoRA: the update only at image-token positions (never mergeable)
    quantize: str | None = None  # "4bit": QLoRA

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r must be at least 1, got {self.r}")
        self.alpha = float(2 * self.r if self.alpha is None else self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        unknown = set(self.parts) - set(ADAPTER_PARTS)
        if unknown or not self.parts:
            raise ValueError(f"lora.parts {sorted(unknown) or '[]'}: adapters go on {list(ADAPTER_PARTS)} "
                             "(the projector trains fully)")
        if self.quantize not in QUANTIZE:
            raise ValueError(f"lora.quantize must be 4bit or absent, got {self.quantize!r}")
        if self.plora and self.parts != ["llm"]:
            raise ValueError("lora.plora (Partial LoRA) adapts the LLM only: parts must be [llm]")
        if self.plora and self.quantize:
            raise ValueError("lora.plora and lora.quantize cannot be combined")
        if self.target_modules is not None:
            self.target_modules = [str(name) for name in self.target_modules]


@dataclass
class StageConfig:
    name: str
    template: str
    data: list[str]
    tunable: list[str]
    lr: dict[str, float]
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 16  # per device
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 2048
    precision: str = "auto"  # auto: bf16 on GPUs that support it, fp32 on CPU
    gradient_checkpointing: bool = False
    group_by_modality_length: bool = True
    save_every: int | None = None
    log_every: int = 1
    lora: LoraSettings | None = None  # None: every tunable part trains fully
    save_dtype: str = "auto"  # the final checkpoint's dtype; auto: the training (compute) dtype
    memory_check: bool = True  # refuse a launch whose estimated memory per GPU exceeds the GPU's
    # A full LLaVA model to start from (a checkpoint folder or a Hub id in the HF cache) instead of the
    # recipe's parts (a first stage) or the previous stage's final checkpoint (a later stage).
    init_from: str | None = None
    # sft: next-token loss on conversations. dpo: direct preference optimisation on pairs (TRL's vision
    # DPO layout) against a frozen reference, the model the stage starts from; `beta` scales the margin.
    kind: str = "sft"
    beta: float = 0.1
    # dpo: weight of an SFT term on the chosen answers (their token-mean NLL) added to the DPO loss,
    # TRL's `rpo_alpha`; None: DPO alone.
    rpo_alpha: float | None = None
    # sft: several samples per row (attention kept inside each sample, positions restarting per sample)
    # instead of one padded row per sample; the same samples per step, so the same loss (data.packing).
    packing: bool = False
    # sft: "full" projects every position onto the vocabulary; "chunked" runs the LM head and cross
    # entropy over the trained positions only, `loss_chunk_size` positions at a time (train/chunked_loss.py).
    loss: str = "full"
    loss_chunk_size: int = 1024
    # sft: every record's token ids and labels kept in memory once encoded (~8 bytes a token), so an
    # epoch after the first does not tokenise again; the samples are the same (data.dataset).
    keep_encodings: bool = False

    def __post_init__(self) -> None:
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"stage {self.name!r}: kind must be one of {', '.join(STAGE_KINDS)}, got {self.kind!r}")
        if not isinstance(self.beta, (int, float)) or isinstance(self.beta, bool) or self.beta <= 0:
            raise ValueError(f"stage {self.name!r}: beta must be a positive number, got {self.beta!r}")
        self.beta = float(self.beta)
        if self.rpo_alpha is not None:
            if not isinstance(self.rpo_alpha, (int, float)) or isinstance(self.rpo_alpha, bool) or self.rpo_alpha < 0:
                raise ValueError(f"stage {self.name!r}: rpo_alpha must be a number >= 0 or absent, got {self.rpo_alpha!r}")
            self.rpo_alpha = float(self.rpo_alpha)
            if self.kind != "dpo":
                raise ValueError(f"stage {self.name!r}: rpo_alpha applies to dpo stages only")
        if self.loss not in LOSSES:
            raise ValueError(f"stage {self.name!r}: loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not isinstance(self.loss_chunk_size, int) or isinstance(self.loss_chunk_size, bool) or self.loss_chunk_size < 1:
            raise ValueError(f"stage {self.name!r}: loss_chunk_size must be a positive integer, got {self.loss_chunk_size!r}")
        if self.kind == "dpo" and (self.packing or self.loss != "full"):
            raise ValueError(f"stage {self.name!r}: packing and loss: chunked apply to sft stages; a dpo stage "
                             "scores whole chosen/rejected pairs")
        unknown = set(self.tunable) - set(PARTS)
        if unknown:
            raise ValueError(f"stage {self.name!r}: unknown tunable parts {sorted(unknown)}; parts are {PARTS}")
        missing = set(self.tunable) - set(self.lr)
        if missing:
            raise ValueError(f"stage {self.name!r}: no learning rate for tunable parts {sorted(missing)}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"stage {self.name!r}: precision must be auto, bf16, fp16 or fp32")
        self.lr = {part: float(value) for part, value in self.lr.items()}
        if self.save_dtype not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"stage {self.name!r}: save_dtype must be auto, bf16, fp16 or fp32")
        if isinstance(self.lora, dict):
            unknown = set(self.lora) - {f.name for f in fields(LoraSettings)}
            if unknown:
                raise ValueError(f"stage {self.name!r}: unknown lora keys {sorted(unknown)}; "
                                 f"known: {sorted(f.name for f in fields(LoraSettings))}")
            self.lora = LoraSettings(**self.lora)
        if self.lora is not None:
            untrained = set(self.lora.parts) - set(self.tunable)
            if untrained:
                raise ValueError(f"stage {self.name!r}: lora.parts {sorted(untrained)} are not tunable; "
                                 "add them to tunable (with a learning rate) to train them through adapters")


@dataclass
class Recipe:
    name: str
    seed: int
    model: dict[str, Any]
    image_mode: str
    datasets: dict[str, dict[str, str]]
    stages: list[StageConfig]
    prepare: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str) -> StageConfig:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"recipe {self.name!r} has no stage {name!r}; stages: {[s.name for s in self.stages]}")


def shipped_recipes() -> list[str]:
    folder = resources.files("crystalvlm") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


class RecipeError(ValueError):
    """A recipe that cannot be used: unknown name, unreadable file, bad key or value."""


def read_recipe(name_or_path: str) -> dict[str, Any]:
    """The raw YAML mapping of a shipped recipe (by name) or of a recipe file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise RecipeError(f"recipe file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise RecipeError(f"cannot read recipe {path}: {str(error).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise RecipeError(f"{path} is not a recipe: a recipe is a YAML mapping with 'model' and 'stages'")
        return raw
    candidate = resources.files("crystalvlm") / "recipes" / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise RecipeError(f"unknown recipe {name_or_path!r}; shipped recipes: {', '.join(shipped_recipes())} "
                          "(or give a path to a .yaml file)")
    return yaml.safe_load(candidate.read_text())


# ----------------------------------------------------------------------------- the schema --set is checked against
FREE = "free"  # a mapping whose keys belong to another schema (an HF config, a world's settings)
TOP_LEVEL = {"name": str, "description": str, "seed": int, "image_mode": str, "model": "model",
             "datasets": "datasets", "stages": "stages", "prepare": FREE}
DATASET_FIELDS = {"file": str, "image_folder": str}


def _dataclass_schema(cls) -> dict[str, Any]:
    from typing import get_type_hints

    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if f.name != "name"}


def _schema_of(path: list[str], raw: dict[str, Any]) -> Any:
    """The schema node at `path` (a type, a nested mapping of field -> schema, or FREE); raises
    RecipeError naming the known keys where a key is unknown."""
    from crystalvlm.models.build import ModelSpec, PartSpec

    node: Any = TOP_LEVEL
    walked: list[str] = []
    for key in path:
        where = ".".join(walked) or "the recipe"
        if node is FREE:
            return FREE
        if node == "model":
            node = _dataclass_schema(ModelSpec)
            node.update({"vision": "part", "llm": "part", "image_processor": FREE})
        elif node == "part":
            node = {**_dataclass_schema(PartSpec), "config": FREE}
        elif node == "datasets":
            node = DATASET_FIELDS  # a new dataset name may be added
            walked.append(key)
            continue
        elif node == "stages":
            stages = raw.get("stages") or {}
            if key not in stages:
                raise RecipeError(f"--set {'.'.join(path)}: the recipe has no stage {key!r}; stages: "
                                  f"{', '.join(stages) or 'none'}")
            node = {**_dataclass_schema(StageConfig), "lr": {part: float for part in PARTS},
                    "lora": _dataclass_schema(LoraSettings)}
            walked.append(key)
            continue
        if not isinstance(node, dict):
            raise RecipeError(f"--set {'.'.join(path)}: {where} is a value, not a section")
        if key not in node:
            raise RecipeError(f"--set {'.'.join(path)}: unknown key {key!r} in {where}; known: {', '.join(sorted(node))}")
        node = node[key]
        walked.append(key)
    return node


def _check_value(path: str, schema: Any, value: Any) -> Any:
    """`value` for a typed field, refused when of the wrong kind (e.g. a word for an integer);
    sections and free-form fields are checked when the recipe is built. YAML reads `1e-3` as a
    string, so a float field takes a string that parses as a number."""
    import types
    import typing

    allowed = [kind for kind in (typing.get_args(schema) if isinstance(schema, types.UnionType) else (schema,))
               if kind is not type(None)]
    if value is None and isinstance(schema, types.UnionType) and len(allowed) < len(typing.get_args(schema)):
        return value
    if not allowed or any(kind not in (int, float, bool, str) for kind in allowed):
        return value  # lists, mappings and free-form values are checked when the recipe is built
    for kind in allowed:
        if isinstance(value, bool) != (kind is bool):
            continue
        if isinstance(value, kind) or (kind is float and isinstance(value, int)):
            return value
    if float in allowed and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise RecipeError(f"--set {path}: expects {' or '.join(k.__name__ for k in allowed)}, got {value!r}")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`raw` with each `key.path=value` applied (value parsed as YAML). Keys are checked against
    the recipe schema, not against the keys the YAML happens to hold: a field the schema knows is
    created when missing; an unknown key is refused with the known ones listed. Keys of free-form
    sections (a part's HF `config`, a world's `prepare` settings) must already exist."""
    raw = copy.deepcopy(raw)
    for override in overrides:
        if "=" not in override:
            raise RecipeError(f"--set expects key=value, got {override!r}")
        key, value_text = override.split("=", 1)
        parts = key.split(".")
        if not all(parts):
            raise RecipeError(f"--set {key}: empty key segment")
        try:
            value = yaml.safe_load(value_text)
        except yaml.YAMLError as error:
            raise RecipeError(f"--set {key}: the value is not valid YAML: {str(error).splitlines()[0]}") from None
        schema = _schema_of(parts, raw)
        value = _check_value(key, schema, value)
        node = raw
        for index, part in enumerate(parts[:-1]):
            if part not in node:
                if _schema_of(parts[:index + 1], raw) is FREE:  # another schema's keys: never invented here
                    raise RecipeError(f"--set {key}: no {part!r} in {'.'.join(parts[:index]) or 'the recipe'}")
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise RecipeError(f"--set {key}: {'.'.join(parts[:index + 1])} is a value, not a section")
        if len(parts) > 1 and _schema_of(parts[:-1], raw) is FREE and parts[-1] not in node:
            raise RecipeError(f"--set {key}: no {parts[-1]!r} in {'.'.join(parts[:-1])}; it has: "
                              f"{', '.join(sorted(node)) or 'nothing'}")
        node[parts[-1]] = value
    return raw


def _substitute(value: Any, variables: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, replacement in variables.items():
            value = value.replace("${" + name + "}", replacement)
        return value
    if isinstance(value, dict):
        return {k: _substitute(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables) for v in value]
    return value


def load_recipe(name_or_path: str, overrides: list[str] = (), variables: dict[str, str] | None = None) -> Recipe:
    raw = apply_overrides(read_recipe(name_or_path), list(overrides))
    if variables:
        raw = _substitute(raw, variables)
    known = {"name", "seed", "model", "image_mode", "datasets", "stages", "prepare", "description"}
    unknown = set(raw) - known
    if unknown:
        raise RecipeError(f"unknown recipe keys {sorted(unknown)}; known: {sorted(known)}")
    stage_fields = {f.name for f in fields(StageConfig)}
    stages = []
    for name, settings in (raw.get("stages") or {}).items():
        unknown = set(settings) - stage_fields
        if unknown:
            raise RecipeError(f"stage {name!r}: unknown keys {sorted(unknown)}; known: {sorted(stage_fields - {'name'})}")
        if not isinstance(settings, dict):
            raise RecipeError(f"stage {name!r}: expected a mapping of stage settings, got {settings!r}")
        try:
            stages.append(StageConfig(name=name, **settings))
        except TypeError as error:  # a required field missing
            raise RecipeError(f"stage {name!r}: {error}") from None
    if not stages:
        raise RecipeError("a recipe needs at least one stage")
    for stage in stages:
        for data_name in stage.data:
            if data_name not in (raw.get("datasets") or {}):
                raise RecipeError(f"stage {stage.name!r} uses dataset {data_name!r}, which the recipe does not define")
    if not isinstance(raw.get("model", {}), dict):
        raise RecipeError(f"recipe {name_or_path!r}: 'model' must be a mapping of the parts to compose")
    return Recipe(
        name=raw.get("name", str(name_or_path)),
        seed=int(raw.get("seed", 0)),
        model=raw.get("model", {}),
        image_mode=raw.get("image_mode", "pad"),
        datasets=raw.get("datasets") or {},
        stages=stages,
        prepare=raw.get("prepare"),
        raw=raw,
    )
