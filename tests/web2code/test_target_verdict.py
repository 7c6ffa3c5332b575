"""The web quickstart's verdict on its target: the trained model must lead both the untrained model
and the constant baseline by a margin on every WCGB metric and on WUB accuracy."""

from __future__ import annotations

import pytest

from crystalvlm.web2code.metrics.wcgb import METRIC_NAMES
from crystalvlm.worlds.web.report import WCGB_MARGIN, target_verdict, verdict_sentence


def _benchmarks(after: float, baseline: float, before: float, wub: tuple[float, float, float]) -> dict:
    scores = {column: {name: value for name in METRIC_NAMES}
              for column, value in (("after", after), ("baseline", baseline), ("before", before))}
    return {"wcgb": scores, "wub": {column: {"accuracy": value}
                                    for column, value in zip(("before", "baseline", "after"), wub)}}


def test_a_clear_lead_everywhere_meets_the_target():
    verdict = target_verdict(_benchmarks(after=0.9, baseline=0.3, before=0.1, wub=(0.0, 57.0, 76.0)))
    assert verdict["met"] and verdict["short_of_target"] == []
    assert verdict["leads"]["text"] == pytest.approx(0.6) and verdict["leads"]["wub_accuracy"] == pytest.approx(19.0)
    assert verdict_sentence(verdict).startswith("Target met")


def test_one_metric_within_the_margin_of_the_baseline_misses_it_and_is_named():
    benchmarks = _benchmarks(after=0.9, baseline=0.3, before=0.1, wub=(0.0, 57.0, 76.0))
    benchmarks["wcgb"]["after"]["text"] = 0.3 + WCGB_MARGIN / 2  # ahead, but not clearly
    benchmarks["wcgb"]["before"]["visual"] = 0.95  # the untrained model leads here
    verdict = target_verdict(benchmarks)
    assert not verdict["met"] and verdict["short_of_target"] == ["text", "visual"]
    assert "short on text, visual" in verdict_sentence(verdict)


def test_wub_must_lead_by_points_too():
    verdict = target_verdict(_benchmarks(after=0.9, baseline=0.3, before=0.1, wub=(0.0, 57.0, 60.0)))
    assert verdict["short_of_target"] == ["wub_accuracy"]
