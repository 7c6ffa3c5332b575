"""Preparing the tiny web world and its own pretrained parts (the `prepare:` section of `tiny-web`).

The shapes world's recipe is followed step for step, with web pages instead of shapes:

    world      `synth.write_web_world` with simple pages: screenshots, DWCG (screenshot -> HTML)
               and DWU (questions) training records, WCGB and WUB held-out files
    tokenizer  the tiny byte-level BPE trained on the world's text (HTML included) plus the chat
               template's fixed words, so an HTML page is ~50 tokens and the system prompt ~30
    vision     the tower that reads the screenshots (`pretrain_vision_tower`): by default tagged
               with the words of each page's summary — its tags, colours and words in order
               ("body pink h1 green day blue info ...") and, with `vision_word_boxes`, each patch
               with the word the browser drew over it — by `pretrain_reader`, or a tiny CLIP
               trained contrastively on (screenshot, summary) pairs
    LM         `pretrain_tiny_lm` on the world's text, so it writes well-formed HTML before it
               has seen a single screenshot

Preparation runs in resumable steps like the shapes world's (`base.PreparedFolder`).
"""

from __future__ import annotations

import json
import os
import re
import time
from html.parser import HTMLParser
from pathlib import Path

from crystalvlm.data.templates import IMAGE_PLACEHOLDER
from crystalvlm.web2code.render import RenderPool, RenderResult, RenderSettings
from crystalvlm.worlds.base import PreparedFolder, move_children, staged

DEFAULT_VIEWPORT = (128, 128)
# Words of the simple pages' markup that every page shares; the CLIP summary leaves them out.
MARKUP_WORDS = frozenset({"doctype", "html", "style", "background", "color", "padding", "8px"})
CLIP_CAPTIONS = ("summary", "words_and_summary")
VISION_PRETRAINING = ("reader", "clip")


def page_summary(html: str) -> str:
    """A page's tags, colour names and words in document order, markup boilerplate dropped:
    `<body style="background:pink"><h1 style="color:green">day</h1>` -> "body pink h1 green day"."""
    opening = re.sub(r"</[^>]*>", " ", html.lower())  # closing tags repeat what the opening ones said
    words = re.findall(r"[a-z0-9]+", opening)
    return " ".join(word for word in words if word not in MARKUP_WORDS)


def page_words(html: str) -> str:
    """The page's visible words in document order: `<h1 ...>day blue</h1><p ...>cat</p>` -> "day blue cat"."""
    return " ".join(text.strip() for text in re.findall(r">([^<]+)<", html) if text.strip())


class _SlotParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.slots: list[str] = []
        self.element = 0
        self.word = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("html", "head"):
            return
        key = "body" if tag == "body" else str(self.element + 1)
        if tag != "body":
            self.element += 1
            self.word = 0
            self.slots.append(f"{key}:{tag}")
        for declaration in (dict(attrs).get("style") or "").split(";"):
            name, _, value = declaration.partition(":")
            if name.strip() and value.strip() and value.strip() not in MARKUP_WORDS:
                self.slots.append(f"{key}:{name.strip()}:{value.strip()}")

    def handle_data(self, data: str) -> None:
        for word in data.split():
            self.word += 1
            self.slots.append(f"{self.element}.{self.word}:{word}")


def page_slots(html: str) -> str:
    """A page's content as slot labels, each saying where in the document it is:
    `<body style="background:pink"><h1 style="color:green">day blue</h1><p style="color:red">cat</p>` ->
    "body:background:pink 1:h1 1:color:green 1.1:day 1.2:blue 2:p 2:color:red 2.1:cat".
    Elements are numbered in document order and words within their element; a tower tagged with
    these learns which element and which place each thing is in, not only that it is there."""
    parser = _SlotParser()
    parser.feed(html)
    parser.close()
    return " ".join(parser.slots)


def clip_pairs(records: list[dict], image_folder: Path, captions: str) -> list[tuple[Path, str]]:
    """(screenshot, caption) pairs for CLIP from DWCG records. `captions`: "summary" (one pair per
    page) or "words_and_summary" (also a pair whose caption is only the page's words: no colour or
    layout tells those apart, so the contrastive loss can only be lowered by reading the text)."""
    if captions not in CLIP_CAPTIONS:
        raise ValueError(f"vision_captions must be one of {CLIP_CAPTIONS}, got {captions!r}")
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
    from crystalvlm.worlds.parts.corpus import corpus_line

    lines = []
    for name in ("dwcg_train.json", "dwu_train.json", SUMMARIES_FILE):
        if (world / name).exists():
            lines += [corpus_line(record) for record in json.loads((world / name).read_text(encoding="utf-8"))]
    return [line for line in lines if line]


def _template_words() -> list[str]:
    """The fixed text the chat templates add (system prompts, role names), for the tokenizer."""
    from crystalvlm.data.templates import TEMPLATES

    from crystalvlm.worlds.parts.tiny import WORLD_TEMPLATES

    systems = [TEMPLATES[name].default_system for name in WORLD_TEMPLATES]
    return [system for system in systems if system] + ["USER: ASSISTANT:"]


