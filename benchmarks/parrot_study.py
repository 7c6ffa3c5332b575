"""Parrot captions in the shapes world: curate them with `crystalvlm data parrot`, train the tiny CLIP
on curated vs uncurated pairs of equal size, and measure what "Parrot Captions Teach CLIP to Spot
Text" measured: text-spotting bias vs visual understanding, and the LLaVA built on each CLIP.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/parrot_study.py \
        --world runs/quickstart/world --out runs/parrot-study

Steps (each resumes: a finished step's output is reused):
 1. pairs      the world's CLIP pairs, every text-bearing image's caption replaced by a parrot caption
               ("CAT", "CAT CAT", "text CAT"): 24% of the pairs (worlds/shapes/parrot.py)
 2. reader     the world's tiny text reader trained on its training images (worlds/shapes/text_reader.py)
 3. detect     `data parrot` with the ground truth (--spotted-key visible_text) and with the reader;
               precision/recall of the removals against the injected truth (the reader also on
               held-out images: the TextVQA benchmark's, half of them given parrot captions)
 4. clips      two tiny CLIPs, same steps and seed: on the reader-curated pairs and on a random subset
               of the uncurated pairs of the same size
 5. probe      text spotting (which of the world's texts an image shows, by image-text similarity;
               how often the spelled text beats the true shape caption) and visual understanding
               (shape-caption retrieval; linear probes of shapes and colours on the features LLaVA reads)
 6. llava      recipe `tiny` on each CLIP (align, then finetune, steps as set below); POPE and MME
Results: benchmarks/results/parrot_study.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from curation_common import ROOT, machine, train_and_evaluate, write_json  # noqa: E402

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def shape_tags(objects: list[dict]) -> str:
    """The world's CLIP caption of a scene from its annotation ('1 circle and 2 star')."""
    counts = Counter(obj["shape"] for obj in objects)
    return " and ".join(f"{n} {shape}" for shape, n in sorted(counts.items()))


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    tmp.replace(path)


def run_parrot_command(arguments: list[str]) -> dict:
    """`crystalvlm data parrot ...` in this process; its JSON summary (printed last) and wall time."""
    import contextlib
    import io

    from crystalvlm.cli import main

    buffer = io.StringIO()
    started = time.time()
    with contextlib.redirect_stdout(buffer):
        code = main(["data", "parrot", *arguments, "--quiet"])
    if code != 0:
        raise RuntimeError(f"data parrot failed ({code}): {buffer.getvalue()[-2000:]}")
    summary = json.loads(buffer.getvalue()[buffer.getvalue().index("{"):])
    summary["wall_seconds"] = round(time.time() - started, 2)
    return summary


def removal_quality(pairs_path: Path, removed_path: Path) -> dict:
    """Precision and recall of 'parrot caption' removals against the injected truth (`is_parrot`)."""
    truth = {record["image"] for record in read_jsonl(pairs_path) if record["is_parrot"]}
    removed = {entry["record"]["image"] for entry in read_jsonl(removed_path) if entry["reason"] == "parrot caption"}
    hits = len(truth & removed)
    return {"injected": len(truth), "removed": len(removed), "correct": hits,
            "precision": round(hits / len(removed), 4) if removed else None,
            "recall": round(hits / len(truth), 4) if truth else None}


