"""The shapes world's two-image star questions: off by default, true to the images when on, and the
controls of their benchmark (swapped and shuffled images)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crystalvlm.data.records import load_records
from crystalvlm.worlds.shapes.mixture import FinetuneMix
from crystalvlm.worlds.shapes.multi_image import (
    BENCHMARK_FILE, QUESTION, control_pairs, parse_answer, prompt_text, star_count,
)
from crystalvlm.worlds.shapes.writer import write_shapes_world


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("multi_image_worlds")
    made = {}
    for name, mix in (("default", None), ("multi", FinetuneMix(multi_image=0.5))):
        made[name] = (root / name, write_shapes_world(root / name, n_train=24, n_eval=8, seed=3, progress=False, mix=mix))
    return made


def _stars_of(root: Path, split: str) -> dict[str, int]:
    data = json.loads((root / "annotations" / f"{split}.json").read_text())
    return {str(Path(data["image_root"], entry["file"]).relative_to("images")): star_count(entry["objects"])
            for entry in data["images"]}


def test_default_world_has_no_two_image_data(worlds):
    root, manifest = worlds["default"]
    assert "multi_image" not in manifest["mix"] and "multi_image" not in manifest["finetune_task_counts"]
    assert "multi_image" not in manifest["benchmarks"] and not (root / "benchmarks" / BENCHMARK_FILE).exists()
    records = json.loads((root / "finetune.json").read_text())
    assert all(not isinstance(record.get("image"), list) for record in records)


def test_the_option_adds_true_two_image_records_and_changes_nothing_else(worlds):
    default_root, _ = worlds["default"]
    root, manifest = worlds["multi"]
    records = json.loads((root / "finetune.json").read_text())
    pairs = [record for record in records if isinstance(record.get("image"), list)]
    assert len(pairs) == manifest["finetune_task_counts"]["multi_image"] == round(24 * 2.0 * 0.5)  # n_train x records_per_image x share
    stars = _stars_of(root, "train")
    answers = set()
    for record in pairs:
        first, second = (stars[path] for path in record["image"])
        answer = record["conversations"][1]["value"]
        assert first != second and answer == ("First" if first > second else "Second")
        assert record["conversations"][0]["value"] == prompt_text()
        answers.add(answer)
    assert answers == {"First", "Second"}
    # Every record reads as valid LLaVA data (two placeholders, two images) ...
    loaded = load_records(root / "finetune.json")
    assert not loaded.problems and sum(len(r.images) == 2 for r in loaded.records) == len(pairs)
    # ... and the rest of the mix is the default world's, record for record.
    default = json.loads((default_root / "finetune.json").read_text())
    assert sorted(json.dumps(r) for r in records if r not in pairs) == sorted(json.dumps(r) for r in default)


def test_the_benchmark_answers_follow_the_eval_images(worlds):
    root, manifest = worlds["multi"]
    benchmark = json.loads((root / "benchmarks" / BENCHMARK_FILE).read_text())
    assert manifest["benchmarks"]["multi_image"]["questions"] == len(benchmark["questions"]) == 8
    assert QUESTION in benchmark["question"]
    stars = {name: count for name, count in _stars_of(root, "eval").items()}
    for question in benchmark["questions"]:
        first, second = (stars[f"eval/{name}"] for name in question["images"])
        assert question["stars"] == [first, second]
        assert question["answer"] == ("First" if first > second else "Second")
        assert (root / benchmark["image_folder"] / question["images"][0]).is_file()


def test_controls_swap_the_truth_and_shuffle_the_pairs():
    questions = [{"images": [f"a{i}.png", f"b{i}.png"], "answer": "First" if i % 2 else "Second"} for i in range(7)]
    conditions = control_pairs(questions, seed=0)
    assert conditions["real"] == [(q["images"], q["answer"]) for q in questions]
    for question, (images, truth) in zip(questions, conditions["swapped"]):
        assert images == question["images"][::-1] and truth != question["answer"]
    shuffled = conditions["shuffled"]
    assert all(images != q["images"] for q, (images, _) in zip(questions, shuffled))  # no question keeps its pair
    assert sorted(map(tuple, (images for images, _ in shuffled))) == sorted(tuple(q["images"]) for q in questions)
    assert [truth for _, truth in shuffled] == [q["answer"] for q in questions]
    for size in range(2, 24):  # never a question's own pair, whatever the count and seed
        many = [{"images": [f"a{i}.png", f"b{i}.png"], "answer": "First"} for i in range(size)]
        for seed in range(4):
            assert all(images != q["images"] for q, (images, _) in zip(many, control_pairs(many, seed)["shuffled"]))


@pytest.mark.parametrize("text, parsed", [("First", "First"), ("second.", "Second"), (" First image has more", "First"),
                                          ("Second, the", "Second"), ("Neither", None), ("", None)])
def test_answers_are_parsed_from_their_start(text, parsed):
    assert parse_answer(text) == parsed


def test_evaluate_sends_each_condition_its_images(tiny_checkpoint, colour_world, tmp_path):
    """The scorer asks the benchmark's question about the real pair, the swapped pair and another
    question's pair, and scores each against its own truth."""
    from crystalvlm.infer.engine import GenerationEngine
    from crystalvlm.worlds.shapes.multi_image import evaluate

    from crystalvlm.worlds.shapes.multi_image import write_multi_image_benchmark

    names = [f"img{i:03d}.png" for i in range(8)]
    benchmark = tmp_path / BENCHMARK_FILE
    write_multi_image_benchmark(benchmark, "images", names, [0, 1, 2, 0, 1, 2, 0, 3], 4, seed=0)
    data = json.loads(benchmark.read_text())
    for index, question in enumerate(data["questions"]):  # four different pairs, so no shuffled pair is its own
        question.update(images=names[2 * index: 2 * index + 2], stars=[0, index + 1], answer="Second")
    benchmark.write_text(json.dumps(data))
    engine = GenerationEngine.from_checkpoint(tiny_checkpoint, batch_size=8)
    sent: list[list[tuple]] = []  # (text, ids of the images): the scorer opens each file once
    generate = engine.generate

    def recording(requests, config, **kwargs):
        sent.append([(request.turns[0].text, tuple(id(image) for image in request.images)) for request in requests])
        return generate(requests, config, **kwargs)

    engine.generate = recording
    scores = evaluate(engine, benchmark, colour_world["images"].parent, seed=0)
    real, swapped, shuffled = sent
    assert all(text == prompt_text() and len(images) == 2 for text, images in real + swapped + shuffled)
    assert [images[::-1] for _, images in real] == [images for _, images in swapped]
    assert all(images != own for (_, own), (_, images) in zip(real, shuffled))
    assert sorted(images for _, images in shuffled) == sorted(images for _, images in real)
    for condition in ("real", "swapped", "shuffled"):
        assert scores[condition]["questions"] == 4 and 0 <= scores[condition]["accuracy"] <= 1
    assert sum(entry["questions"] for entry in scores["real_by_stars"].values()) == 4
