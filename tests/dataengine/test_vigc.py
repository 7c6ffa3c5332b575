"""VIGC: parsing generated pairs, and the correction's stopping rule on a tiny model."""

from __future__ import annotations

import pytest
from PIL import Image

from crystalvlm.dataengine.vigc import JunkOutput, VigcItem, _request, correct_answers, parse_pair, vigc_records


def test_parse_pair_reads_the_format_and_names_what_is_wrong():
    assert parse_pair("Question: How many stars are there? Answer: 2") == ("How many stars are there?", "2")
    assert parse_pair(" QuQuestion: Is there a star? Answer: No") == ("Is there a star?", "No")  # a stutter first
    for text, reason in [("There are two stars.", "no 'Question"), ("Question: stars Answer: 2", "question mark"),
                         ("Question: a? Answer: b Question: c? Answer: d", "more than one")]:
        with pytest.raises(JunkOutput, match=reason):
            parse_pair(text)


@pytest.fixture(scope="module")
def engine_and_image(tiny_checkpoint, tmp_path_factory):
    from crystalvlm.infer.engine import GenerationEngine

    image = tmp_path_factory.mktemp("vigc") / "scene.png"
    Image.new("RGB", (32, 32), (200, 40, 40)).save(image)
    return GenerationEngine.from_checkpoint(tiny_checkpoint, batch_size=4), image


def _fresh_answer(engine, image, question: str) -> str:
    from crystalvlm.infer.engine import DecodingConfig

    return engine.generate([_request(Image.open(image).convert("RGB"), question)],
                           DecodingConfig(strategy="greedy", max_new_tokens=64))[0].text.strip()


def test_an_answer_the_model_would_give_is_stable_after_one_iteration(engine_and_image):
    engine, image = engine_and_image
    fresh = _fresh_answer(engine, image, "What colour is it?")
    item = VigcItem(image, "color", "What colour is it?", fresh)
    correct_answers(engine, [item], max_iterations=4)
    assert item.iterations == 1 and item.corrected == fresh and item.history == [fresh]


def test_a_changed_answer_is_corrected_until_stable_or_the_limit(engine_and_image, tmp_path):
    engine, image = engine_and_image
    fresh = _fresh_answer(engine, image, "What colour is it?")
    wrong = VigcItem(image, "color", "What colour is it?", "Purple. It is a purple circle.")
    capped = VigcItem(image, "color", "What colour is it?", "Purple. It is a purple circle.")
    correct_answers(engine, [wrong], max_iterations=4)
    correct_answers(engine, [capped], max_iterations=1)
    # Iteration 0 keeps no prefix: the answer is rebuilt from the image and question alone.
    assert wrong.history[0] == fresh and capped.history == [fresh] and capped.iterations == 1
    # It stops at the first iteration that changes nothing, or at the limit.
    stable = len(wrong.history) >= 2 and wrong.history[-1] == wrong.history[-2]
    assert stable or wrong.iterations == 4
    assert all(wrong.history[i] != wrong.history[i + 1] for i in range(len(wrong.history) - 2))
    assert wrong.corrected == wrong.history[-1]
    records = vigc_records([wrong], tmp_path / "images", question_suffix="Answer briefly.")
    assert records[0]["conversations"][0]["value"] == "<image>\nWhat colour is it?\nAnswer briefly."
    assert records[0]["conversations"][1]["value"] == wrong.corrected and (tmp_path / "images" / image.name).is_file()
