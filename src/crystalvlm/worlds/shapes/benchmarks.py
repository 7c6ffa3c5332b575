"""Held-out shapes-world benchmarks, written in the official file formats.

The scoring code for POPE, MME, ScienceQA, TextVQA and CHAIR reads these files exactly as it reads
the official releases; only the pictures and the vocabulary are the shapes world's.

* POPE (Li et al., 2023): per image 3 present shapes ("yes") and 3 absent ones ("no"); the
  negatives are random, the most frequent shapes of the image pool (popular), or the shapes that
  co-occur most with the present ones (adversarial). JSON lines, one file per split.
* MME: one folder per subtask with `<name>.png` + `<name>.txt` of two lines, `question<TAB>Yes`
  and `question<TAB>No`, the questions ending in " Please answer yes or no.".
* ScienceQA: problems.json + pid_splits.json + images/test/<pid>/image.png; some problems carry a
  text context and no image, some neither.
* TextVQA: TextVQA_0.5.1_val.json with 10 human answers per question (a few of them noisy, so the
  VQA accuracy min(#matches / 3, 1) matters), train_images/<image_id>.jpg, and the OCR tokens in
  the TextVQA_Rosetta_OCR_v0.2_val.json layout (here the exactly known rendered text).
* CHAIR: annotations.json (image file -> shape words present), synonyms.txt, prompts.json.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from crystalvlm.worlds.shapes.scenes import (
    COLORS, CORNERS, PLURALS, SHAPES, Scene, SceneConfig, ShapeStatistics, article, column_of,
    evaluate_expression, number_word, render_scene, row_of, sample_scene,
)
from crystalvlm.worlds.shapes.captions import reference_without_color, reference_without_position
from crystalvlm.worlds.shapes.mixture import knowledge_item
from crystalvlm.worlds.shapes.questions import CONTEXT_HINTS, shuffled_options, wrong_reading

MME_SUFFIX = " Please answer yes or no."
POPE_SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")
POPE_PER_IMAGE = 3  # positives and negatives each, as in the POPE paper

CHAIR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circles", "disc", "discs", "disk", "disks", "dot", "dots"),
    "square": ("squares", "box", "boxes", "block", "blocks", "rectangle", "rectangles"),
    "triangle": ("triangles",),
    "star": ("stars",),
    "heart": ("hearts",),
    "hexagon": ("hexagons",),
    "cross": ("crosses", "plus sign", "plus signs"),
    "diamond": ("diamonds", "rhombus", "rhombuses"),
    "moon": ("moons", "crescent", "crescents", "crescent moon"),
    "arrow": ("arrows",),
}


def write_json(path: Path, data: object, *, sort_keys: bool = True, indent: int | None = None) -> None:
    # indent=None keeps json's C encoder: large files (finetune, annotations) write several times faster.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n", encoding="utf-8")


def write_json_lines(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def save_image(scene: Scene, path: Path) -> None:
    """PNG or JPEG by suffix, with fixed encoder settings (no timestamps, no metadata)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = render_scene(scene)
    if path.suffix == ".png":
        image.save(path, format="PNG", compress_level=6)
    elif path.suffix == ".jpg":
        image.save(path, format="JPEG", quality=95, subsampling=0)
    else:
        raise ValueError(f"{path}: images are written as .png or .jpg")


@dataclass
class EvalSceneSource:
    """Draws held-out scenes: each (benchmark, index) has its own seeded stream, and any scene that
    would render exactly like a training image is drawn again."""

    seed: int
    image_size: int
    config: SceneConfig
    training_signatures: set = field(default_factory=set)

    def draw(self, benchmark: str, index: int, attempt: int = 0, **constraints) -> Scene:
        rng = random.Random(f"shapes-eval:{self.seed}:{benchmark}:{index}:{attempt}")
        for _ in range(1000):
            scene = sample_scene(rng, self.image_size, self.config, **constraints)
            if scene.signature() not in self.training_signatures:
                return scene
        raise RuntimeError(f"{benchmark} image {index}: every drawn scene repeats a training image")


# ----------------------------------------------------------------------------------------------
# POPE


