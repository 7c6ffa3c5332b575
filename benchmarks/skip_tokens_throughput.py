"""Skip tokens vs the native LlavaNext, same weights, same batch, same process: training-step time.

Loads one anyres checkpoint twice — with its skip tokens (`load_checkpoint`) and as plain
transformers loads it (every sub-image through the tower, no skip embedding) — encodes the same
batch of training records for each, and times forward + backward alternately (median of
`--repeats`). Prints and records the ratio, the tower passes and image tokens per sample, to
benchmarks/results/skip_tokens_throughput.json.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/skip_tokens_throughput.py \
        --checkpoint runs/high-res-skip/anyres-square-skip/finetune/final --world runs/high-res/world
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch


def batch_for(model, processor, records, image_folder: Path, skip: bool):
    from crystalvlm.data.collate import collate_conversations
    from crystalvlm.data.sample_encoder import SampleEncoder
    from crystalvlm.data.templates import get_template

    config = model.config
    encoder = SampleEncoder.from_processor(processor, config, get_template("vicuna_v1"), "anyres")
    if not skip:  # the native count: the plain model has no skip embedding
        encoder = SampleEncoder(**{**encoder.__dict__, "skip_padded_subimages": False})
    samples = [encoder.sample(record, image_folder) for record in records]
    return collate_conversations(samples, processor.tokenizer.pad_token_id)


def step_seconds(model, batch) -> float:
    model.zero_grad(set_to_none=True)
    started = time.perf_counter()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)
    loss.backward()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="an anyres checkpoint trained with skip tokens")
    parser.add_argument("--world", type=Path, required=True, help="the high-resolution shapes world (its finetune.json)")
    parser.add_argument("--batch", type=int, default=32, help="records per step")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per variant (alternating)")
    args = parser.parse_args()
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from crystalvlm.data.records import load_records
    from crystalvlm.models.checkpoint import load_checkpoint

    torch.manual_seed(0)
    records = load_records(args.world / "finetune.json").records[: args.batch]
    skipping, processor, _ = load_checkpoint(args.checkpoint)
    native = AutoModelForImageTextToText.from_pretrained(args.checkpoint)
    processor = AutoProcessor.from_pretrained(args.checkpoint)
    variants = {"skip": (skipping.train(), batch_for(skipping, processor, records, args.world / "images", True)),
                "native": (native.train(), batch_for(native, processor, records, args.world / "images", False))}
    for model, batch in variants.values():
        step_seconds(model, batch)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (model, batch) in variants.items():
            times[name].append(step_seconds(model, batch))
    figures = {}
    for name, (model, batch) in variants.items():
        image_tokens = int((batch["input_ids"] == model.config.image_token_id).sum())
        figures[name] = {"median_step_s": round(statistics.median(times[name]), 4), "steps_s": [round(t, 4) for t in times[name]],
                         "image_tokens_per_sample": image_tokens / len(records),
                         "input_tokens_per_s": round(int(batch["attention_mask"].sum()) / statistics.median(times[name]), 1)}
    ratio = figures["native"]["median_step_s"] / figures["skip"]["median_step_s"]
    payload = {"checkpoint": str(args.checkpoint), "batch": len(records), "repeats": args.repeats, "variants": figures,
               "speedup_skip_over_native": round(ratio, 3),
               "machine": {"platform": platform.platform(), "load": os.getloadavg(), "torch": torch.__version__,
                           "threads": torch.get_num_threads()}}
    out = Path("benchmarks/results/skip_tokens_throughput.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
