"""What serving engines that read HF Llava checkpoints need of a crystalvlm checkpoint.

vLLM's `LlavaForConditionalGeneration` reads the llava-hf weight names (`language_model.model.*`,
`language_model.lm_head.*`, `vision_tower.*`, `multi_modal_projector.*`, what transformers 5 writes
to disk) and maps the in-memory ones of transformers >= 4.52 (`model.language_model.*`, ...), builds the LLM from `text_config` by its `architectures`, the tower from
`vision_config` (CLIP or SigLIP), and the projector as `linear_1`, an activation looked up by
`projector_hidden_act` in its activation registry, `linear_2`. That registry has no identity, so a
checkpoint with the `linear` projector (saved natively as two Linear layers with
`projector_hidden_act: linear`) runs in transformers but not in vLLM, and it cannot be re-expressed
exactly with an activation vLLM has (the identity through ReLU needs a hidden layer twice the text
width; vLLM's is fixed at the text width). `vllm_problems` lists every such mismatch; none for a
`mlp2x_gelu` checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

# vLLM's activation registry (vllm/model_executor/layers/activation.py, get_act_fn).
VLLM_ACTIVATIONS = frozenset({"gelu", "gelu_fast", "gelu_new", "gelu_pytorch_tanh", "relu", "relu2", "silu",
                              "quick_gelu", "tanh", "sigmoid"})
# The names transformers >= 4.52 uses in memory (vLLM maps them), and the original llava-hf names that
# transformers 5 writes to disk (vLLM's own module names, read as they are).
VLLM_WEIGHT_PREFIXES = ("model.language_model.", "model.vision_tower.", "model.multi_modal_projector.", "lm_head.",
                        "language_model.model.", "language_model.lm_head.", "vision_tower.", "multi_modal_projector.")
VLLM_ARCHITECTURES = frozenset({"LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration"})
VLLM_VISION_TYPES = frozenset({"clip_vision_model", "siglip_vision_model"})


def vllm_problems(config: dict, weight_names: Iterable[str]) -> list[str]:
    """Why vLLM's Llava loader would refuse or misread this checkpoint (empty: it reads it)."""
    problems = []
    architectures = config.get("architectures") or []
    if not VLLM_ARCHITECTURES.intersection(architectures):
        problems.append(f"architectures {architectures}: vLLM's loaders are {sorted(VLLM_ARCHITECTURES)}")
    activation = config.get("projector_hidden_act", "gelu")
    if activation not in VLLM_ACTIVATIONS:
        problems.append(f"projector_hidden_act {activation!r} is not in vLLM's activation registry (a `linear` "
                        f"projector has no exact form there); train with projector mlp2x_gelu to serve with vLLM")
    text = config.get("text_config") or {}
    if not text.get("architectures"):
        problems.append("text_config has no architectures: vLLM picks the LLM class by it")
    vision_type = (config.get("vision_config") or {}).get("model_type")
    if vision_type not in VLLM_VISION_TYPES:
        problems.append(f"vision_config model_type {vision_type!r}: vLLM's Llava towers are {sorted(VLLM_VISION_TYPES)}")
    strays = sorted(name for name in weight_names if not name.startswith(VLLM_WEIGHT_PREFIXES))
    if strays:
        problems.append(f"{len(strays)} weight name(s) outside vLLM's Llava mapping, e.g. {strays[:3]}")
    return problems


def checkpoint_vllm_problems(folder: str | Path) -> list[str]:
    """`vllm_problems` for a checkpoint folder (config.json and its safetensors headers)."""
    from safetensors import safe_open

    folder = Path(folder)
    names: list[str] = []
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as weights:
            names += list(weights.keys())
    return vllm_problems(json.loads((folder / "config.json").read_text()), names)
