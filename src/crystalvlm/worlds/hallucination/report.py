"""The hallucination study's report: the methods table, plots, the targets, and example descriptions
with every hallucinated word marked (judged against the held-out images' annotations)."""

from __future__ import annotations

import io
import re
from pathlib import Path

# Rows of the table, in this order; lower is better for CHAIR, higher for accuracy and MME.
TABLE_METRICS = ("chair_s", "chair_i", "chair_recall", "pope_random_accuracy", "pope_popular_accuracy",
                 "pope_adversarial_accuracy", "pope_adversarial_yes_ratio", "mme_total", "mean_words")
LOWER_IS_BETTER = {"chair_s", "chair_i"}
EXAMPLES = 6


def _segments(text: str, verdicts, judge) -> list[tuple[str, bool]]:
    """`text` cut into (piece, marked) with the hallucinated object words and wrong attribute values marked."""
    pieces: list[tuple[str, bool]] = []
    for verdict in verdicts:
        words = set(verdict.wrong_values.values())
        for name in verdict.hallucinated_objects:
            words |= {surface for surface, canonical in judge.vocabulary.canonical_of.items() if canonical == name}
        sentence = verdict.text
        if not words:
            pieces.append((sentence + " ", False))
            continue
        pattern = re.compile(r"\b(" + "|".join(re.escape(w) + r"(?:e?s)?" for w in sorted(words, key=len, reverse=True))
                             + r")\b", re.IGNORECASE)
        last = 0
        for match in pattern.finditer(sentence):
            pieces.append((sentence[last:match.start()], False))
            pieces.append((match.group(0), True))
            last = match.end()
        pieces.append((sentence[last:] + " ", False))
    return pieces


def example_descriptions(world_dir: Path, eval_dirs: dict[str, Path], count: int = EXAMPLES) -> list[dict]:
    """The first `count` CHAIR images: their objects, and each method's description with the
    hallucinated words it holds (as report.json keeps them: text, hallucinated objects, wrong attributes)."""
    from crystalvlm.dataengine.preference_pairs import Judge, find_hallucinations, read_annotations
    from crystalvlm.worlds.hallucination.study import chair_descriptions

    _, images = read_annotations(world_dir / "annotations" / "eval.json")
    synonyms = world_dir / "benchmarks" / "chair" / "synonyms.txt"
    judge = Judge.from_annotations(images, synonyms if synonyms.is_file() else None)
    by_name = {Path(image.file).name: image for image in images}
    descriptions = {name: chair_descriptions(folder) for name, folder in eval_dirs.items()}
    first = next(iter(descriptions.values()), {})
    examples = []
    for file in sorted(first)[:count]:
        image = by_name[file]
        entry = {"image": file, "objects": [f"{o.get('size', '')} {o.get('color', '')} {o.get('shape', '')}".strip()
                                            for o in image.objects], "methods": {}}
        for method, texts in descriptions.items():
            text = texts.get(file, "")
            found = find_hallucinations(text, image, judge)
            entry["methods"][method] = {
                "text": text,
                "hallucinated_objects": [n for v in found for n in v.hallucinated_objects],
                "wrong_attributes": [f"{k} {v_}" for v in found for k, v_ in v.wrong_values.items()],
                "segments": [[piece, marked] for piece, marked in _segments(text, found, judge)],
            }
        examples.append(entry)
    return examples


