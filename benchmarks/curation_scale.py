"""`data parrot` and `data caption` on synthetic inputs of 10K and 100K records: peak memory (RSS of
the command's own process), wall time and records/s. Constant memory means the 100K peak is the
10K peak, not ten times it.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/curation_scale.py \
        --world runs/quickstart/world --captioner runs/caption-study/captioner_run/captioner/final \
        --out runs/curation-scale

Inputs (written once into --out): records point at the world's training images, cycled (the
streaming runner never holds more than one window of records, so repeating images costs nothing in
memory); captions are the world's CLIP captions with every fourth replaced by a parrot caption,
and `ocr` holds the image's true text. Runs:

  parrot (ground truth)  --spotted-key ocr: the scoring and streaming alone
  parrot (reader)        the world's tiny text reader on every image (--reader-sizes only)
  caption                the trained captioner, greedy, --caption-tokens new tokens per caption
Results: benchmarks/results/curation_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from curation_common import ROOT, machine, write_json  # noqa: E402

CHILD = (
    "import resource, sys\n"
    "from crystalvlm.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    "sys.exit(code)\n"
)


def write_input(world: Path, path: Path, size: int) -> None:
    if path.is_file():
        return
    truth = json.loads((world / "annotations" / "train.json").read_text())["images"]
    pairs = [json.loads(line) for line in (world / "clip_pairs.jsonl").read_text().splitlines()]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for index in range(size):
            entry, pair = truth[index % len(truth)], pairs[index % len(pairs)]
            text = entry.get("text")
            caption = text if text and index % 4 == 0 else pair["caption"]
            handle.write(json.dumps({"id": index, "image": entry["file"], "caption": caption,
                                     "ocr": [text] if text else []}) + "\n")
    tmp.replace(path)


def run_child(arguments: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    started = time.time()
    done = subprocess.run([sys.executable, "-c", CHILD, *arguments, "--quiet"], capture_output=True, text=True, env=env)
    wall = time.time() - started
    if done.returncode != 0:
        raise RuntimeError(f"{arguments[:2]} failed:\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    peak = int(lines[-1].split()[1])
    summary = json.loads("\n".join(lines[:-1])[("\n".join(lines[:-1])).index("{"):])
    return {"peak_rss_mib": round(peak / 1024, 1), "process_wall_seconds": round(wall, 1),
            "run_seconds": summary["seconds"], "records_per_second": summary["lines_per_second"],
            "lines": summary["lines"], "kept": summary["kept"], "removed_by_reason": summary["removed_by_reason"],
            "load_average_after": os.getloadavg()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True, type=Path, help="a prepared shapes world (read only)")
    parser.add_argument("--captioner", type=Path, help="a captioner checkpoint (the caption study's)")
    parser.add_argument("--reader", type=Path, help="the world's text reader (the parrot study's)")
    parser.add_argument("--out", required=True, type=Path, help="working folder")
    parser.add_argument("--sizes", default="10000,100000", help="input sizes for parrot")
    parser.add_argument("--reader-sizes", default="10000", help="input sizes for parrot with the image reader")
    parser.add_argument("--caption-sizes", default="10000,100000", help="input sizes for caption")
    parser.add_argument("--caption-tokens", type=int, default=8, help="new tokens per caption")
    parser.add_argument("--runs", default="parrot,parrot_reader,caption", help="which runs")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "curation_scale.json")
    args = parser.parse_args()
    world, out = args.world.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    images = str(world / "images")
    plans = []
    if "parrot" in args.runs.split(","):
        plans += [("parrot", int(n), ["--spotted-key", "ocr"]) for n in args.sizes.split(",") if n]
    if "parrot_reader" in args.runs.split(",") and args.reader:
        plans += [("parrot_reader", int(n), ["--reader", "crystalvlm.worlds.shapes.text_reader:load_reader",
                                             "--reader-model", str(args.reader)]) for n in args.reader_sizes.split(",") if n]
    if "caption" in args.runs.split(",") and args.captioner:
        plans += [("caption", int(n), ["--model", str(args.captioner), "--max-new-tokens", str(args.caption_tokens),
                                       "--batch-size", "64"]) for n in args.caption_sizes.split(",") if n]
    for name, size, extra in plans:
        key = f"{name}_{size}"
        if key in results:
            continue
        source = out / f"input_{size}.jsonl"
        write_input(world, source, size)
        target = out / f"{key}.jsonl"
        for stale in out.glob(f"{key}*"):
            stale.unlink()
        command = "caption" if name == "caption" else "parrot"
        arguments = ["data", command, str(source), "--out", str(target), "--image-folder", images, *extra]
        print(f"running {key} ...", flush=True)
        results[key] = {"command": "crystalvlm " + " ".join(arguments), "records": size, **run_child(arguments)}
        results["machine"] = machine()
        write_json(args.results, results)
        print(json.dumps(results[key]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