# ----------------------------------------------------------------------------- CLIP probes
def clip_features(model, tokenizer, images: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, E) normalised image embeddings and (N, D) mean layer -2 patch features (what LLaVA reads)."""
    from crystalvlm.worlds.parts.loop import load_pixels

    side = model.config.vision_config.image_size
    embeds, patches = [], []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            pixels = load_pixels(images[start:start + 256], side, MEAN, STD)
            vision = model.vision_model(pixel_values=pixels, output_hidden_states=True)
            embeds.append(torch.nn.functional.normalize(model.visual_projection(vision.pooler_output), dim=-1))
            patches.append(vision.hidden_states[-2][:, 1:].mean(dim=1))
    return torch.cat(embeds), torch.cat(patches)


def text_embeddings(model, tokenizer, texts: list[str]) -> torch.Tensor:
    encoded = tokenizer([t + tokenizer.eos_token for t in texts], add_special_tokens=False, padding=True,
                        truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        out = model.text_model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])
        return torch.nn.functional.normalize(model.text_projection(out.pooler_output), dim=-1)


def ridge_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                strength: float = 1.0) -> dict:
    """Multi-label linear probe (closed-form ridge on standardised features, threshold 0.5): mean
    per-label accuracy, and the same for always answering each label's majority."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a = torch.cat([(train_x - mean) / std, torch.ones(len(train_x), 1)], 1)
    b = torch.cat([(test_x - mean) / std, torch.ones(len(test_x), 1)], 1)
    weights = torch.linalg.solve(a.T @ a + strength * torch.eye(a.shape[1]), a.T @ train_y)
    predicted = (b @ weights) > 0.5
    accuracy = (predicted == test_y.bool()).float().mean().item()
    majority = (train_y.mean(0) > 0.5)
    chance = (majority.unsqueeze(0) == test_y.bool()).float().mean().item()
    return {"accuracy": round(accuracy, 4), "majority_baseline": round(chance, 4)}