def draw_pope_scenes(source: EvalSceneSource, n_images: int) -> list[Scene]:
    """POPE keeps images with at least 3 ground-truth objects; here at least 3 different shapes."""
    return [source.draw("pope", index, min_objects=POPE_PER_IMAGE, min_distinct_shapes=POPE_PER_IMAGE)
            for index in range(n_images)]


def pope_questions(scenes: list[Scene], names: list[str], seed: int) -> dict[str, list[dict]]:
    """{split: rows}; the same 3 positives per image in every split, negatives by the split's rule.

    Frequencies and co-occurrences are counted over this image pool, as POPE counts them over its
    annotated images."""
    stats = ShapeStatistics.from_scenes(scenes)
    ranking = stats.popularity_ranking()
    questions: dict[str, list[dict]] = {split: [] for split in POPE_SPLITS}
    for index, (scene, name) in enumerate(zip(scenes, names)):
        rng = random.Random(f"shapes-pope:{seed}:{index}")
        present, absent = scene.present_shapes(), scene.absent_shapes()
        if len(present) < POPE_PER_IMAGE:
            raise ValueError(f"POPE image {name} has {len(present)} distinct shapes; it needs {POPE_PER_IMAGE}")
        positives = rng.sample(present, POPE_PER_IMAGE)
        negatives = {
            "random": rng.sample(absent, POPE_PER_IMAGE),
            "popular": [s for s in ranking if s in absent][:POPE_PER_IMAGE],
            "adversarial": stats.adversarial_ranking(present)[:POPE_PER_IMAGE],
        }
        for split in POPE_SPLITS:
            rows = questions[split]
            for positive, negative in zip(positives, negatives[split]):
                for shape, label in ((positive, "yes"), (negative, "no")):
                    rows.append({"question_id": len(rows) + 1, "image": name,
                                 "text": f"Is there {article(shape)} {shape} in the image?", "label": label})
    return questions


def write_pope(out_dir: Path, scenes: list[Scene], names: list[str], seed: int, image_folder: str) -> dict:
    folder = out_dir / "benchmarks" / "pope"
    questions = pope_questions(scenes, names, seed)
    files = {}
    for split, rows in questions.items():
        path = folder / f"coco_pope_{split}.json"
        write_json_lines(path, rows)
        files[split] = path.relative_to(out_dir).as_posix()
    stats = ShapeStatistics.from_scenes(scenes)
    return {"image_folder": image_folder, "files": files, "images": len(scenes),
            "questions_per_split": {split: len(rows) for split, rows in questions.items()},
            "popularity_ranking": stats.popularity_ranking()}


# ----------------------------------------------------------------------------------------------
# CHAIR


# OPERA's CHAIR prompt first, LLaVA's detailed-description prompt second.
CHAIR_PROMPTS: tuple[str, ...] = ("Please describe this image in detail.", "Please help me describe the image in detail.")


