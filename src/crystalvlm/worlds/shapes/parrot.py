"""Parrot captions in the shapes world: CLIP pairs whose caption spells the image's written text.

A quarter of the world's scenes carry a word, a number or a sum. `parrot_pairs` writes the world's
CLIP pairs (`clip_pairs.jsonl`: shape tags such as "1 circle and 2 star") with a share of the
captions of text-bearing images replaced by captions that merely spell the text ("CAT", "CAT CAT",
"text CAT"), the way LAION captions parrot the text in their images. Every pair also carries the
ground truth: `visible_text` (the written text, [] when none) and `is_parrot` (whether it was replaced),
so `crystalvlm data parrot --spotted-key visible_text` can be calibrated against the truth.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PARROT_TEMPLATES = ("{text}", "{text} {text}", "text {text}")  # co-emb text rates 1, 1 and 0.5


def read_train_annotations(world: Path) -> dict[str, dict]:
    """image path (relative to world/images) -> its annotation (objects, text)."""
    annotations = json.loads((Path(world) / "annotations" / "train.json").read_text(encoding="utf-8"))
    return {entry["file"]: entry for entry in annotations["images"]}


def parrot_pairs(world: Path, share: float, seed: int = 0) -> list[dict]:
    """The world's CLIP pairs with `share` of the text-bearing images' captions replaced by parrot
    captions; each pair gets `visible_text` and `is_parrot`."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"parrot share must lie in [0, 1], got {share}")
    rng = random.Random(f"parrot:{seed}")
    truth = read_train_annotations(world)
    pairs = []
    with open(Path(world) / "clip_pairs.jsonl", encoding="utf-8") as handle:
        for line in handle:
            pair = json.loads(line)
            text = truth[pair["image"]].get("text")
            draw, template = rng.random(), rng.choice(PARROT_TEMPLATES)  # drawn for every pair: stable streams
            parrot = text is not None and draw < share
            pairs.append({"image": pair["image"],
                          "caption": template.format(text=text) if parrot else pair["caption"],
                          "visible_text": [text] if text is not None else [], "is_parrot": parrot})
    return pairs
