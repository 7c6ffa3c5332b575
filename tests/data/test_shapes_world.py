"""The shapes world: determinism, pixel-exact annotations, official benchmark formats, valid records."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crystalvlm.data.records import load_records
from crystalvlm.worlds.shapes.scenes import (
    BACKGROUND, COLORS, PLURALS, POSITIONS, SHAPES, TEXT_COLOR, interior_point, position_name,
)
from crystalvlm.worlds.shapes.mixture import FinetuneMix
from crystalvlm.worlds.shapes.writer import write_shapes_world

N_TRAIN, N_EVAL = 80, 16
SHAPE_OF_PLURAL = {plural: shape for shape, plural in PLURALS.items()}


def _write(root: Path, **kwargs) -> tuple[Path, dict]:
    arguments = {"n_train": N_TRAIN, "n_eval": N_EVAL, "seed": 0, "progress": False, **kwargs}
    return root, write_shapes_world(root, **arguments)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    return _write(tmp_path_factory.mktemp("shapes_world"))


def _file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _annotations(root: Path, name: str) -> tuple[Path, list[dict]]:
    data = json.loads((root / "annotations" / f"{name}.json").read_text())
    return root / data["image_root"], data["images"]


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)  # (H, W, 3)


def _load_json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- determinism -------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(world, tmp_path):
    root, manifest = world
    _, again = _write(tmp_path / "again")
    assert _file_hashes(root) == _file_hashes(tmp_path / "again")
    assert manifest == again


def test_different_seed_gives_different_files(world, tmp_path):
    root, manifest = world
    _, other = _write(tmp_path / "other", seed=1)
    for key in ("align.json", "finetune.json", "images/train/*", "images/eval/*", "benchmarks/pope/coco_pope_random.json"):
        assert manifest["sha256"][key] != other["sha256"][key], key


def test_manifest_hashes_every_data_file(world):
    root, manifest = world
    written = json.loads((root / "manifest.json").read_text())
    assert written == manifest
    for relative, digest in manifest["sha256"].items():
        if not relative.endswith("/*"):
            assert hashlib.sha256((root / relative).read_bytes()).hexdigest() == digest, relative
    hashed_files = {k for k in manifest["sha256"] if not k.endswith("/*")}
    data_files = {p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.suffix not in (".png", ".jpg") and p.name != "manifest.json"}
    assert hashed_files == data_files


# ---- annotations agree with the pixels ----------------------------------------------------------


@pytest.mark.parametrize("image_set", ["train", "eval", "mme", "scienceqa"])
def test_annotations_match_pixels(world, image_set):
    root, _ = world
    image_root, annotations = _annotations(root, image_set)
    assert annotations
    for annotation in annotations:
        pixels = _pixels(image_root / annotation["file"])
        height, width, _ = pixels.shape
        assert 1 <= len(annotation["objects"]) <= 4
        covered = np.zeros((height, width), dtype=bool)
        for obj in annotation["objects"]:
            x0, y0, x1, y1 = obj["bbox"]
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            assert not covered[y0:y1, x0:x1].any(), f"{annotation['file']}: objects overlap"
            covered[y0:y1, x0:x1] = True
            x, y = interior_point(obj["shape"], obj["bbox"])
            assert np.abs(pixels[int(y), int(x)] - COLORS[obj["color"]]).max() <= 8, (annotation["file"], obj)
            assert obj["position"] == position_name((x0 + x1) / 2, (y0 + y1) / 2, width)
            region = pixels[y0:y1, x0:x1].reshape(-1, 3)
            # the object's colour fills a good part of its box, and every pixel there is a blend of
            # that colour and the background (anti-aliased edges), never a third colour
            color, background = np.array(COLORS[obj["color"]]), np.array(BACKGROUND)
            assert (np.abs(region - color).max(axis=1) <= 8).mean() > 0.1
            direction = color - background
            share = ((region - background) @ direction) / (direction @ direction)  # (pixels,)
            blend = background + np.clip(share, 0, 1)[:, None] * direction
            assert np.abs(region - blend).max() <= 3, (annotation["file"], obj)
        if annotation["text"] is not None:
            x0, y0, x1, y1 = annotation["text_bbox"]
            assert not covered[y0:y1, x0:x1].any(), f"{annotation['file']}: text overlaps an object"
            covered[y0:y1, x0:x1] = True
            ink = np.abs(pixels[y0:y1, x0:x1] - TEXT_COLOR).max(axis=2) <= 40
            assert ink.mean() > 0.05, f"{annotation['file']}: no legible text in its box"
        # everything outside the annotated boxes is untouched background
        assert (pixels[~covered] == BACKGROUND).all(), annotation["file"]


@pytest.mark.parametrize("image_size", [32, 224])
def test_other_image_sizes(tmp_path, image_size):
    root, manifest = _write(tmp_path / "sized", n_train=12, n_eval=4, image_size=image_size)
    assert manifest["image_size"] == image_size
    image_root, annotations = _annotations(root, "train")
    for annotation in annotations:
        pixels = _pixels(image_root / annotation["file"])
        assert pixels.shape == (image_size, image_size, 3)
        covered = np.zeros(pixels.shape[:2], dtype=bool)
        for obj in annotation["objects"]:
            x0, y0, x1, y1 = obj["bbox"]
            covered[y0:y1, x0:x1] = True
            if image_size >= 64:
                x, y = interior_point(obj["shape"], obj["bbox"])
                assert np.abs(pixels[int(y), int(x)] - COLORS[obj["color"]]).max() <= 8
        if annotation["text_bbox"]:
            x0, y0, x1, y1 = annotation["text_bbox"]
            covered[y0:y1, x0:x1] = True
        assert (pixels[~covered] == BACKGROUND).all()
    assert len(list((root / "benchmarks" / "textvqa" / "train_images").glob("*.jpg"))) == 4


# ---- training records ---------------------------------------------------------------------------


def _records(root: Path, name: str) -> list[dict]:
    return json.loads((root / name).read_text())


def _first_human(record: dict) -> str:
    return record["conversations"][0]["value"]


@pytest.mark.parametrize("name", ["align.json", "finetune.json"])
def test_training_records_are_valid(world, name):
    root, manifest = world
    records = _records(root, name)
    assert len(records) == manifest["counts"][name]
    assert len({r["id"] for r in records}) == len(records)
    for record in records:
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and len(turns) % 2 == 0
        assert all(isinstance(t["value"], str) and t["value"].strip() for t in turns)
        placeholders = [t["value"].count("<image>") for t in turns]
        if "image" in record:
            assert (root / "images" / record["image"]).is_file()
            assert _first_human(record).startswith("<image>\n") and placeholders[0] == 1 and sum(placeholders) == 1
        else:
            assert sum(placeholders) == 0
    loaded = load_records(root / name)  # the project's strict reader agrees
    assert not loaded.problems, loaded.problems[:3]
    assert len(loaded.records) == len(records)


def test_finetune_mix_covers_every_task(world):
    root, manifest = world
    records = _records(root, "finetune.json")
    tasks = Counter(r["id"].rsplit("-", 1)[0] for r in records)
    assert tasks == Counter({k: v for k, v in manifest["finetune_task_counts"].items() if v})
    assert set(tasks) == set(manifest["finetune_task_counts"])
    text_only = [r for r in records if "image" not in r]
    assert len(text_only) == tasks["text_only"] and 0.03 <= len(text_only) / len(records) <= 0.07
    assert all(len(r["conversations"]) >= 4 for r in records if r["id"].startswith("conversation-"))
    prompts = " ".join(t["value"] for r in records for t in r["conversations"] if t["from"] == "human")
    for prompt in ("Answer the question using a single word or phrase.",
                   "Answer with the option's letter from the given choices directly.",
                   "Provide a one-sentence caption for the provided image."):
        assert prompt in prompts
    # multiple choice: lettered options, the answer is one of the letters offered
    for record in records:
        if record["id"].startswith("multiple_choice-"):
            letters = re.findall(r"^([A-E])\. ", _first_human(record), flags=re.M)
            assert len(letters) >= 2 and record["conversations"][1]["value"] in letters


def test_existence_answers_are_balanced_and_true(world):
    root, manifest = world
    _, annotations = _annotations(root, "train")
    shapes_of = {a["file"]: {o["shape"] for o in a["objects"]} for a in annotations}
    answers = Counter()
    pope_style = 0
    for record in _records(root, "finetune.json"):
        if "image" not in record:
            continue
        turns = record["conversations"]
        for human, gpt in zip(turns[::2], turns[1::2]):
            match = re.match(r"(?:<image>\n)?Is there an? (\w+) in the image\?", human["value"])
            if not match or match.group(1) not in SHAPES:
                continue
            pope_style += 1
            present = match.group(1) in shapes_of[record["image"]]
            answer = gpt["value"]
            assert answer.startswith("Yes" if present else "No"), (record["id"], human["value"], answer)
            answers[answer.startswith("Yes")] += 1
    assert pope_style > 20
    counts = manifest["finetune_yes_no_counts"]["existence"]
    assert abs(counts["yes"] - counts["no"]) <= 1
    assert abs(answers[True] - answers[False]) <= 0.25 * pope_style


def test_counting_and_colour_answers_match_annotations(world):
    root, _ = world
    _, annotations = _annotations(root, "train")
    by_file = {a["file"]: a for a in annotations}
    checked = Counter()
    for record in _records(root, "finetune.json"):
        if "image" not in record or record["id"].startswith("multiple_choice-"):
            continue
        objects = by_file[record["image"]]["objects"]
        turns = record["conversations"]
        for human, gpt in zip(turns[::2], turns[1::2]):
            question = human["value"].removeprefix("<image>\n")
            short = question.endswith("single word or phrase.")
            answer = gpt["value"]
            if match := re.match(r"How many (\w+) are (?:there )?in the image\?", question):
                word = match.group(1)
                if word in ("shapes", "objects"):
                    expected = len(objects)
                else:
                    expected = sum(o["shape"] == SHAPE_OF_PLURAL[word] for o in objects)
                if short:
                    assert answer == str(expected), (record["id"], question, answer)
                checked["count"] += 1
            elif match := re.match(r"What (?:color is|is the color of) the (\w+)\?", question):
                shape = match.group(1)
                matching = [o for o in objects if o["shape"] == shape]
                assert len(matching) == 1  # a bare shape name is only used when it is unique
                assert (answer if short else answer.rstrip(".").split()[-1]) == matching[0]["color"]
                checked["color"] += 1
            elif match := re.match(r"Where is the ((?:\w+ ){0,2}\w+) (?:in the image|located)\?", question):
                *attributes, shape = match.group(1).split()  # "[small] [red] circle"
                matching = [o for o in objects if o["shape"] == shape
                            and all(word in (o["size"], o["color"]) for word in attributes)]
                assert len(matching) == 1, (record["id"], question)
                if short:
                    assert answer == matching[0]["position"] and answer in POSITIONS
                checked["position"] += 1
    assert checked["count"] >= 3 and checked["color"] >= 3 and checked["position"] >= 3, checked


def test_corpus_and_clip_pairs(world):
    root, manifest = world
    lines = (root / "text_corpus.txt").read_text().splitlines()
    # one grounded line per align and finetune record, then one existence survey per training image
    assert len(lines) == manifest["counts"]["text_corpus.txt"] == 2 * N_TRAIN + manifest["counts"]["finetune.json"]
    assert all(line.strip() and "<image>" not in line for line in lines)
    pairs = _load_json_lines(root / "clip_pairs.jsonl")
    _, annotations = _annotations(root, "train")
    assert [p["image"] for p in pairs] == [a["file"] for a in annotations]
    for pair, annotation in zip(pairs, annotations):
        # CLIP's captions are counted shape tags: every shape with its exact count, no colours
        # (with colours the contrastive loss is met without ever looking at the shapes).
        counts = Counter(obj["shape"] for obj in annotation["objects"])
        tags = dict(reversed(tag.split(" ")) for tag in pair["caption"].split(" and "))
        assert {shape: int(n) for shape, n in tags.items()} == dict(counts), (pair, annotation)
    # Lines of conversations about an image start with that image's objects, the LM learns from
    # a description in its context.
    align = _records(root, "align.json")
    for line, record in zip(lines, align):
        caption = record["conversations"][1]["value"]
        assert line.lower().startswith(caption.split(":")[-1].strip().split(" on a ")[0].lower()), (line, caption)


def test_existence_surveys_ask_every_shape_once_with_true_answers(world):
    root, _ = world
    lines = (root / "text_corpus.txt").read_text().splitlines()
    surveys = lines[-N_TRAIN:]
    _, annotations = _annotations(root, "train")
    for line, annotation in zip(surveys, annotations):
        present = {obj["shape"] for obj in annotation["objects"]}
        asked = re.findall(r"Is there an? (\w+) in the image\? (Yes|No)", line)
        assert sorted(shape for shape, _ in asked) == sorted(SHAPES), line
        assert all((answer == "Yes") == (shape in present) for shape, answer in asked), (line, present)
        # the description comes first: every present shape is named before the first question
        description = line.split(" Is there ")[0].lower()
        assert all(shape in description for shape in present), (description, present)  # plurals contain the shape


def test_existence_records_group_several_different_questions(world):
    root, _ = world
    existence = [r for r in _records(root, "finetune.json") if r["id"].startswith("existence-")]
    assert existence
    lengths = []
    for record in existence:
        questions = [t["value"].removeprefix("<image>\n") for t in record["conversations"][::2]]
        # one image per record, asked about once at the start; no question asked twice
        assert record["conversations"][0]["value"].startswith("<image>\n")
        assert all("<image>" not in q for q in questions)
        assert len(set(questions)) == len(questions), record
        lengths.append(len(questions))
    assert max(lengths) <= 10 and sum(lengths) / len(lengths) >= 4, Counter(lengths)


def test_eval_images_never_appear_in_training(world):
    root, _ = world
    train_root, train = _annotations(root, "train")
    train_files = {a["file"] for a in train}
    training_pixels = {hashlib.sha256(_pixels(train_root / f).tobytes()).hexdigest() for f in train_files}
    for record in _records(root, "finetune.json") + _records(root, "align.json"):
        if "image" in record:
            assert record["image"] in train_files
    eval_paths = [p for p in root.rglob("*") if p.suffix in (".png", ".jpg") and "images/train" not in p.as_posix()]
    assert len(eval_paths) > N_EVAL
    for path in eval_paths:
        if path.suffix == ".png":  # JPEG pixels cannot equal a PNG's exactly anyway
            assert hashlib.sha256(_pixels(path).tobytes()).hexdigest() not in training_pixels, path


# ---- benchmarks -----------------------------------------------------------------------------------


def _pope(root: Path) -> dict[str, list[dict]]:
    return {split: _load_json_lines(root / "benchmarks" / "pope" / f"coco_pope_{split}.json")
            for split in ("random", "popular", "adversarial")}


def test_pope_questions_follow_the_paper(world):
    root, manifest = world
    assert manifest["benchmarks"]["pope"]["image_folder"] == "images/eval"
    _, annotations = _annotations(root, "eval")
    shapes_of = {a["file"]: {o["shape"] for o in a["objects"]} for a in annotations}
    # statistics recomputed here from the annotations, independently of the writer
    frequency = Counter(s for shapes in shapes_of.values() for s in shapes)
    cooccurrence = Counter((a, b) for shapes in shapes_of.values() for a in shapes for b in shapes if a != b)
    ranking = sorted(SHAPES, key=lambda s: (-frequency[s], SHAPES.index(s)))
    negatives: dict[str, dict[str, list[str]]] = {}
    positives: dict[str, dict[str, list[str]]] = {}
    for split, rows in _pope(root).items():
        assert [r["question_id"] for r in rows] == list(range(1, len(rows) + 1))
        assert len(rows) == 6 * N_EVAL
        assert set(r["image"] for r in rows) == set(shapes_of)
        assert Counter(r["label"] for r in rows) == {"yes": 3 * N_EVAL, "no": 3 * N_EVAL}
        for row in rows:
            assert set(row) == {"question_id", "image", "text", "label"}
            match = re.fullmatch(r"Is there an? (\w+) in the image\?", row["text"])
            assert match, row["text"]
            shape = match.group(1)
            assert (shape in shapes_of[row["image"]]) == (row["label"] == "yes"), row
            target = positives if row["label"] == "yes" else negatives
            target.setdefault(split, {}).setdefault(row["image"], []).append(shape)
        for image, shapes in negatives[split].items():
            assert len(set(shapes)) == 3 and len(set(positives[split][image])) == 3
    assert positives["random"] == positives["popular"] == positives["adversarial"]
    for image, present in shapes_of.items():
        assert negatives["popular"][image] == [s for s in ranking if s not in present][:3]

    def mean(split: str, score) -> float:
        values = [score(s, shapes_of[image]) for image, shapes in negatives[split].items() for s in shapes]
        return sum(values) / len(values)

    def cooccur(shape: str, present: set[str]) -> int:
        return sum(cooccurrence[(p, shape)] for p in present)

    def popular(shape: str, present: set[str]) -> int:
        return frequency[shape]

    assert mean("adversarial", cooccur) > mean("random", cooccur)
    assert mean("popular", popular) > mean("random", popular)
    assert negatives["adversarial"] != negatives["popular"]  # the splits are not the same questions


def test_mme_two_questions_per_image(world):
    root, manifest = world
    mme = root / "benchmarks" / "mme"
    subtasks = manifest["benchmarks"]["mme"]["images_per_subtask"]
    assert {"existence", "count", "position", "color", "OCR", "numerical_calculation"} <= set(subtasks)
    _, annotations = _annotations(root, "mme")
    by_file = {a["file"]: a for a in annotations}
    for subtask, n in subtasks.items():
        images = sorted((mme / subtask).glob("*.png"))
        assert len(images) == n == len(list((mme / subtask).glob("*.txt")))
        for image in images:
            lines = image.with_suffix(".txt").read_text().splitlines()
            assert len(lines) == 2
            (yes_q, yes), (no_q, no) = (line.split("\t") for line in lines)
            assert (yes, no) == ("Yes", "No")
            assert yes_q.endswith(" Please answer yes or no.") and no_q.endswith(" Please answer yes or no.")
            annotation = by_file[f"{subtask}/{image.name}"]
            shapes = {o["shape"] for o in annotation["objects"]}
            if subtask == "existence":
                assert re.match(r"Is there an? (\w+)", yes_q).group(1) in shapes
                assert re.match(r"Is there an? (\w+)", no_q).group(1) not in shapes
            elif subtask == "color":
                pairs = {(o["color"], o["shape"]) for o in annotation["objects"]}
                assert tuple(re.match(r"Is there an? (\w+) (\w+)", yes_q).groups()) in pairs
                assert tuple(re.match(r"Is there an? (\w+) (\w+)", no_q).groups()) not in pairs
            elif subtask == "OCR":
                assert f'"{annotation["text"]}"' in yes_q and f'"{annotation["text"]}"' not in no_q
            elif subtask == "numerical_calculation":
                a, op, b = annotation["text"][0], annotation["text"][1], annotation["text"][2]
                value = int(a) + int(b) if op == "+" else int(a) - int(b)
                assert yes_q.split(" Please")[0].endswith(f" {value}?")
                assert not no_q.split(" Please")[0].endswith(f" {value}?")


def test_scienceqa_layout(world):
    root, _ = world
    folder = root / "benchmarks" / "scienceqa"
    problems = json.loads((folder / "problems.json").read_text())
    splits = json.loads((folder / "pid_splits.json").read_text())
    assert splits["test"] == list(problems) and len(problems) == N_EVAL
    with_image = 0
    for pid, problem in problems.items():
        assert {"question", "choices", "answer", "hint", "image", "split", "subject", "grade"} <= set(problem)
        assert problem["split"] == "test" and 0 <= problem["answer"] < len(problem["choices"])
        assert len(set(problem["choices"])) == len(problem["choices"]) >= 2
        image = folder / "images" / "test" / pid / "image.png"
        assert image.is_file() == (problem["image"] == "image.png")
        assert problem["image"] in ("image.png", None)
        with_image += problem["image"] is not None
    assert 0 < with_image < len(problems)


def test_textvqa_layout_and_noisy_answers(world):
    root, _ = world
    folder = root / "benchmarks" / "textvqa"
    questions = json.loads((folder / "TextVQA_0.5.1_val.json").read_text())
    ocr = json.loads((folder / "TextVQA_Rosetta_OCR_v0.2_val.json").read_text())
    assert (questions["dataset_name"], questions["dataset_version"], questions["dataset_type"]) == ("textvqa", "0.5.1", "val")
    _, annotations = _annotations(root, "textvqa")
    text_of = {a["file"]: a["text"] for a in annotations}
    tokens_of = {row["image_id"]: row["ocr_tokens"] for row in ocr["data"]}
    accuracies = []
    for row in questions["data"]:
        assert len(row["answers"]) == 10 and row["image_classes"] == [] and row["flickr_original_url"] == ""
        assert (folder / "train_images" / f"{row['image_id']}.jpg").is_file()
        truth = text_of[f"{row['image_id']}.jpg"]
        assert tokens_of[row["image_id"]] == [truth]
        matches = sum(answer.lower() == truth.lower() for answer in row["answers"])
        assert Counter(a.lower() for a in row["answers"]).most_common(1)[0][1] <= matches  # the text is the top answer
        accuracies.append(min(matches / 3, 1))
    assert min(accuracies) < 1 or any(
        sum(a.lower() == text_of[f"{r['image_id']}.jpg"].lower() for a in r["answers"]) < 10 for r in questions["data"])


def test_chair_files(world):
    root, manifest = world
    folder = root / "benchmarks" / "chair"
    annotations = json.loads((folder / "annotations.json").read_text())
    _, eval_annotations = _annotations(root, "eval")
    assert {image["file_name"]: image["objects"] for image in annotations["images"]} == {
        a["file"]: sorted({o["shape"] for o in a["objects"]}, key=SHAPES.index) for a in eval_annotations}
    assert len({image["id"] for image in annotations["images"]}) == len(eval_annotations)
    canonical = [line.split(", ")[0] for line in (folder / "synonyms.txt").read_text().splitlines()]
    assert canonical == list(SHAPES)
    assert json.loads((folder / "prompts.json").read_text())
    assert manifest["benchmarks"]["chair"]["image_folder"] == "images/eval"


# ---- parameters and bad input ----------------------------------------------------------------------


def test_mix_proportions_are_honoured(tmp_path):
    only_existence = FinetuneMix(**{name: 0.0 for name in ("counting", "color", "position", "ocr", "multiple_choice",
                                                            "caption", "detail", "conversation", "text_only")},
                                 existence=1.0, records_per_image=1.5)
    root, manifest = _write(tmp_path / "mix", n_train=20, n_eval=3, mix=only_existence)
    records = _records(root, "finetune.json")
    assert len(records) == 30 and all(r["id"].startswith("existence-") for r in records)
    assert manifest["mix"]["records_per_image"] == 1.5


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="n_train"):
        write_shapes_world(tmp_path / "a", n_train=0, n_eval=2, progress=False)
    with pytest.raises(ValueError, match="image_size"):
        write_shapes_world(tmp_path / "b", n_train=2, n_eval=2, image_size=16, progress=False)
    with pytest.raises(ValueError, match="FinetuneMix.counting"):
        FinetuneMix(counting=-1)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_shapes_world(foreign, n_train=2, n_eval=2, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_rewriting_a_world_replaces_it(tmp_path):
    root, _ = _write(tmp_path / "w", n_train=10, n_eval=3)
    _, smaller = _write(root, n_train=4, n_eval=2)
    assert len(list((root / "images" / "train").glob("*.png"))) == 4
    assert smaller["counts"]["images/train"] == 4
