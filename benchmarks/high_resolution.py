"""pad vs anyres on the high-resolution shapes world (recipe `tiny-next`), same seed and budget.

Trains the recipe twice into OUT/<variant>/ (`crystalvlm train tiny-next`, the world prepared once
and shared), then answers the world's two benchmarks with each final checkpoint (greedy, the
engine): `detail` (the tile's 1-pixel pattern) and `coarse` (its colour). Records accuracy, image
tokens per sample (mean over the benchmark images, from the checkpoint's own encoder), training
tokens/s and wall time, and the machine's load, to OUT/high_resolution.json and
benchmarks/results/high_resolution.json.

    PYTHONPATH=src nice -n 10 python benchmarks/high_resolution.py --out runs/high-res \
        [--variants anyres pad anyres-skip] [--set stages.finetune.epochs=2 ...]

Variants: `anyres` (the recipe), `pad` (one view: image_mode pad, no grid), `anyres-square` (anyres
on a grid of square layouts only, 2x2 and 3x3 sub-images) and `anyres-square-skip` (the same with
`skip_padded_subimages: true`, SPHINX-X's skip token). A finished variant (its final checkpoint
there) is not retrained on a rerun. `--world` reuses a prepared world folder (same settings and seed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

SQUARE_GRID = "model.image_grid_pinpoints=[[64,64],[96,96]]"  # square layouts only, as SPHINX-X tiles
VARIANTS = {
    "anyres": [],
    "pad": ["image_mode=pad", "model.image_grid_pinpoints=null"],
    # On the square grid the 3:1 and 1:3 canvases fill one row (column) of 3 x 3 sub-images: 6 are padding.
    "anyres-square": [SQUARE_GRID],
    "anyres-square-skip": [SQUARE_GRID, "model.skip_padded_subimages=true"],
}


def train(out: Path, variant: str, overrides: list[str]) -> float:
    run = out / variant
    final = run / "finetune" / "final"
    if final.is_dir():
        return float("nan")
    run.mkdir(parents=True, exist_ok=True)
    world = out / "world"
    if world.is_dir() and not (run / "world").exists():
        (run / "world").symlink_to(world.resolve())  # one world for every variant: same data, same seed
    command = [sys.executable, "-m", "crystalvlm.cli", "train", "tiny-next", "--out", str(run)]
    for override in VARIANTS[variant] + overrides:
        command += ["--set", override]
    started = time.time()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if not world.exists() and not world.is_symlink():  # the first variant prepared the world: share it
        shutil.move(str(run / "world"), world)
        (run / "world").symlink_to(world.resolve())
    return time.time() - started


def evaluate(checkpoint: Path, world: Path) -> dict:
    from PIL import Image

    from crystalvlm.data.templates import IMAGE_PLACEHOLDER, Turn
    from crystalvlm.infer.engine import DecodingConfig, GenerationEngine, GenerationRequest
    from crystalvlm.worlds.shapes_hires.world import hires_tasks

    engine = GenerationEngine.from_checkpoint(checkpoint, batch_size=16)
    results = {}
    for kind, task in hires_tasks(world).items():
        samples = task.samples()
        images = {}
        for sample in samples:
            with Image.open(sample.image) as image:
                images[sample.sample_id] = image.convert("RGB")
        requests = [GenerationRequest([Turn("user", f"{IMAGE_PLACEHOLDER}\n{s.prompt}")], [images[s.sample_id]]) for s in samples]
        answers = engine.generate(requests, DecodingConfig(strategy="greedy", max_new_tokens=4))
        predictions = {s.sample_id: a.text for s, a in zip(samples, answers)}
        encoder = engine.prompts.encoder
        counts = [encoder.image_tokens([images[s.sample_id].size]) for s in samples]
        counts = [c[0] if isinstance(c, list) else c for c in counts]
        skip = getattr(engine.model.model, "skip_embedding", None) is not None
        passes = [_tower_passes(engine, images[s.sample_id]) for s in samples]
        results[kind] = {"accuracy": task.score(predictions)["accuracy"], "samples": len(samples),
                         "image_tokens_per_sample": sum(counts) / len(counts), "skip_tokens": skip,
                         "tower_passes_per_sample": sum(passes) / len(passes)}
    return results


def _tower_passes(engine, image) -> int:
    """Sub-images (the whole view included) the vision tower encodes for one image."""
    from crystalvlm.subimage_grid import padded_subimages

    config = engine.model.config
    grid = getattr(config, "image_grid_pinpoints", None)
    if grid is None:
        return 1
    width, height = image.size
    padded = padded_subimages(height, width, grid, config.vision_config.image_size)
    skipped = sum(padded) if getattr(engine.model.model, "skip_embedding", None) is not None else 0
    return 1 + len(padded) - skipped


def training_figures(run: Path) -> dict:
    lines = [json.loads(line) for line in (run / "finetune" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [line for line in lines if "tokens_per_s" in line]
    last = steps[-1]
    return {"steps": last["step"], "final_loss": last["loss"], "elapsed_s": last["elapsed_s"],
            "mean_tokens_per_s": round(sum(s["tokens_per_s"] for s in steps) / len(steps), 1),
            "tokens_per_s_overall": round(sum(s["tokens"] for s in steps) / last["elapsed_s"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="run folder (world and one run per variant)")
    parser.add_argument("--variants", nargs="+", default=["anyres", "pad"], choices=sorted(VARIANTS),
                        help="which variants to train and measure")
    parser.add_argument("--world", type=Path, help="a world folder prepared with the same settings and seed, to share")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="a recipe override applied to every variant (same budget for all)")
    args = parser.parse_args()
    import torch
    import transformers

    if args.world is not None and not (args.out / "world").exists():
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "world").symlink_to(args.world.resolve())
    figures = {}
    for variant in args.variants:
        load_before = os.getloadavg()
        wall = train(args.out, variant, args.overrides)
        figures[variant] = {"train_wall_s": round(wall, 1), "load_before": load_before,
                            "training": training_figures(args.out / variant),
                            "benchmarks": evaluate(args.out / variant / "finetune" / "final", args.out / "world")}
        print(variant, json.dumps(figures[variant]), flush=True)
    payload = {"recipe": "tiny-next", "overrides": args.overrides, "variants": figures,
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_after": os.getloadavg(),
                           "torch": torch.__version__, "transformers": transformers.__version__,
                           "threads": os.environ.get("OMP_NUM_THREADS")}}
    for path in (args.out / "high_resolution.json", Path("benchmarks/results/high_resolution.json")):
        path.parent.mkdir(parents=True, exist_ok=True)
        previous = json.loads(path.read_text()) if path.is_file() else {}
        merged = {**previous, **payload, "variants": {**previous.get("variants", {}), **figures}}
        path.write_text(json.dumps(merged, indent=2) + "\n")
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
