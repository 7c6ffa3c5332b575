"""The shapes world's training mixture: align and finetune records in the LLaVA format.

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

from crystalvlm.data.templates import IMAGE_PLACEHOLDER
from crystalvlm.worlds.shapes.multi_image import multi_image_records, star_count
from crystalvlm.worlds.shapes.captions import align_caption, detailed_description, join_words, object_phrase, sentence_caption
from crystalvlm.worlds.shapes.questions import (
    BRIEF_PROMPTS, CAPTION_PROMPT, DETAIL_PROMPTS, IMAGE_TASKS, OPTION_LETTERS, PEOPLE, QA, QA_GENERATORS,
    SHORT_ANSWER_PROMPT, TASKS, YES_NO_PROMPT, Context, LabelBalancer, existence_qa, format_options, shuffled_options,
)
from crystalvlm.worlds.shapes.scenes import (
    COLORS, CORNERS, PLURALS, POSITIONS, SHAPES, SIDES, SIZES, STAR_POINTS, Scene, SceneObject, ShapeStatistics,
    article, number_word,
)

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
    # Share of detailed descriptions that name one absent object as if it were there (the shape that
    # co-occurs most with the present ones): the hallucinations of machine-written instruction data.
    description_noise: float = 0.0
    # Extra two-image records ("Which image has more stars?", multi_image.py), as a share of the mix's
    # records; 0 (the default world) makes none, and the benchmark multi_image_stars.json is not written.
    multi_image: float = 0.0

    def __post_init__(self) -> None:
        for name in TASKS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"FinetuneMix.{name} must be a non-negative number, got {value!r}")
        if sum(getattr(self, name) for name in IMAGE_TASKS) <= 0:
            raise ValueError("FinetuneMix needs a positive weight on at least one image task")
        if not isinstance(self.records_per_image, (int, float)) or self.records_per_image <= 0:
            raise ValueError(f"FinetuneMix.records_per_image must be positive, got {self.records_per_image!r}")
        if not 0.0 <= self.description_noise <= 1.0:
            raise ValueError(f"FinetuneMix.description_noise must be in [0, 1], got {self.description_noise!r}")
        if not isinstance(self.multi_image, (int, float)) or self.multi_image < 0:
            raise ValueError(f"FinetuneMix.multi_image must be a non-negative number, got {self.multi_image!r}")

    def shares(self) -> dict[str, float]:
        total = sum(getattr(self, name) for name in TASKS)
        return {name: getattr(self, name) / total for name in TASKS}

    def to_dict(self) -> dict:
        # description_noise and multi_image only when on, so a plain world's manifest reads as it always did
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("description_noise", "multi_image") or getattr(self, f.name)}



def _conversation(turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    messages = []
    for human, gpt in turns:
        messages.append({"from": "human", "value": human})
        messages.append({"from": "gpt", "value": gpt})
    return messages


def _image_record(record_id: str, image: str, turns: list[tuple[str, str]]) -> dict:
    first_human, first_gpt = turns[0]
    turns = [(f"{IMAGE_PLACEHOLDER}\n{first_human}", first_gpt)] + turns[1:]
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


def hallucinated_object(scene: Scene, stats: ShapeStatistics, rng: random.Random) -> SceneObject | None:
    """An object a biased describer would add: the absent shape that co-occurs most with the present
    ones, of a random colour and size, in a free cell (None when no cell is free)."""
    taken = {obj.position for obj in scene.objects}
    if scene.text_bbox is not None:  # the text's row holds no object
        taken |= set(POSITIONS[:3] if scene.text_bbox[1] < scene.image_size / 3 else POSITIONS[6:])
    free = [position for position in POSITIONS if position not in taken]
    absent = stats.adversarial_ranking(scene.present_shapes())
    if not free or not absent:
        return None
    return SceneObject(absent[0], rng.choice(tuple(COLORS)), rng.choice(SIZES), (0, 0, 0, 0), rng.choice(free),
                       extent=0, origin=(0, 0))


def noisy_description(ctx: Context, noise: float) -> str:
    """The scene's detailed description; with probability `noise` it also names one absent object."""
    if noise > 0 and ctx.rng.random() < noise:
        extra = hallucinated_object(ctx.scene, ctx.stats, ctx.rng)
        if extra is not None:
            return detailed_description(ctx.scene, (extra,))
    return detailed_description(ctx.scene)


def image_task_turns(task: str, ctx: Context, description_noise: float = 0.0) -> list[tuple[str, str]] | None:
    """The (human, gpt) turns of one finetune record of `task` on the context's scene, or None."""
    rng, scene = ctx.rng, ctx.scene
    if task == "existence":
        return existence_turns(ctx)
    if task == "caption":
        return [(CAPTION_PROMPT, sentence_caption(scene))]
    if task == "detail":
        return [(rng.choice(DETAIL_PROMPTS), noisy_description(ctx, description_noise))]
    if task == "conversation":
        families = ["existence", "counting", "color", "position"] + (["ocr"] if scene.text is not None else [])
        turns = []
        for _ in range(rng.randint(2, 4)):
            qa = _generate(rng.choice(families), ctx)
            if qa is not None:
                turns.append((qa.question, qa.sentence))
        if rng.random() < 0.25:
            turns.insert(0, ("Describe the image.", noisy_description(ctx, description_noise)))
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
        story = f"{person} has {join_words([object_phrase(c, s, n) for (c, s), n in groups.items()])}."
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
            turns = image_task_turns(task, ctx, mix.description_noise)
            if turns is not None:
                break
        if turns is None:  # every scene has a caption
            task, turns = "caption", [(CAPTION_PROMPT, sentence_caption(scene))]
        records.append(_image_record(f"{task}-{index:06d}", images[scene_index], turns))
        task_counts[task] += 1
    for index in range(n_text):
        records.append(text_only_record(index, random.Random(f"shapes-text-only:{seed}:{index}")))
        task_counts["text_only"] += 1
    counts = {task: task_counts[task] for task in TASKS}
    if mix.multi_image > 0:  # off by default: the default mix's records and order stay as they were
        n_multi = max(1, round(total * mix.multi_image))
        records += multi_image_records(images, [star_count(scene.objects) for scene in scenes], n_multi, seed)
        counts["multi_image"] = n_multi
    random.Random(f"shapes-finetune-order:{seed}").shuffle(records)
    labels = {family: {"yes": c[True], "no": c[False]} for family, c in sorted(balancer.counts.items())}
    return FinetuneSet(records, counts, labels)
