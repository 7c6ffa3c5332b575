"""Shapes-world annotations -> LLaVA-format training records.

* align records (like LCS-558K): `<image>\\n` + a brief-description request, answered by a short
  caption ("a red circle and two blue stars");
* finetune records (like the LLaVA-1.5 665K mix): existence yes/no with hard negatives, counting,
  colour, position, reading text, multiple choice, captions, detailed descriptions, multi-turn
  conversations, and text-only questions, using the mix's response-format prompts;
* the plain-text corpus (tokenizer / LM pretraining): every record after its image's caption, and
  one existence survey per training image; and the CLIP caption pairs.

Yes/no answers are kept balanced per question family by `LabelBalancer`; existence negatives are
half of the time shapes that co-occur with the present ones, so "there is a moon, so there must be
a star" is punished during training exactly as POPE's adversarial split punishes it.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, fields
from typing import Callable

from crystalvlm.data.synthetic.shapes import (
    COLORS, CORNERS, POSITION_PHRASES, POSITIONS, PLURALS, SHAPES, SIDES, STAR_POINTS, WORDS, NUMBERS,
    Scene, SceneObject, ShapeStatistics, article, column_of, evaluate_expression, is_above, is_left_of,
    number_word, row_of,
)
from crystalvlm.markers import IMAGE_TOKEN
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
OPTION_PROMPT = "Answer with the option's letter from the given choices directly."
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
YES_NO_PROMPT = "Please answer yes or no."
OPTION_LETTERS = "ABCDE"

BRIEF_PROMPTS: tuple[str, ...] = (
    "Describe the image concisely.",
    "Give a brief description of the image.",
    "Provide a brief description of the given image.",
    "Summarize the visual content of the image.",
    "Write a terse but informative summary of the picture.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.",
    "Render a clear and concise summary of the image.",
    "What is in this picture? Answer briefly.",
    "Give a short caption for this image.",
)
DETAIL_PROMPTS: tuple[str, ...] = (
    "Describe the image in detail.",
    "Please describe this image in detail.",
    "Please help me describe the image in detail.",
    "What do you see in this image? Describe it in detail.",
    "Give a detailed description of the image.",
    "Describe every object in the image and where it is.",
    "Write a detailed description of the picture.",
)
CONTEXT_HINTS: tuple[str, ...] = (
    "Look at the picture.",
    "The picture shows some shapes.",
    "Use the image to answer the question.",
)
PEOPLE: tuple[str, ...] = ("Mia", "Tom", "Ana", "Leo", "Sara", "Ben", "Nora", "Omar")

IMAGE_TASKS: tuple[str, ...] = (
    "existence", "counting", "color", "position", "ocr", "multiple_choice", "caption", "detail", "conversation",
)
TASKS: tuple[str, ...] = IMAGE_TASKS + ("text_only",)


@dataclass(frozen=True)
class FinetuneMix:
    """Shares of the finetune records by task (normalised) and how many image records to make.

    There are `round(n_train * records_per_image)` records in all; `text_only` of them have no
    image. OCR questions need a scene with text, so text scenes carry proportionally more of them
    and the overall share still matches `ocr` (as long as `ocr` <= the share of text scenes)."""

    existence: float = 0.5
    counting: float = 0.10
    color: float = 0.10
    position: float = 0.10
    ocr: float = 0.08
    multiple_choice: float = 0.10
    caption: float = 0.04
    detail: float = 0.06
    conversation: float = 0.09
    text_only: float = 0.05
    records_per_image: float = 2.0

    def __post_init__(self) -> None:
        for name in TASKS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"FinetuneMix.{name} must be a non-negative number, got {value!r}")
        if sum(getattr(self, name) for name in IMAGE_TASKS) <= 0:
            raise ValueError("FinetuneMix needs a positive weight on at least one image task")
        if not isinstance(self.records_per_image, (int, float)) or self.records_per_image <= 0:
            raise ValueError(f"FinetuneMix.records_per_image must be positive, got {self.records_per_image!r}")

    def shares(self) -> dict[str, float]:
        total = sum(getattr(self, name) for name in TASKS)
        return {name: getattr(self, name) / total for name in TASKS}

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class LabelBalancer:
    """Asks for "yes" or "no", whichever a question family has had fewer of, so that every family
    ends balanced to within one question; a generator that cannot honour the request (say, a
    "yes" about relations in a one-object scene) simply does not record anything."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter[bool]] = {}

    def want_yes(self, family: str, rng: random.Random) -> bool:
        counts = self.counts.setdefault(family, Counter())
        if counts[True] == counts[False]:
            return rng.random() < 0.5
        return counts[True] < counts[False]

    def record(self, family: str, answer_is_yes: bool) -> None:
        self.counts.setdefault(family, Counter())[answer_is_yes] += 1


