"""The hallucination study end to end at smoke scale (greedy and HA-DPO only: OPERA and VCD have their
own tests in tests/infer), and the biased world's data: its biases are in the training scenes and
descriptions, not in the held-out benchmarks."""

from __future__ import annotations

import json
from collections import Counter

from crystalvlm.worlds.hallucination.study import run_study
from crystalvlm.worlds.registry import get_world

REPORT_METRICS = {"chair_s", "chair_i", "pope_random_accuracy", "pope_popular_accuracy", "pope_adversarial_accuracy",
                  "pope_adversarial_yes_ratio", "mme_total", "mean_words"}


def test_study_at_smoke_scale_writes_the_report(tmp_path):
    world = get_world("hallucination")
    out = tmp_path / "study"
    report = run_study(world, out, scale="smoke", seed=0, methods=("greedy", "hadpo"))
    saved = json.loads((out / "report.json").read_text())
    assert set(saved["methods"]) == {"greedy", "hadpo"}
    for name, metrics in saved["methods"].items():
        assert REPORT_METRICS <= set(metrics), name
        for key in ("chair_s", "chair_i", "pope_adversarial_accuracy", "pope_adversarial_yes_ratio"):
            assert 0.0 <= metrics[key] <= 1.0, (name, key, metrics[key])
    assert set(saved["targets"]) == {"hadpo_chair_i_relative_drop", "hadpo_pope_adversarial_accuracy_gain",
                                     "hadpo_mme_relative_change"}
    assert saved["pairs"]["images"] == 8 and (out / "pairs.jsonl").is_file()
    assert saved["methods"] == report["methods"]
    html = (out / "report.html").read_text()
    assert "Every method on the same held-out images" in html and "data:image/png;base64," in html

    # The biases: circle (the frequent shape) and each partner pair are over-represented in training
    # scenes, while the held-out scenes are drawn as in the plain world.
    train = json.loads((out / "world" / "annotations" / "train.json").read_text())["images"]
    shapes = [{o["shape"] for o in image["objects"]} for image in train]
    with_circle = sum("circle" in s for s in shapes) / len(shapes)
    assert with_circle > 0.55, with_circle
    moons = [s for s in shapes if "moon" in s]
    assert moons and sum("star" in s for s in moons) / len(moons) > 0.8
    manifest = json.loads((out / "world" / "manifest.json").read_text())
    assert manifest["eval_scene_config"].get("partners") is None and manifest["scene_config"]["partners"]
    assert manifest["mix"]["description_noise"] > 0
    counts = Counter(r["id"].split("-")[0] for r in json.loads((out / "world" / "finetune.json").read_text()))
    assert counts["detail"] / sum(counts.values()) > 0.15

    # The tiny parts come from the plain shapes world prepared in world/parts_world (no biases in its
    # scenes), copied file for file; the report's CPU timings cover every phase.
    parts_world = out / "world" / "parts_world"
    plain = json.loads((parts_world / "manifest.json").read_text())
    assert not plain["scene_config"].get("partners") and not plain["mix"].get("description_noise")
    for part in ("tokenizer", "clip", "lm"):
        copied, source = out / "world" / "parts" / part, parts_world / "parts" / part
        names = sorted(p.name for p in source.iterdir())
        assert names and names == sorted(p.name for p in copied.iterdir())
        assert all((copied / n).read_bytes() == (source / n).read_bytes() for n in names), part
    assert saved["pretraining"]["lm"]["steps"] == 6
    assert {"prepare_s", "train_s", "eval_greedy_s"} <= set(saved["cpu_timings"])