def probe_clip(clip_dir: Path, world: Path) -> dict:
    from transformers import AutoTokenizer, CLIPModel

    from crystalvlm.worlds.shapes.scenes import COLORS, SHAPES

    model = CLIPModel.from_pretrained(clip_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(world / "parts" / "tokenizer")
    annotations = {name: json.loads((world / "annotations" / f"{name}.json").read_text())
                   for name in ("train", "eval", "textvqa")}

    def paths(name: str) -> list[Path]:
        root = world / annotations[name]["image_root"]
        return [root / entry["file"] for entry in annotations[name]["images"]]

    train_texts = sorted({e["text"] for e in annotations["train"]["images"] if e.get("text")})
    # Text spotting: held-out images that all carry text (the TextVQA benchmark's images).
    reading = annotations["textvqa"]["images"]
    read_embeds, _ = clip_features(model, tokenizer, paths("textvqa"))
    candidates = sorted(set(train_texts) | {e["text"] for e in reading})
    candidate_embeds = text_embeddings(model, tokenizer, candidates)
    best = (read_embeds @ candidate_embeds.T).argmax(1)
    text_accuracy = sum(candidates[i] == e["text"] for i, e in zip(best.tolist(), reading)) / len(reading)
    spelled = text_embeddings(model, tokenizer, [e["text"] for e in reading])
    described = text_embeddings(model, tokenizer, [shape_tags(e["objects"]) for e in reading])
    prefers_text = ((read_embeds * spelled).sum(1) > (read_embeds * described).sum(1)).float().mean().item()

    # Visual understanding: held-out POPE images.
    seen = annotations["eval"]["images"]
    eval_embeds, eval_patches = clip_features(model, tokenizer, paths("eval"))
    tags = [shape_tags(e["objects"]) for e in seen]
    distinct = sorted(set(tags))
    tag_embeds = text_embeddings(model, tokenizer, distinct)
    chosen = (eval_embeds @ tag_embeds.T).argmax(1)
    retrieval = sum(distinct[i] == t for i, t in zip(chosen.tolist(), tags)) / len(tags)
    # Same with the text-bearing held-out images: does the written text get in the way?
    read_tags = [shape_tags(e["objects"]) for e in reading]
    read_distinct = sorted(set(read_tags))
    read_chosen = (read_embeds @ text_embeddings(model, tokenizer, read_distinct).T).argmax(1)
    retrieval_with_text = sum(read_distinct[i] == t for i, t in zip(read_chosen.tolist(), read_tags)) / len(read_tags)

    _, train_patches = clip_features(model, tokenizer, paths("train"))

    def labels(entries: list[dict], key: str, vocabulary) -> torch.Tensor:
        return torch.tensor([[float(any(o[key] == v for o in e["objects"])) for v in vocabulary] for e in entries])

    train_entries = annotations["train"]["images"]
    return {
        "text_spotting": {
            "text_retrieval_accuracy": round(text_accuracy, 4),
            "text_candidates": len(candidates),
            "spelled_text_beats_shape_caption": round(prefers_text, 4),
            "images": len(reading),
        },
        "visual": {
            "shape_caption_retrieval": round(retrieval, 4),
            "shape_caption_candidates": len(distinct),
            "shape_caption_retrieval_on_text_images": round(retrieval_with_text, 4),
            "shape_probe": ridge_probe(train_patches, labels(train_entries, "shape", SHAPES),
                                       eval_patches, labels(seen, "shape", SHAPES)),
            "colour_probe": ridge_probe(train_patches, labels(train_entries, "color", COLORS),
                                        eval_patches, labels(seen, "color", COLORS)),
            "images": len(seen),
        },
    }


# ----------------------------------------------------------------------------- the study
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True, type=Path, help="a prepared shapes world (read only)")
    parser.add_argument("--out", required=True, type=Path, help="working folder (resumable)")
    parser.add_argument("--clip-steps", type=int, default=800, help="CLIP steps (the tiny recipe's)")
    parser.add_argument("--reader-steps", type=int, default=600, help="text-reader steps")
    parser.add_argument("--finetune-epochs", type=float, default=1.0, help="LLaVA finetune epochs (recipe: 2)")
    parser.add_argument("--pope-limit", type=int, default=900, help="POPE questions per split")
    parser.add_argument("--llava-sets", default="uncurated,curated_ground_truth",
                        help="which CLIPs get a LLaVA (comma-separated, in order)")
    parser.add_argument("--skip-llava", action="store_true", help="stop after the CLIP probes")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "parrot_study.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    world, out = args.world.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}

    def save() -> None:
        results["machine"] = machine()
        write_json(results_path, results)
        write_json(args.results, results)

    from transformers import AutoTokenizer

    from crystalvlm.worlds.parts.clip import pretrain_tiny_clip
    from crystalvlm.worlds.parts.tiny import tiny_vision_config
    from crystalvlm.worlds.shapes.parrot import parrot_pairs, read_train_annotations
    from crystalvlm.worlds.shapes.text_reader import train_text_reader

    settings = json.loads((world / "prepared.json").read_text())["settings"]
    vision_config = tiny_vision_config(**settings["vision"])

    # 1. pairs with parrot captions
    pairs_path = out / "pairs_uncurated.jsonl"
    if not pairs_path.is_file():
        write_jsonl(pairs_path, parrot_pairs(world, share=1.0, seed=0))
    pairs = read_jsonl(pairs_path)
    results["pairs"] = {"total": len(pairs), "parrot": sum(p["is_parrot"] for p in pairs),
                        "command": f"parrot_pairs(world, share=1.0, seed=0) -> {pairs_path.name}"}

    # 2. the world's text reader
    reader_dir = out / "reader"
    if "reader" not in results:
        truth = read_train_annotations(world)
        images = sorted(truth)
        report = train_text_reader([world / "images" / i for i in images], [truth[i].get("text") for i in images],
                                   vision_config, reader_dir, steps=args.reader_steps, progress=False)
        results["reader"] = {k: v for k, v in report.items() if k != "losses"}
        save()

    # 3. detection with the ground truth and with the reader
    common = ["--image-folder", str(world / "images"), "--threshold", "0.5", "--mode", "remove"]
    for name, source in (("ground_truth", ["--spotted-key", "visible_text"]),
                         ("reader", ["--reader", "crystalvlm.worlds.shapes.text_reader:load_reader",
                                     "--reader-model", str(reader_dir)])):
        key = f"detect_{name}"
        if key in results:
            continue
        curated = out / f"curated_{name}.jsonl"
        for stale in out.glob(f"curated_{name}*"):
            stale.unlink()
        summary = run_parrot_command([str(pairs_path), "--out", str(curated), *common, *source])
        results[key] = {"command": "crystalvlm data parrot " + " ".join([pairs_path.name, "--out", curated.name,
                                                                        *common, *source]),
                        "summary": summary,
                        "against_truth": removal_quality(pairs_path, curated.with_name(curated.stem + ".removed.jsonl"))}
        save()

    # 3b. the reader on held-out images (the TextVQA benchmark's, all with text, none seen in training):
    # every other caption spells the text, the rest are shape tags
    if "detect_reader_held_out" not in results:
        held = json.loads((world / "annotations" / "textvqa.json").read_text())
        held_pairs = [{"image": entry["file"], "caption": entry["text"] if index % 2 == 0 else shape_tags(entry["objects"]),
                       "is_parrot": index % 2 == 0} for index, entry in enumerate(held["images"])]
        held_path = out / "pairs_held_out.jsonl"
        write_jsonl(held_path, held_pairs)
        curated = out / "curated_held_out.jsonl"
        for stale in out.glob("curated_held_out*"):
            stale.unlink()
        arguments = [str(held_path), "--out", str(curated), "--image-folder", str(world / held["image_root"]),
                     "--threshold", "0.5", "--reader", "crystalvlm.worlds.shapes.text_reader:load_reader",
                     "--reader-model", str(reader_dir)]
        summary = run_parrot_command(arguments)
        results["detect_reader_held_out"] = {
            "command": "crystalvlm data parrot " + " ".join([held_path.name, *arguments[1:]]), "summary": summary,
            "against_truth": removal_quality(held_path, curated.with_name(curated.stem + ".removed.jsonl"))}
        save()

    # 4. CLIPs at equal size: uncurated, curated with the ground truth, curated with the reader
    tokenizer = AutoTokenizer.from_pretrained(world / "parts" / "tokenizer")
    kept = {name: read_jsonl(out / f"curated_{name}.jsonl") for name in ("ground_truth", "reader")}
    size = min(len(records) for records in kept.values())
    sets = {"uncurated": random.Random(0).sample(pairs, size),
            "curated_ground_truth": random.Random(1).sample(kept["ground_truth"], size),
            "curated_reader": random.Random(2).sample(kept["reader"], size)}
    results["clip_data"] = {name: {"pairs": len(records), "parrot": sum(bool(r.get("is_parrot")) for r in records)}
                            for name, records in sets.items()}
    for name, records in sets.items():
        clip_dir = out / f"clip_{name}"
        if not (clip_dir / "config.json").is_file():
            report = pretrain_tiny_clip([(world / "images" / r["image"], r["caption"]) for r in records], tokenizer,
                                        vision_config, clip_dir, steps=args.clip_steps, seed=0, progress=False,
                                        lr=float(settings.get("clip_lr", 5e-4)))
            results.setdefault("clip_training", {})[name] = {"steps": report.steps, "first_loss": report.first_loss,
                                                             "last_loss": report.last_loss,
                                                             "seconds": round(report.seconds, 1)}
            save()
    # the world's own CLIP (no parrot captions, all 4000 pairs) as a reference
    reference = {"world_clip": world / "parts" / "clip"}
    # 5. probes
    for name, clip_dir in {**{n: out / f"clip_{n}" for n in sets}, **reference}.items():
        if name not in results.setdefault("probes", {}):
            results["probes"][name] = probe_clip(clip_dir, world)
            save()
    if args.skip_llava:
        return 0
    # 6. LLaVA on each CLIP
    for name in args.llava_sets.split(","):
        if name in results.setdefault("llava", {}):
            continue
        overrides = [f"model.vision.pretrained={out / f'clip_{name}'}", f"stages.finetune.epochs={args.finetune_epochs}"]
        results["llava"][name] = train_and_evaluate(world, out / f"llava_{name}", overrides, args.pope_limit)
        save()
    print(json.dumps({k: results[k] for k in ("probes", "llava") if k in results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
