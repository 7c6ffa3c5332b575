"""A stage is a freeze policy plus parameter groups: one function applies both and says so.

`apply_stage_policy` freezes and returns the optimizer groups; `FreezeSummary` states the result
(what trains, parameter counts, learning rate per part) for the run directory and the console.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


def model_parts(model) -> dict[str, list[torch.nn.Parameter]]:
    """Parameters of each part of a LlavaForConditionalGeneration (LLaVA-NeXT's mm_tunable_parts).
    A LlavaNext's `image_newline` (and a skip-token embedding, when there is one) trains with the
    projector, as LLaVA-NeXT's mm_mlp_adapter part holds its image_newline."""
    extra = [getattr(model.model, name) for name in ("image_newline", "skip_embedding")
             if isinstance(getattr(model.model, name, None), torch.nn.Parameter)]
    return {
        "vision": list(model.model.vision_tower.parameters()),
        "projector": list(model.model.multi_modal_projector.parameters()) + extra,
        "llm": list(model.model.language_model.parameters()) + list(model.lm_head.parameters()),
    }


def _unique_parts(model) -> dict[str, list[torch.nn.Parameter]]:
    """model_parts with each parameter in one part only (tied embeddings count once)."""
    seen: set[int] = set()
    unique = {}
    for name, parameters in model_parts(model).items():
        unique[name] = [p for p in parameters if id(p) not in seen]
        seen.update(id(p) for p in unique[name])
    return unique


def apply_stage_policy(model, tunable: list[str], lr: dict[str, float], weight_decay: float) -> list[dict]:
    """Freeze everything outside `tunable`; return optimizer groups with a learning rate per part."""
    groups = []
    for name, parameters in _unique_parts(model).items():
        trains = name in tunable
        for parameter in parameters:
            parameter.requires_grad_(trains)
        if trains:
            groups.append({"params": parameters, "lr": lr[name], "weight_decay": weight_decay, "part": name})
    return groups


def store_frozen_parts(model, tunable: list[str], dtype: torch.dtype) -> list[str]:
    """Store every frozen part in the compute dtype (a frozen 7B LLM in bf16 is 14 GB, not 28, and
    is not cast on every forward); trained parts keep fp32 master weights for the optimizer.
    Returns the parts stored so. Not under FSDP, which flattens a unit into one tensor of one dtype."""
    stored = []
    for name, parameters in _unique_parts(model).items():
        if name in tunable:
            continue
        for parameter in parameters:
            if parameter.is_floating_point():
                parameter.data = parameter.data.to(dtype)
        stored.append(name)
    return stored


@dataclass
class PartSummary:
    trains: bool
    parameters: int
    trainable: int
    lr: float | None  # None for a frozen part


@dataclass
class FreezeSummary:
    """What a stage trains, as applied to the model (not as the recipe asked)."""

    stage: str
    precision: str  # accelerate's mixed precision of the stage: no, bf16 or fp16
    parts: dict[str, PartSummary]

    @classmethod
    def of(cls, model, stage: str, precision: str, lr: dict[str, float]) -> "FreezeSummary":
        parts = {}
        for name, parameters in _unique_parts(model).items():
            trainable = sum(p.numel() for p in parameters if p.requires_grad)
            parts[name] = PartSummary(trains=trainable > 0, parameters=sum(p.numel() for p in parameters),
                                      trainable=trainable, lr=lr.get(name) if trainable else None)
        return cls(stage, precision, parts)

    @property
    def total_parameters(self) -> int:
        return sum(part.parameters for part in self.parts.values())

    @property
    def total_trainable(self) -> int:
        return sum(part.trainable for part in self.parts.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "total": {"parameters": self.total_parameters, "trainable": self.total_trainable}}

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def table(self) -> str:
        lines = [f"{'part':<10}{'parameters':>14}{'trainable':>14}  learning rate"]
        for name, part in self.parts.items():
            rate = f"{part.lr:g}" if part.trains else "frozen"
            lines.append(f"{name:<10}{part.parameters:>14,}{part.trainable:>14,}  {rate}")
        lines.append(f"{'total':<10}{self.total_parameters:>14,}{self.total_trainable:>14,}")
        return "\n".join(lines)
