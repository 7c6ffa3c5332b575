"""Adaptive vs uniform bad-case sampling at equal total data budget, on the shapes world
(docs/data-engine.md):

    python benchmarks/data_engine_rounds.py --out /tmp/engine-compare --budget 1200 --rounds 3

runs, with the same seeds,

    adaptive  crystalvlm engine run --rounds 3 --budget 1200 --out OUT/adaptive   (prepares the world and
              the starting model itself: this run is also the end-to-end timing of the default path)
    uniform   crystalvlm engine run --rounds 3 --budget 1200 --sampling uniform --model START --out OUT/uniform
    single    crystalvlm engine run --rounds 1 --budget 3600 --model START --out OUT/single

then writes benchmarks/results/data_engine_rounds.json and the plot docs/data-engine-rounds.png.
A rerun continues unfinished runs (--resume) and keeps finished ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _intervals(out: Path, rounds: int) -> list[dict]:
    """Per round, each capability's (error rate, Wilson low, high) from the round's weakness profile."""
    found = []
    for index in range(rounds + 1):
        profile = json.loads((out / f"round_{index}" / "weakness_profile.json").read_text())
        found.append({name: [c["error_rate"], c["ci_low"], c["ci_high"]] for name, c in profile["capabilities"].items()})
    return found


def _run(name: str, command: list[str], out: Path, rounds: int) -> dict:
    summary_path = out / "summary.json"
    finished = summary_path.is_file() and len(json.loads(summary_path.read_text())["rounds"]) == rounds + 1
    record = {"command": "crystalvlm " + " ".join(command), "wall_seconds": None, "load_before": None, "load_after": None}
    if not finished:  # a finished run is kept as it is (its time was taken when it ran)
        if (out / "engine.json").is_file():
            command = command + ["--resume"]
        print(f"== {name}: {' '.join(command)}", flush=True)
        load_before, started = _load(), time.time()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
        subprocess.run([sys.executable, "-m", "crystalvlm.cli", *command], check=True, env=env)
        record.update(wall_seconds=round(time.time() - started, 1), load_before=load_before, load_after=_load())
    return {**record, "summary": json.loads(summary_path.read_text()), "error_rate_ci95": _intervals(out, rounds)}


def _plot(results: dict, path: Path) -> None:
    from crystalvlm.reporting import close, new_figure

    runs = results["runs"]
    capabilities = list(runs["adaptive"]["summary"]["rounds"][0]["scores"])
    fig, axes = new_figure(12, 3.8)
    fig.clf()
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    styles = {"adaptive": ("tab:red", "o"), "uniform": ("tab:blue", "s"), "single": ("tab:green", "^")}
    for name, run in runs.items():
        rounds = run["summary"]["rounds"]
        records = [sum(r["records"] for r in rounds[: i + 1]) for i in range(len(rounds))]
        colour, marker = styles[name]
        left.plot(records, [r["overall"] for r in rounds], marker=marker, color=colour, linewidth=2, label=f"{name} overall")
        for capability in capabilities:
            left.plot(records, [r["scores"][capability] for r in rounds], color=colour, alpha=0.25, linewidth=1)
    left.set_xlabel("records generated so far")
    left.set_ylabel("probe score (overall bold, capabilities faint)")
    left.set_ylim(0, 1)
    left.legend(fontsize=8)
    width = 0.27
    xs = range(len(capabilities))
    start = runs["adaptive"]["summary"]["rounds"][0]["scores"]
    right.bar([x - width for x in xs], [start[c] for c in capabilities], width * 0.9, color="lightgray", label="start")
    for offset, name in zip((0, width, 2 * width), runs):
        final = runs[name]["summary"]["rounds"][-1]["scores"]
        right.bar([x + offset - width / 2 for x in xs], [final[c] for c in capabilities], width * 0.9 / 1.5,
                  color=styles[name][0], label=f"{name} (final)")
    right.set_xticks(list(xs), capabilities, rotation=25, ha="right")
    right.set_ylim(0, 1)
    right.set_ylabel("probe score")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder of the three runs")
    parser.add_argument("--budget", type=int, default=1200, help="records per round of the 3-round runs")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the adaptive and uniform runs")
    parser.add_argument("--world", help="a prepared shapes world to reuse (default: the adaptive run prepares one)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "data_engine_rounds.json"))
    parser.add_argument("--plot", default=str(ROOT / "docs" / "data-engine-rounds.png"))
    args = parser.parse_args()
    out = Path(args.out)
    common = ["engine", "run", "--quiet"]
    start = out / "adaptive" / "start" / "finetune" / "final"
    runs = {}
    adaptive = common + ["--rounds", str(args.rounds), "--budget", str(args.budget), "--out", str(out / "adaptive")]
    runs["adaptive"] = _run("adaptive", adaptive + (["--world", args.world] if args.world else []), out / "adaptive",
                            args.rounds)
    runs["uniform"] = _run("uniform", common + ["--rounds", str(args.rounds), "--budget", str(args.budget),
                                                "--sampling", "uniform", "--model", str(start), "--out",
                                                str(out / "uniform")], out / "uniform", args.rounds)
    runs["single"] = _run("single", common + ["--rounds", "1", "--budget", str(args.rounds * args.budget),
                                              "--model", str(start), "--out", str(out / "single")], out / "single", 1)
    import torch
    import transformers

    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                           "transformers": transformers.__version__, "shared": True},
               "settings": vars(args), "runs": runs}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2))
    _plot(results, Path(args.plot))
    for name, run in runs.items():
        final = run["summary"]["rounds"][-1]
        print(f"{name:<9} {run['wall_seconds'] or 0:>7.0f} s  overall {final['overall']:.3f}  "
              + "  ".join(f"{k} {v:.3f}" for k, v in final["scores"].items()))


if __name__ == "__main__":
    main()
