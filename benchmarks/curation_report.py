"""An HTML page of the parrot and caption studies and the scale runs, from their results JSON.

    .venv/bin/python benchmarks/curation_report.py --out runs/curation-report.html
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "benchmarks" / "results"


def _load(name: str) -> dict:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else {}


def _pope_mme(scores: dict) -> list:
    return [scores.get(f"pope_{split}", {}).get("accuracy") for split in ("random", "popular", "adversarial")] + \
        [scores.get("mme", {}).get("total")]


def main() -> int:
    from crystalvlm.reporting import HtmlReport, close, new_figure

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    args = parser.parse_args()
    parrot, caption, scale = _load("parrot_study.json"), _load("caption_study.json"), _load("curation_scale.json")
    page = HtmlReport("Data curation: parrot captions and detailed captions")

    if parrot.get("probes"):
        page.heading("Parrot captions: the tiny CLIP")
        rows = []
        for name, probe in parrot["probes"].items():
            text, visual = probe["text_spotting"], probe["visual"]
            rows.append([name, text["text_retrieval_accuracy"], text["spelled_text_beats_shape_caption"],
                         visual["shape_caption_retrieval"], visual["shape_caption_retrieval_on_text_images"],
                         visual["shape_probe"]["accuracy"], visual["colour_probe"]["accuracy"]])
        page.table(["CLIP", "text retrieval", "spelled text beats shape caption", "shape-caption retrieval",
                    "same, text images", "shape probe", "colour probe"], rows)
        fig, axis = new_figure(7, 3.2)
        names = [row[0] for row in rows]
        axis.bar([i - 0.2 for i in range(len(rows))], [row[1] for row in rows], 0.4, label="text retrieval")
        axis.bar([i + 0.2 for i in range(len(rows))], [row[3] for row in rows], 0.4, label="shape-caption retrieval")
        axis.set_xticks(list(range(len(rows))), names)
        axis.set_ylim(0, 1)
        axis.legend()
        page.figure(fig, "text spotting vs visual retrieval per CLIP")
        close(fig)
    if parrot.get("llava"):
        page.heading("Parrot captions: LLaVA on each CLIP")
        page.table(["CLIP", "POPE random", "POPE popular", "POPE adversarial", "MME total"],
                   [[name, *_pope_mme(run["scores"])] for name, run in parrot["llava"].items()])
    accuracy = {k[len("accuracy_"):]: v["accuracy"] for k, v in caption.items() if k.startswith("accuracy_")}
    if accuracy:
        page.heading("Detailed captions: accuracy against the truth")
        keys = ["chair_s", "chair_i", "shape_recall", "object_recall", "object_hallucination", "written_text_recall",
                "mean_words"]
        page.table(["captions", *keys], [[name, *[row.get(k) for k in keys]] for name, row in accuracy.items()])
    if caption.get("llava"):
        page.heading("Detailed captions: LLaVA aligned on short vs detailed captions")
        page.table(["run", "POPE random", "POPE popular", "POPE adversarial", "MME total"],
                   [[name, *_pope_mme(run["scores"])] for name, run in caption["llava"].items()])
    runs = {k: v for k, v in scale.items() if k != "machine"}
    if runs:
        page.heading("Scale: peak memory and speed")
        page.table(["run", "records", "peak RSS (MiB)", "seconds", "records/s"],
                   [[name, r["records"], r["peak_rss_mib"], r["run_seconds"], r["records_per_second"]]
                    for name, r in runs.items()])
    page.paragraph("Timings were taken on a shared 2-core machine; the load average is recorded in each JSON.", muted=True)
    print(page.write(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