READER_CAPTIONS = {"slots": page_slots, "summary": page_summary}
SUMMARIES_FILE = "summaries_train.json"
SUMMARY_PROMPT = "Describe the page: its colours, elements and text, top to bottom."


def write_summary_captions(dwcg_records: list[dict], out: Path) -> int:
    """Write one caption record per code-generation record: the screenshot and its page summary
    (`page_summary`: tags, colours and words in reading order). These are the web world's
    alignment captions: a tiny model that first learns to read a page out in this short form
    writes the words into HTML later (0.27 words in place after 500 HTML steps, against 0.08
    from HTML alone). Returns how many were written."""
    captions = []
    for record in dwcg_records:
        html = record["conversations"][-1]["value"]
        captions.append({"id": record["id"].replace("dwcg_", "summary_", 1), "image": record["image"],
                         "conversations": [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{SUMMARY_PROMPT}"},
                                           {"from": "gpt", "value": page_summary(html)}]})
    out.write_text(json.dumps(captions, indent=1), encoding="utf-8")
    return len(captions)


def pretrain_vision_tower(records: list[dict], image_folder: Path, tokenizer, settings: dict, out: Path,
                          seed: int = 0, progress: bool = True, word_boxes: dict | None = None) -> dict:
    """Pretrain the world's vision tower into `out` with the objective `settings` name
    (`vision_pretraining`: "reader", the default, or "clip") for `vision_steps` steps at
    `vision_lr`; return what it measured, for `prepared.json`.

    "reader" tags each screenshot with the words of `vision_captions` — "summary" (the default:
    tags, colours and words, `page_summary`) or "slots" (the same, each numbered by element and
    place, `page_slots`) — pooled over patches by `vision_pooling` ("max", the default, or
    "mean"); see `pretrain_reader`. With `vision_word_boxes` true the reader also learns which word
    covers each patch, from `word_boxes` ({image name: [[word, x, y, w, h], ...]}, the world's
    `word_boxes.json`). "clip" is contrastive against "summary" or "words_and_summary" captions.

    Measured on the tiny-web recipe's world (3,000 pages, 16 words, 128 px, 1,500 steps, ~145 s),
    held-out recall: reader on summaries 0.88 (chance 0.26), on the page's words alone 0.68
    (chance 0.14), on slots with mean pooling 0.61 (chance 0.04); with word boxes the summary
    recall is 0.92 and 0.70 of the patches under a word name it (chance 0.11). Only the tower
    with word boxes let a small decoder read the words out in order (docs/web-world-status.md)."""
    from crystalvlm.worlds.parts.tiny import tiny_vision_config
    from crystalvlm.worlds.parts.clip import pretrain_tiny_clip, warn_if_contrastive_chance
    from crystalvlm.worlds.parts.reader import pretrain_tiny_reader

    objective = settings.get("vision_pretraining", "reader")
    if objective not in VISION_PRETRAINING:
        raise ValueError(f"vision_pretraining must be one of {VISION_PRETRAINING}, got {objective!r}")
    config = tiny_vision_config(**settings["vision"])
    steps = int(settings["vision_steps"])
    lr = {"lr": float(settings["vision_lr"])} if "vision_lr" in settings else {}  # else the pretrainer's default
    if objective == "reader":
        captions = settings.get("vision_captions", "summary")
        if captions not in READER_CAPTIONS:
            raise ValueError(f"vision_captions for the reader must be one of {tuple(READER_CAPTIONS)}, got {captions!r}")
        caption = READER_CAPTIONS[captions]
        pairs = [(image_folder / r["image"], caption(r["conversations"][1]["value"])) for r in records]
        boxes = None
        if settings.get("vision_word_boxes", False):
            missing = [r["image"] for r in records if r["image"] not in (word_boxes or {})]
            if missing:
                raise ValueError(f"vision_word_boxes: no word boxes for {len(missing)} screenshots "
                                 f"(first: {missing[0]}); the world's word_boxes.json is missing or stale")
            boxes = [word_boxes[r["image"]] for r in records]
        report = pretrain_tiny_reader(pairs, config, out, steps=steps, seed=seed, progress=progress,
                                      pooling=settings.get("vision_pooling", "max"), word_boxes=boxes, **lr)
        measured = {"held_out_pages": report.held_out, "held_out_recall": report.held_out_recall,
                    "chance_recall": report.chance_recall, "word_patch_accuracy": report.word_patch_accuracy,
                    "word_patch_chance": report.word_patch_chance}
    else:
        pairs = clip_pairs(records, image_folder, settings.get("vision_captions", "summary"))
        report = pretrain_tiny_clip(pairs, tokenizer, config, out, steps=steps, seed=seed,
                                    progress=progress, **lr)
        warn_if_contrastive_chance(report)
        measured = {"chance_loss": report.chance_loss}
    return {"objective": objective, "steps": report.steps, "seconds": report.seconds,
            "first_loss": report.first_loss, "last_loss": report.last_loss, **measured}


