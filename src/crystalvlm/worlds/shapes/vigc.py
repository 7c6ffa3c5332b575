"""VIGC in the shapes world: training data for a VIG model, and scoring generated pairs against the truth.

A VIG model is shown "<image>\\nGenerate a counting question about the image and answer it." and
trained to reply "Question: How many stars are in the image? Answer: 2" (dataengine.vigc's format),
one record per (scene, question type) drawn from the world's generators.

Scoring uses the world as an oracle: for an image's scene, every question its generators can ask is
collected (each generator run many times with fresh random streams) with its true short answer. A
generated question is *valid* when it is one of them, and *of the requested type* when the generator
of that type asks it. On valid questions, an answer is *right* when it equals the truth (case, space
and a final period ignored), and a *hallucination* when it is wrong and asserts something the image
does not show: every wrong answer except "no" to a question whose truth is "yes" (a miss, not an
invention).
"""

from __future__ import annotations

import random
from pathlib import Path

from crystalvlm.dataengine.vigc import vig_prompt, vig_target
from crystalvlm.worlds.shapes.engine import IMAGE_SIZE, draw_scene, normalise_answer, shape_statistics
from crystalvlm.worlds.shapes.questions import QA_GENERATORS, SHORT_ANSWER_PROMPT, Context, LabelBalancer
from crystalvlm.worlds.shapes.scenes import Scene, render_scene

# The VIG question type of each capability (the words put into the VIG prompt).
VIGC_QUESTION_TYPES: dict[str, str] = {name: name.replace("_", " ") for name in QA_GENERATORS if name != "multiple_choice"}
VIGC_QUESTION_SUFFIX = SHORT_ANSWER_PROMPT  # generated questions are asked in the short-answer format


def vig_training_records(count: int, folder: Path, seed: int = 0, image_size: int = IMAGE_SIZE,
                         excluded: frozenset = frozenset()) -> list[dict]:
    """`count` VIG records cycling through the question types, images under folder/images."""
    stats = shape_statistics(image_size)
    balancer = LabelBalancer()
    kinds = list(VIGC_QUESTION_TYPES)
    (Path(folder) / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(count):
        kind = kinds[index % len(kinds)]
        for attempt in range(100):
            rng = random.Random(f"shapes-vig-train:{seed}:{index}:{attempt}")
            scene = draw_scene(kind, rng, image_size)
            if scene.signature() in excluded:
                continue
            qa = QA_GENERATORS[kind](Context(rng, scene, stats, balancer))
            if qa is not None:
                break
        else:
            raise RuntimeError(f"VIG record {index}: no question after 100 scenes")
        name = f"vig_{index:06d}.png"
        render_scene(scene).save(Path(folder) / "images" / name)
        records.append({"id": f"vig-{index:06d}", "image": name, "conversations": [
            {"from": "human", "value": f"<image>\n{vig_prompt(VIGC_QUESTION_TYPES[kind])}"},
            {"from": "gpt", "value": vig_target(qa.question, qa.short)}]})
    return records


def scene_questions(scene: Scene, draws: int = 300, image_size: int = IMAGE_SIZE) -> dict[str, dict[str, str]]:
    """Per question type, every question the world's generators asked about `scene` in `draws` tries
    -> its true short answer."""
    stats = shape_statistics(image_size)
    table: dict[str, dict[str, str]] = {}
    for kind, generator in QA_GENERATORS.items():
        asked: dict[str, str] = {}
        for draw in range(draws):
            qa = generator(Context(random.Random(f"shapes-oracle:{kind}:{draw}"), scene, stats, LabelBalancer()))
            if qa is not None:
                asked.setdefault(qa.question, qa.short)
        table[kind] = asked
    return table


def judge_pair(question: str, answer: str, requested: str, table: dict[str, dict[str, str]]) -> dict:
    """valid, of_type, right and hallucination of one generated pair (module docstring)."""
    truth = next((asked[question] for asked in table.values() if question in asked), None)
    valid = truth is not None
    right = valid and normalise_answer(answer) == normalise_answer(truth)
    missed = valid and normalise_answer(truth) == "yes" and normalise_answer(answer) == "no"
    return {"valid": valid, "of_type": question in table.get(requested, {}), "right": right,
            "hallucination": valid and not right and not missed, "truth": truth}
