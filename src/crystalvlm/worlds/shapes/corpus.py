"""The shapes world's plain-text corpus: each record after its image's caption, and existence surveys."""

from __future__ import annotations

import random

from crystalvlm.worlds.parts.corpus import corpus_line
from crystalvlm.worlds.shapes.captions import sentence_caption, yes_no
from crystalvlm.worlds.shapes.scenes import (
    SHAPES, Scene, article,
)


def grounded_corpus_line(record: dict, scene: Scene | None) -> str:
    """A corpus line that states what the record's image shows before its conversation:
    'A red star and two blue circles. Is there a star in the image? ... Yes'. An LM pretrained on
    these can learn to answer from a description earlier in its context, the skill a LLaVA reuses
    once the projector makes image tokens read like that description. On these lines alone a tiny
    LM learns it slowly (the existence questions are a small share of the tokens); the corpus's
    existence surveys carry most of that lesson."""
    line = corpus_line(record)
    return f"{sentence_caption(scene)} {line}" if scene is not None else line


def existence_survey_line(scene: Scene, rng: random.Random) -> str:
    """'A red star. Is there a circle in the image? No Is there a star in the image? Yes ...': the
    scene's caption, then POPE's question about every shape of the world, in random order.

    The LM corpus carries one per training scene: ten answers per line, each rewarding the lookup
    of the asked shape in the description. Measured with a 2-layer, 128-wide LM and 1000 steps, on
    held-out descriptions followed by one such question: 0.96 accuracy trained on these lines
    alone, 0.66 with them mixed 1:3 into the grounded conversations, where the lookup is a small
    share of the tokens."""
    shapes = list(SHAPES)
    rng.shuffle(shapes)
    counts = scene.shape_counts()
    questions = [f"Is there {article(shape)} {shape} in the image? {yes_no(counts[shape] > 0)}" for shape in shapes]
    return " ".join([sentence_caption(scene)] + questions)
