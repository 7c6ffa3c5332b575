"""`crystalvlm data pairs MODEL --world DIR --out PAIRS.jsonl`: HA-DPO preference pairs from a model's
own detailed descriptions, judged against annotations (preference_pairs.py), written in TRL's vision
DPO layout (data/preference_records.py) for a `kind: dpo` stage or for TRL itself.

    --world DIR        a prepared synthetic world: DIR/annotations/train.json, its images, and its
                       CHAIR synonyms (DIR/benchmarks/chair/synonyms.txt) when present
    --annotations F    or annotations of your own: {"image_root"?, "images": [{"file", "objects":
    --image-folder D     [{"name", attribute: value, ...}]}]}, with the images they name under D

Besides PAIRS.jsonl it writes PAIRS.details.jsonl (per pair: the sampled description, the
hallucinated objects and attributes found, what the negative added) and PAIRS.summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

from crystalvlm.dataengine.preference_pairs import AnnotatedImage, Judge, build_pair, read_annotations
from crystalvlm.data.preference_records import pair_line

DEFAULT_PROMPT = "Please describe this image in detail."
# POPE's question: existence pairs ask it of each hallucinated object ("No" preferred) and of one present object
# ("Yes" preferred, so the pairs do not simply teach "No").
EXISTENCE_PROMPT = "Is there {article} {object} in the image?\nAnswer the question using a single word or phrase."


def _existence_question(name: str) -> str:
    return EXISTENCE_PROMPT.format(article="an" if name[0] in "aeiou" else "a", object=name)


def _write_lines_atomic(path: Path, rows: list[dict]) -> None:
    partial = path.with_name(path.name + f".partial-{os.getpid()}")
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def world_inputs(world: Path) -> tuple[Path, Path, Path | None]:
    """(annotations, image folder, synonyms or None) of a prepared world folder."""
    world = Path(world)
    annotations = world / "annotations" / "train.json"
    if not annotations.is_file():
        raise FileNotFoundError(f"--world {world}: no annotations/train.json (is it a prepared world?)")
    root, _ = read_annotations(annotations)
    synonyms = world / "benchmarks" / "chair" / "synonyms.txt"
    return annotations, world / (root or Path("images")), synonyms if synonyms.is_file() else None


def make_pairs(model: str | Path, annotations: Path, image_folder: Path, out: Path, *, synonyms: Path | None = None,
               images: int = 400, temperature: float = 0.7, max_new_tokens: int = 96, seed: int = 0,
               batch_size: int = 32, prompt: str = DEFAULT_PROMPT, existence_pairs: bool = False,
               attributes: bool = True, progress: bool = True) -> dict:
    """Sample one description per chosen image, judge it, write the pairs; return the summary. A
    description that names no known object gives no pair; the file may then be empty (summary pairs 0)."""
    from PIL import Image

    from crystalvlm.data.templates import IMAGE_PLACEHOLDER, Turn
    from crystalvlm.infer.engine import DecodingConfig, GenerationEngine, GenerationRequest

    out = Path(out)
    if out.suffix != ".jsonl":
        raise ValueError(f"--out {out}: pairs are JSON lines; give a .jsonl path")
    _, annotated = read_annotations(annotations)
    if not annotated:
        raise ValueError(f"{annotations}: no images")
    if images < 1:
        raise ValueError(f"--images must be at least 1, got {images}")
    judge = Judge.from_annotations(annotated, synonyms, attributes=attributes)
    chosen: list[AnnotatedImage] = sorted(random.Random(seed).sample(annotated, min(images, len(annotated))),
                                          key=lambda image: image.file)
    engine = GenerationEngine.from_checkpoint(model, batch_size=batch_size)
    decoding = DecodingConfig(strategy="sample", temperature=temperature, seed=seed, max_new_tokens=max_new_tokens)
    requests = []
    for image in chosen:
        path = (Path(image_folder) / image.file).resolve()
        if not path.is_relative_to(Path(image_folder).resolve()):
            raise ValueError(f"{annotations}: image {image.file!r} lies outside {image_folder}")
        with Image.open(path) as opened:
            # Each image its own seed: one shared seed draws the same random numbers for every request.
            requests.append(GenerationRequest([Turn("user", f"{IMAGE_PLACEHOLDER}\n{prompt}")], [opened.convert("RGB")],
                                              seed=seed * 1_000_003 + len(requests)))
    answers = engine.generate(requests, decoding, progress=progress)

    lines, details = [], []
    counts = {"images": len(chosen), "pairs": 0, "samples_with_hallucination": 0, "hallucinated_objects": 0,
              "wrong_attributes": 0, "negatives_with_added_hallucination": 0, "no_pair": 0, "existence_pairs": 0}
    for index, (image, answer) in enumerate(zip(chosen, answers)):
        pair = build_pair(answer.text, image, prompt, judge)
        if pair is None:
            counts["no_pair"] += 1
            continue
        pair_id = f"hadpo-{index:06d}"
        lines.append(pair_line(pair_id, pair.image, prompt, pair.chosen, pair.rejected))
        details.append({"id": pair_id, "image": pair.image, "sample": pair.sample,
                        "hallucinated_objects": pair.hallucinated_objects, "wrong_attributes": pair.wrong_attributes,
                        "added": pair.added})
        counts["pairs"] += 1
        counts["samples_with_hallucination"] += pair.added is None
        counts["hallucinated_objects"] += len(pair.hallucinated_objects)
        counts["wrong_attributes"] += len(pair.wrong_attributes)
        counts["negatives_with_added_hallucination"] += pair.added is not None
        if existence_pairs:  # the same judged hallucinations, asked as POPE asks them
            absent = pair.hallucinated_objects or ([pair.added.split(" ", 1)[1]]
                                                   if pair.added and pair.added.startswith("object ") else [])
            present = sorted({judge.canonical(o) for o in image.objects})
            asked = [(name, "No", "Yes") for name in dict.fromkeys(absent)]
            if asked and present:
                asked.append((present[index % len(present)], "Yes", "No"))
            for number, (name, right, wrong) in enumerate(asked):
                lines.append(pair_line(f"{pair_id}-exists-{number}", pair.image, _existence_question(name), right, wrong))
                counts["existence_pairs"] += 1
    summary = {"model": str(model), "annotations": str(annotations), "image_folder": str(image_folder),
               "decoding": decoding.describe(), "prompt": prompt, "seed": seed, "attributes_judged": attributes,
               **counts}
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_lines_atomic(out.with_name(out.stem + ".details.jsonl"), details)
    partial = out.with_name(out.stem + f".summary.json.partial-{os.getpid()}")
    partial.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(partial, out.with_name(out.stem + ".summary.json"))
    _write_lines_atomic(out, lines)  # last: PAIRS.jsonl present means its sidecars are complete
    return summary


def _cmd_pairs(args: argparse.Namespace) -> int:
    if args.world:
        if args.annotations or args.image_folder:
            raise ValueError("give --world, or --annotations with --image-folder, not both")
        annotations, image_folder, synonyms = world_inputs(Path(args.world))
    else:
        if not (args.annotations and args.image_folder):
            raise ValueError("give --world DIR, or --annotations FILE with --image-folder DIR")
        annotations, image_folder = Path(args.annotations), Path(args.image_folder)
        synonyms = None
    if args.synonyms:
        synonyms = Path(args.synonyms)
    summary = make_pairs(args.model, annotations, image_folder, Path(args.out), synonyms=synonyms, images=args.images,
                         temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed,
                         batch_size=args.batch_size, prompt=args.prompt, existence_pairs=args.existence_pairs,
                         attributes=not args.objects_only, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    if not summary["pairs"]:
        print(f"no pair could be made from {summary['images']} descriptions (none named an object the annotations "
              "know); is the model trained?", file=sys.stderr)
        return 1
    return 0


def add_pairs_subcommand(data_subparsers, formatter_class) -> None:
    """`crystalvlm data pairs` (registered under the CLI's `data` command)."""
    parser = data_subparsers.add_parser(
        "pairs", help="HA-DPO preference pairs from a model's own descriptions, judged against annotations",
        formatter_class=formatter_class)
    parser.add_argument("model", help="the checkpoint whose descriptions are sampled (e.g. RUN/finetune/final)")
    parser.add_argument("--world", help="a prepared world folder (its training annotations, images and synonyms)")
    parser.add_argument("--annotations", help="an annotations file of your own (instead of --world)")
    parser.add_argument("--image-folder", help="the folder the annotations' image files are relative to")
    parser.add_argument("--synonyms", help="a CHAIR synonyms file (lines 'name, synonym, ...') for object names")
    parser.add_argument("--out", required=True, help="the pairs file (.jsonl, TRL's vision DPO layout)")
    parser.add_argument("--images", type=int, default=400, help="annotated images to describe (one pair each at most)")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the descriptions")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="token budget of a description")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the instruction the model describes each image with")
    parser.add_argument("--existence-pairs", action="store_true",
                        help="also ask POPE's existence question of each hallucinated object (No preferred) and of "
                             "one present object (Yes preferred)")
    parser.add_argument("--objects-only", action="store_true",
                        help="judge and correct object names only, not attributes (colour, size, position, ...)")
    parser.add_argument("--seed", type=int, default=0, help="which images, and the sampling")
    parser.add_argument("--batch-size", type=int, default=32, help="descriptions generated together")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cmd_pairs)
