"""Two-image questions in the shapes world: "Which image has more stars? Answer first or second."

A question only a model that looks at both images can answer: each record holds two scenes whose
star counts differ, placed by their own `<image>` in the text, interleaved with labels:

    First image:\\n<image>\\nSecond image:\\n<image>\\nWhich image has more stars? Answer first or second.

(the text the server builds from the parts "First image:", image, "Second image:", image, question).
Answers are "First" or "Second", balanced. It is off in the default world: `FinetuneMix.multi_image`
(a share of extra records) turns on the training records and the benchmark
`benchmarks/multi_image_stars.json`. `study` below builds both from any shapes world's annotations
(the quickstart's world included), trains a model on them and scores it with real images against two
controls that keep the questions and change the images:

* swapped:  the same pair in the other order; the right answer flips, so a model that reads the
            images flips its answer (accuracy against the flipped truth stays high);
* shuffled: the two images replaced by another question's pair; the original answer is then unrelated
            to the images, so a model that reads them scores ~0.5 against it.

    python -m crystalvlm.worlds.shapes.multi_image --world WORLD --out OUT --steps 600 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from crystalvlm.data.templates import IMAGE_PLACEHOLDER

QUESTION = "Which image has more stars? Answer first or second."
ANSWERS = ("First", "Second")
LABELS = ("First image:", "Second image:")
BENCHMARK_FILE = "multi_image_stars.json"


def prompt_text() -> str:
    """The human turn of a two-image question (each label, then its image, on its own line)."""
    return "".join(f"{label}\n{IMAGE_PLACEHOLDER}\n" for label in LABELS) + QUESTION


def star_count(objects) -> int:
    """Stars in a scene: `objects` are SceneObjects or annotation dicts."""
    return sum(1 for obj in objects if (obj["shape"] if isinstance(obj, dict) else obj.shape) == "star")


def star_pairs(counts: list[int], n: int, rng: random.Random) -> list[tuple[int, int, str]]:
    """n (first, second, answer) index pairs whose star counts differ; "First" and "Second" alternate."""
    if len(set(counts)) < 2:
        raise ValueError("two-image star questions need scenes with different numbers of stars")
    pairs = []
    for index in range(n):
        while True:
            a, b = rng.randrange(len(counts)), rng.randrange(len(counts))
            if counts[a] != counts[b]:
                break
        more, fewer = (a, b) if counts[a] > counts[b] else (b, a)
        answer = ANSWERS[index % 2]
        pairs.append((more, fewer, answer) if answer == "First" else (fewer, more, answer))
    return pairs


def pair_record(record_id: str, first: str, second: str, answer: str) -> dict:
    return {"id": record_id, "image": [first, second],
            "conversations": [{"from": "human", "value": prompt_text()}, {"from": "gpt", "value": answer}]}


def multi_image_records(images: list[str], counts: list[int], n: int, seed: int) -> list[dict]:
    """n two-image training records over `images` (paths relative to the image folder)."""
    rng = random.Random(f"shapes-multi-image:{seed}")
    return [pair_record(f"multi_image-{index:06d}", images[a], images[b], answer)
            for index, (a, b, answer) in enumerate(star_pairs(counts, n, rng))]


def write_multi_image_benchmark(path: Path, image_folder: str, names: list[str], counts: list[int], n: int,
                                seed: int) -> dict:
    """The benchmark file: {"image_folder", "question", "questions": [{"id", "images", "answer", "stars"}]}."""
    rng = random.Random(f"shapes-multi-image-eval:{seed}")
    questions = [{"id": f"stars-{index:05d}", "images": [names[a], names[b]], "answer": answer,
                  "stars": [counts[a], counts[b]]}
                 for index, (a, b, answer) in enumerate(star_pairs(counts, n, rng))]
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps({"image_folder": image_folder, "question": prompt_text(), "questions": questions},
                                  indent=1))
    staging.replace(path)
    return {"file": str(path.name), "questions": len(questions)}


# ---------------------------------------------------------------------------- scoring
def parse_answer(text: str) -> str | None:
    """"First" / "Second" from the start of an answer (case and punctuation ignored), else None."""
    words = text.strip().lower().replace(".", " ").replace(",", " ").split()
    if not words:
        return None
    for answer in ANSWERS:
        if words[0] == answer.lower() or words[:2] == [answer.lower(), "image"]:
            return answer
    return None


def control_pairs(questions: list[dict], seed: int) -> dict[str, list[tuple[list[str], str]]]:
    """(images, answer to score against) per question, for real images and both controls."""
    rng = random.Random(f"shapes-multi-image-shuffle:{seed}")
    order = list(range(len(questions)))
    rng.shuffle(order)
    # One cycle through a random order: each question takes the next one's pair, none keeps its own.
    others = [0] * len(order)
    for position, index in enumerate(order):
        others[index] = order[(position + 1) % len(order)]
    flip = {"First": "Second", "Second": "First"}
    real = [(q["images"], q["answer"]) for q in questions]
    swapped = [(q["images"][::-1], flip[q["answer"]]) for q in questions]
    shuffled = [(questions[others[i]]["images"], q["answer"]) for i, q in enumerate(questions)]
    return {"real": real, "swapped": swapped, "shuffled": shuffled}


def evaluate(engine, benchmark: Path, image_root: Path, seed: int = 0, limit: int | None = None) -> dict:
    """Accuracy with real, swapped and shuffled images (see the module docstring), greedy decoding.

    8 new tokens: a tiny world tokenizer spells " Second</s>" in 6 tokens."""
    from PIL import Image

    from crystalvlm.data.templates import Turn
    from crystalvlm.infer.engine import DecodingConfig, GenerationRequest

    data = json.loads(Path(benchmark).read_text())
    questions = data["questions"][:limit]
    folder = Path(image_root) / data["image_folder"]
    cache: dict[str, Image.Image] = {}

    def image(name: str) -> Image.Image:
        if name not in cache:
            with Image.open(folder / name) as opened:
                cache[name] = opened.convert("RGB")
        return cache[name]

    results: dict = {}
    first_answers: dict[str, list[str | None]] = {}
    for condition, items in control_pairs(questions, seed).items():
        requests = [GenerationRequest([Turn("user", data["question"])], [image(n) for n in names]) for names, _ in items]
        answers = engine.generate(requests, DecodingConfig(strategy="greedy", max_new_tokens=8))
        parsed = [parse_answer(answer.text) for answer in answers]
        first_answers[condition] = parsed
        correct = sum(p == truth for p, (_, truth) in zip(parsed, items))
        results[condition] = {"accuracy": round(correct / len(items), 4), "answered": sum(p is not None for p in parsed),
                              "said_first": sum(p == "First" for p in parsed), "questions": len(items)}
    # Real images by the pair's star counts ("0 vs 1", ...): which comparisons the accuracy comes from.
    by_stars: dict[str, list[int]] = {}
    for question, parsed in zip(questions, first_answers["real"]):
        low, high = sorted(question["stars"])
        by_stars.setdefault(f"{low} vs {high}", []).append(int(parsed == question["answer"]))
    results["real_by_stars"] = {key: {"accuracy": round(sum(v) / len(v), 4), "questions": len(v)}
                                for key, v in sorted(by_stars.items())}
    flipped = sum(a is not None and b is not None and a != b
                  for a, b in zip(first_answers["real"], first_answers["swapped"]))
    results["swap_flip_rate"] = round(flipped / len(questions), 4)
    return results


# ---------------------------------------------------------------------------- the study
def _annotations(world: Path, split: str) -> tuple[str, list[str], list[int]]:
    data = json.loads((world / "annotations" / f"{split}.json").read_text())
    names = [entry["file"] for entry in data["images"]]
    return data["image_root"], names, [star_count(entry["objects"]) for entry in data["images"]]


def study_recipe(world: Path, data_file: Path, steps: int, batch_size: int, lr: float, seed: int) -> dict:
    """One stage on the two-image records: the world's tiny CLIP (frozen), a projector and its LM
    (parts/lm when the world has one, else a fresh tiny LM over its tokenizer) trained."""
    from transformers import AutoTokenizer

    from crystalvlm.worlds.parts.tiny import tiny_llm_config

    parts = world / "parts"
    if (parts / "lm" / "config.json").is_file():
        llm: dict = {"pretrained": str(parts / "lm")}
        tokenizer = {}
    else:
        vocab = len(AutoTokenizer.from_pretrained(parts / "tokenizer"))
        llm = {"config": tiny_llm_config(vocab, hidden=128, layers=2)}
        tokenizer = {"tokenizer": str(parts / "tokenizer")}
    records = len(json.loads(data_file.read_text()))
    epochs = max(1, -(-steps * batch_size // records))
    return {
        "name": "shapes-multi-image", "seed": seed,
        "model": {"vision": {"pretrained": str(parts / "clip")}, "llm": llm, **tokenizer, "projector": "mlp2x_gelu",
                  "vision_feature_layer": -2, "vision_feature_select_strategy": "default"},
        "image_mode": "pad",
        "datasets": {"pairs": {"file": str(data_file), "image_folder": str(world / "images")}},
        "stages": {"finetune": {"template": "vicuna_v1", "data": ["pairs"], "tunable": ["projector", "llm"],
                                "lr": {"projector": lr, "llm": lr}, "epochs": epochs, "batch_size": batch_size,
                                "warmup_ratio": 0.03, "max_length": 256, "max_steps": steps}},
    }


def run_study(world: Path, out: Path, train_pairs: int, eval_pairs: int, steps: int, batch_size: int, lr: float,
              seed: int, progress: bool = True) -> dict:
    import yaml

    from crystalvlm.infer.engine import GenerationEngine
    from crystalvlm.train.recipe import load_recipe
    from crystalvlm.train.trainer import TrainOptions, train_recipe

    world, out = Path(world), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root, names, counts = _annotations(world, "train")
    train_file = out / "multi_image_train.json"
    images = [str((Path(root) / name).relative_to("images")) for name in names]  # relative to world/images
    train_file.write_text(json.dumps(multi_image_records(images, counts, train_pairs, seed)))
    eval_root, eval_names, eval_counts = _annotations(world, "eval")
    benchmark = out / BENCHMARK_FILE
    write_multi_image_benchmark(benchmark, eval_root, eval_names, eval_counts, eval_pairs, seed)

    recipe_file = out / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(study_recipe(world, train_file, steps, batch_size, lr, seed), sort_keys=False))
    final = out / "run" / "finetune" / "final"
    previous = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    if (final / "config.json").is_file() and previous.get("steps") == steps:
        # Trained already (same settings): score again only; the training figures are the first run's.
        checkpoint, final_loss, train_seconds = final, previous.get("final_loss"), previous.get("train_seconds", 0.0)
    else:
        started = time.time()
        result = train_recipe(load_recipe(str(recipe_file)),
                              TrainOptions(run_dir=out / "run", resume=(out / "run").exists(), save_every=200,
                                           progress=progress))[-1]  # a killed study resumes from its last 200 steps
        checkpoint, final_loss, train_seconds = result.checkpoint, result.final_loss, time.time() - started
    engine = GenerationEngine.from_checkpoint(checkpoint, batch_size=32)
    started = time.time()
    scores = evaluate(engine, benchmark, world, seed)
    report = {"world": str(world), "seed": seed, "train_pairs": train_pairs, "eval_pairs": eval_pairs, "steps": steps,
              "batch_size": batch_size, "lr": lr, "llm": "parts/lm" if (world / "parts/lm/config.json").is_file() else
              "fresh tiny LM", "final_loss": final_loss, "train_seconds": round(train_seconds, 1),
              "eval_seconds": round(time.time() - started, 1), "checkpoint": str(checkpoint), "scores": scores}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    _write_html(out, report)
    return report


def _write_html(out: Path, report: dict) -> Path:
    from crystalvlm.reporting import HtmlReport, add_loss_curves, close, new_figure

    page = HtmlReport("shapes world: two-image questions")
    page.paragraph(f"\"{QUESTION}\" on {report['eval_pairs']} held-out pairs; {report['steps']} steps of batch "
                   f"{report['batch_size']}, seed {report['seed']}, LM: {report['llm']}.")
    scores = report["scores"]
    conditions = ["real", "swapped", "shuffled"]
    page.table(["images", "accuracy", "answered", "said 'First'"],
               [[c, scores[c]["accuracy"], scores[c]["answered"], scores[c]["said_first"]] for c in conditions])
    page.paragraph(f"Answers that flip when the two images are swapped: {scores['swap_flip_rate']}")
    page.table(["stars in the pair", "accuracy (real images)", "questions"],
               [[key, value["accuracy"], value["questions"]] for key, value in scores["real_by_stars"].items()])
    fig, axis = new_figure(5, 3)
    axis.bar(conditions, [scores[c]["accuracy"] for c in conditions])
    axis.axhline(0.5, color="gray", linestyle="--", linewidth=1, label="chance")
    axis.set_ylim(0, 1)
    axis.set_ylabel("accuracy")
    axis.legend()
    page.figure(fig, "accuracy with real, swapped and shuffled images")
    close(fig)
    add_loss_curves(page, out / "run")
    return page.write(out / "report.html")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and score two-image star questions on a shapes world.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--world", required=True, help="a prepared shapes world (annotations/, images/, parts/clip, "
                                                       "parts/tokenizer; parts/lm is used when present)")
    parser.add_argument("--out", required=True, help="folder for the data, the run, report.json and report.html")
    parser.add_argument("--train-pairs", type=int, default=8000, help="two-image training records")
    parser.add_argument("--eval-pairs", type=int, default=400, help="held-out questions")
    parser.add_argument("--steps", type=int, default=600, help="training steps")
    parser.add_argument("--batch-size", type=int, default=32, help="records per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of the projector and the LM")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the model and the training order")
    args = parser.parse_args(argv)
    report = run_study(Path(args.world), Path(args.out), args.train_pairs, args.eval_pairs, args.steps, args.batch_size,
                       args.lr, args.seed)
    print(json.dumps(report["scores"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
