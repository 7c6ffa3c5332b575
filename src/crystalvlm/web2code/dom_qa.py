"""Webpage-understanding questions derived from a rendered page's DOM (the DWU / WUB data).

Everything is read from the `PageLayout` the renderer returns, so questions hold for what is
actually on screen, for generated and for foreign pages alike:

* `open_questions` — short-answer questions: main heading, button labels, text colours, page
  background, where a text sits (top/middle/bottom, left/center/right), how many buttons / links /
  list items there are, which of two texts is higher, whether a text is bold;
* `yes_no_questions` — balanced Yes/No questions (WUB): each kind is asked as a true or a false
  statement with equal chance; false ones use a colour far (ΔE00 > 40) from the real one, a label
  that is not on the page, or the opposite order.

Colour names come from `NAMED_COLOURS` (CSS keywords, so the simple generated pages name their
colours exactly); colour questions are only asked when the nearest name is close (ΔE00 < 20).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from crystalvlm.data.templates import IMAGE_PLACEHOLDER
from crystalvlm.web2code.layout import ElementBox, PageLayout, TextBlock
from crystalvlm.web2code.metrics.colour import ciede2000, srgb_to_lab

NAMED_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128), "light gray": (211, 211, 211),
    "dark gray": (64, 64, 64), "red": (255, 0, 0), "dark red": (139, 0, 0), "orange": (255, 165, 0),
    "yellow": (255, 255, 0), "green": (0, 128, 0), "light green": (144, 238, 144), "teal": (0, 128, 128),
    "cyan": (0, 255, 255), "light blue": (173, 216, 230), "blue": (0, 0, 255), "navy": (0, 0, 128),
    "purple": (128, 0, 128), "pink": (255, 192, 203), "brown": (139, 69, 19), "beige": (245, 245, 220),
}
_LABS = {name: srgb_to_lab(rgb) for name, rgb in NAMED_COLOURS.items()}
CONFIDENT_DELTA_E = 20.0
DISTINCT_DELTA_E = 40.0
YES_NO_SUFFIX = " Answer with Yes or No."
BUTTON_TAGS = ("button",)


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str
    kind: str


def colour_name(rgb: tuple[int, int, int]) -> tuple[str, float]:
    """The nearest named colour and its ΔE00 distance."""
    lab = srgb_to_lab(rgb)
    name = min(_LABS, key=lambda n: ciede2000(lab, _LABS[n]))
    return name, ciede2000(lab, _LABS[name])


def _distant_colour(rng: random.Random, rgb: tuple[int, int, int]) -> str:
    lab = srgb_to_lab(rgb)
    far = [name for name, other in _LABS.items() if ciede2000(lab, other) > DISTINCT_DELTA_E]
    return rng.choice(sorted(far))


def _where(bbox: tuple[float, float, float, float]) -> str:
    """Block position in thirds of the capture: "top left" ... "bottom right"."""
    cx, cy = bbox[0] + bbox[2] / 2, bbox[1] + bbox[3] / 2
    vertical = "top" if cy < 1 / 3 else "middle" if cy < 2 / 3 else "bottom"
    horizontal = "left" if cx < 1 / 3 else "center" if cx < 2 / 3 else "right"
    return f"{vertical} {horizontal}"


def _quotable(text: str) -> bool:
    return 2 <= len(text) <= 60 and '"' not in text


def _buttons(layout: PageLayout) -> list[ElementBox]:
    return [e for e in layout.elements if (e.tag in BUTTON_TAGS or "btn" in e.classes.split()) and _quotable(e.text)]


def _heading(layout: PageLayout) -> ElementBox | None:
    for tag in ("h1", "h2"):
        for element in layout.elements:
            if element.tag == tag and _quotable(element.text):
                return element
    return None


def _distinct_blocks(layout: PageLayout) -> list[TextBlock]:
    """Text blocks whose text is unique on the page (so a question about one is unambiguous)."""
    counts: dict[str, int] = {}
    for block in layout.text_blocks:
        counts[block.text] = counts.get(block.text, 0) + 1
    return [b for b in layout.text_blocks if counts[b.text] == 1 and _quotable(b.text)]


def open_questions(layout: PageLayout, rng: random.Random, limit: int = 8) -> list[QAPair]:
    """Up to `limit` short-answer questions, in random order, at most one per kind."""
    found: list[QAPair] = []
    heading = _heading(layout)
    if heading is not None:
        found.append(QAPair("What is the main heading of the page?", heading.text, "heading"))
    buttons = _buttons(layout)
    if len(buttons) == 1:
        found.append(QAPair("What does the button say?", buttons[0].text, "button_label"))
    elif buttons:
        found.append(QAPair("What does the first button say?", buttons[0].text, "button_label"))
    blocks = _distinct_blocks(layout)
    confident = [b for b in blocks if colour_name(b.color)[1] < CONFIDENT_DELTA_E]
    if confident:
        block = rng.choice(confident)
        found.append(QAPair(f'What colour is the text "{block.text}"?', colour_name(block.color)[0], "text_colour"))
    name, distance = colour_name(layout.background)
    if distance < CONFIDENT_DELTA_E:
        found.append(QAPair("What is the background colour of the page?", name, "background_colour"))
    if blocks:
        block = rng.choice(blocks)
        found.append(QAPair(f'Where on the page is the text "{block.text}"?', _where(block.bbox), "position"))
    for tag, noun in (("button", "buttons"), ("a", "links"), ("li", "list items")):
        count = sum(1 for e in layout.elements if e.tag == tag)
        if count:
            found.append(QAPair(f"How many {noun} are on the page?", str(count), f"count_{tag}"))
    separated = [(a, b) for a in blocks for b in blocks if a.bbox[1] + a.bbox[3] <= b.bbox[1]]
    if separated:
        upper, lower = rng.choice(separated)
        first, second = (upper, lower) if rng.random() < 0.5 else (lower, upper)
        found.append(QAPair(f'Which text is higher on the page: "{first.text}" or "{second.text}"?', upper.text, "order"))
    texts = [e for e in layout.elements if e.own_text and _quotable(e.own_text)]
    if texts:
        element = rng.choice(texts)
        found.append(QAPair(f'Is the text "{element.own_text}" bold?', "Yes" if element.bold else "No", "bold"))
    rng.shuffle(found)
    return found[:limit]


HAS_ELEMENT_NOUNS = {"table": "a table", "form": "a form", "nav": "a navigation bar", "ul": "a bulleted list",
                     "button": "a button", "input": "a text input field"}


def yes_no_questions(layout: PageLayout, rng: random.Random, limit: int = 6,
                     foreign_texts: list[str] | tuple[str, ...] = ()) -> list[QAPair]:
    """Up to `limit` Yes/No questions, each kind at most once. For every question the answer is
    drawn first (Yes or No with equal chance) and then a kind that can be asked with that answer,
    so the answers stay balanced whatever the page holds. `foreign_texts` (labels from other
    pages) make false "is there a button labelled ..." questions realistic."""
    page_texts = {b.text for b in layout.text_blocks} | {e.text for e in layout.elements}
    buttons = _buttons(layout)
    absent = sorted(t for t in set(foreign_texts) if _quotable(t) and not any(t in p for p in page_texts))
    blocks = _distinct_blocks(layout)
    confident = [b for b in blocks if colour_name(b.color)[1] < CONFIDENT_DELTA_E]
    separated = [(a, b) for a in blocks for b in blocks if a.bbox[1] + a.bbox[3] <= b.bbox[1]]
    tags = {e.tag for e in layout.elements} | ({"button"} if buttons else set())
    background_name, background_distance = colour_name(layout.background)

    def has_button(truth: bool) -> str | None:
        if truth:
            return f'Is there a button labelled "{rng.choice(buttons).text}"?' if buttons else None
        return f'Is there a button labelled "{rng.choice(absent)}"?' if absent else None

    def background(truth: bool) -> str | None:
        if background_distance >= CONFIDENT_DELTA_E:
            return None
        asked = background_name if truth else _distant_colour(rng, layout.background)
        return f"Is the background of the page {asked}?"

    def text_colour(truth: bool) -> str | None:
        if not confident:
            return None
        block = rng.choice(confident)
        asked = colour_name(block.color)[0] if truth else _distant_colour(rng, block.color)
        return f'Is the text "{block.text}" written in {asked}?'

    def order(truth: bool) -> str | None:
        if not separated:
            return None
        upper, lower = rng.choice(separated)
        first, second = (upper, lower) if truth else (lower, upper)
        return f'Is "{first.text}" above "{second.text}"?'

    def has_element(truth: bool) -> str | None:
        options = sorted(tag for tag in HAS_ELEMENT_NOUNS if (tag in tags) == truth)
        return f"Does the page contain {HAS_ELEMENT_NOUNS[rng.choice(options)]}?" if options else None

    askers = {"has_button": has_button, "background_colour": background, "text_colour": text_colour,
              "order": order, "has_element": has_element}
    found: list[QAPair] = []
    while askers and len(found) < limit:
        truth = rng.random() < 0.5
        for kind in rng.sample(sorted(askers), len(askers)):
            question = askers[kind](truth)
            if question is not None:
                found.append(QAPair(question + YES_NO_SUFFIX, "Yes" if truth else "No", kind))
                del askers[kind]
                break
        else:
            break  # nothing can be asked with this answer any more
    return found


def qa_record(record_id: str, image: str, pairs: list[QAPair]) -> dict:
    """A multi-turn LLaVA record: the image comes with the first question."""
    if not pairs:
        raise ValueError(f"record {record_id!r}: no questions to write")
    conversations = []
    for index, pair in enumerate(pairs):
        prefix = IMAGE_PLACEHOLDER + "\n" if index == 0 else ""
        conversations.append({"from": "human", "value": prefix + pair.question})
        conversations.append({"from": "gpt", "value": pair.answer})
    return {"id": record_id, "image": image, "conversations": conversations}