@dataclass(frozen=True)
class QA:
    """One question with its two answer styles."""

    question: str
    short: str  # a single word or phrase: "Yes", "2", "red", "top left"
    sentence: str  # a natural one-sentence answer
    is_yes_no: bool = False


@dataclass
class Context:
    rng: random.Random
    scene: Scene
    stats: ShapeStatistics
    balancer: LabelBalancer


def yes_no(answer: bool) -> str:
    return "Yes" if answer else "No"


# ----------------------------------------------------------------------------------------------
# Describing scenes


def _object_phrase(color: str, shape: str, count: int) -> str:
    if count == 1:
        return f"{article(color)} {color} {shape}"
    return f"{number_word(count)} {color} {PLURALS[shape]}"


def join_words(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def object_phrases(scene: Scene) -> list[str]:
    """'a red circle', 'two blue stars', ... grouped by colour and shape, in reading order."""
    groups: Counter[tuple[str, str]] = Counter()
    order: list[tuple[str, str]] = []
    for obj in scene.reading_order():
        key = (obj.color, obj.shape)
        if key not in groups:
            order.append(key)
        groups[key] += 1
    return [_object_phrase(color, shape, groups[(color, shape)]) for color, shape in order]


def text_phrase(scene: Scene) -> str | None:
    if scene.text is None:
        return None
    if scene.text_kind == "word":
        return f'the word "{scene.text}"'
    if scene.text_kind == "number":
        return f"the number {scene.text}"
    return f"the expression {scene.text}"


def shape_caption(scene: Scene) -> str:
    """'1 circle and 2 star': the scene's shapes as counted tags, sorted, no colours, no text.

    The tiny CLIP learns from these. Measured on 1000 contrastive steps, with the shape-existence
    accuracy of a linear probe on its features (chance ~0.81): full captions 0.81 (a batch's images
    are told apart by colour alone, so the shapes are never needed), the same without colours but
    in reading order and with the written words 0.81, sorted with plurals 0.89, these tags 0.95."""
    counts = Counter(obj.shape for obj in scene.objects)
    return " and ".join(f"{n} {shape}" for shape, n in sorted(counts.items()))


def short_caption(scene: Scene) -> str:
    """'a red circle, two blue stars and the word "CAT"' — lower case, no full stop, like LCS."""
    parts = object_phrases(scene)
    text = text_phrase(scene)
    if text:
        parts.append(text)
    return join_words(parts)


def sentence_caption(scene: Scene) -> str:
    caption = short_caption(scene)
    return caption[0].upper() + caption[1:] + "."


def align_caption(scene: Scene, rng: random.Random) -> str:
    base = short_caption(scene)
    draw = rng.random()
    if draw < 0.6:
        return base
    if draw < 0.8:
        return f"{base} on a gray background"
    n = len(scene.objects)
    return f"{'a single shape' if n == 1 else number_word(n) + ' shapes'}: {base}"


def detailed_description(scene: Scene) -> str:
    n = len(scene.objects)
    sentences = [f"The image shows {'one shape' if n == 1 else number_word(n) + ' shapes'} on a light gray background."]
    for obj in scene.reading_order():
        sentences.append(f"{article(obj.size).capitalize()} {obj.size} {obj.color} {obj.shape} is {POSITION_PHRASES[obj.position]}.")
    if scene.text is not None:
        where = "at the top" if scene.text_bbox[1] < scene.image_size / 3 else "at the bottom"
        written = text_phrase(scene)
        sentences.append(f"{written[0].upper() + written[1:]} is written {where}.")
    return " ".join(sentences)


def reference_without_color(obj: SceneObject, scene: Scene) -> str:
    """The shortest name of `obj` that does not give away its colour and picks it out uniquely:
    'circle', 'large circle', or 'circle at the top left' (one object per cell, so always unique)."""
    same_shape = [o for o in scene.objects if o.shape == obj.shape]
    if len(same_shape) == 1:
        return obj.shape
    if sum(1 for o in same_shape if o.size == obj.size) == 1:
        return f"{obj.size} {obj.shape}"
    return f"{obj.shape} {POSITION_PHRASES[obj.position]}"


def reference_without_position(obj: SceneObject, scene: Scene) -> str | None:
    """'circle', 'red circle' or 'large red circle' if one of them is unique; else None."""
    candidates = [
        (obj.shape, lambda o: o.shape == obj.shape),
        (f"{obj.color} {obj.shape}", lambda o: o.shape == obj.shape and o.color == obj.color),
        (f"{obj.size} {obj.color} {obj.shape}",
         lambda o: o.shape == obj.shape and o.color == obj.color and o.size == obj.size),
    ]
    for name, same in candidates:
        if sum(1 for o in scene.objects if same(o)) == 1:
            return name
    return None


def _there_are(count: int, shape: str) -> str:
    if count == 0:
        return f"there are no {PLURALS[shape]}"
    if count == 1:
        return f"there is one {shape}"
    return f"there are {number_word(count)} {PLURALS[shape]}"


# ----------------------------------------------------------------------------------------------
# Question generators: each returns a QA or None when the scene cannot support it.

EXISTENCE_PHRASINGS: tuple[tuple[str, float], ...] = (
    ("Is there {a} {shape} in the image?", 0.6),  # POPE's exact wording
    ("Is there {a} {shape} in this image?", 0.15),
    ("Does the image contain {a} {shape}?", 0.1),
    ("Can you see {a} {shape} in the image?", 0.1),
    ("Is there any {shape} in the image?", 0.05),
)


def sample_negative_shape(ctx: Context) -> str | None:
    """An absent shape: half of the time weighted by co-occurrence with the present shapes (hard
    negatives, POPE-adversarial style), a quarter by overall frequency, a quarter uniformly."""
    absent = ctx.scene.absent_shapes()
    if not absent:
        return None
    draw = ctx.rng.random()
    if draw < 0.5:
        present = ctx.scene.present_shapes()
        weights = [ctx.stats.cooccurrence_score(s, present) + 0.5 for s in absent]
    elif draw < 0.75:
        weights = [ctx.stats.image_frequency[s] + 0.5 for s in absent]
    else:
        weights = [1.0] * len(absent)
    return ctx.rng.choices(absent, weights=weights)[0]


def existence_qa(ctx: Context, exclude: frozenset[str] = frozenset()) -> QA | None:
    """One existence question; None when the scene cannot support the balancer's wish or the
    question is in `exclude` (already asked in the same conversation). Only returned questions
    count towards the yes/no balance."""
    rng, scene = ctx.rng, ctx.scene
    want_yes = ctx.balancer.want_yes("existence", rng)
    draw = rng.random()
    if draw < 0.05:  # text presence
        if (scene.text is not None) != want_yes:
            return None
        question = rng.choice(("Is there any text in the image?", "Is there any writing in the image?"))
        sentence = (f"Yes, the image shows {text_phrase(scene)}." if want_yes else "No, there is no text in the image.")
        qa = QA(question, yes_no(want_yes), sentence, True)
    elif draw < 0.25:  # colour and shape: the hard negative is a present shape in another colour
        if want_yes:
            obj = rng.choice(scene.objects)
            color, shape = obj.color, obj.shape
        elif rng.random() < 0.6:
            shape = rng.choice(scene.present_shapes())
            taken = {o.color for o in scene.objects if o.shape == shape}
            color = rng.choice([c for c in COLORS if c not in taken])
        else:
            shape = sample_negative_shape(ctx)
            if shape is None:
                return None
            color = rng.choice(tuple(COLORS))
        question = f"Is there {article(color)} {color} {shape} in the image?"
        if want_yes:
            sentence = f"Yes, there is {article(color)} {color} {shape} {POSITION_PHRASES[obj.position]}."
        else:
            sentence = f"No, there is no {color} {shape} in the image."
        qa = QA(question, yes_no(want_yes), sentence, True)
    else:
        shape = rng.choice(scene.present_shapes()) if want_yes else sample_negative_shape(ctx)
        if shape is None:
            return None
        phrasing = rng.choices([p for p, _ in EXISTENCE_PHRASINGS], weights=[w for _, w in EXISTENCE_PHRASINGS])[0]
        question = phrasing.format(a=article(shape), shape=shape)
        count = scene.shape_counts()[shape]
        if count == 0:
            sentence = f"No, there is no {shape} in the image."
        elif count == 1:
            obj = next(o for o in scene.objects if o.shape == shape)
            sentence = f"Yes, there is {article(obj.color)} {obj.color} {shape} in the image."
        else:
            sentence = f"Yes, there are {number_word(count)} {PLURALS[shape]} in the image."
        qa = QA(question, yes_no(want_yes), sentence, True)
    if qa.question in exclude:
        return None
    ctx.balancer.record("existence", want_yes)
    return qa


def counting_qa(ctx: Context) -> QA | None:
    rng, scene = ctx.rng, ctx.scene
    counts = scene.shape_counts()
    draw = rng.random()
    if draw < 0.3:  # verify a count, yes/no
        want_yes = ctx.balancer.want_yes("counting", rng)
        shape = rng.choice(scene.present_shapes())
        true_count = counts[shape]
        asked = true_count if want_yes else rng.choice([n for n in range(1, 5) if n != true_count])
        if asked == 1:
            question = rng.choice((f"Is there only one {shape} in the image?", f"Is there exactly one {shape} in the image?"))
        else:
            question = f"Are there {number_word(asked)} {PLURALS[shape]} in the image?"
        sentence = f"{yes_no(want_yes)}, {_there_are(true_count, shape)} in the image."
        ctx.balancer.record("counting", want_yes)
        return QA(question, yes_no(want_yes), sentence, True)
    if draw < 0.5:  # all shapes
        n = len(scene.objects)
        question = rng.choice(("How many shapes are there in the image?", "How many shapes are in the image?",
                               "How many objects are in the image?"))
        sentence = f"There {'is one shape' if n == 1 else f'are {number_word(n)} shapes'} in the image."
        return QA(question, str(n), sentence)
    if draw < 0.6:  # shapes of one colour
        colors = sorted({o.color for o in scene.objects})
        color = rng.choice(colors) if rng.random() < 0.8 else rng.choice(tuple(COLORS))
        n = sum(1 for o in scene.objects if o.color == color)
        question = f"How many {color} shapes are there in the image?"
        sentence = (f"There are no {color} shapes in the image." if n == 0 else
                    f"There {'is one' if n == 1 else 'are ' + number_word(n)} {color} shape{'s' if n != 1 else ''} in the image.")
        return QA(question, str(n), sentence)
    shape = rng.choice(scene.present_shapes()) if rng.random() < 0.85 else rng.choice(scene.absent_shapes())
    question = rng.choice((f"How many {PLURALS[shape]} are there in the image?", f"How many {PLURALS[shape]} are in the image?",
                           f"How many {PLURALS[shape]} can you see?"))
    sentence = f"{_there_are(counts[shape], shape).capitalize()} in the image."
    return QA(question, str(counts[shape]), sentence)


def color_qa(ctx: Context) -> QA | None:
    rng, scene = ctx.rng, ctx.scene
    obj = rng.choice(scene.objects)
    draw = rng.random()
    if draw < 0.25:  # the shape of a colour, when that colour is unique
        if sum(1 for o in scene.objects if o.color == obj.color) != 1:
            return None
        question = rng.choice((f"What shape is the {obj.color} object?", f"What is the shape of the {obj.color} object?"))
        return QA(question, obj.shape, f"The {obj.color} object is {article(obj.shape)} {obj.shape}.")
    reference = reference_without_color(obj, scene)
    if draw < 0.55:
        want_yes = ctx.balancer.want_yes("color", rng)
        color = obj.color if want_yes else rng.choice([c for c in COLORS if c != obj.color])
        sentence = f"Yes, the {reference} is {obj.color}." if want_yes else f"No, the {reference} is {obj.color}."
        ctx.balancer.record("color", want_yes)
        return QA(f"Is the {reference} {color}?", yes_no(want_yes), sentence, True)
    question = rng.choice((f"What color is the {reference}?", f"What is the color of the {reference}?"))
    return QA(question, obj.color, f"The {reference} is {obj.color}.")


_SIDE_QUESTIONS: tuple[tuple[str, Callable[[SceneObject], bool]], ...] = (
    ("on the left side of the image", lambda o: column_of(o) == 0),
    ("on the right side of the image", lambda o: column_of(o) == 2),
    ("at the top of the image", lambda o: row_of(o) == 0),
    ("at the bottom of the image", lambda o: row_of(o) == 2),
)
_RELATIONS: tuple[tuple[str, Callable[[SceneObject, SceneObject], bool], Callable[[SceneObject, SceneObject], bool]], ...] = (
    # (words, holds(a, b), comparable(a, b)): only pairs in different columns (rows) are asked about.
    ("to the left of", is_left_of, lambda a, b: column_of(a) != column_of(b)),
    ("to the right of", lambda a, b: is_left_of(b, a), lambda a, b: column_of(a) != column_of(b)),
    ("above", is_above, lambda a, b: row_of(a) != row_of(b)),
    ("below", lambda a, b: is_above(b, a), lambda a, b: row_of(a) != row_of(b)),
)


def position_qa(ctx: Context) -> QA | None:
    rng, scene = ctx.rng, ctx.scene
    draw = rng.random()
    if draw < 0.35:  # where is X
        obj = rng.choice(scene.objects)
        reference = reference_without_position(obj, scene)
        if reference is None:
            return None
        question = rng.choice((f"Where is the {reference} in the image?", f"Where is the {reference} located?",
                               f"In which part of the image is the {reference}?"))
        return QA(question, obj.position, f"The {reference} is {POSITION_PHRASES[obj.position]} of the image.")
    if draw < 0.5:  # what is at a position
        obj = rng.choice(scene.objects)
        question = f"What shape is {POSITION_PHRASES[obj.position]} of the image?"
        return QA(question, obj.shape, f"There is {article(obj.color)} {obj.color} {obj.shape} {POSITION_PHRASES[obj.position]} of the image.")
    want_yes = ctx.balancer.want_yes("position", rng)
    if draw < 0.75:  # absolute side
        obj = rng.choice(scene.objects)
        reference = reference_without_position(obj, scene)
        options = [(words, holds) for words, holds in _SIDE_QUESTIONS if holds(obj) == want_yes]
        if reference is None or not options:
            return None
        words, _ = rng.choice(options)
        question = f"Is the {reference} {words}?"
        sentence = f"{yes_no(want_yes)}, the {reference} is {POSITION_PHRASES[obj.position]} of the image."
    else:  # relation between two objects
        pairs = [(a, b) for a in scene.objects for b in scene.objects if a is not b]
        candidates = [(a, b, words) for a, b in pairs for words, holds, comparable in _RELATIONS
                      if comparable(a, b) and holds(a, b) == want_yes]
        if not candidates:
            return None
        a, b, words = rng.choice(candidates)
        ref_a, ref_b = reference_without_position(a, scene), reference_without_position(b, scene)
        if ref_a is None or ref_b is None or ref_a == ref_b:
            return None
        question = f"Is the {ref_a} {words} the {ref_b}?"
        if want_yes:
            sentence = f"Yes, the {ref_a} is {words} the {ref_b}."
        else:
            sentence = f"No, the {ref_a} is {POSITION_PHRASES[a.position]} and the {ref_b} is {POSITION_PHRASES[b.position]}."
    ctx.balancer.record("position", want_yes)
    return QA(question, yes_no(want_yes), sentence, True)


def wrong_reading(rng: random.Random, scene: Scene) -> str:
    """A plausible but wrong reading of the scene's text."""
    if scene.text_kind == "word":
        return rng.choice([w for w in WORDS if w != scene.text])
    if scene.text_kind == "number":
        return rng.choice([n for n in NUMBERS if n != scene.text])
    value = evaluate_expression(scene.text)
    return str(rng.choice([v for v in range(max(0, value - 3), value + 4) if v != value]))


def ocr_qa(ctx: Context) -> QA | None:
    rng, scene = ctx.rng, ctx.scene
    if scene.text is None:
        return None
    kind, text = scene.text_kind, scene.text
    if rng.random() < 0.3:  # verify a reading, yes/no
        want_yes = ctx.balancer.want_yes("ocr", rng)
        if kind == "expression":
            value = evaluate_expression(text)
            asked = str(value) if want_yes else wrong_reading(rng, scene)
            question = f"Is the answer to the expression in the image {asked}?"
            sentence = f"{yes_no(want_yes)}, {text} equals {value}."
        else:
            asked = text if want_yes else wrong_reading(rng, scene)
            question = f'Is the {kind} in the image "{asked}"?'
            sentence = f'{yes_no(want_yes)}, the {kind} in the image is "{text}".'
        ctx.balancer.record("ocr", want_yes)
        return QA(question, yes_no(want_yes), sentence, True)
    if kind == "word":
        question = rng.choice(("What word is written in the image?", "What does the text in the image say?",
                               "What is written in the image?"))
        return QA(question, text, f'The image says "{text}".')
    if kind == "number":
        question = rng.choice(("What number is written in the image?", "What number is shown in the image?",
                               "What is written in the image?"))
        return QA(question, text, f"The number {text} is written in the image.")
    if rng.random() < 0.4:
        return QA("What is written in the image?", text, f"The expression {text} is written in the image.")
    question = rng.choice(("What is the result of the expression in the image?", "What is the answer to the expression in the image?"))
    value = evaluate_expression(text)
    return QA(question, str(value), f"The expression in the image is {text}, which equals {value}.")


def format_options(question: str, options: list[str], context: str | None = None) -> str:
    """LLaVA's multiple-choice layout: [Context: ...\\n]question\\nA. x\\nB. y\\n<option prompt>."""
    lines = [f"Context: {context}"] if context else []
    lines.append(question)
    lines += [f"{OPTION_LETTERS[i]}. {option}" for i, option in enumerate(options)]
    lines.append(OPTION_PROMPT)
    return "\n".join(lines)


def shuffled_options(rng: random.Random, correct: str, pool: list[str], n_options: int) -> tuple[list[str], int]:
    distractors = rng.sample([p for p in pool if p != correct], min(n_options - 1, len(pool) - 1))
    options = distractors + [correct]
    rng.shuffle(options)
    return options, options.index(correct)


def multiple_choice_qa(ctx: Context) -> QA | None:
    rng, scene = ctx.rng, ctx.scene
    n_options = rng.choice((2, 3, 4, 4))
    kind = rng.choice(("shape", "color", "count", "position", "text"))
    if kind == "shape":  # one present shape among absent ones (often co-occurring ones)
        correct = rng.choice(scene.present_shapes())
        absent = scene.absent_shapes()
        ranked = ctx.stats.adversarial_ranking(scene.present_shapes())[:4] if rng.random() < 0.5 else absent
        options, answer = shuffled_options(rng, correct, [correct] + [s for s in ranked if s in absent], n_options)
        question = rng.choice(("Which shape is in the image?", "Which of these shapes can be seen in the image?"))
    elif kind == "color":
        obj = rng.choice(scene.objects)
        correct = obj.color
        options, answer = shuffled_options(rng, correct, list(COLORS), n_options)
        question = f"What color is the {reference_without_color(obj, scene)}?"
    elif kind == "count":
        correct = str(len(scene.objects))
        options, answer = shuffled_options(rng, correct, [str(n) for n in range(1, 6)], n_options)
        options.sort(key=int)  # numbers read best in order
        answer = options.index(correct)
        question = "How many shapes are in the image?"
    elif kind == "position":
        obj = rng.choice(scene.objects)
        reference = reference_without_position(obj, scene)
        if reference is None:
            return None
        options, answer = shuffled_options(rng, obj.position, list(POSITIONS), n_options)
        question = f"Where is the {reference} in the image?"
    else:
        if scene.text is None:
            return None
        correct = scene.text
        pool = [correct] + sorted({wrong_reading(rng, scene) if scene.text_kind != "expression" else
                                   f"{rng.randint(1, 9)}+{rng.randint(1, 9)}" for _ in range(8)})
        options, answer = shuffled_options(rng, correct, pool, n_options)
        question = "What is written in the image?"
    context = rng.choice(CONTEXT_HINTS) if rng.random() < 0.3 else None
    letter = OPTION_LETTERS[answer]
    return QA(format_options(question, options, context), letter, f"{letter}. {options[answer]}")


QA_GENERATORS: dict[str, Callable[[Context], QA | None]] = {
    "existence": existence_qa,
    "counting": counting_qa,
    "color": color_qa,
    "position": position_qa,
    "ocr": ocr_qa,
    "multiple_choice": multiple_choice_qa,
}


# ----------------------------------------------------------------------------------------------
# Records


def _conversation(turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    messages = []
    for human, gpt in turns:
        messages.append({"from": "human", "value": human})
        messages.append({"from": "gpt", "value": gpt})
    return messages


def _image_record(record_id: str, image: str, turns: list[tuple[str, str]]) -> dict:
    first_human, first_gpt = turns[0]
    turns = [(f"{IMAGE_TOKEN}\n{first_human}", first_gpt)] + turns[1:]
    return {"id": record_id, "image": image, "conversations": _conversation(turns)}


def qa_turn(qa: QA, rng: random.Random, multiple_choice: bool = False) -> tuple[str, str]:
    """A single-turn (question, answer) in one of the mix's response formats."""
    if multiple_choice:  # the option prompt is already part of the question
        return qa.question, qa.short
    draw = rng.random()
    if qa.is_yes_no:
        if draw < 0.65:
            return f"{qa.question}\n{SHORT_ANSWER_PROMPT}", qa.short
        if draw < 0.8:
            return f"{qa.question} {YES_NO_PROMPT}", qa.short
        return qa.question, qa.sentence
    if draw < 0.75:
        return f"{qa.question}\n{SHORT_ANSWER_PROMPT}", qa.short
    return qa.question, qa.sentence


def align_record(index: int, image: str, scene: Scene, rng: random.Random) -> dict:
    return _image_record(f"align-{index:06d}", image, [(rng.choice(BRIEF_PROMPTS), align_caption(scene, rng))])


def _generate(task: str, ctx: Context, attempts: int = 30) -> QA | None:
    generator = QA_GENERATORS[task]
    for _ in range(attempts):
        qa = generator(ctx)
        if qa is not None:
            return qa
    return None


EXISTENCE_TURNS: tuple[int, int] = (4, 10)  # questions in one existence record, inclusive


def existence_turns(ctx: Context) -> list[tuple[str, str]] | None:
    """Several different existence questions about one image in one conversation, each in one of
    the mix's response formats: LLaVA-1.5's mix groups an image's VQA questions the same way.

    Why grouped: a lone yes/no answer is one bit of signal per sample, and a tiny LLM trained on
    those stayed on the label frequency; matching the asked shape against the image (attend from
    the answer to the question's shape, then from that shape to the image) appears only after a
    plateau, and several answers per image shorten the plateau."""
    rng = ctx.rng
    wanted = rng.randint(*EXISTENCE_TURNS)
    turns: list[tuple[str, str]] = []
    asked: set[str] = set()
    for _ in range(4 * wanted):
        if len(turns) == wanted:
            break
        qa = existence_qa(ctx, exclude=frozenset(asked))
        if qa is not None:
            asked.add(qa.question)
            turns.append(qa_turn(qa, rng))
    return turns or None


def image_task_turns(task: str, ctx: Context) -> list[tuple[str, str]] | None:
    """The (human, gpt) turns of one finetune record of `task` on the context's scene, or None."""
    rng, scene = ctx.rng, ctx.scene
    if task == "existence":
        return existence_turns(ctx)
    if task == "caption":
        return [(CAPTION_PROMPT, sentence_caption(scene))]
    if task == "detail":
        return [(rng.choice(DETAIL_PROMPTS), detailed_description(scene))]
    if task == "conversation":
        families = ["existence", "counting", "color", "position"] + (["ocr"] if scene.text is not None else [])
        turns = []
        for _ in range(rng.randint(2, 4)):
            qa = _generate(rng.choice(families), ctx)
            if qa is not None:
                turns.append((qa.question, qa.sentence))
        if rng.random() < 0.25:
            turns.insert(0, ("Describe the image.", detailed_description(scene)))
        return turns if len(turns) >= 2 else None
    qa = _generate(task, ctx)
    if qa is None:
        return None
    return [qa_turn(qa, rng, multiple_choice=task == "multiple_choice")]


def task_weights_for(scene: Scene, mix: FinetuneMix, text_share: float) -> dict[str, float]:
    """Per-scene task weights whose average over scenes equals the mix: OCR goes only to scenes
    with text, boosted by 1 / (share of text scenes); the other tasks fill the rest."""
    weights = {task: getattr(mix, task) for task in IMAGE_TASKS}
    total = sum(weights.values())
    weights = {task: w / total for task, w in weights.items()}
    ocr = weights.pop("ocr")
    rest = sum(weights.values())
    if scene.text is None or text_share <= 0:
        return weights if rest > 0 else {"caption": 1.0}
    ocr_here = min(1.0, ocr / text_share)
    scale = (1.0 - ocr_here) / rest if rest > 0 else 0.0
    return {**{task: w * scale for task, w in weights.items()}, "ocr": ocr_here}


# ---- questions about shapes, colours and numbers in words (no image) -------------------------

KNOWLEDGE_KINDS: tuple[str, ...] = (
    "corners", "sides", "star", "arithmetic", "story_count", "story_color", "category", "compare",
)


@dataclass(frozen=True)
class KnowledgeItem:
    """A question answerable from words alone, with the answer pool multiple choice draws from."""

    kind: str
    context: str | None  # a short text the question is about ("Mia has two red stars.")
    question: str
    answer: str
    sentence: str
    pool: tuple[str, ...]  # candidate answers, the right one included

    def prompt(self) -> str:
        return f"Context: {self.context}\n{self.question}" if self.context else self.question


def knowledge_item(rng: random.Random, kinds: tuple[str, ...] = KNOWLEDGE_KINDS) -> KnowledgeItem:
    kind = rng.choice(kinds)
    if kind == "corners":
        shape = rng.choice(sorted(CORNERS))
        n = CORNERS[shape]
        sentence = f"{article(shape).capitalize()} {shape} has {'no corners' if n == 0 else number_word(n) + ' corners'}."
        return KnowledgeItem(kind, None, f"How many corners does {article(shape)} {shape} have?", str(n), sentence,
                             tuple(str(k) for k in range(0, 7)))
    if kind == "sides":
        shape = rng.choice(sorted(SIDES))
        return KnowledgeItem(kind, None, f"How many sides does {article(shape)} {shape} have?", str(SIDES[shape]),
                             f"{article(shape).capitalize()} {shape} has {number_word(SIDES[shape])} sides.",
                             tuple(str(k) for k in range(3, 9)))
    if kind == "star":
        return KnowledgeItem(kind, None, "How many points does a star have?", str(STAR_POINTS),
                             f"A star has {number_word(STAR_POINTS)} points.", tuple(str(k) for k in range(3, 9)))
    if kind == "arithmetic":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        if rng.random() < 0.6:
            expression, value = f"{a}+{b}", a + b
        else:
            a, b = max(a, b), min(a, b)
            expression, value = f"{a}-{b}", a - b
        shown = expression if rng.random() < 0.5 else expression.replace("+", " + ").replace("-", " - ")
        return KnowledgeItem(kind, None, f"What is {shown}?", str(value), f"{shown} equals {value}.",
                             tuple(str(k) for k in range(max(0, value - 3), value + 4)))
    if kind in ("story_count", "story_color"):
        person = rng.choice(PEOPLE)
        items = [(rng.choice(tuple(COLORS)), rng.choice(SHAPES)) for _ in range(rng.randint(1, 3))]
        groups = Counter(items)
        story = f"{person} has {join_words([_object_phrase(c, s, n) for (c, s), n in groups.items()])}."
        shape_counts = Counter(s for _, s in items)
        unique_shapes = sorted(s for s, n in shape_counts.items() if n == 1)
        if kind == "story_color" and unique_shapes:
            shape = rng.choice(unique_shapes)
            color = next(c for c, s in items if s == shape)
            return KnowledgeItem(kind, story, f"What color is {person}'s {shape}?", color,
                                 f"{person}'s {shape} is {color}.", tuple(COLORS))
        shape = rng.choice(sorted(shape_counts)) if rng.random() < 0.85 else rng.choice(SHAPES)
        n = shape_counts[shape]
        owned = f"{number_word(n)} {PLURALS[shape]}" if n > 1 else (f"one {shape}" if n == 1 else f"no {PLURALS[shape]}")
        return KnowledgeItem("story_count", story, f"How many {PLURALS[shape]} does {person} have?", str(n),
                             f"{person} has {owned}.", tuple(str(k) for k in range(0, 5)))
    if kind == "category":
        word = rng.choice(SHAPES + tuple(COLORS))
        answer = "shape" if word in SHAPES else "color"
        return KnowledgeItem(kind, None, f"Is {word} a color or a shape?", answer,
                             f"{word.capitalize()} is {article(answer)} {answer}.", ("color", "shape"))
    # compare: two shapes with different numbers of corners
    a, b = rng.sample([s for s in sorted(CORNERS)], 2)
    while CORNERS[a] == CORNERS[b]:
        a, b = rng.sample([s for s in sorted(CORNERS)], 2)
    more = a if CORNERS[a] > CORNERS[b] else b
    return KnowledgeItem("compare", None, f"Which has more corners, {article(a)} {a} or {article(b)} {b}?", more,
                         f"{article(more).capitalize()} {more} has more corners.", (a, b))


def text_only_qa(rng: random.Random) -> tuple[QA, bool]:
    """A training question in words only; (qa, is_multiple_choice)."""
    item = knowledge_item(rng)
    if rng.random() < 0.2:
        options, answer = shuffled_options(rng, item.answer, list(item.pool), min(len(item.pool), rng.choice((2, 3, 4))))
        letter = OPTION_LETTERS[answer]
        return QA(format_options(item.question, options, item.context), letter, f"{letter}. {options[answer]}"), True
    return QA(item.prompt(), item.answer, item.sentence), False


def text_only_record(index: int, rng: random.Random) -> dict:
    qa, is_choice = text_only_qa(rng)
    human, gpt = qa_turn(qa, rng, multiple_choice=is_choice)
    return {"id": f"text_only-{index:06d}", "conversations": _conversation([(human, gpt)])}


@dataclass
class FinetuneSet:
    records: list[dict]
    task_counts: dict[str, int]
    label_counts: dict[str, dict[str, int]]  # per yes/no family: {"yes": n, "no": n}


def build_finetune_records(
    scenes: list[Scene], images: list[str], stats: ShapeStatistics, mix: FinetuneMix, seed: int,
    text_share: float,
) -> FinetuneSet:
    """The finetune mix over the training scenes (images[i] shows scenes[i]), shuffled."""
    if len(scenes) != len(images):
        raise ValueError(f"{len(scenes)} scenes but {len(images)} image paths")
    if not scenes:
        raise ValueError("the finetune mix needs at least one training scene")
    shares = mix.shares()
    total = max(1, round(len(scenes) * mix.records_per_image))
    n_text = round(total * shares["text_only"])
    n_image = max(1, total - n_text)
    balancer = LabelBalancer()
    records: list[dict] = []
    task_counts: Counter[str] = Counter()
    for index in range(n_image):
        scene_index = index % len(scenes)
        rng = random.Random(f"shapes-finetune:{seed}:{index}")
        scene = scenes[scene_index]
        ctx = Context(rng, scene, stats, balancer)
        weights = task_weights_for(scene, mix, text_share)
        tasks, task_w = list(weights), list(weights.values())
        turns = None
        for _ in range(20):
            task = rng.choices(tasks, weights=task_w)[0]
            turns = image_task_turns(task, ctx)
            if turns is not None:
                break
        if turns is None:  # every scene has a caption
            task, turns = "caption", [(CAPTION_PROMPT, sentence_caption(scene))]
        records.append(_image_record(f"{task}-{index:06d}", images[scene_index], turns))
        task_counts[task] += 1
    for index in range(n_text):
        records.append(text_only_record(index, random.Random(f"shapes-text-only:{seed}:{index}")))
        task_counts["text_only"] += 1
    random.Random(f"shapes-finetune-order:{seed}").shuffle(records)
    labels = {family: {"yes": c[True], "no": c[False]} for family, c in sorted(balancer.counts.items())}
    return FinetuneSet(records, {task: task_counts[task] for task in TASKS}, labels)


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


def corpus_line(record: dict) -> str:
    """A record's conversation as one line of plain text (no image placeholder, no newlines)."""
    parts = []
    for message in record["conversations"]:
        text = message["value"].replace(IMAGE_TOKEN, " ").replace("\n", " ")
        parts.append(" ".join(text.split()))
    return " ".join(p for p in parts if p)