def write_chair(out_dir: Path, scenes: list[Scene], names: list[str], image_folder: str) -> dict:
    """annotations.json in the simple form crystalvlm's CHAIR task reads (as well as COCO instances):
    {"images": [{"id", "file_name", "objects": [shape, ...]}]}, file names relative to `image_folder`."""
    folder = out_dir / "benchmarks" / "chair"
    images = [{"id": index, "file_name": name, "objects": scene.present_shapes()}
              for index, (name, scene) in enumerate(zip(names, scenes))]
    write_json(folder / "annotations.json", {"images": images}, sort_keys=False)
    lines = [", ".join((shape,) + CHAIR_SYNONYMS[shape]) for shape in SHAPES]
    (folder / "synonyms.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(folder / "prompts.json", list(CHAIR_PROMPTS), sort_keys=False)
    return {"image_folder": image_folder, "images": len(scenes), "annotations": "benchmarks/chair/annotations.json",
            "synonyms": "benchmarks/chair/synonyms.txt", "prompts": "benchmarks/chair/prompts.json"}


# ----------------------------------------------------------------------------------------------
# MME: every builder returns (yes question, no question) about one scene, or None.

QuestionPair = tuple[str, str]


def _mme_existence(scene: Scene, rng: random.Random) -> QuestionPair | None:
    present = rng.choice(scene.present_shapes())
    absent = rng.choice(scene.absent_shapes())
    return (f"Is there {article(present)} {present} in this image?", f"Is there {article(absent)} {absent} in this image?")


def _count_question(shape: str, n: int) -> str:
    if n == 1:
        return f"Is there only one {shape} in this image?"
    return f"Are there {number_word(n)} {PLURALS[shape]} in this image?"


def _mme_count(scene: Scene, rng: random.Random) -> QuestionPair | None:
    counts = scene.shape_counts()
    repeated = [s for s in scene.present_shapes() if counts[s] > 1]
    if not repeated and rng.random() < 0.6:  # most count questions should be about more than one object
        return None
    shape = rng.choice(repeated or scene.present_shapes())
    true_count = counts[shape]
    wrong = rng.choice([n for n in (true_count - 1, true_count + 1) if n >= 1])
    return _count_question(shape, true_count), _count_question(shape, wrong)


_OPPOSITE_SIDES: tuple[tuple[Callable, str, str], ...] = (
    (lambda o: column_of(o) == 0, "on the left side of this image", "on the right side of this image"),
    (lambda o: column_of(o) == 2, "on the right side of this image", "on the left side of this image"),
    (lambda o: row_of(o) == 0, "at the top of this image", "at the bottom of this image"),
    (lambda o: row_of(o) == 2, "at the bottom of this image", "at the top of this image"),
)


def _mme_position(scene: Scene, rng: random.Random) -> QuestionPair | None:
    if len(scene.objects) >= 2 and rng.random() < 0.6:
        a, b = rng.sample(scene.objects, 2)
        ref_a, ref_b = reference_without_position(a, scene), reference_without_position(b, scene)
        if ref_a is None or ref_b is None or ref_a == ref_b:
            return None
        if column_of(a) != column_of(b):
            yes, no = ("to the left of", "to the right of") if column_of(a) < column_of(b) else ("to the right of", "to the left of")
        elif row_of(a) != row_of(b):
            yes, no = ("above", "below") if row_of(a) < row_of(b) else ("below", "above")
        else:  # pragma: no cover - two objects never share a cell
            return None
        return f"Is the {ref_a} {yes} the {ref_b}?", f"Is the {ref_a} {no} the {ref_b}?"
    obj = rng.choice(scene.objects)
    reference = reference_without_position(obj, scene)
    sides = [(yes, no) for holds, yes, no in _OPPOSITE_SIDES if holds(obj)]
    if reference is None or not sides:
        return None
    yes, no = rng.choice(sides)
    return f"Is the {reference} {yes}?", f"Is the {reference} {no}?"


def _mme_color(scene: Scene, rng: random.Random) -> QuestionPair | None:
    obj = rng.choice(scene.objects)
    taken = {o.color for o in scene.objects if o.shape == obj.shape}
    wrong = rng.choice([c for c in COLORS if c not in taken])
    return (f"Is there {article(obj.color)} {obj.color} {obj.shape} in this image?",
            f"Is there {article(wrong)} {wrong} {obj.shape} in this image?")


def _mme_ocr(scene: Scene, rng: random.Random) -> QuestionPair | None:
    if scene.text_kind not in ("word", "number"):
        return None
    wrong = wrong_reading(rng, scene)
    return (f'Is the {scene.text_kind} in the image "{scene.text}"?', f'Is the {scene.text_kind} in the image "{wrong}"?')


def _mme_numerical(scene: Scene, rng: random.Random) -> QuestionPair | None:
    if scene.text_kind != "expression":
        return None
    value = evaluate_expression(scene.text)
    return (f"Is the answer to the expression in the image {value}?",
            f"Is the answer to the expression in the image {wrong_reading(rng, scene)}?")


def _corners_words(n: int) -> str:
    return "no corners" if n == 0 else f"{number_word(n)} corners"


def _mme_commonsense(scene: Scene, rng: random.Random) -> QuestionPair | None:
    """Seeing the shape is not enough: its number of corners is world knowledge (taught in words)."""
    candidates = [o for o in scene.objects if o.shape in CORNERS
                  and sum(1 for other in scene.objects if other.color == o.color) == 1]
    if not candidates:
        return None
    obj = rng.choice(candidates)
    true_corners = CORNERS[obj.shape]
    wrong = rng.choice(sorted({n for n in CORNERS.values() if n != true_corners}))
    return (f"Does the {obj.color} shape in this image have {_corners_words(true_corners)}?",
            f"Does the {obj.color} shape in this image have {_corners_words(wrong)}?")


@dataclass(frozen=True)
class MmeSubtask:
    name: str  # MME's own folder name
    kind: str  # "perception" | "cognition"
    builder: Callable[[Scene, random.Random], QuestionPair | None]
    constraints: dict


MME_SUBTASKS: tuple[MmeSubtask, ...] = (
    MmeSubtask("existence", "perception", _mme_existence, {}),
    MmeSubtask("count", "perception", _mme_count, {"min_objects": 2}),
    MmeSubtask("position", "perception", _mme_position, {"min_objects": 2}),
    MmeSubtask("color", "perception", _mme_color, {}),
    MmeSubtask("OCR", "perception", _mme_ocr, {"text_kind": "word"}),
    MmeSubtask("numerical_calculation", "cognition", _mme_numerical, {"text_kind": "expression"}),
    MmeSubtask("commonsense_reasoning", "cognition", _mme_commonsense, {}),
)


def write_mme(out_dir: Path, source: EvalSceneSource, n_per_subtask: int, tick: Callable[[], None]) -> tuple[dict, list[dict]]:
    """Returns (manifest section, annotations with paths relative to benchmarks/mme)."""
    root = out_dir / "benchmarks" / "mme"
    sizes: dict[str, int] = {}
    annotations = []
    for subtask in MME_SUBTASKS:
        for index in range(n_per_subtask):
            constraints = dict(subtask.constraints)
            if subtask.name == "OCR" and index % 3 == 2:
                constraints["text_kind"] = "number"
            for attempt in range(1000):
                scene = source.draw(f"mme-{subtask.name}", index, attempt, **constraints)
                rng = random.Random(f"shapes-mme:{source.seed}:{subtask.name}:{index}:{attempt}")
                pair = subtask.builder(scene, rng)
                if pair is not None:
                    break
            else:  # pragma: no cover - every builder succeeds on a large share of scenes
                raise RuntimeError(f"MME {subtask.name}: no usable scene for image {index}")
            name = f"{subtask.name.lower()}_{index:04d}"
            save_image(scene, root / subtask.name / f"{name}.png")
            yes_question, no_question = pair
            (root / subtask.name / f"{name}.txt").write_text(
                f"{yes_question}{MME_SUFFIX}\tYes\n{no_question}{MME_SUFFIX}\tNo\n", encoding="utf-8")
            annotations.append(scene.to_annotation(f"{subtask.name}/{name}.png"))
            tick()
        sizes[subtask.name] = n_per_subtask
    section = {"root": "benchmarks/mme", "images_per_subtask": sizes,
               "perception": [s.name for s in MME_SUBTASKS if s.kind == "perception"],
               "cognition": [s.name for s in MME_SUBTASKS if s.kind == "cognition"]}
    return section, annotations


# ----------------------------------------------------------------------------------------------
# ScienceQA


def _sqa_image_problem(scene: Scene, rng: random.Random) -> dict | None:
    n_choices = rng.choice((2, 3, 4, 4))
    kind = rng.choice(("shape", "color", "count", "position"))
    if kind == "shape":
        correct = rng.choice(scene.present_shapes())
        choices, answer = shuffled_options(rng, correct, [correct] + scene.absent_shapes(), n_choices)
        question, topic, skill = "Which of these shapes is in the picture?", "shapes", "Identify shapes"
        solution = f"Look at the picture. It shows {article(correct)} {correct}."
    elif kind == "color":
        obj = rng.choice(scene.objects)
        choices, answer = shuffled_options(rng, obj.color, list(COLORS), n_choices)
        reference = reference_without_color(obj, scene)
        question, topic, skill = f"What color is the {reference} in the picture?", "colors", "Identify colors"
        solution = f"The {reference} in the picture is {obj.color}."
    elif kind == "count":
        n = len(scene.objects)
        choices, answer = shuffled_options(rng, str(n), [str(k) for k in range(1, 6)], n_choices)
        choices.sort(key=int)
        answer = choices.index(str(n))
        question, topic, skill = "How many shapes are in the picture?", "counting", "Count shapes"
        solution = f"Count the shapes in the picture. There {'is one shape' if n == 1 else f'are {number_word(n)} shapes'}."
    else:
        obj = rng.choice(scene.objects)
        reference = reference_without_position(obj, scene)
        if reference is None:
            return None
        choices, answer = shuffled_options(rng, obj.position, ["top left", "top", "top right", "left", "center", "right",
                                                                "bottom left", "bottom", "bottom right"], n_choices)
        question, topic, skill = f"Where is the {reference} in the picture?", "position", "Describe positions"
        solution = f"The {reference} is in the {obj.position} part of the picture."
    hint = rng.choice(CONTEXT_HINTS) if rng.random() < 0.4 else ""
    return {"question": question, "choices": choices, "answer": answer, "hint": hint, "image": "image.png",
            "task": "closed choice", "grade": rng.choice(("grade1", "grade2")), "subject": "natural science",
            "topic": topic, "category": skill, "skill": skill,
            "lecture": "Shapes have a kind, a color and a place in a picture.", "solution": solution}


def _sqa_text_problem(rng: random.Random, with_context: bool) -> dict:
    kinds = ("story_count", "story_color") if with_context else ("corners", "sides", "star", "compare")
    item = knowledge_item(rng, kinds)
    n_choices = min(len(item.pool), rng.choice((2, 3, 4, 4)))
    choices, answer = shuffled_options(rng, item.answer, list(item.pool), n_choices)
    if all(choice.isdigit() for choice in choices):
        choices.sort(key=int)
        answer = choices.index(item.answer)
    if with_context:
        subject, topic, skill = "language science", "reading-comprehension", "Answer questions about a short text"
        lecture = "Read the text carefully; it tells you what each person has."
    else:
        subject, topic, skill = "natural science", "geometry", "Know the parts of shapes"
        lecture = "A corner is a point where two straight sides meet. A circle has no straight sides."
    return {"question": item.question, "choices": choices, "answer": answer, "hint": item.context or "", "image": None,
            "task": "closed choice", "grade": rng.choice(("grade1", "grade2", "grade3")), "subject": subject,
            "topic": topic, "category": skill, "skill": skill, "lecture": lecture, "solution": item.sentence}


def write_scienceqa(out_dir: Path, source: EvalSceneSource, n_problems: int, tick: Callable[[], None]) -> tuple[dict, list[dict]]:
    """About 65% of problems have an image, 20% only a text context, 15% neither (ScienceQA's
    IMG / TXT / NO context modalities)."""
    root = out_dir / "benchmarks" / "scienceqa"
    problems: dict[str, dict] = {}
    annotations = []
    modality_counts = {"image": 0, "text": 0, "none": 0}
    for index in range(n_problems):
        pid = str(index + 1)
        rng = random.Random(f"shapes-scienceqa:{source.seed}:{index}")
        draw = rng.random()
        if draw < 0.65:
            for attempt in range(1000):
                scene = source.draw("scienceqa", index, attempt)
                problem = _sqa_image_problem(scene, random.Random(f"shapes-scienceqa:{source.seed}:{index}:{attempt}"))
                if problem is not None:
                    break
            else:  # pragma: no cover
                raise RuntimeError(f"ScienceQA problem {pid}: no usable scene")
            save_image(scene, root / "images" / "test" / pid / "image.png")
            annotations.append(scene.to_annotation(f"{pid}/image.png"))
            modality_counts["image"] += 1
        else:
            with_context = draw < 0.85
            problem = _sqa_text_problem(rng, with_context)
            modality_counts["text" if with_context else "none"] += 1
        problem["split"] = "test"
        problems[pid] = problem
        tick()
    write_json(root / "problems.json", problems, sort_keys=False)
    pids = list(problems)
    splits = {"train": [], "val": [], "test": pids, "trainval": [], "minitrain": [], "minival": [], "minitest": []}
    write_json(root / "pid_splits.json", splits, sort_keys=False)
    section = {"root": "benchmarks/scienceqa", "problems": "benchmarks/scienceqa/problems.json",
               "pid_splits": "benchmarks/scienceqa/pid_splits.json", "image_folder": "benchmarks/scienceqa/images",
               "count": len(problems), "context_modalities": modality_counts}
    return section, annotations


# ----------------------------------------------------------------------------------------------
# TextVQA


def _human_answers(rng: random.Random, truth: str, wrong_pool: list[str]) -> list[str]:
    """Ten answers as annotators give them: mostly the text (often lower-cased), sometimes a few
    misreadings, and in one question out of ten only two annotators got it right."""
    draw = rng.random()
    n_right = 10 if draw < 0.65 else (rng.randint(6, 9) if draw < 0.9 else 2)
    right = [truth if rng.random() < 0.3 else truth.lower() for _ in range(n_right)]
    wrong: list[str] = []
    pool = wrong_pool + ["unanswerable"]
    while len(wrong) < 10 - n_right:  # no wrong answer three times: the text stays the best answer
        candidate = rng.choice(pool)
        if wrong.count(candidate) < 2:
            wrong.append(candidate)
    answers = right + wrong
    rng.shuffle(answers)
    return answers


def write_textvqa(out_dir: Path, source: EvalSceneSource, n_questions: int, tick: Callable[[], None]) -> tuple[dict, list[dict]]:
    root = out_dir / "benchmarks" / "textvqa"
    data, ocr, annotations = [], [], []
    for index in range(n_questions):
        rng = random.Random(f"shapes-textvqa:{source.seed}:{index}")
        kind = rng.choices(("word", "number", "expression"), weights=(0.5, 0.3, 0.2))[0]
        scene = source.draw("textvqa", index, text_kind=kind)
        image_id = hashlib.sha256(f"shapes-textvqa:{source.seed}:{index}".encode()).hexdigest()[:16]
        save_image(scene, root / "train_images" / f"{image_id}.jpg")
        annotations.append(scene.to_annotation(f"{image_id}.jpg"))
        if kind == "word":
            question = rng.choice(("what word is written in the image?", "what does the text say?",
                                   "what word is shown?"))
        elif kind == "number":
            question = rng.choice(("what number is written in the image?", "what number is shown?"))
        else:
            question = "what is written in the image?"
        if kind == "expression":  # misreadings of "3+4": the result, one operand, another operator
            left, right = scene.text[0], scene.text[2]  # operands are single digits
            wrong_pool = sorted({str(evaluate_expression(scene.text)), left, right,
                                 f"{left}x{right}", f"{left}={right}"} - {scene.text})
        else:
            wrong_pool = sorted({wrong_reading(rng, scene) for _ in range(12)})
        answers = _human_answers(rng, scene.text, wrong_pool)
        side = scene.image_size
        data.append({
            "question": question, "image_id": image_id, "image_classes": [], "flickr_original_url": "",
            "flickr_300k_url": "", "image_width": side, "image_height": side, "answers": answers,
            "question_tokens": question.rstrip("?").split(), "question_id": index + 1, "set_name": "val",
        })
        x0, y0, x1, y1 = scene.text_bbox
        ocr.append({"image_id": image_id, "ocr_tokens": scene.text.split(), "set_name": "val", "ocr_info": [{
            "word": scene.text,
            "bounding_box": {"top_left_x": x0 / side, "top_left_y": y0 / side, "width": (x1 - x0) / side,
                             "height": (y1 - y0) / side, "rotation": 0, "roll": 0, "pitch": 0, "yaw": 0},
        }]})
        tick()
    header = {"dataset_name": "textvqa", "dataset_version": "0.5.1", "dataset_type": "val"}
    write_json(root / "TextVQA_0.5.1_val.json", {**header, "data": data}, sort_keys=False)
    write_json(root / "TextVQA_Rosetta_OCR_v0.2_val.json", {**header, "data": ocr}, sort_keys=False)
    section = {"root": "benchmarks/textvqa", "questions": "benchmarks/textvqa/TextVQA_0.5.1_val.json",
               "ocr": "benchmarks/textvqa/TextVQA_Rosetta_OCR_v0.2_val.json",
               "image_folder": "benchmarks/textvqa/train_images", "count": len(data)}
    return section, annotations


def mme_images_per_subtask(n_eval: int) -> int:
    return max(2, math.ceil(n_eval / 5))
