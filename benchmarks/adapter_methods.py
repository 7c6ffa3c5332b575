"""Full finetuning vs LoRA vs Partial LoRA on the shapes world: same seed, data, steps and align
checkpoint; what each method costs (trained parameters, tokens/s, peak memory) and what it buys
(POPE and MME after training), and whether it keeps the LLM's text knowledge.

The text probe asks the world's knowledge items (corners, sides, categories, comparisons, stories:
the facts the tiny LM learned from its corpus) without an image, in the corpus's own plain-text form
("How many corners does a star have? Answer the question using a single word or phrase. 5"), and scores the answer the model gives the highest
likelihood among the item's candidates. It needs no chat template, so the align checkpoint (whose
LLM is the pretrained LM) is measured the same way as the finetuned ones.

Usage, after a quickstart has prepared the world and trained align (or any run of the tiny recipe):

    .venv/bin/python benchmarks/adapter_methods.py --world runs/quickstart/world \
        --align runs/quickstart/run/align/final --out runs/adapters

Each method trains in a child process (`crystalvlm train tiny --stage finetune`) whose peak RSS is
its memory figure; results go to benchmarks/results/adapter_methods.json and a table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

METHODS = {
    "full": [],
    "lora-r8": ["stages.finetune.lora.r=8"],
    "lora-r64": ["stages.finetune.lora.r=64"],
    "plora-r64": ["stages.finetune.lora.r=64", "stages.finetune.lora.plora=true"],
}

# The child prints its own peak RSS (KiB on Linux) after training.
TRAIN_CHILD = (
    "import resource, sys\n"
    "from crystalvlm.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    "sys.exit(code)\n"
)


def train_method(name: str, overrides: list[str], world: Path, align: Path, out: Path) -> dict:
    run = out / name
    if run.exists():
        shutil.rmtree(run)
    (run / "align").mkdir(parents=True)
    shutil.copytree(align, run / "align" / "final")
    (run / "world").symlink_to(world.resolve(), target_is_directory=True)  # prepared once, reused
    argv = ["train", "tiny", "--stage", "finetune", "--out", str(run), "--quiet"]
    for override in overrides:
        argv += ["--set", override]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    started = time.time()
    done = subprocess.run([sys.executable, "-c", TRAIN_CHILD, *argv], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: training failed\n{done.stderr[-3000:]}")
    peak_kib = int(done.stdout.split("PEAK_RSS_KIB")[-1].split()[0])
    stage = run / "finetune"
    freeze = json.loads((stage / "freeze_summary.json").read_text())
    records = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines() if line]
    rates = [r["tokens_per_s"] for r in records if r.get("tokens_per_s")]
    return {"run": str(run), "checkpoint": str(stage / "final"), "wall_s": round(time.time() - started, 1),
            "peak_rss_mib": round(peak_kib / 1024, 1), "tokens_per_s": round(statistics.median(rates), 1),
            "final_loss": records[-1]["loss"], "steps": records[-1]["step"], "freeze": freeze}


def trained_parameters(freeze: dict) -> int:
    return int(freeze["total"]["trainable"])


def benchmark_scores(checkpoint: Path, world: Path, out: Path) -> dict:
    from crystalvlm.eval.runner import evaluate
    from crystalvlm.infer.decoding.config import DecodingConfig
    from crystalvlm.infer.engine import GenerationEngine
    from crystalvlm.worlds.shapes.world import build_quickstart_tasks

    engine = GenerationEngine.from_checkpoint(checkpoint, batch_size=64)
    results = evaluate(engine, build_quickstart_tasks(world), out, DecodingConfig.parse("greedy"),
                       model_id=str(checkpoint), progress=False)
    scores = {name: round(results[name]["accuracy"], 4) for name in results if name.startswith("pope")}
    scores["mme_total"] = round(results["mme"]["perception"] + results["mme"]["cognition"], 1)
    return scores


def knowledge_probe(checkpoint: Path, n_items: int, seed: int) -> dict:
    """Accuracy of the most likely candidate answer, per knowledge kind, with no image."""
    from crystalvlm.models.checkpoint import load_checkpoint
    from crystalvlm.worlds.shapes.mixture import knowledge_item
    from crystalvlm.worlds.shapes.questions import SHORT_ANSWER_PROMPT

    model, processor, _ = load_checkpoint(checkpoint)
    model.eval()
    tokenizer = processor.tokenizer
    rng = random.Random(seed)
    right: dict[str, list[bool]] = {}
    with torch.no_grad():
        for _ in range(n_items):
            item = knowledge_item(rng)
            # The corpus line's form: one line, the short-answer instruction, then the answer.
            prompt = " ".join(f"{item.prompt()} {SHORT_ANSWER_PROMPT}".split())
            prefix = tokenizer(prompt, add_special_tokens=True)["input_ids"]
            scores = []
            for candidate in item.pool:
                answer = tokenizer(" " + candidate, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([prefix + answer])  # (1, T)
                logits = model(input_ids=ids).logits[0, :-1].float()  # (T-1, V)
                log_probs = torch.log_softmax(logits, dim=-1)
                targets = ids[0, 1:]
                picked = log_probs[torch.arange(len(targets)), targets][len(prefix) - 1:]  # the answer's tokens
                scores.append(float(picked.sum()))
            best = item.pool[max(range(len(scores)), key=scores.__getitem__)]
            right.setdefault(item.kind, []).append(best == item.answer)
    every = [hit for hits in right.values() for hit in hits]
    return {"accuracy": round(sum(every) / len(every), 4),
            "by_kind": {kind: round(sum(hits) / len(hits), 3) for kind, hits in sorted(right.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True, help="a prepared shapes world (quickstart OUT/world)")
    parser.add_argument("--align", type=Path, required=True, help="the align stage's final checkpoint")
    parser.add_argument("--out", type=Path, default=Path("runs/adapters"), help="run folders")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: " + ", ".join(METHODS))
    parser.add_argument("--probe-items", type=int, default=600, help="knowledge items in the text probe")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "adapter_methods.json")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    figures = {"align (before finetuning)": {"text_probe": knowledge_probe(args.align, args.probe_items, seed=1)}}
    for name in args.methods.split(","):
        print(f"== {name}", flush=True)
        trained = train_method(name, METHODS[name], args.world, args.align, args.out)
        checkpoint = Path(trained["checkpoint"])
        trained["benchmarks"] = benchmark_scores(checkpoint, args.world, args.out / name / "eval")
        trained["text_probe"] = knowledge_probe(checkpoint, args.probe_items, seed=1)
        trained["trained_parameters"] = trained_parameters(trained["freeze"])
        figures[name] = trained
        print(json.dumps({k: v for k, v in trained.items() if k != "freeze"}, indent=1), flush=True)

    import transformers

    record = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version(),
              "torch": torch.__version__, "transformers": transformers.__version__,
              "command": " ".join(sys.argv), "figures": figures}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=1))
    print("\n| method | trained parameters | tokens/s | peak RSS | POPE r / p / a | MME | text probe |")
    print("|---|---|---|---|---|---|---|")
    for name, row in figures.items():
        probe = row["text_probe"]["accuracy"]
        if "benchmarks" not in row:
            print(f"| {name} | | | | | | {probe:.3f} |")
            continue
        bench = row["benchmarks"]
        pope = " / ".join(f"{bench[k]:.3f}" for k in ("pope_random", "pope_popular", "pope_adversarial"))
        print(f"| {name} | {row['trained_parameters']:,} | {row['tokens_per_s']:.0f} | {row['peak_rss_mib']:.0f} MiB "
              f"| {pope} | {bench['mme_total']:.0f} | {probe:.3f} |")


if __name__ == "__main__":
    main()
