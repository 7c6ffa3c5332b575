"""Preparing the tiny web world and its own pretrained parts (the `prepare:` section of `tiny-web`).

The shapes world's recipe is followed step for step, with web pages instead of shapes:

    world      `synth.write_web_world` with simple pages: screenshots, DWCG (screenshot -> HTML)
               and DWU (questions) training records, WCGB and WUB held-out files
    tokenizer  the tiny byte-level BPE trained on the world's text (HTML included) plus the chat
               template's fixed words, so an HTML page is ~50 tokens and the system prompt ~30
    CLIP       `pretrain_tiny_clip` on (screenshot, page summary) pairs — the summary lists the
               page's tags, colours and words in order ("body pink h1 green day blue info ..."),
               which fits CLIP's 64 text positions where raw HTML would not always
    LM         `pretrain_tiny_lm` on the world's text, so it writes well-formed HTML before it
               has seen a single screenshot

Preparation is cached like `train.tiny_world`: a folder whose `prepared.json` records the same
settings and seed is reused as it is.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from crystalvlm.web2code.render import RenderPool, RenderResult, RenderSettings

DEFAULT_VIEWPORT = (128, 128)
# Words of the simple pages' markup that every page shares; the CLIP summary leaves them out.
MARKUP_WORDS = frozenset({"doctype", "html", "style", "background", "color", "padding", "8px"})
CLIP_CAPTIONS = ("summary", "words_and_summary")


def page_summary(html: str) -> str:
    """A page's tags, colour names and words in document order, markup boilerplate dropped:
    `<body style="background:pink"><h1 style="color:green">day</h1>` -> "body pink h1 green day"."""
    opening = re.sub(r"</[^>]*>", " ", html.lower())  # closing tags repeat what the opening ones said
    words = re.findall(r"[a-z0-9]+", opening)
    return " ".join(word for word in words if word not in MARKUP_WORDS)


def page_words(html: str) -> str:
    """The page's visible words in document order: `<h1 ...>day blue</h1><p ...>cat</p>` -> "day blue cat"."""
    return " ".join(text.strip() for text in re.findall(r">([^<]+)<", html) if text.strip())


def clip_pairs(records: list[dict], image_folder: Path, captions: str) -> list[tuple[Path, str]]:
    """(screenshot, caption) pairs for CLIP from DWCG records. `captions`: "summary" (one pair per
    page) or "words_and_summary" (also a pair whose caption is only the page's words: no colour or
    layout tells those apart, so the contrastive loss can only be lowered by reading the text)."""
    if captions not in CLIP_CAPTIONS:
        raise ValueError(f"clip_captions must be one of {CLIP_CAPTIONS}, got {captions!r}")
    pairs = []
    for record in records:
        image, html = image_folder / record["image"], record["conversations"][1]["value"]
        pairs.append((image, page_summary(html)))
        words = page_words(html)
        if captions == "words_and_summary" and words:
            pairs.append((image, words))
    return pairs


class ProgressPool:
    """A `RenderPool` seen through a progress bar: renders lists in chunks and counts pages, so
    writing a world of a thousand screenshots shows how far it is. Same `settings` and `render`."""

    def __init__(self, pool: RenderPool, description: str, chunk: int = 128, progress: bool = True) -> None:
        from tqdm.auto import tqdm

        self._pool = pool
        self.settings = pool.settings
        self._chunk = chunk
        self._bar = tqdm(desc=description, unit="page", disable=not progress)

    def render(self, html_list: list[str], **options) -> list[RenderResult]:
        return self._in_chunks(self._pool.render, html_list, options)

    def render_tiled(self, html_list: list[str], **options) -> list[RenderResult]:
        return self._in_chunks(self._pool.render_tiled, html_list, options)

    def _in_chunks(self, render, html_list: list[str], options: dict) -> list[RenderResult]:
        results: list[RenderResult] = []
        for start in range(0, len(html_list), self._chunk):
            results += render(html_list[start:start + self._chunk], **options)
            self._bar.update(min(self._chunk, len(html_list) - start))
        return results

    def close(self) -> None:
        self._bar.close()


