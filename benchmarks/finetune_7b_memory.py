"""Measured peak GPU memory of the llava-1.5-7b finetune stage next to the estimate it prints.

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 1 \
        benchmarks/finetune_7b_memory.py --steps 20            # one GPU, the shipped FSDP config
    PYTHONPATH=src python benchmarks/finetune_7b_memory.py --shape tiny --steps 3   # CPU smoke run

What runs is crystalvlm's own trainer (`train_recipe`) on the finetune stage of llava-1.5-7b as the
recipe sets it (projector and LLM trained, lr 2e-5, batch 16 per GPU, max_length 2048, gradient
checkpointing, bf16), with random-initialised parts of the released shapes (CLIP ViT-L/14-336,
Vicuna-7B = Llama-2-7B shape; configs in benchmarks/configs/llava-1.5-7b/ and train_throughput.py)
and train_throughput's synthetic data (a BPE trained to the real 32000 vocabulary, noise images,
answers of 30-60 tokens): nothing is downloaded. As in train_throughput, the model is constructed
directly on the GPU and the final save is skipped.

Recorded in benchmarks/results/finetune_7b_memory.json: device, versions, launch (accelerate's
distributed type, processes), the trainer's estimate (`memory_estimate.json`: every sample at
max_length, an upper bound; these samples are ~650-700 tokens with the 576 image tokens), the
measured peak (`torch.cuda.max_memory_allocated` and `_reserved`), steps and losses, or the error
that stopped it (an out-of-memory error or the trainer's refusal is a result, recorded as such).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as throughput  # noqa: E402  (its shapes, synthetic data and trainer patch)

from crystalvlm.train.trainer import TrainOptions, train_recipe  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "finetune_7b_memory.json"
SHAPES = {
    "llava-1.5-7b": replace(throughput.SHAPES["reference"], name="llava-1.5-7b", stage="finetune",
                            description="CLIP ViT-L/14-336 + Vicuna-7B (Llama-2-7B shape), finetune"),
    "tiny": throughput.SHAPES["tiny"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llava-1.5-7b" if torch.cuda.is_available() else "tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16, help="per GPU (the recipe's finetune batch)")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = SHAPES[args.shape]
    if device.type == "cpu" and args.shape != "tiny":
        parser.error("without a GPU only --shape tiny is practical")
    from accelerate import PartialState

    state = PartialState()
    entry: dict = {"shape": shape.description, "device": throughput.describe_device(device),
                   "versions": {"python": platform.python_version(), "torch": torch.__version__},
                   "launch": {"distributed_type": str(state.distributed_type), "processes": state.num_processes},
                   "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="finetune_7b_memory_") as tmp:
        work = Path(tmp)
        records = args.steps * args.batch_size * state.num_processes
        data = throughput.write_synthetic_data(shape, work / "data", records, args.seed)
        recipe = throughput.make_recipe(shape, data, "bf16" if device.type == "cuda" else "fp32", args.batch_size,
                                        args.steps, True, args.seed, args.max_length)
        record = throughput.BuildRecord()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        try:
            with throughput.benchmark_trainer(device, throughput.STAGES[shape.stage].tunable, record):
                train_recipe(recipe, TrainOptions(run_dir=work / "run", progress=False))
        except (torch.cuda.OutOfMemoryError, ValueError) as error:  # ValueError: the trainer's refusal
            entry["error"] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        entry["wall_s"] = round(time.perf_counter() - started, 1)
        stage_dir = work / "run" / shape.stage
        estimate_file = stage_dir / "memory_estimate.json"
        if estimate_file.is_file():
            estimated = json.loads(estimate_file.read_text())
            entry["estimate"] = estimated
        metrics = stage_dir / "metrics.jsonl"
        if metrics.is_file():
            rows = [json.loads(line) for line in metrics.read_text().splitlines()]
            entry["steps_done"] = len(rows)
            entry["losses"] = [row["loss"] for row in rows]
        if device.type == "cuda":
            entry["measured_peak_bytes"] = {"allocated": torch.cuda.max_memory_allocated(device),
                                            "reserved": torch.cuda.max_memory_reserved(device)}
        if "estimate" in entry and "measured_peak_bytes" in entry:
            entry["measured_over_estimate"] = round(entry["measured_peak_bytes"]["allocated"]
                                                    / entry["estimate"]["estimate"]["total"], 3)
    if state.is_main_process:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = json.loads(args.out.read_text()) if args.out.is_file() else {"benchmark": "finetune_7b_memory",
                                                                            "entries": {}}
        report["entries"][args.shape] = entry
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({k: v for k, v in entry.items() if k != "losses"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
