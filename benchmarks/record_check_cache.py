"""The record check before training: the serial full-decode check against the parallel, cached one.

    .venv/bin/python benchmarks/record_check_cache.py --world runs/quickstart/world \\
        --checkpoint runs/quickstart/run/finetune/final

Measured in one process on the same data (the shapes world's finetune.json and its images):

- baseline: what the check was: one process, every image fully decoded (`open_image`) and every
  record encoded, serially (encoding as today, so the ratio is that of images and processes);
- first run: `prepare_dataset` with `--workers` processes, images verified without decoding
  (`verify_image`), cache empty (a fresh temporary folder): it fills the cache;
- second run: the same call again: the cache answers (only the data file is hashed and the images
  are stat'ed).

Then, with `--train`, `crystalvlm train` itself twice (stage finetune from the checkpoint, one step,
two run folders, one shared cache): each run's record-check time is read from its
RUN/finetune/data_check.json. Results and the machine load go to results/record_check_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from crystalvlm.data.check_cache import CheckCache
from crystalvlm.data.dataset import DataSource, default_check_workers, prepare_dataset
from crystalvlm.data.images import ImageError, open_image
from crystalvlm.data.records import load_records
from crystalvlm.data.templates import ConversationError
from crystalvlm.infer.prompts import checkpoint_encoder


def baseline_check(source: DataSource, encoder) -> tuple[int, int]:
    """The former check: serial, each image opened and fully decoded, each record encoded (with
    today's whole-string encoding, so the difference measured is the images and the processes)."""
    good = bad = 0
    for record in load_records(source.file).records:
        try:
            for relative in record.images:
                open_image(source.image_folder, relative, encoder.max_pixels)
            ids, labels = encoder.encode(record.turns)
        except (ImageError, ConversationError):
            bad += 1
            continue
        usable = len(ids) <= encoder.max_length and any(label >= 0 for label in labels)
        good, bad = (good + 1, bad) if usable else (good, bad + 1)
    return good, bad


def timed(function):
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def train_twice(world: Path, checkpoint: Path, cache: Path, out: Path) -> list[dict]:
    recipe = {"name": "record-check-bench", "seed": 0, "image_mode": "pad",
              "datasets": {"instruct": {"file": str(world / "finetune.json"), "image_folder": str(world / "images")}},
              "stages": {"finetune": {"template": "vicuna_v1", "data": ["instruct"], "tunable": ["projector"],
                                      "lr": {"projector": 1e-4}, "batch_size": 8, "max_steps": 1}}}
    path = out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    runs = []
    for name in ("first", "second"):
        env = {**os.environ, "CRYSTALVLM_CACHE": str(cache)}
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "crystalvlm.cli", "train", str(path), "--init-from", str(checkpoint),
                        "--out", str(out / name), "--quiet"], check=True, env=env)
        wall = time.perf_counter() - started
        check = json.loads((out / name / "finetune" / "data_check.json").read_text())
        runs.append({"run": name, "train_wall_s": round(wall, 2), "record_check": check})
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True, help="a shapes world folder (finetune.json, images/)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint of that world (its tokenizer)")
    parser.add_argument("--workers", type=int, default=default_check_workers(), help="check worker processes")
    parser.add_argument("--train", action="store_true", help="also time two `crystalvlm train` runs")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "record_check_cache.json")
    args = parser.parse_args()

    source = DataSource(args.world / "finetune.json", args.world / "images")
    encoder = checkpoint_encoder(args.checkpoint, max_length=2048, require_template=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        cache = CheckCache(Path(scratch) / "record-checks")
        baseline_s, (good, bad) = timed(lambda: baseline_check(source, encoder))
        first_s, first = timed(lambda: prepare_dataset([source], encoder, workers=args.workers, cache=cache))
        second_s, second = timed(lambda: prepare_dataset([source], encoder, workers=args.workers, cache=cache))
        assert second.cached == [source.file] and len(second.items) == len(first.items) == good
        train_runs = train_twice(args.world, args.checkpoint, Path(scratch) / "cache", Path(scratch)) if args.train else []
    result = {
        "data": str(source.file), "records": good + bad, "bad": bad, "workers": args.workers,
        "baseline_serial_full_decode_s": round(baseline_s, 3),
        "first_run_parallel_verify_s": round(first_s, 3),
        "second_run_cached_s": round(second_s, 3),
        "first_vs_baseline": round(baseline_s / first_s, 2),
        "second_vs_first": round(first_s / second_s, 1),
        "train_runs": train_runs,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_before": load_before,
                    "load_after": os.getloadavg(), "python": platform.python_version(),
                    "note": "shared machine: other jobs ran at the same time"},
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
