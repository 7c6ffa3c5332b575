"""`crystalvlm data balance` on the shapes world's captions made long-tailed like web data: concept
coverage before and after.

The world's alignment captions ("a red star, an orange diamond and a blue diamond") cover shapes
and colours about evenly. Web caption sets do not: a few concepts fill most captions. This script
resamples the captions so that shape k (in a fixed random order) is drawn with weight 1/k^2 (a
caption takes the weight of its most favoured shape), writes them as JSON lines, runs `data
balance` with several caps, and reports coverage (distinct concepts, share of the most frequent
1%, normalised entropy) and the share of each shape among the kept captions, which the world's
captions state exactly.

    PYTHONPATH=src python benchmarks/concept_balance.py --world runs/quickstart/world --out runs/concept-balance

Without --world a small shapes world is written first. Results: benchmarks/results/concept_balance.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def shape_shares(captions: list[str], shapes: list[str]) -> dict[str, float]:
    """The share of captions mentioning each shape (singular or plural)."""
    counts = Counter(shape for text in captions for shape in shapes if f" {shape}" in f" {text}")
    return {shape: round(counts[shape] / len(captions), 4) for shape in shapes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", help="a prepared shapes world (align.json); default: write one")
    parser.add_argument("--out", default="runs/concept-balance", help="work folder")
    parser.add_argument("--records", type=int, default=20000, help="captions in the long-tailed set")
    parser.add_argument("--caps", default="50,200,800", help="caps to try")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=str(ROOT / "benchmarks/results/concept_balance.json"))
    args = parser.parse_args()
    from crystalvlm.cli import main as cli
    from crystalvlm.worlds.shapes.scenes import SHAPES

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.world:
        world = Path(args.world)
    else:
        from crystalvlm.worlds.shapes.writer import write_shapes_world

        world = out / "world"
        if not (world / "align.json").exists():
            write_shapes_world(world, n_train=2000, n_eval=50, seed=args.seed, image_size=48, progress=True)
    captions = [record["conversations"][-1]["value"] for record in json.loads((world / "align.json").read_text())]
    rng = random.Random(args.seed)
    shapes = list(SHAPES)
    rng.shuffle(shapes)
    weight_of = {shape: 1 / (rank + 1) ** 2 for rank, shape in enumerate(shapes)}
    weights = [max([weight_of[s] for s in shapes if f" {s}" in f" {text}"] or [min(weight_of.values())])
               for text in captions]
    sample = rng.choices(captions, weights=weights, k=args.records)
    source = out / "long-tailed.jsonl"
    source.write_text("".join(json.dumps({"id": i, "caption": text}) + "\n" for i, text in enumerate(sample)))

    results = {"world": str(world), "records": len(sample), "shape_order": shapes,
               "shape_share_world": shape_shares(captions, shapes), "shape_share_before": shape_shares(sample, shapes),
               "runs": {}, "load_average": os.getloadavg()}
    runs = [(cap, heads) for heads in (False, True) for cap in (int(c) for c in args.caps.split(","))]
    for cap, heads in runs:
        flag = ["--heads"] if heads else []
        target = out / f"balanced-cap{cap}{'-heads' if heads else ''}.jsonl"
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            code = cli(["data", "balance", str(source), "--out", str(target), "--text-key", "caption", "--cap", str(cap),
                        "--quiet", *flag])
        if code != 0:
            raise RuntimeError(f"data balance failed with {code}")
        summary = json.loads(buffer.getvalue())
        kept = [json.loads(line)["caption"] for line in target.read_text().splitlines()]
        name = f"--cap {cap}" + (" --heads" if heads else "")
        results["runs"][name] = {
            "command": f"crystalvlm data balance long-tailed.jsonl --out balanced.jsonl --text-key caption {name}",
            "kept": summary["kept"], "removed": summary["removed"], "coverage": summary["coverage"],
            "shape_share_after": shape_shares(kept, shapes), "seconds": summary["seconds"]}
        before, after = summary["coverage"]["before"], summary["coverage"]["after"]
        print(f"{name}: kept {summary['kept']}/{len(sample)}; concepts {before['concepts']} -> {after['concepts']}; "
              f"top-1% share {before['top1pct_share']} -> {after['top1pct_share']}; entropy "
              f"{before['normalised_entropy']} -> {after['normalised_entropy']}")
    print("shape share before:", results["shape_share_before"])
    for cap, run in results["runs"].items():
        print(f"shape share after {cap}:", run["shape_share_after"])
    Path(args.results).write_text(json.dumps(results, indent=1) + "\n")
    print(f"-> {args.results}")


if __name__ == "__main__":
    main()
