"""Rendering HTML files (or folders of them) to PNG files, with a report line per file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from crystalvlm.web2code.layout import PageLayout
from crystalvlm.web2code.render_pool import RenderPool
from crystalvlm.web2code.render_settings import RenderResult, RenderSettings


@dataclass
class RenderedFile:
    source: Path
    image: Path | None
    result: RenderResult


def collect_html_inputs(inputs: list[Path]) -> list[Path]:
    """HTML files named directly or found (*.html, *.htm, sorted) in named folders."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in (".html", ".htm") and p.is_file())
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"render input {item} does not exist")
    return files


def render_files(inputs: list[Path], out_dir: Path, settings: RenderSettings | None = None, *,
                 pool: RenderPool | None = None, write_layout: bool = False,
                 batch_size: int = 64, progress: bool = False) -> list[RenderedFile]:
    """Render HTML files (or folders of them) to `out_dir/<name>.png`.

    Writes `out_dir/render_report.jsonl` (one line per input: source, image, status, reason,
    blocked requests, seconds, whether the sandbox was on) and, with `write_layout`,
    `<name>.layout.json` next to each image.
    Pages that fail get no image; their report line says why. `progress` shows a bar."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = collect_html_inputs(inputs)
    names = _unique_names(files)
    own_pool = pool is None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc="render", unit=" pages")
    pool = pool or RenderPool(settings)
    rendered: list[RenderedFile] = []
    try:
        with open(out_dir / "render_report.jsonl", "w", encoding="utf-8") as report:
            for start in range(0, len(files), batch_size):
                batch = files[start:start + batch_size]
                htmls = []
                for path in batch:
                    try:
                        htmls.append(path.read_text(encoding="utf-8", errors="replace"))
                    except OSError as error:  # unreadable file: the renderer reports a non-str as an error
                        htmls.append(error)
                results = pool.render(htmls, progress=(lambda _: bar.update(1)) if bar is not None else None)
                for path, name, result in zip(batch, names[start:start + batch_size], results):
                    image = None
                    if result.png is not None:
                        image = out_dir / f"{name}.png"
                        image.write_bytes(result.png)
                        if write_layout and result.layout is not None:
                            (out_dir / f"{name}.layout.json").write_text(json.dumps(layout_to_json(result.layout)))
                    report.write(json.dumps({"source": str(path), "image": str(image) if image else None,
                                             **result.summary()}) + "\n")
                    rendered.append(RenderedFile(path, image, result))
    finally:
        if bar is not None:
            bar.close()
        if own_pool:
            pool.close()
    return rendered


def _unique_names(files: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for path in files:
        stem = path.stem
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(stem if count == 0 else f"{stem}_{count}")
    return names


def layout_to_json(layout: PageLayout) -> dict:
    """A JSON-friendly copy of a layout (text blocks, elements, and the DOM tree flat: pre-order
    tags with parent indices, as the browser reports it)."""
    dom = None
    if layout.dom is not None:
        tags, parents = layout.dom.to_flat()
        dom = {"tags": tags, "parents": parents}
    return {
        "width": layout.width, "height": layout.height, "document_height": layout.document_height,
        "document_width": layout.document_width,
        "background": list(layout.background), "truncated": layout.truncated, "title": layout.title,
        "text_blocks": [{"text": b.text, "bbox": list(b.bbox), "color": list(b.color),
                         "words": [[w.text, *w.bbox] for w in b.words]} for b in layout.text_blocks],
        "elements": [{"tag": e.tag, "text": e.text, "own_text": e.own_text, "bbox": list(e.bbox),
                      "color": list(e.color), "background": list(e.background) if e.background else None,
                      "font_size": e.font_size, "bold": e.bold, "depth": e.depth} for e in layout.elements],
        "dom": dom,
    }
