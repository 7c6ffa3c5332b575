"""report.html and the console summary of the web quickstart.

The page holds: WCGB and WUB tables (before training, the constant baseline, after training),
bar charts of the same, the per-page Design2Code scores, the training loss curves, and examples
side by side: the reference screenshot, the rendering of the trained model's HTML, the rendering
of the untrained model's HTML, with both codes written out.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from crystalvlm.reporting import HtmlReport, add_loss_curves, close, new_figure
from crystalvlm.web2code.metrics.wcgb import METRIC_NAMES
from crystalvlm.eval.tasks.web import ScoredPage

COLUMNS = ("before", "baseline", "after")
COLUMN_LABELS = {"before": "untrained", "baseline": "constant baseline", "after": "trained"}


class WebReport(HtmlReport):
    """HtmlReport plus a comparison table whose cells may be images or code."""

    def comparisons(self, header: list[str], rows: list[list[tuple[str, object]]]) -> None:
        """rows of cells: ("png", bytes | None), ("code", str) or ("text", str)."""
        out = ["<table class='comparisons'><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
        for row in rows:
            cells = []
            for kind, value in row:
                if kind == "png":
                    cells.append("<td>" + (f"<img style='width:192px;image-rendering:pixelated;border:1px solid #ccc' "
                                           f"src='data:image/png;base64,{base64.b64encode(value).decode()}'>"
                                           if value else "<span class='muted'>did not render</span>") + "</td>")
                elif kind == "code":
                    cells.append("<td style='text-align:left'><pre style='white-space:pre-wrap;word-break:break-all;"
                                 f"max-width:300px;font-size:0.75em;margin:0'>{html.escape(str(value))}</pre></td>")
                else:
                    cells.append(f"<td style='text-align:left'>{html.escape(str(value))}</td>")
            out.append("<tr style='vertical-align:top'>" + "".join(cells) + "</tr>")
        self.parts.append("".join(out) + "</table>")


def pick_examples(pages: dict[str, list[ScoredPage]], count: int) -> list[int]:
    """Indices of `count` held-out pages spread over the trained model's scores, best to worst,
    so the examples show the typical case and the failures, not only the successes."""
    after = pages["after"]
    order = sorted(range(len(after)), key=lambda i: -after[i].scores.design2code)
    if len(order) <= count:
        return order
    step = (len(order) - 1) / (count - 1)
    return [order[round(k * step)] for k in range(count)]


# "Clearly beat": the trained model must lead both the untrained model and the constant baseline by
# at least this much on every WCGB metric (scores 0-1) and on WUB accuracy (percent).
WCGB_MARGIN = 0.05
WUB_MARGIN = 5.0


def target_verdict(benchmarks: dict) -> dict:
    """Whether the run met the web quickstart's target: for each WCGB metric and for WUB accuracy,
    the trained score's lead over the better of the untrained model and the constant baseline."""
    scores = benchmarks["wcgb"]
    leads = {metric: scores["after"][metric] - max(scores["before"][metric], scores["baseline"][metric])
             for metric in METRIC_NAMES}
    wub = benchmarks["wub"]
    leads["wub_accuracy"] = wub["after"]["accuracy"] - max(wub["before"]["accuracy"], wub["baseline"]["accuracy"])
    short = [name for name, lead in leads.items() if lead < (WUB_MARGIN if name == "wub_accuracy" else WCGB_MARGIN)]
    return {"met": not short, "short_of_target": short, "wcgb_margin": WCGB_MARGIN, "wub_margin": WUB_MARGIN,
            "leads": {name: round(lead, 4) for name, lead in leads.items()}}


def verdict_sentence(verdict: dict) -> str:
    margins = f"by at least {verdict['wcgb_margin']} on every WCGB metric and {verdict['wub_margin']} points on WUB"
    if verdict["met"]:
        return f"Target met: the trained model beats both the untrained model and the constant baseline {margins}."
    return (f"Target not met: the trained model must beat both the untrained model and the constant baseline "
            f"{margins}; short on {', '.join(verdict['short_of_target'])}.")


def _metric_rows(benchmark: dict, metrics: list[str]) -> tuple[list[list[object]], list[list[str]]]:
    rows, classes = [], []
    for metric in metrics:
        values = [benchmark[column].get(metric, float("nan")) for column in COLUMNS]
        after, before, baseline = values[2], values[0], values[1]
        rows.append([metric, *values, after - before, after - baseline])
        good = after > before and after > baseline
        classes.append(["", "", "", "better" if good else "worse", "", ""])
    return rows, classes


def _grouped_bars(axis, labels: list[str], series: dict[str, list[float]]) -> None:
    width = 0.8 / len(series)
    for offset, (name, values) in enumerate(series.items()):
        axis.bar([x + (offset - (len(series) - 1) / 2) * width for x in range(len(labels))], values, width, label=name)
    axis.set_xticks(list(range(len(labels))), labels, rotation=20, ha="right")
    axis.legend()