def prepare_tiny_web_world(world: Path, settings: dict, seed: int = 0, pool: RenderPool | None = None,
                           progress: bool = True) -> dict:
    """Write the web world, train the tokenizer, pretrain the vision tower and LM, in resumable
    steps (`base.PreparedFolder`); return what was done.

    `settings`: n_train, n_eval (pages), viewport [w, h], questions_per_page, wub_per_page,
    tokenizer_vocab, tokenizer_isolate_spaces (see `train_tiny_tokenizer`),
    vision {image_size, patch_size, hidden, layers}, llm {hidden, layers},
    vision_pretraining, vision_steps, vision_lr, vision_captions, vision_pooling, vision_word_boxes
    (see `pretrain_vision_tower`),
    lm_steps. `pool` (optional) is a running RenderPool with that viewport."""
    from transformers import AutoTokenizer

    from crystalvlm.web2code.synth import write_web_world
    from crystalvlm.worlds.parts.lm import pretrain_tiny_lm
    from crystalvlm.worlds.parts.tiny import WORLD_TEMPLATES, tiny_llm_config, train_tiny_tokenizer

    world = Path(world)
    if settings.get("world", "web") != "web":
        raise ValueError(f"prepare_tiny_web_world: settings.world must be 'web', got {settings.get('world')!r}")
    viewport = tuple(int(v) for v in settings.get("viewport", DEFAULT_VIEWPORT))
    if settings.get("vision_word_boxes", False) and pool is not None and not pool.settings.word_boxes:
        # Refused before thousands of pages are rendered without the boxes the reader needs.
        raise ValueError("prepare_tiny_web_world: vision_word_boxes needs a pool that reads word boxes "
                         "(RenderSettings(word_boxes=True))")
    folder = PreparedFolder(world, settings, seed).open()
    parts = world / "parts"

    def write_world() -> dict:
        folder.clear_outputs()  # a cut run may have left part of the data
        partial = world / f"data.partial-{os.getpid()}"
        started = time.time()
        own_pool = pool is None
        renderer = pool or RenderPool(RenderSettings(viewport=viewport, word_boxes=True))
        counting = ProgressPool(renderer, "web world: rendering pages", progress=progress)
        try:
            web = write_web_world(partial, int(settings["n_train"]), int(settings["n_eval"]), seed=seed,
                                  viewport=viewport, complexity="simple", pool=counting,  # type: ignore[arg-type]
                                  questions_per_page=int(settings.get("questions_per_page", 4)),
                                  wub_per_page=int(settings.get("wub_per_page", 4)))
        finally:
            counting.close()
            if own_pool:
                renderer.close()
        records = json.loads(web.dwcg_train.read_text(encoding="utf-8"))
        write_summary_captions(records, partial / SUMMARIES_FILE)
        move_children(partial, world)
        return {"seconds": time.time() - started, "counts": web.counts}

    def train_tokenizer() -> dict:
        started = time.time()
        with staged(parts / "tokenizer") as out:
            train_tiny_tokenizer(_corpus(world) + _template_words(), out,
                                 vocab_size=int(settings.get("tokenizer_vocab", 1024)),
                                 isolate_spaces=bool(settings.get("tokenizer_isolate_spaces", False)),
                                 templates=WORLD_TEMPLATES)
        return {"seconds": time.time() - started}

    def pretrain_vision() -> dict:
        tokenizer = AutoTokenizer.from_pretrained(parts / "tokenizer")
        records = json.loads((world / "dwcg_train.json").read_text(encoding="utf-8"))
        word_boxes = (json.loads((world / "word_boxes.json").read_text(encoding="utf-8"))
                      if settings.get("vision_word_boxes", False) else None)
        with staged(parts / "vision") as out:
            return pretrain_vision_tower(records, world / "images", tokenizer, settings, out, seed=seed,
                                         progress=progress, word_boxes=word_boxes)

    def pretrain_lm() -> dict:
        tokenizer = AutoTokenizer.from_pretrained(parts / "tokenizer")
        llm = tiny_llm_config(len(tokenizer), **settings["llm"])
        with staged(parts / "lm") as out:
            lm = pretrain_tiny_lm(_corpus(world), tokenizer, llm, out, steps=int(settings["lm_steps"]), seed=seed,
                                  progress=progress)
        return {"steps": lm.steps, "first_loss": lm.first_loss, "last_loss": lm.last_loss, "seconds": lm.seconds}

    steps = {"world": write_world, "tokenizer": train_tokenizer, "vision": pretrain_vision, "lm": pretrain_lm}
    done = {name: folder.run(name, work) for name, work in steps.items()}
    timings = {"world_s": done["world"]["seconds"], "tokenizer_s": done["tokenizer"]["seconds"],
               "vision_s": done["vision"]["seconds"], "lm_s": done["lm"]["seconds"]}
    return folder.finish(timings=timings, counts=done["world"]["counts"],
                         vision={k: v for k, v in done["vision"].items() if k != "seconds"},
                         lm={k: v for k, v in done["lm"].items() if k != "seconds"})
