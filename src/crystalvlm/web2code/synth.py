"""A complete, offline Web2Code world: generated pages, screenshots, training records and
held-out benchmark files, from one seed.

`write_web_world(out_dir, n_train, n_eval, seed, viewport)` writes

    out_dir/
      pages/<id>.html            every page's code
      images/<id>.png            every page's screenshot (the image folder of all records)
      dwcg_train.json            DWCG: screenshot -> HTML, LLaVA records (training pages)
      dwu_train.json             DWU: screenshot + DOM-derived questions, LLaVA records (training pages)
      eval/dwcg_eval.json        the held-out pages as screenshot -> HTML records
      eval/wcgb.jsonl            WCGB: {"id", "image", "html", "prompt"} per held-out page
      eval/wub.jsonl             WUB: {"question_id", "image", "Q", "A"} Yes/No questions (held-out pages)
      word_boxes.json            {image: [[word, x, y, w, h], ...]} every word's box as fractions of the
                                 screenshot, when the pool reads them (RenderSettings.word_boxes)
      manifest.json              seed, settings, counts, pages skipped and why

With `complexity="simple"` the pages are tiny (see `pagegen`) and, by default, a page is kept only
if it fits entirely in the viewport (`require_fit`) — a model trained on the screenshot then sees
everything it has to write. Pages whose render fails are replaced by the next seed and reported.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from crystalvlm.web2code.converters import HTML_PROMPTS, html_record
from crystalvlm.web2code.dom_qa import open_questions, qa_record, yes_no_questions
from crystalvlm.web2code.pagegen import COMPLEXITIES, GeneratedPage, generate_page
from crystalvlm.web2code.render import STANDARDS_MODE, RenderPool, RenderResult, RenderSettings

SEED_STRIDE = 2_000_003  # page seeds: seed * SEED_STRIDE + 2 * index (+1 for held-out pages)


@dataclass
class WebWorld:
    root: Path
    image_folder: Path
    dwcg_train: Path
    dwu_train: Path
    dwcg_eval: Path
    wcgb: Path
    wub: Path
    manifest: Path
    word_boxes: Path
    counts: dict


def _page_stream(seed: int, held_out: bool, complexity: str):
    index = 0
    while True:
        page_seed = seed * SEED_STRIDE + 2 * index + (1 if held_out else 0)
        yield generate_page(page_seed, complexity)
        index += 1


BATCH_LIMIT = 256  # pages rendered per pool call: keeps memory flat and progress moving


def _collect(stream, wanted: int, prefix: str, pool: RenderPool, require_fit: bool, exclude: set[str],
             skipped: list[str], max_attempts: int, bar=None) -> list[tuple[GeneratedPage, RenderResult]]:
    """Render pages from `stream` until `wanted` usable ones are found (in batches)."""
    kept: list[tuple[GeneratedPage, RenderResult]] = []
    attempts = 0
    seen = set(exclude)
    while len(kept) < wanted:
        if attempts >= max_attempts:
            raise RuntimeError(f"only {len(kept)} of {wanted} {prefix} pages were usable after {attempts} tries; "
                               f"last problems: {skipped[-3:]} (a larger viewport or require_fit=False helps)")
        batch = []
        while len(batch) < min(BATCH_LIMIT, max(4, 2 * (wanted - len(kept)))) and attempts < max_attempts:
            page = next(stream)
            attempts += 1
            if page.html in seen:  # tiny pages repeat; keep train and held-out pages apart
                continue
            seen.add(page.html)
            batch.append(page)
        htmls = [p.html for p in batch]
        # Generated simple pages are standards-mode and small: many per screenshot (`render_tiled`).
        tiled = all(STANDARDS_MODE.match(html) for html in htmls) and hasattr(pool, "render_tiled")
        for page, result in zip(batch, pool.render_tiled(htmls) if tiled else pool.render(htmls)):
            if len(kept) == wanted:
                break
            if not result.ok or result.layout is None:
                skipped.append(f"seed {page.seed}: {result.status} ({result.reason})")
                continue
            if require_fit and not result.layout.fits:
                continue
            kept.append((GeneratedPage(f"{prefix}_{len(kept):05d}", page.seed, page.complexity, page.html,
                                       page.sections, page.details), result))
            if bar is not None:
                bar.update(1)
    return kept


def _button_labels(rendered: list[tuple[GeneratedPage, RenderResult]]) -> list[str]:
    labels = set()
    for _, result in rendered:
        for element in result.layout.elements:
            if element.tag == "button" and element.text:
                labels.add(element.text)
    return sorted(labels)


def write_web_world(out_dir: str | Path, n_train: int, n_eval: int, seed: int = 0,
                    viewport: tuple[int, int] = (1920, 1080), *, complexity: str = "full",
                    pool: RenderPool | None = None, require_fit: bool | None = None, vary_prompt: bool = False,
                    questions_per_page: int = 6, wub_per_page: int = 4, timeout_s: float = 10.0,
                    workers: int = 2, progress: bool = False) -> WebWorld:
    """Write the world described in the module docstring; returns where everything is.

    `pool` may be given to reuse a browser; its viewport must equal `viewport`. `require_fit`
    defaults to True for simple pages and False for full ones. `vary_prompt` draws the
    code-generation prompt from several phrasings (default: Web2Code's single evaluation prompt).
    `progress` shows a bar of usable pages found."""
    if complexity not in COMPLEXITIES:
        raise ValueError(f"complexity must be one of {COMPLEXITIES}, got {complexity!r}")
    if n_train < 0 or n_eval < 0:
        raise ValueError(f"page counts must be >= 0, got n_train={n_train}, n_eval={n_eval}")
    viewport = (int(viewport[0]), int(viewport[1]))
    if pool is not None and pool.settings.viewport != viewport:
        raise ValueError(f"the pool renders at {pool.settings.viewport}, but the world asks for {viewport}")
    if require_fit is None:
        require_fit = complexity == "simple"
    root = Path(out_dir)
    for folder in ("pages", "images", "eval"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    own_pool = pool is None
    pool = pool or RenderPool(RenderSettings(viewport=viewport, timeout_s=timeout_s, workers=workers, word_boxes=True))
    skipped: list[str] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_train + n_eval, desc="web pages", unit=" pages")
    try:
        max_attempts = 40 * (max(n_train, n_eval) + 5)
        train = _collect(_page_stream(seed, False, complexity), n_train, "train", pool, require_fit, set(), skipped,
                         max_attempts, bar)
        held_out = _collect(_page_stream(seed, True, complexity), n_eval, "eval", pool, require_fit,
                            {page.html for page, _ in train}, skipped, max_attempts, bar)
    finally:
        if bar is not None:
            bar.close()
        if own_pool:
            pool.close()

    rng = random.Random(f"web-world-{seed}")
    for page, result in train + held_out:
        (root / "pages" / f"{page.page_id}.html").write_text(page.html, encoding="utf-8")
        (root / "images" / f"{page.page_id}.png").write_bytes(result.png)

    def prompt() -> str:
        return rng.choice(HTML_PROMPTS) if vary_prompt else HTML_PROMPTS[0]

    dwcg_train = [html_record(f"dwcg_{p.page_id}", f"{p.page_id}.png", p.html, prompt()) for p, _ in train]
    dwcg_eval = [html_record(f"dwcg_{p.page_id}", f"{p.page_id}.png", p.html, HTML_PROMPTS[0]) for p, _ in held_out]
    labels = _button_labels(train + held_out)
    dwu_train = []
    for page, result in train:
        others = [label for label in labels if label not in page.html]
        pairs = open_questions(result.layout, rng, questions_per_page)
        pairs += yes_no_questions(result.layout, rng, max(1, questions_per_page // 3), others)
        if pairs:
            dwu_train.append(qa_record(f"dwu_{page.page_id}", f"{page.page_id}.png", pairs))
    wub_lines = []
    for page, result in held_out:
        others = [label for label in labels if label not in page.html]
        for number, pair in enumerate(yes_no_questions(result.layout, rng, wub_per_page, others)):
            wub_lines.append({"question_id": f"{page.page_id}_{number}", "image": f"{page.page_id}.png",
                              "Q": pair.question, "A": pair.answer, "kind": pair.kind})
    wcgb_lines = [{"id": p.page_id, "image": f"{p.page_id}.png", "html": p.html, "prompt": HTML_PROMPTS[0]}
                  for p, _ in held_out]

    paths = {
        "dwcg_train": root / "dwcg_train.json", "dwu_train": root / "dwu_train.json",
        "dwcg_eval": root / "eval" / "dwcg_eval.json", "wcgb": root / "eval" / "wcgb.jsonl",
        "wub": root / "eval" / "wub.jsonl", "manifest": root / "manifest.json", "word_boxes": root / "word_boxes.json",
    }
    paths["dwcg_train"].write_text(json.dumps(dwcg_train, indent=1), encoding="utf-8")
    paths["dwu_train"].write_text(json.dumps(dwu_train, indent=1), encoding="utf-8")
    paths["dwcg_eval"].write_text(json.dumps(dwcg_eval, indent=1), encoding="utf-8")
    paths["wcgb"].write_text("".join(json.dumps(line) + "\n" for line in wcgb_lines), encoding="utf-8")
    paths["wub"].write_text("".join(json.dumps(line) + "\n" for line in wub_lines), encoding="utf-8")
    word_boxes = {f"{page.page_id}.png": [[word.text, *word.bbox] for block in result.layout.text_blocks
                                          for word in block.words] for page, result in train + held_out}
    paths["word_boxes"].write_text(json.dumps(word_boxes), encoding="utf-8")
    counts = {"train_pages": len(train), "eval_pages": len(held_out), "dwcg_train": len(dwcg_train),
              "dwu_train": len(dwu_train), "wub_questions": len(wub_lines),
              "wub_yes": sum(line["A"] == "Yes" for line in wub_lines)}
    manifest = {"seed": seed, "viewport": list(viewport), "complexity": complexity, "require_fit": require_fit,
                "vary_prompt": vary_prompt, "image_folder": "images", "counts": counts, "skipped": skipped[:200]}
    paths["manifest"].write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return WebWorld(root=root, image_folder=root / "images", counts=counts, **paths)
