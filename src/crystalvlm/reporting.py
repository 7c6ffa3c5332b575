"""Small HTML report builder: headings, tables, matplotlib figures and images, in one file.

Reports are single self-contained HTML files (figures and images inlined as base64 PNG), so a run
folder can be copied anywhere and still shows its plots.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
.better { color: #0a7a2f; font-weight: 600; } .worse { color: #b3261e; }
.examples { display: flex; flex-wrap: wrap; gap: 14px; }
.example { width: 240px; font-size: 0.85em; } .example img { width: 240px; image-rendering: pixelated; border: 1px solid #ccc; }
.muted { color: #777; }
"""


class HtmlReport:
    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str, muted: bool = False) -> None:
        css = ' class="muted"' if muted else ""
        self.parts.append(f"<p{css}>{html.escape(text)}</p>")

    def table(self, header: list[str], rows: list[list[object]], classes: list[list[str]] | None = None) -> None:
        out = ["<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"]
        for r, row in enumerate(rows):
            cells = []
            for c, value in enumerate(row):
                css = classes[r][c] if classes else ""
                text = f"{value:.4g}" if isinstance(value, float) else str(value)
                cells.append(f'<td class="{css}">{html.escape(text)}</td>')
            out.append("<tr>" + "".join(cells) + "</tr>")
        self.parts.append("".join(out) + "</table>")

    def figure(self, fig, alt: str) -> None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        self.parts.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">')

    def examples(self, items: list[tuple[bytes, str]]) -> None:
        """(PNG bytes, caption) pairs shown side by side; captions may hold several lines."""
        cells = []
        for png, caption in items:
            text = "<br>".join(html.escape(line) for line in caption.splitlines())
            cells.append(f'<div class="example"><img src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                         f"<div>{text}</div></div>")
        self.parts.append('<div class="examples">' + "".join(cells) + "</div>")

    def marked_examples(self, items: list[tuple[bytes, list[list[tuple[str, bool]]]]]) -> None:
        """Like `examples`, with each caption given as lines of (text, marked) pieces; marked pieces
        (hallucinated words, say) are highlighted."""
        cells = []
        for png, lines in items:
            text = "<br>".join("".join(f"<mark>{html.escape(piece)}</mark>" if marked else html.escape(piece)
                                       for piece, marked in line) for line in lines)
            cells.append(f'<div class="example"><img src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                         f"<div>{text}</div></div>")
        self.parts.append('<div class="examples">' + "".join(cells) + "</div>")

    def write(self, path: Path) -> Path:
        body = "\n".join(self.parts)
        path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                        f"<style>{STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>\n")
        return path


def new_figure(width: float = 6.0, height: float = 3.4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(width, height))
    return fig, axis


def close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def training_loss_curves(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """{stage: (steps, losses)} from each stage's metrics.jsonl under a run directory."""
    import json

    curves = {}
    for metrics in sorted(Path(run_dir).glob("*/metrics.jsonl")):
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line]
        curves[metrics.parent.name] = ([r["step"] for r in rows], [r["loss"] for r in rows])
    return curves


def add_loss_curves(page: "HtmlReport", run_dir: Path) -> None:
    """A "Training loss" section: one log-scale curve per stage of the run."""
    page.heading("Training loss")
    fig, axis = new_figure(7, 3.2)
    for stage, (steps, losses) in training_loss_curves(run_dir).items():
        axis.plot(steps, losses, label=stage)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss (per trained token)")
    axis.set_yscale("log")
    axis.legend()
    page.figure(fig, "loss curves")
    close(fig)