def _corpus(world: Path) -> list[str]:
    from crystalvlm.data.synthetic.shapes_instructions import corpus_line

    lines = []
    for name in ("dwcg_train.json", "dwu_train.json"):
        lines += [corpus_line(record) for record in json.loads((world / name).read_text(encoding="utf-8"))]
    return [line for line in lines if line]


def _template_words() -> list[str]:
    """The fixed text the chat templates add (system prompts, role names), for the tokenizer."""
    from crystalvlm.data.templates import TEMPLATES

    return [template.default_system for template in TEMPLATES.values() if template.default_system] + ["USER: ASSISTANT:"]


def prepare_tiny_web_world(world: Path, settings: dict, seed: int = 0, pool: RenderPool | None = None,
                           progress: bool = True) -> dict:
    """Write the web world, train the tokenizer, pretrain the tiny CLIP and LM; return what was done.

    `settings`: n_train, n_eval (pages), viewport [w, h], questions_per_page, wub_per_page,
    tokenizer_vocab, vision {image_size, patch_size, hidden, layers}, llm {hidden, layers},
    clip_steps, lm_steps. `pool` (optional) is a running RenderPool with that viewport."""
    from transformers import AutoTokenizer

    from crystalvlm.models.tiny import tiny_llm_config, tiny_vision_config, train_tiny_tokenizer
    from crystalvlm.train.pretrain_parts import pretrain_tiny_clip, pretrain_tiny_lm
    from crystalvlm.train.tiny_world import already_prepared, warn_if_contrastive_chance
    from crystalvlm.web2code.synth import write_web_world

    world = Path(world)
    marker = world / "prepared.json"
    wanted = {"settings": settings, "seed": seed}
    done = already_prepared(marker, wanted)
    if done is not None:
        return done
    if settings.get("world", "web") != "web":
        raise ValueError(f"prepare_tiny_web_world: settings.world must be 'web', got {settings.get('world')!r}")
    viewport = tuple(int(v) for v in settings.get("viewport", DEFAULT_VIEWPORT))
    timings: dict[str, float] = {}

    started = time.time()
    own_pool = pool is None
    pool = pool or RenderPool(RenderSettings(viewport=viewport))
    counting = ProgressPool(pool, "web world: rendering pages", progress=progress)
    try:
        web = write_web_world(world, int(settings["n_train"]), int(settings["n_eval"]), seed=seed, viewport=viewport,
                              complexity="simple", pool=counting,  # type: ignore[arg-type]
                              questions_per_page=int(settings.get("questions_per_page", 4)),
                              wub_per_page=int(settings.get("wub_per_page", 4)))
    finally:
        counting.close()
        if own_pool:
            pool.close()
    timings["world_s"] = time.time() - started

    started = time.time()
    texts = _corpus(world)
    parts = world / "parts"
    train_tiny_tokenizer(texts + _template_words(), parts / "tokenizer", vocab_size=int(settings.get("tokenizer_vocab", 1024)))
    tokenizer = AutoTokenizer.from_pretrained(parts / "tokenizer")
    timings["tokenizer_s"] = time.time() - started

    records = json.loads(web.dwcg_train.read_text(encoding="utf-8"))
    pairs = clip_pairs(records, web.image_folder, settings.get("clip_captions", "summary"))
    vision = tiny_vision_config(**settings["vision"])
    clip_lr = {"lr": float(settings["clip_lr"])} if "clip_lr" in settings else {}  # else pretrain_tiny_clip's default
    clip = pretrain_tiny_clip(pairs, tokenizer, vision, parts / "clip", steps=int(settings["clip_steps"]), seed=seed,
                              progress=progress, **clip_lr)
    warn_if_contrastive_chance(clip)
    timings["clip_s"] = clip.seconds
    llm = tiny_llm_config(len(tokenizer), **settings["llm"])
    lm = pretrain_tiny_lm(texts, tokenizer, llm, parts / "lm", steps=int(settings["lm_steps"]), seed=seed,
                          progress=progress)
    timings["lm_s"] = lm.seconds
    done = {**wanted, "timings": timings, "counts": web.counts,
            "clip": {"steps": clip.steps, "first_loss": clip.first_loss, "last_loss": clip.last_loss},
            "lm": {"steps": lm.steps, "first_loss": lm.first_loss, "last_loss": lm.last_loss}}
    marker.write_text(json.dumps(done, indent=2))
    return done