def write_web_report(out: Path, report: dict, run_dir: Path, pages: dict[str, list[ScoredPage]],
                     references: dict[str, str], count: int = 6) -> Path:
    """Write report.html; adds `examples` (ids, codes, scores) to `report`."""
    page = WebReport("crystalvlm quickstart: Web2Code")
    wcgb, wub = report["benchmarks"]["wcgb"], report["benchmarks"]["wub"]
    page.paragraph(f"Whole run: {report['wall_seconds']} s on this machine (scale {report['scale']}, seed {report['seed']}, "
                   f"screenshots {report['viewport'][0]}x{report['viewport'][1]}). Checkpoint: {report['checkpoint']}")
    if "target" in report:
        page.paragraph(verdict_sentence(report["target"]))
    counts = report.get("world_counts", {})
    page.paragraph(f"World: {counts.get('train_pages', '?')} training pages, {counts.get('eval_pages', '?')} held-out pages "
                   f"(WCGB), {counts.get('wub_questions', '?')} held-out Yes/No questions (WUB).", muted=True)

    page.heading("WCGB: HTML written for held-out screenshots, rendered and compared with the reference")
    rows, classes = _metric_rows(wcgb, list(METRIC_NAMES) + ["not_rendered"])
    page.table(["metric", "untrained", "constant baseline", "trained", "trained − untrained", "trained − baseline"],
               rows, classes)
    constant = report["baselines"]["wcgb"]
    page.paragraph(f"Constant baseline: training page {constant['record_id']} given as the answer for every screenshot "
                   f"(the best of {constant['candidates']} training pages on {constant['references']} others). "
                   f"Its HTML: {constant['html']}", muted=True)
    fig, axis = new_figure(8, 3.4)
    names = list(METRIC_NAMES)
    _grouped_bars(axis, names, {COLUMN_LABELS[c]: [wcgb[c][m] for m in names] for c in COLUMNS})
    axis.set_ylim(0, 1)
    axis.set_ylabel("score (0-1)")
    page.figure(fig, "WCGB metrics")
    close(fig)

    fig, axis = new_figure(8, 3.0)
    for column in COLUMNS:
        values = sorted((p.scores.design2code for p in pages[column]), reverse=True)
        axis.plot(range(1, len(values) + 1), values, marker=".", label=COLUMN_LABELS[column])
    axis.set_xlabel("held-out page (sorted by score)")
    axis.set_ylabel("Design2Code score")
    axis.set_ylim(0, 1)
    axis.legend()
    page.figure(fig, "Design2Code score per page")
    close(fig)

    page.heading("WUB: Yes/No questions about held-out screenshots")
    metrics = ["accuracy", "yes_no_ratio", "yes_ratio"] + sorted(k for k in wub["after"] if k.startswith("accuracy_"))
    rows, classes = _metric_rows(wub, metrics)
    page.table(["metric", "untrained", f"always '{report['baselines']['wub']['answer']}'", "trained",
                "trained − untrained", "trained − baseline"], rows, classes)
    fig, axis = new_figure(6, 3.0)
    kinds = [m for m in metrics if m.startswith("accuracy")]
    _grouped_bars(axis, kinds, {COLUMN_LABELS[c]: [wub[c].get(m, 0.0) for m in kinds] for c in COLUMNS})
    axis.set_ylim(0, 100)
    axis.set_ylabel("accuracy (%)")
    page.figure(fig, "WUB accuracy")
    close(fig)

    add_loss_curves(page, run_dir)

    page.heading("Examples: held-out screenshots, the HTML written for them, and its rendering")
    page.paragraph("Pages spread from the trained model's best to its worst score.", muted=True)
    indices = pick_examples(pages, count)
    rows = []
    entries = []
    for index in indices:
        after, before = pages["after"][index], pages["before"][index]
        rows.append([("text", f"{after.sample_id}\ntrained {after.scores.design2code:.2f}\n"
                              f"untrained {before.scores.design2code:.2f}"),
                     ("png", after.reference.png), ("png", after.candidate.png), ("png", before.candidate.png),
                     ("code", references[after.sample_id]), ("code", after.candidate_html),
                     ("code", before.candidate_html)])
        entries.append({"id": after.sample_id, "reference_html": references[after.sample_id],
                        "trained_html": after.candidate_html, "untrained_html": before.candidate_html,
                        "trained_scores": after.scores.as_dict(), "untrained_scores": before.scores.as_dict()})
    page.comparisons(["page (Design2Code)", "reference screenshot", "trained: rendering", "untrained: rendering",
                      "reference HTML", "trained: HTML", "untrained: HTML"], rows)
    report["examples"] = entries
    return page.write(out / "report.html")


def print_summary(report: dict, out: Path, final: Path, world: Path) -> None:
    wcgb, wub = report["benchmarks"]["wcgb"], report["benchmarks"]["wub"]
    print("\nWCGB (untrained / constant baseline / trained):")
    for metric in METRIC_NAMES:
        print(f"  {metric:<12} {wcgb['before'][metric]:.3f} / {wcgb['baseline'][metric]:.3f} / {wcgb['after'][metric]:.3f}")
    print(f"WUB accuracy: {wub['before']['accuracy']:.1f}% / {wub['baseline']['accuracy']:.1f}% / "
          f"{wub['after']['accuracy']:.1f}%")
    if "target" in report:
        print(verdict_sentence(report["target"]))
    print(f"\nwall time {report['wall_seconds']} s; report: {out / 'report.html'} and {out / 'report.json'}")
    example = next((world / "images").glob("eval_*.png"), None)
    if example:
        print("\nAsk the model for a page:")
        print(f"  crystalvlm generate {final} --image {example} --prompt 'Please generate html code for the given image'")
