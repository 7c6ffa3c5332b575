"""WCGB and WUB as evaluation tasks (`crystalvlm.eval.tasks.web`), the constant WCGB baseline and
the web world's CLIP page summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from crystalvlm.eval.tasks.files import BenchmarkFormatError
from crystalvlm.eval.tasks.registry import build_task
from crystalvlm.eval.tasks.web import WubTask, extract_html, wub_majority_answer
from crystalvlm.worlds.web.prepare import page_slots, page_summary

PAGES = {
    "p0": '<html><body style="background:yellow"><h1 style="color:blue">big red fox</h1></body></html>',
    "p1": '<html><body style="background:white"><p style="color:green">sun moon star</p>'
          '<button style="background:blue;color:white">open</button></body></html>',
    "p2": '<html><body style="background:black"><div style="background:pink;color:black;padding:8px">tea time</div>'
          "</body></html>",
}


def _write_lines(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _wub_world(root: Path) -> Path:
    """root/eval/wub.jsonl and root/images/, the layout a web world has."""
    (root / "images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 32), "white").save(root / "images" / name)
    _write_lines(root / "eval" / "wub.jsonl", [
        {"question_id": "q0", "image": "a.png", "Q": "Is there a button? Answer with Yes or No.", "A": "Yes", "kind": "has_element"},
        {"question_id": "q1", "image": "a.png", "Q": "Is the background red? Answer with Yes or No.", "A": "No", "kind": "background_colour"},
        {"question_id": "q2", "image": "b.png", "Q": "Is the background white? Answer with Yes or No.", "A": "Yes", "kind": "background_colour"},
        {"question_id": "q3", "image": "b.png", "Q": "Is there a form? Answer with Yes or No.", "A": "No", "kind": "has_element"},
    ])
    return root


def test_wub_task_uses_web2codes_rule_and_reports_kinds(tmp_path):
    task = build_task("wub", _wub_world(tmp_path))  # found through the registry in a world's eval/
    assert isinstance(task, WubTask) and task.max_new_tokens == 8
    samples = task.samples()
    assert [s.sample_id for s in samples] == ["q0", "q1", "q2", "q3"]
    assert samples[0].image == tmp_path / "images" / "a.png" and samples[0].target == "Yes"
    # "Yes, there is" counts (the answer within the first five characters); "Maybe" and "" do not.
    scores = task.score({"q0": "Yes, there is one", "q1": "no", "q2": "Maybe", "q3": ""})
    assert scores["accuracy"] == pytest.approx(50.0)
    assert scores["correct"] == 2 and scores["total"] == 4
    assert scores["accuracy_has_element"] == pytest.approx(50.0)  # q0 right, q3 wrong
    assert scores["accuracy_background_colour"] == pytest.approx(50.0)  # q1 right, q2 wrong
    assert scores["yes_no_ratio"] == pytest.approx(0.25)  # only "no" is a bare yes/no
    assert scores["yes_ratio"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="no prediction"):
        task.score({"q0": "Yes"})


def test_wub_task_names_the_line_of_a_bad_question(tmp_path):
    root = _wub_world(tmp_path)
    lines = (root / "eval" / "wub.jsonl").read_text().splitlines()
    lines[2] = json.dumps({"question_id": "q2", "image": "b.png", "Q": "What colour?", "A": "white"})
    (root / "eval" / "wub.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"wub\.jsonl:3: WUB answers must be Yes or No"):
        build_task("wub", root).samples()
    lines[2] = json.dumps({"question_id": "q2", "image": "missing.png", "Q": "Is it?", "A": "Yes"})
    (root / "eval" / "wub.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"wub\.jsonl:3: screenshot .*missing\.png not found"):
        build_task("wub", root).samples()


def test_registry_refuses_unknown_options_and_missing_files(tmp_path):
    root = _wub_world(tmp_path)
    with pytest.raises(TypeError, match="unknown option"):
        build_task("wub", root, colour="red")
    with pytest.raises(FileNotFoundError, match="wcgb.jsonl"):
        build_task("wcgb", root)


def test_extract_html_takes_the_fenced_block_or_the_whole_reply():
    assert extract_html("  <p>hi</p>\n") == "<p>hi</p>"
    assert extract_html("Here you go:\n```html\n<h1>x</h1>\n```\nEnjoy") == "<h1>x</h1>"
    assert extract_html("```\n<b>y</b>") == "<b>y</b>"  # an unclosed fence (cut by max_new_tokens)


def test_wub_majority_answer_counts_yes_and_no_replies():
    records = [{"conversations": [{"from": "human", "value": "Is it? Answer with Yes or No."}, {"from": "gpt", "value": "No"},
                                  {"from": "human", "value": "What colour?"}, {"from": "gpt", "value": "Yes"}]},
               {"conversations": [{"from": "human", "value": "Is it?"}, {"from": "gpt", "value": "No"}]}]
    assert wub_majority_answer(records) == "No"


def test_page_summary_keeps_tags_colours_and_words_in_order():
    assert page_summary(PAGES["p1"]) == "body white p green sun moon star button blue white open"
    assert page_summary(PAGES["p2"]) == "body black div pink black tea time"


def test_page_slots_number_elements_and_their_words():
    assert page_slots(PAGES["p1"]) == ("body:background:white 1:p 1:color:green 1.1:sun 1.2:moon 1.3:star "
                                       "2:button 2:background:blue 2:color:white 2.1:open")
    # the padding every div shares is markup, not content; a doctype and entities change nothing
    assert page_slots(PAGES["p2"]) == "body:background:black 1:div 1:background:pink 1:color:black 1.1:tea 1.2:time"
    assert page_slots("<!DOCTYPE html>" + PAGES["p0"].replace("fox", "f&amp;x")) == (
        "body:background:yellow 1:h1 1:color:blue 1.1:big 1.2:red 1.3:f&x")


# ----------------------------------------------------------------------------- with a browser
def _wcgb_world(root: Path, pool) -> Path:
    (root / "images").mkdir(parents=True)
    results = pool.render(list(PAGES.values()))
    rows = []
    for (page_id, page_html), result in zip(PAGES.items(), results):
        assert result.ok, result.reason
        (root / "images" / f"{page_id}.png").write_bytes(result.png)
        rows.append({"id": page_id, "image": f"{page_id}.png", "html": page_html,
                     "prompt": "Please generate html code for the given image"})
    _write_lines(root / "eval" / "wcgb.jsonl", rows)
    return root


@pytest.mark.browser
def test_wcgb_task_scores_exact_pages_full_and_wrong_pages_lower(tmp_path, pool):
    task = build_task("wcgb", _wcgb_world(tmp_path, pool), renderer=pool, max_new_tokens=256)
    assert task.max_new_tokens == 256 and task.viewport() == pool.settings.viewport
    exact = task.score({page_id: page_html for page_id, page_html in PAGES.items()})
    assert exact["pages"] == 3 and exact["not_rendered"] == 0
    assert exact["design2code"] == pytest.approx(1.0) and exact["tree_bleu"] == pytest.approx(1.0)
    # The same pages in Markdown fences score the same (the HTML is taken out of the fence).
    fenced = task.score({page_id: f"```html\n{page_html}\n```" for page_id, page_html in PAGES.items()})
    assert fenced["design2code"] == pytest.approx(1.0)
    # Every screenshot answered with the first page: only p0 is right.
    constant = task.score_samples({page_id: PAGES["p0"] for page_id in PAGES})
    assert constant.metrics["design2code"] < 0.8
    per_page = {page.sample_id: page.scores.design2code for page in constant.per_sample}
    assert per_page["p0"] == pytest.approx(1.0) and per_page["p1"] < 0.6 and per_page["p2"] < 0.6
    assert all(page.candidate.png for page in constant.per_sample)  # renders are kept for reports


@pytest.mark.browser
def test_wcgb_task_infers_its_viewport_and_needs_a_renderer_passed_in(tmp_path, pool):
    task = build_task("wcgb", _wcgb_world(tmp_path, pool))
    assert task.viewport() == pool.settings.viewport  # from the screenshots' size
    with pytest.raises(ValueError, match="needs a renderer"):
        task.score({"p0": "", "p1": "", "p2": ""})
    task.use_renderer(pool)
    scored = task.score_samples({"p0": "", "p1": "not html at all", "p2": PAGES["p2"]})
    assert scored.metrics["pages"] == 3
    per_page = {page.sample_id: page.scores for page in scored.per_sample}
    assert per_page["p2"].design2code == pytest.approx(1.0)
    assert per_page["p0"].design2code < 0.5 and per_page["p1"].text == 0.0


@pytest.mark.browser
def test_constant_page_is_the_candidate_that_scores_best_on_the_references(pool):
    import random

    from crystalvlm.worlds.web.constant_baseline import choose_constant_page
    from crystalvlm.web2code.metrics.wcgb import score_html_pairs

    pages = [PAGES["p1"].replace("sun", word) for word in ("sun", "cat", "dog", "tea")] + [PAGES["p0"], PAGES["p2"]]
    records = [{"id": f"train_{i}", "conversations": [{"from": "human", "value": "<image>\nx"}, {"from": "gpt", "value": page}]}
               for i, page in enumerate(pages)]
    chosen = choose_constant_page(records, pool, n_candidates=3, n_references=3, seed=0)
    assert chosen.candidates == 3 and chosen.references == 3
    assert chosen.html == pages[int(chosen.record_id.split("_")[1])]
    # The same seeded shuffle splits candidates from references (a shuffle depends only on the length).
    order = list(range(len(records)))
    random.Random("constant-page-0").shuffle(order)
    candidates, references = [pages[i] for i in order[:3]], [pages[i] for i in order[3:6]]
    assert chosen.html in candidates
    means = {}
    for candidate in candidates:
        scores = score_html_pairs(references, [candidate] * len(references), pool)
        means[candidate] = sum(s.design2code for s in scores) / len(scores)
    assert chosen.train_design2code == pytest.approx(means[chosen.html])
    assert chosen.train_design2code == pytest.approx(max(means.values()))


def test_unknown_vision_pretraining_or_captions_are_refused_before_any_work(tmp_path):
    from crystalvlm.worlds.web.prepare import pretrain_vision_tower

    settings = {"vision": {"image_size": 32, "patch_size": 16, "hidden": 32, "layers": 1}, "vision_steps": 1}
    with pytest.raises(ValueError, match="vision_pretraining must be one of"):
        pretrain_vision_tower([], tmp_path, None, {**settings, "vision_pretraining": "sift"}, tmp_path)
    with pytest.raises(ValueError, match="vision_captions for the reader must be one of"):
        pretrain_vision_tower([], tmp_path, None, {**settings, "vision_captions": "html"}, tmp_path)
    record = {"image": "train_00003.png", "conversations": [{"value": "<image>"}, {"value": "<p>cart</p>"}]}
    with pytest.raises(ValueError, match="no word boxes for 1 screenshots .first: train_00003.png"):
        pretrain_vision_tower([record], tmp_path, None, {**settings, "vision_word_boxes": True}, tmp_path,
                              word_boxes={"train_00004.png": []})
    assert not (tmp_path / "vision").exists()


def test_summary_captions_pair_each_screenshot_with_its_page_summary(tmp_path: Path):
    from crystalvlm.web2code.converters import html_record
    from crystalvlm.worlds.web.prepare import SUMMARY_PROMPT, write_summary_captions

    records = [html_record(f"dwcg_{key}", f"{key}.png", html, "Please generate html code for the given image")
               for key, html in PAGES.items()]
    out = tmp_path / "summaries.json"
    assert write_summary_captions(records, out) == 3
    captions = json.loads(out.read_text())
    assert [c["image"] for c in captions] == ["p0.png", "p1.png", "p2.png"]
    assert captions[1]["id"] == "summary_p1"
    assert captions[1]["conversations"][0]["value"] == f"<image>\n{SUMMARY_PROMPT}"
    assert captions[1]["conversations"][1]["value"] == "body white p green sun moon star button blue white open"


@pytest.mark.browser
def test_a_pool_without_word_boxes_is_refused_before_any_page_is_rendered(tmp_path, js_pool):
    from crystalvlm.worlds.web.prepare import prepare_tiny_web_world

    with pytest.raises(ValueError, match="vision_word_boxes needs a pool that reads word boxes"):
        prepare_tiny_web_world(tmp_path / "world", {"world": "web", "viewport": [320, 240], "n_train": 4, "n_eval": 1,
                                                    "vision_word_boxes": True}, pool=js_pool, progress=False)
    assert not (tmp_path / "world" / "images").exists()

