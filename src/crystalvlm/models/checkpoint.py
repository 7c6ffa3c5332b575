"""HF-native checkpoints: `save_pretrained` of the model and the processor, plus a sidecar.

This module alone knows the checkpoint format; everything else asks it:

* where a model is (`resolve_model`): a local folder, or a Hub id found in the Hugging Face cache;
* what transformers has no field for (`read_sidecar`): the sidecar `crystalvlm.json` records the
  template the model was trained with, the image preprocessing mode, the stage that wrote it;
* which template to encode with (`template_name`): an explicit choice, else the sidecar's, else
  None — a checkpoint without the sidecar (any HF Llava checkpoint) still loads, and callers then
  fall back to the processor's chat template. Nothing is ever guessed from the folder name;
* which files decide its answers (`checkpoint_revision`), so caches notice a retrained model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

SIDECAR = "crystalvlm.json"


@dataclass
class CheckpointInfo:
    template: str | None = None
    image_mode: str = "pad"
    stage: str | None = None
    recipe: str | None = None


def write_sidecar(directory: str | Path, info: CheckpointInfo) -> None:
    path = Path(directory) / SIDECAR
    path.write_text(json.dumps(asdict(info), indent=2, sort_keys=True) + "\n")


def read_sidecar(directory: str | Path) -> CheckpointInfo:
    path = Path(directory) / SIDECAR
    if not path.is_file():
        return CheckpointInfo()
    raw = json.loads(path.read_text())
    known = CheckpointInfo.__dataclass_fields__
    return CheckpointInfo(**{key: value for key, value in raw.items() if key in known})


def template_name(info: CheckpointInfo, override: str | None = None) -> str | None:
    """The template to encode with: `override` (a user's --template) if given, else the one the
    checkpoint was trained with. None when neither names one: prompts then come from the
    processor's chat template, and training data (which needs labels) is refused by the caller."""
    return override if override is not None else info.template


# ----------------------------------------------------------------------------- where a model is
class ModelNotFoundError(FileNotFoundError):
    """A model name that is neither a checkpoint folder nor a cached Hub model; the message says which."""


# A Hub model id: `owner/name`, each part letters, digits, '-', '_', '.' (no path tricks like '..').
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_checkpoint(folder: str | Path) -> bool:
    """Whether a folder holds a complete checkpoint (save_checkpoint renames it into place whole)."""
    return (Path(folder) / "config.json").is_file()


def is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and ".." not in name and "--" not in name and not name.endswith(".")


def resolve_model(name_or_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The checkpoint folder of a model given as a local folder or a Hub id (`owner/name`).

    A folder that exists is used as it is (it must hold config.json). Otherwise a Hub-shaped name is
    looked up in the Hugging Face cache (`cache_dir`, default HF_HUB_CACHE / HF_HOME) without
    touching the network: commands stay offline by default, and a model is downloaded once,
    explicitly, with `hf download`. The cached snapshot is a plain folder, so everything that reads
    a checkpoint (sidecar, revision stamp, processor) works on it unchanged.
    """
    path = Path(name_or_path)
    if path.exists():
        if not is_checkpoint(path):
            raise ModelNotFoundError(f"{path} is not a checkpoint folder (no config.json)")
        return path
    name = str(name_or_path)
    if not is_hub_id(name):
        raise ModelNotFoundError(f"{name} is not a checkpoint folder (it does not exist) and not a Hub id (owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(name, cache_dir=cache_dir, local_files_only=True))
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"model {name!r} is not a local folder and is not in the Hugging Face cache; download it first with "
            f"`hf download {name}` (network needed once), or pass the path of a checkpoint folder"
        ) from None
    if not is_checkpoint(folder):
        raise ModelNotFoundError(f"model {name!r} is in the Hugging Face cache ({folder}) but has no config.json")
    return folder


# ----------------------------------------------------------------------------- writing
def save_checkpoint(model, processor, directory: str | Path, info: CheckpointInfo, state_dict: dict | None = None) -> Path:
    """Write the checkpoint into a temporary folder, then rename it into place (atomic)."""
    if getattr(model, "_partial_lora", None) is not None:
        # Its weights would be saved under wrapped names (`.base_layer.`) that a plain load drops.
        raise ValueError("this model has Partial LoRA layers; save it with "
                         "crystalvlm.models.partial_lora.save_partial_lora, not save_checkpoint")
    directory = Path(directory)
    staging = directory.with_name(directory.name + f".tmp-{os.getpid()}")
    for stale in directory.parent.glob(directory.name + ".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed writer
    staging.mkdir(parents=True)
    from crystalvlm.models.skip_tokens import PARAMETER, save_skip_tokens, uses_skip_tokens

    if uses_skip_tokens(model.config):
        # The native weights without the skip embedding (plain transformers would warn of an unknown
        # key); the embedding goes beside them (models/skip_tokens.py).
        state_dict = {key: value for key, value in (state_dict or model.state_dict()).items()
                      if not key.endswith(PARAMETER)}
        save_skip_tokens(model, staging)
    model.save_pretrained(staging, state_dict=state_dict)
    processor.save_pretrained(staging)
    write_sidecar(staging, info)
    _fsync_tree(staging)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(staging, directory)
    return directory


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


# ----------------------------------------------------------------------------- reading
def load_checkpoint(name_or_path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                    with_partial_lora: bool = True):
    """(model, processor, info) from any HF Llava checkpoint: a folder or a cached Hub id.

    A Partial LoRA checkpoint (partial_lora.json beside the base weights) comes back with its
    position-dependent update in place, so eval, generate and serve answer as it was trained;
    `with_partial_lora=False` gives its base model only, as plain `from_pretrained` does."""
    directory = resolve_model(name_or_path)
    if with_partial_lora and (Path(directory) / "partial_lora.json").is_file():
        from crystalvlm.models.partial_lora import load_partial_lora

        model, processor = load_partial_lora(Path(directory), dtype=dtype, device=device)
        return model, processor, read_sidecar(directory)
    model = AutoModelForImageTextToText.from_pretrained(directory, dtype=dtype or torch.float32)
    from crystalvlm.models.skip_tokens import load_skip_tokens, uses_skip_tokens

    if uses_skip_tokens(model.config):
        load_skip_tokens(model, Path(directory))
    model.to(device).eval()
    processor = AutoProcessor.from_pretrained(directory)
    return model, processor, read_sidecar(directory)


def load_processor(name_or_path: str | Path):
    """(processor, config, info) without the weights: enough to encode data for the model (its
    tokenizer, image processor, image-token id and count) in a fraction of a 7B model's load time."""
    directory = resolve_model(name_or_path)
    return AutoProcessor.from_pretrained(directory), AutoConfig.from_pretrained(directory), read_sidecar(directory)


# The files that decide a checkpoint's answers: weights, configs, tokenizer, processor, template.
WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth"})
CHECKPOINT_FILES = frozenset({"config.json", "generation_config.json", SIDECAR, "tokenizer.json",
                              "tokenizer_config.json", "chat_template.jinja", "processor_config.json",
                              "preprocessor_config.json"})


def checkpoint_revision(folder: Path) -> str:
    """A short stamp of the checkpoint's files (names, sizes, modification times).

    It joins the cache key, so a checkpoint retrained in place is evaluated again instead of
    reusing answers of its earlier weights; hashing the contents of 7B weights would take minutes.
    Other files (an evaluation written into the folder itself) do not count.
    """
    entries = []
    for path in sorted(p for p in folder.iterdir()
                       if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in CHECKPOINT_FILES)):
        stat = path.stat()
        entries.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]
