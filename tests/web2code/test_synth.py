"""The offline Web2Code world: generated pages, their screenshots, DWCG/DWU training records and the
held-out WCGB/WUB files, all consistent with what the browser actually drew."""

from __future__ import annotations

import json

import pytest
from conftest import SMALL_VIEWPORT

from crystalvlm.data.records import load_records
from crystalvlm.web2code.converters import HTML_PROMPTS
from crystalvlm.web2code.pagegen import generate_page, generate_pages
from crystalvlm.web2code.synth import write_web_world
from crystalvlm.worlds.web.prepare import page_words
from crystalvlm.web2code.wub import load_wub_questions


def test_pages_are_deterministic_and_self_contained():
    for complexity in ("simple", "full"):
        first, again = generate_page(42, complexity), generate_page(42, complexity)
        assert first.html == again.html and first.sections == again.sections
        assert generate_page(43, complexity).html != first.html
    for page in generate_pages(20, seed=3, complexity="full"):
        assert "<script" not in page.html and "http" not in page.html.replace("you@example.com", "")
        assert page.description.startswith("Create a ")
    with pytest.raises(ValueError, match="complexity"):
        generate_page(1, "medium")


@pytest.fixture(scope="module")
def world(tmp_path_factory, pool):
    return write_web_world(tmp_path_factory.mktemp("web_world"), n_train=4, n_eval=2, seed=7,
                           viewport=SMALL_VIEWPORT, complexity="simple", pool=pool)


@pytest.mark.browser
def test_world_files_are_valid_llava_records_with_existing_images(world):
    assert world.counts["train_pages"] == 4 and world.counts["eval_pages"] == 2
    for path in (world.dwcg_train, world.dwu_train, world.dwcg_eval):
        loaded = load_records(path)
        assert loaded.problems == [] and loaded.records
        assert all((world.image_folder / image).is_file() for r in loaded.records for image in r.images)
    code = json.loads(world.dwcg_train.read_text())
    assert len(code) == 4
    for record in code:
        page_id = record["image"].removesuffix(".png")
        assert record["conversations"][0]["value"] == f"<image>\n{HTML_PROMPTS[0]}"
        assert record["conversations"][1]["value"] == (world.root / "pages" / f"{page_id}.html").read_text()


@pytest.mark.browser
def test_dom_questions_hold_for_the_rendered_page(world):
    for record in json.loads(world.dwu_train.read_text()):
        html = (world.root / "pages" / record["image"].replace(".png", ".html")).read_text()
        turns = record["conversations"]
        for question, answer in zip(turns[::2], turns[1::2]):
            text = question["value"]
            if "main heading" in text or "button say" in text:
                assert answer["value"] in html
            if "background colour of the page" in text:
                assert f"background:{answer['value']}" in html  # simple pages use CSS colour names


@pytest.mark.browser
def test_held_out_benchmark_files(world):
    wcgb = [json.loads(line) for line in world.wcgb.read_text().splitlines()]
    assert [item["id"] for item in wcgb] == ["eval_00000", "eval_00001"]
    train_html = {(world.root / "pages" / f"train_{i:05d}.html").read_text() for i in range(4)}
    assert all(item["html"] not in train_html for item in wcgb)  # held-out pages are new
    questions = load_wub_questions(world.wub)
    assert len(questions) == world.counts["wub_questions"] >= 2
    assert all(q["Q"].endswith("Answer with Yes or No.") for q in questions)
    manifest = json.loads(world.manifest.read_text())
    assert manifest["seed"] == 7 and manifest["viewport"] == list(SMALL_VIEWPORT)


@pytest.mark.browser
def test_word_boxes_cover_every_screenshot_with_its_pages_words_in_order(world):
    boxes = json.loads(world.word_boxes.read_text())
    images = sorted(path.name for path in world.image_folder.glob("*.png"))
    assert sorted(boxes) == images and len(images) == 6
    for image, words in boxes.items():
        html = (world.root / "pages" / image.replace(".png", ".html")).read_text()
        assert " ".join(word for word, *_ in words) == page_words(html)
        assert all(0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 1 and y + h <= 1 for _, x, y, w, h in words)


@pytest.mark.browser
def test_a_pool_of_another_size_is_refused(tmp_path, pool):
    with pytest.raises(ValueError, match="renders at"):
        write_web_world(tmp_path, 1, 1, viewport=(640, 480), pool=pool)


@pytest.mark.browser
def test_world_screenshots_are_what_the_page_looks_like_alone(world, pool):
    # Simple pages are rendered many per screenshot; WCGB renders a page alone. The two must agree
    # pixel for pixel, or the model trains on images it is never scored against.
    import io

    import numpy as np
    from PIL import Image

    def pixels(data: bytes):
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))

    pages = sorted((world.root / "pages").glob("*.html"))
    assert len(pages) == 6
    alone = pool.render([page.read_text() for page in pages])
    for page, result in zip(pages, alone):
        stored = (world.image_folder / f"{page.stem}.png").read_bytes()
        assert (pixels(stored) == pixels(result.png)).all(), page.name
