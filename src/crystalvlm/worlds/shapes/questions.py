"""Question generators of the shapes world: existence (with hard negatives), counting, colour,
position, reading text and multiple choice, each answered from the scene's annotation."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from crystalvlm.worlds.shapes.captions import reference_without_color, reference_without_position, text_phrase, yes_no
from crystalvlm.worlds.shapes.scenes import (
    COLORS, POSITION_PHRASES, POSITIONS, PLURALS, WORDS, NUMBERS, Scene, SceneObject, ShapeStatistics, article,
    column_of, evaluate_expression, is_above, is_left_of, number_word, row_of,
)

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
