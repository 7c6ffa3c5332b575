"""Per-GPU memory estimates of the llava-1.5-7b recipe's stages under the launches people use.

    PYTHONPATH=src python benchmarks/memory_plan.py [--json OUT]

The model is composed on the meta device from the part configs in benchmarks/configs/llava-1.5-7b/
(Vicuna-7B v1.5 and CLIP ViT-L/14-336 as released), so the parameter counts are exact and nothing
is downloaded or allocated. The figures are crystalvlm.train.memory_estimate's (the estimate each
stage prints at start); measured peaks on a GPU belong beside them when one is available.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoConfig, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

from crystalvlm.train.freeze import _unique_parts
from crystalvlm.train.memory_estimate import GIB, LaunchPlan, ModelShape, estimate_memory
from crystalvlm.train.recipe import load_recipe

CONFIGS = Path(__file__).parent / "configs" / "llava-1.5-7b"
LAUNCHES = [("one GPU", "none", 1), ("DDP (torchrun), 8 GPUs", "none", 8), ("FSDP full shard, 8 GPUs", "fsdp", 8),
            ("ZeRO-3, 8 GPUs", "zero3", 8)]


def part_counts() -> dict[str, int]:
    text = json.loads((CONFIGS / "vicuna-7b-v1.5.json").read_text())
    vision = json.loads((CONFIGS / "clip-vit-large-patch14-336.json").read_text())
    vision.pop("model_type")
    config = LlavaConfig(vision_config=CLIPVisionConfig(**vision),
                         text_config=AutoConfig.for_model(text.pop("model_type"), **text))
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    return {name: sum(p.numel() for p in parameters) for name, parameters in _unique_parts(model).items()}, config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    counts, config = part_counts()
    recipe = load_recipe("llava-1.5-7b")
    rows = []
    for stage in recipe.stages:
        trainable = sum(counts[part] for part in stage.tunable)
        shape = ModelShape(trainable=trainable, frozen=sum(counts.values()) - trainable,
                           hidden_size=config.text_config.hidden_size, layers=config.text_config.num_hidden_layers,
                           vocab_size=config.text_config.vocab_size)
        for label, sharding, world in LAUNCHES:
            plan = LaunchPlan(precision="bf16", sharding=sharding, world_size=world, batch_size=stage.batch_size,
                              max_length=stage.max_length, gradient_checkpointing=stage.gradient_checkpointing)
            estimate = estimate_memory(shape, plan)
            rows.append({"stage": stage.name, "launch": label, "plan": asdict(plan), **estimate.to_dict()})
            parts = "  ".join(f"{name} {getattr(estimate, name) / GIB:6.1f}" for name in
                              ("weights", "gradients", "optimizer", "activations", "logits"))
            print(f"{stage.name:<9} {label:<26} {parts}  total {estimate.total / GIB:6.1f} GiB")
    print("parameters:", counts)
    if args.json:
        Path(args.json).write_text(json.dumps({"parameters": counts, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
