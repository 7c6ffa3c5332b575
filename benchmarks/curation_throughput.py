"""`data clean` and `data balance` on synthetic JSON lines: wall time, records/s and peak RSS at
10K and 100K records (constant memory shows as a peak that does not grow tenfold), against a
baseline pass that only reads, parses and copies each line through the same runner.

    PYTHONPATH=src python benchmarks/curation_throughput.py --out runs/curation-throughput

Each measurement runs in a child process that prints its own peak RSS (ru_maxrss of that process;
with --workers > 1 the workers' memory is not in that figure, so only wall time is given for those).
Results: benchmarks/results/curation_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ADJECTIVES = ("small large red blue green yellow black white wooden metal old young tall short bright dark striped "
              "round square shiny plastic glass stone furry broken empty").split()
NOUNS = [f"{stem}{suffix}" for stem in ("dog cat car tree house table chair boat bird horse cup lamp door window "
                                        "bike train plane clock book phone bottle bag hat shoe kite cake bench "
                                        "flower road bridge tower").split() for suffix in ("", "s")]
NOUNS += [f"thing{i}" for i in range(400)]  # a long tail of rare concepts
PLACES = "in a park|on a street|near the beach|in a kitchen|on a table|in the snow|at night|under a blue sky".split("|")

# The child imports what the command needs first (the CLI's parser pulls in torch through other
# commands' modules), records that resident size, then runs: the peak minus it is the work's memory.
CHILD = (
    "import resource, sys, json\n"
    "from crystalvlm.cli import build_parser, main\n"
    "build_parser()\n"
    "import datatrove.pipeline.filters, datasketch, py3langid\n"
    "print('IMPORTED_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    "code = main(sys.argv[1:])\n"
    "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    "sys.exit(code)\n"
)
BASELINE_CHILD = (
    "import resource, sys, json\n"
    "from crystalvlm.data.curation.stream import RecordStep, run_stream\n"
    "print('IMPORTED_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    "def keep(record):\n"
    "    return None\n"
    "summary = run_stream(sys.argv[1], sys.argv[2], RecordStep(keep), text_key='text', progress=False)\n"
    "print(json.dumps(summary))\n"
    "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
)


def caption(rng: random.Random) -> str:
    """A caption-like sentence; nouns follow a Zipf law so some concepts are very frequent."""
    def noun() -> str:
        return NOUNS[min(int(rng.paretovariate(1.1)) - 1, len(NOUNS) - 1)]

    parts = [f"a {rng.choice(ADJECTIVES)} {noun()}"]
    for _ in range(rng.randint(1, 3)):
        parts.append(rng.choice(["next to", "behind", "with", "and"]) + f" a {rng.choice(ADJECTIVES)} {noun()}")
    return " ".join(parts) + " " + rng.choice(PLACES) + "."


def write_synthetic(path: Path, n: int, seed: int) -> None:
    """n records: captions, with 5% exact copies, 5% near copies (a word added), 2% junk, 0.2% bad lines."""
    rng = random.Random(seed)
    made: list[str] = []
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            roll = rng.random()
            if made and roll < 0.05:
                text = rng.choice(made)
            elif made and roll < 0.10:
                words = rng.choice(made).split()
                words.insert(rng.randrange(1, len(words)), "really")
                text = " ".join(words)
            elif roll < 0.12:
                text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789#$%") for _ in range(60))
            elif roll < 0.122:
                handle.write('{"id": %d, "text": "broken\n' % i)
                continue
            else:
                text = " ".join(caption(rng) for _ in range(rng.randint(1, 3)))
                if len(made) < 20_000:
                    made.append(text)
                else:
                    made[rng.randrange(len(made))] = text
            handle.write(json.dumps({"id": i, "text": text, "url": f"https://example.org/{i}.jpg"}) + "\n")


def measure(argv: list[str], child: str = CHILD) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", child, *argv], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed: {done.stderr[-2000:]}")
    figure = {line.split()[0]: int(line.split()[1]) for line in done.stdout.splitlines() if "_RSS_KIB" in line}
    body = done.stdout[done.stdout.index("\n", done.stdout.index("IMPORTED_RSS_KIB")) + 1: done.stdout.rindex("PEAK_RSS_KIB")]
    summary = json.loads(body[body.index("{"):])
    work = summary["seconds"] + summary.get("count_pass_seconds", 0)  # balance: both passes
    return {"wall_seconds_with_start": round(seconds, 2), "work_seconds": round(work, 2),
            "records_per_second": round(summary["lines"] / work, 1),
            "rss_after_imports_mib": round(figure["IMPORTED_RSS_KIB"] / 1024, 1),
            "peak_rss_mib": round(figure["PEAK_RSS_KIB"] / 1024, 1),
            "work_memory_mib": round((figure["PEAK_RSS_KIB"] - figure["IMPORTED_RSS_KIB"]) / 1024, 1),
            "lines": summary["lines"], "kept": summary["kept"], "removed_by_reason": summary["removed_by_reason"],
            "index_entries": summary.get("index_entries")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/curation-throughput", help="work folder")
    parser.add_argument("--sizes", default="10000,100000", help="records per synthetic file")
    parser.add_argument("--workers", type=int, default=2, help="workers for the parallel runs (largest size only)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks/results/curation_throughput.json"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {"machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                           "load_average_start": os.getloadavg(),
                           "note": "shared 2-core machine: other jobs ran at the same time"}, "runs": {}}
    for n in sizes:
        source = out / f"synthetic-{n}.jsonl"
        if not source.exists():
            write_synthetic(source, n, seed=0)
        runs = {
            "baseline (parse + copy)": measure([str(source), str(out / f"copy-{n}.jsonl")], BASELINE_CHILD),
            "clean": measure(["data", "clean", str(source), "--out", str(out / f"clean-{n}.jsonl"), "--quiet"]),
            "balance": measure(["data", "balance", str(source), "--out", str(out / f"balance-{n}.jsonl"),
                                "--cap", "200", "--quiet"]),
        }
        if n == max(sizes) and args.workers > 1:
            runs[f"clean --workers {args.workers}"] = measure(
                ["data", "clean", str(source), "--out", str(out / f"clean-w-{n}.jsonl"), "--workers",
                 str(args.workers), "--quiet"])
            runs[f"clean --engine datatrove --workers {args.workers}"] = measure(
                ["data", "clean", str(source), "--out", str(out / f"clean-dt-{n}.jsonl"), "--engine", "datatrove",
                 "--workers", str(args.workers), "--quiet"])
            same = all((out / f"clean-{tag}-{n}.jsonl").read_bytes() == (out / f"clean-{n}.jsonl").read_bytes()
                       for tag in ("w", "dt"))
            runs["parallel outputs equal the one-worker output"] = same
        for name, run in runs.items():
            if isinstance(run, dict):
                run["time_vs_baseline"] = round(run["work_seconds"] / runs["baseline (parse + copy)"]["work_seconds"], 2)
                print(f"{n:>7} {name:45s} {run['work_seconds']:8.1f} s {run['records_per_second']:9.1f} rec/s "
                      f"peak {run['peak_rss_mib']:7.1f} MiB (work {run['work_memory_mib']:6.1f} MiB)", flush=True)
        results["runs"][str(n)] = runs
    results["machine"]["load_average_end"] = os.getloadavg()
    Path(args.results).write_text(json.dumps(results, indent=1) + "\n")
    print(f"-> {args.results}")


if __name__ == "__main__":
    main()
