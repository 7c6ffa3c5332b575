"""The parrot map on an existing parallel engine: `datasets.Dataset.map(batched=True, num_proc=N)`
runs `dataengine.parrot.parrot_batch` unchanged, and keeps what `crystalvlm data parrot` keeps.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/parrot_datasets_map.py runs/curation-scale/input_10000.jsonl

The input is curation_scale.py's synthetic input (`ocr` holds each image's true text). Prints, per
worker count, the records kept and the seconds taken.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from crystalvlm.dataengine.parrot import ParrotSettings, parrot_batch  # noqa: E402

SETTINGS = ParrotSettings(threshold=0.5, mode="remove", spotted_key="ocr")


def score(batch: dict) -> dict:
    """A datasets batch (columns) -> the reason each record would be removed (None: kept) and its rate."""
    records = [dict(zip(batch, values)) for values in zip(*batch.values())]
    outcomes = parrot_batch(records, SETTINGS)
    return {"reason": [o.reason for o in outcomes], "co_emb_text_rate": [o.rate for o in outcomes]}


def main() -> int:
    from datasets import load_dataset

    dataset = load_dataset("json", data_files=sys.argv[1], split="train")
    for workers in (1, 2):
        started = time.time()
        scored = dataset.map(score, batched=True, batch_size=256, num_proc=workers if workers > 1 else None,
                             load_from_cache_file=False)
        kept = sum(reason is None for reason in scored["reason"])
        print(json.dumps({"workers": workers, "records": len(dataset), "kept": kept,
                          "seconds": round(time.time() - started, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
