"""`crystalvlm quickstart --world web` end to end at smoke scale: the report's structure, its files
and the checkpoint. Scores at this scale mean little, so only their ranges are checked here; the
full-scale figures are measured by running the command itself (see the report it writes)."""

from __future__ import annotations

import base64
import html
import json
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import pytest

from crystalvlm.web2code.metrics.wcgb import METRIC_NAMES

pytestmark = pytest.mark.browser

COLUMNS = ("before", "after", "baseline")


@pytest.fixture(scope="module")
def web_quickstart(tmp_path_factory) -> Path:
    import torch

    from crystalvlm.worlds.quickstart import run_quickstart

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("web_quickstart") / "run"
    run_quickstart(out, world="web", scale="smoke", seed=0)  # the CLI's entry point, delegating to web2code
    return out


@pytest.fixture(scope="module")
def report(web_quickstart) -> dict:
    return json.loads((web_quickstart / "report.json").read_text())


def test_report_holds_wcgb_and_wub_before_after_and_baseline(report):
    assert report["world"] == "web" and report["scale"] == "smoke"
    assert report["wall_seconds"] > 0
    wcgb = report["benchmarks"]["wcgb"]
    assert set(wcgb) == set(COLUMNS)
    for column in COLUMNS:
        scores = wcgb[column]
        assert all(0.0 <= scores[name] <= 1.0 for name in METRIC_NAMES), (column, scores)
        assert scores["pages"] == report["world_counts"]["eval_pages"] == 4
    wub = report["benchmarks"]["wub"]
    assert set(wub) == set(COLUMNS)
    for column in COLUMNS:
        assert 0.0 <= wub[column]["accuracy"] <= 100.0
        assert wub[column]["total"] == report["world_counts"]["wub_questions"]
    # The majority baseline answers every question the same way, so its accuracy is that answer's share.
    answer = report["baselines"]["wub"]["answer"]
    share = report["world_counts"]["wub_yes"] / report["world_counts"]["wub_questions"]
    expected = 100.0 * (share if answer == "Yes" else 1.0 - share)
    assert wub["baseline"]["accuracy"] == pytest.approx(expected)


def test_report_names_the_constant_page_and_the_training(report):
    constant = report["baselines"]["wcgb"]
    assert constant["record_id"].startswith("dwcg_train_")
    assert constant["html"].startswith("<!DOCTYPE html><html>") and 0.0 <= constant["train_design2code"] <= 1.0
    assert set(report["training"]) == {"align", "finetune"}
    assert report["training"]["align"]["steps"] == 2 and report["training"]["finetune"]["steps"] == 3
    for stage in report["training"].values():
        assert stage["final_loss"] > 0 and stage["skipped_records"] == 0
    for part in ("vision", "lm"):
        assert report["pretraining"][part]["steps"] == 3
    assert report["pretraining"]["vision"]["objective"] == "reader"
    assert set(report["timings"]) >= {"prepare_s", "baselines_s", "eval_before_s", "train_s", "eval_after_s"}


def test_examples_pair_reference_and_generated_html(report):
    examples = report["examples"]
    assert len(examples) == 4  # every held-out page at smoke scale (fewer than the 6 shown)
    for example in examples:
        assert example["reference_html"].startswith("<!DOCTYPE html><html>")
        assert isinstance(example["trained_html"], str) and isinstance(example["untrained_html"], str)
        assert 0.0 <= example["trained_scores"]["design2code"] <= 1.0
    ordered = [e["trained_scores"]["design2code"] for e in examples]
    assert ordered == sorted(ordered, reverse=True)


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def test_report_html_has_tables_plots_and_side_by_side_examples(web_quickstart, report):
    from PIL import Image

    # newline="": generated code may hold a bare "\r", which universal newlines would turn into "\n".
    with open(web_quickstart / "report.html", encoding="utf-8", newline="") as handle:
        page = handle.read()
    parser = _Collector()
    parser.feed(page)
    assert parser.tags.get("table", 0) >= 3  # WCGB, WUB, examples
    assert "constant baseline" in page and "WUB" in page
    assert ("Target met" if report["target"]["met"] else "Target not met") in page
    # 4 plots (WCGB bars, per-page scores, WUB bars, loss) + per example: reference + 2 renderings.
    assert len(parser.images) >= 4 + 4 * 1
    sizes = []
    for source in parser.images:
        assert source.startswith("data:image/png;base64,")
        with Image.open(BytesIO(base64.b64decode(source.split(",", 1)[1]))) as image:
            image.load()
            sizes.append(image.size)
    assert sizes.count(tuple(report["viewport"])) >= 4  # the reference screenshots at their own size
    for example in report["examples"]:
        assert example["id"] in page
        assert html.escape(example["reference_html"]) in page  # the codes are written out, escaped
        assert html.escape(example["trained_html"]) in page


def test_evaluation_files_and_a_native_checkpoint(web_quickstart, report):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    for when in ("before", "after"):
        results = json.loads((web_quickstart / "eval" / when / "results.json").read_text())
        assert set(results["results"]) == {"wcgb", "wub"}
        lines = (web_quickstart / "eval" / when / "samples_wcgb.jsonl").read_text().splitlines()
        assert len(lines) == 4
    checkpoint = Path(report["checkpoint"])
    model = AutoModelForImageTextToText.from_pretrained(checkpoint)
    processor = AutoProcessor.from_pretrained(checkpoint)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert processor.image_processor.size["height"] == 128
    recipe = (web_quickstart / "run" / "recipe.yaml").read_text()
    assert "name: tiny-web" in recipe


def test_the_report_says_whether_the_target_was_met_and_by_how_much(report):
    from crystalvlm.worlds.web.report import target_verdict

    target = report["target"]
    assert set(target["leads"]) == set(METRIC_NAMES) | {"wub_accuracy"}
    assert target == target_verdict(report["benchmarks"])  # recomputed from the stored scores
    wub = report["benchmarks"]["wub"]
    assert target["leads"]["wub_accuracy"] == pytest.approx(
        wub["after"]["accuracy"] - max(wub["before"]["accuracy"], wub["baseline"]["accuracy"]), abs=1e-4)