def write_study_html(out: Path, report: dict) -> Path:
    from PIL import Image

    from crystalvlm.reporting import HtmlReport, add_loss_curves, close, new_figure

    methods = report["methods"]
    names = list(methods)
    page = HtmlReport("crystalvlm hallucination study")
    page.paragraph(f"Whole run: {report['wall_seconds']} s on this machine (scale {report['scale']}, seed "
                   f"{report['seed']}). Biases of the training data: {report.get('biases')}.")
    page.heading("Every method on the same held-out images")
    rows, classes = [], []
    for metric in TABLE_METRICS:
        values = [methods[name].get(metric) for name in names]
        rows.append([metric] + [v if v is not None else "" for v in values])
        known = [v for v in values if v is not None]
        best = (min(known) if metric in LOWER_IS_BETTER else max(known)) if known and metric not in (
            "pope_adversarial_yes_ratio", "mean_words", "chair_recall") else None
        classes.append([""] + ["better" if best is not None and v == best else "" for v in values])
    page.table(["metric"] + names, rows, classes)
    page.paragraph("CHAIR_s: descriptions naming an absent shape; CHAIR_i: mentions of absent shapes among all shape "
                   "mentions (fractions, lower is better). mean_words: words per CHAIR description. Greedy, OPERA and "
                   "VCD decode the finetuned model; hadpo and hadpo+opera the model after the dpo stage.", muted=True)

    if report.get("targets"):
        page.heading("Targets (HA-DPO against greedy decoding of the finetuned model)")
        page.table(["target", "wanted", "measured", "met"],
                   [[name, t["target"], t["value"], "yes" if t["met"] else "no"] for name, t in report["targets"].items()],
                   [["", "", "", "better" if t["met"] else "worse"] for t in report["targets"].values()])

    fig, axes = new_figure(9, 3.2)
    axes.remove()
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    xs = range(len(names))
    left.bar([x - 0.2 for x in xs], [methods[n]["chair_s"] for n in names], 0.4, label="CHAIR_s")
    left.bar([x + 0.2 for x in xs], [methods[n]["chair_i"] for n in names], 0.4, label="CHAIR_i")
    left.set_xticks(list(xs), names, rotation=20)
    left.set_ylabel("fraction (lower is better)")
    left.legend()
    for offset, split in zip((-0.27, 0.0, 0.27), ("random", "popular", "adversarial")):
        right.bar([x + offset for x in xs], [methods[n][f"pope_{split}_accuracy"] for n in names], 0.27, label=split)
    right.set_xticks(list(xs), names, rotation=20)
    right.set_ylim(0, 1)
    right.set_ylabel("POPE accuracy")
    right.legend(loc="lower right")
    fig.tight_layout()
    page.figure(fig, "CHAIR and POPE by method")
    close(fig)

    if report.get("pairs"):
        pairs = report["pairs"]
        page.heading("HA-DPO pairs")
        page.paragraph(f"{pairs['pairs']} pairs from {pairs['images']} sampled descriptions ({pairs['decoding']}): "
                       f"{pairs['samples_with_hallucination']} samples held hallucinations ({pairs['hallucinated_objects']}"
                       f" absent objects, {pairs['wrong_attributes']} wrong attributes) and were corrected; "
                       f"{pairs['negatives_with_added_hallucination']} held none and got one added to their negative.")
    add_loss_curves(page, out / "run")

    if report.get("cpu_timings"):
        page.heading("Time per phase")
        timings, cpu = report.get("timings") or {}, report["cpu_timings"]
        page.table(["phase", "wall s", "CPU s"], [[phase.removesuffix("_s"), timings.get(phase, ""), cpu[phase]]
                                                for phase in cpu])
        page.paragraph("CPU seconds of this process and its finished children (the part pretraining runs in two "
                       "processes side by side). On a shared machine the wall time depends on the other load; the "
                       "CPU time does not, much.", muted=True)

    page.heading("Example descriptions (hallucinated words marked)")
    items = []
    for example in report.get("examples", []):
        with Image.open(out / "world" / "images" / "eval" / example["image"]) as image:
            buffer = io.BytesIO()
            image.convert("RGB").resize((192, 192), Image.NEAREST).save(buffer, format="PNG")
        lines = [[("truth: " + ", ".join(example["objects"]), False)]]
        for method, described in example["methods"].items():
            lines.append([(f"{method}: ", False)] + [(piece, bool(marked)) for piece, marked in described["segments"]])
        items.append((buffer.getvalue(), lines))
    page.marked_examples(items)
    return page.write(out / "report.html")


def print_study_summary(report: dict, out: Path) -> None:
    methods = report["methods"]
    names = list(methods)
    print("\n" + "method".ljust(14) + "".join(m[:12].rjust(13) for m in ("chair_s", "chair_i", "pope_adv_acc",
                                                                          "pope_adv_yes", "mme_total", "mean_words")))
    for name in names:
        m = methods[name]
        print(name.ljust(14) + "".join(f"{v:13.3f}" for v in (m["chair_s"], m["chair_i"], m["pope_adversarial_accuracy"],
                                                                m["pope_adversarial_yes_ratio"], m["mme_total"],
                                                                m["mean_words"])))
    for target, verdict in (report.get("targets") or {}).items():
        print(f"  {target}: {verdict['value']} (wanted {verdict['target']}): {'met' if verdict['met'] else 'NOT met'}")
    if report.get("cpu_seconds") is not None:
        print(f"\nCPU time {report['cpu_seconds']} s (load average {report.get('load_average')} at the end)")
    print(f"\nwall time {report['wall_seconds']} s; report: {out / 'report.html'} and {out / 'report.json'}")
