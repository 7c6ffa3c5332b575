"""What original LLaVA-style checkpoints share, read once for every converter.

LLaVA (liuhaotian/LLaVA) saves one causal-LM checkpoint whose config carries the multimodal
settings as extra fields (`mm_vision_tower`, `mm_projector_type`, `mm_vision_select_layer`,
`mm_vision_select_feature`, `image_aspect_ratio`, `mm_hidden_size`) and whose state dict holds the
projector beside the LLM (`<base>.mm_projector.0/2.*` for `mlp2x_gelu`, `<base>.mm_projector.*`
for `linear`). The vision tower is usually not in the weights: `mm_vision_tower` names the CLIP
checkpoint to load it from (a Hub id or a folder). Images are not `<image>` tokens in its
vocabulary: the prompt is split at `<image>` and the id -200 (IMAGE_TOKEN_INDEX) marks where the
projected patch features are spliced into the embeddings, one feature per patch.

Everything here only reads; the converters compose the native model and write it atomically.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

IMAGE_TOKEN_INDEX = -200  # LLaVA's placeholder id for the image position in input_ids
ASPECT_TO_IMAGE_MODE = {"pad": "pad", "square": "square", None: "crop", "": "crop"}  # LLaVA name -> crystalvlm mode
SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}  # LLaVA mm_vision_select_feature -> HF strategy


# The architectures each converter reads, so a source given to the wrong one is named.
KIND_OF_ARCHITECTURE = {"LlavaLlamaForCausalLM": "llava", "LlavaCrystalForCausalLM": "crystalchat"}


class ConversionError(ValueError):
    """The source is not what the converter reads, or lacks a part; nothing was written."""


@dataclass
class OriginalCheckpoint:
    folder: Path
    config: dict[str, Any]
    weights: dict[str, torch.Tensor]

    def projector_weights(self, base: str) -> dict[str, torch.Tensor]:
        """The projector's tensors as HF's LlavaMultiModalProjector names them, and its kind.

        `mlp2x_gelu` is Linear-GELU-Linear (`linear_1`, `linear_2`); a `linear` projector (one
        Linear W) becomes `linear_1 = W`, identity activation, `linear_2 = I`: the same map, in the
        native two-layer module."""
        kind = self.config.get("mm_projector_type", "linear")
        prefix = f"{base}.mm_projector."
        found = {key[len(prefix):]: value for key, value in self.weights.items() if key.startswith(prefix)}
        if not found:
            raise ConversionError(f"{self.folder}: no projector weights ({prefix}*) in the checkpoint")
        expected = {"mlp2x_gelu": ("0.weight", "0.bias", "2.weight", "2.bias"), "linear": ("weight", "bias")}
        lacking = [prefix + name for name in expected.get(kind, ()) if name not in found]
        if lacking:
            raise ConversionError(f"{self.folder}: mm_projector_type {kind!r} but the checkpoint lacks {lacking}")
        if kind == "mlp2x_gelu":
            return {"linear_1.weight": found["0.weight"], "linear_1.bias": found["0.bias"],
                    "linear_2.weight": found["2.weight"], "linear_2.bias": found["2.bias"]}
        if kind == "linear":
            weight, bias = found["weight"], found["bias"]
            width = weight.shape[0]
            return {"linear_1.weight": weight, "linear_1.bias": bias,
                    "linear_2.weight": torch.eye(width, dtype=weight.dtype), "linear_2.bias": torch.zeros_like(bias)}
        depth = re.match(r"^mlp(\d+)x_gelu$", kind)
        raise ConversionError(f"{self.folder}: mm_projector_type {kind!r} has no native HF Llava form"
                              + (" (HF's projector has exactly two layers)" if depth else ""))

    @property
    def projector_activation(self) -> str:
        return "gelu" if self.config.get("mm_projector_type", "linear") == "mlp2x_gelu" else "linear"

    @property
    def image_mode(self) -> str:
        aspect = self.config.get("image_aspect_ratio")
        if aspect not in ASPECT_TO_IMAGE_MODE:
            raise ConversionError(f"{self.folder}: image_aspect_ratio {aspect!r} (LLaVA-NeXT's anyres) is not "
                                  f"supported yet; known: pad, square, none")
        return ASPECT_TO_IMAGE_MODE[aspect]

    @property
    def feature_strategy(self) -> str:
        select = self.config.get("mm_vision_select_feature", "patch")
        if select not in SELECT_FEATURE:
            raise ConversionError(f"{self.folder}: mm_vision_select_feature {select!r}; known: {sorted(SELECT_FEATURE)}")
        return SELECT_FEATURE[select]

    def vision_tower_weights(self, base: str) -> dict[str, torch.Tensor]:
        """Tower tensors saved inside the checkpoint (`<base>.vision_tower.vision_tower.*`), as
        CLIPVisionModel names them; empty when the tower lives in its own checkpoint."""
        prefix = f"{base}.vision_tower.vision_tower."
        return {key[len(prefix):]: value for key, value in self.weights.items() if key.startswith(prefix)}


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ConversionError(f"{folder} is not a checkpoint folder (no config.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path} is not valid JSON: {error}") from None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder: safetensors (sharded or not), else PyTorch .bin files
    read with weights_only=True (never unpickling code)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    loader = load_file
    if not files:
        files = sorted(p for p in folder.glob("*.bin") if p.name.startswith("pytorch_model"))
        loader = lambda path: torch.load(path, map_location="cpu", weights_only=True)  # noqa: E731
    if not files:
        raise ConversionError(f"{folder}: no weights (*.safetensors or pytorch_model*.bin)")
    weights: dict[str, torch.Tensor] = {}
    for path in files:
        weights.update(loader(path))
    return weights


def read_original(folder: str | Path, architectures: tuple[str, ...], kind: str,
                  vision_tower: str | None = None) -> OriginalCheckpoint:
    """The checkpoint at `folder`, refused unless it is an original-layout LLaVA model of one of
    `architectures` (a native HF Llava, a plain LLM or another kind gets a message saying so) whose
    vision tower is known (its config's `mm_vision_tower`, or `vision_tower` given here)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"{folder}: no such folder (download the checkpoint first, e.g. `hf download ...`)")
    config = read_config(folder)
    found = config.get("architectures") or []
    if not any(name in architectures for name in found):
        if "text_config" in config and "vision_config" in config:
            hint = "it is already a Hugging Face native Llava checkpoint: load it directly, no conversion needed"
        elif "mm_vision_tower" not in config:
            hint = "it has no mm_vision_tower: a language model without a vision part, not a LLaVA checkpoint"
        elif any(name in KIND_OF_ARCHITECTURE for name in found):
            other = next(KIND_OF_ARCHITECTURE[name] for name in found if name in KIND_OF_ARCHITECTURE)
            hint = f"it is a {other!r} checkpoint: use `crystalvlm convert {other}`"
        else:
            hint = "a LLaVA variant no converter reads yet"
        raise ConversionError(f"{folder} is not a {kind} checkpoint (architectures {found}, expected one of "
                              f"{list(architectures)}): {hint}")
    if not (vision_tower or config.get("mm_vision_tower") or config.get("vision_tower")):
        raise ConversionError(f"{folder}: config has no mm_vision_tower, so the vision tower is unknown; "
                              f"name it with --vision-tower")
    return OriginalCheckpoint(folder, config, read_weights(folder))
