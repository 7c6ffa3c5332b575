"""Parrot captions: captions that spell the text visible in their image instead of describing it.

"Parrot Captions Teach CLIP to Spot Text" (Lin et al., 2023) measures how much of a caption is the
image's own visible text with the *co-emb text rate*: the share of the caption's words that were
also spotted in the image (by OCR). A caption made only of the image's words has rate 1; a caption
that never mentions the visible text has rate 0. This module is the model-free half: given a caption
and the words spotted in its image (by any reader: OCR, a model, or ground truth), score it and
decide whether to keep, drop or rewrite it. Reading the image is `dataengine.parrot`'s job.

Words are compared case-folded, as runs of letters and digits ("STOP!" and "stop" are one word);
the rate is over distinct caption words, so a caption that repeats the spotted word is not
counted twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

MODES = ("score", "remove", "rewrite")
_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script; "_" and punctuation split words
# What a rewrite leaves behind where a quoted word was taken out: an empty pair of quotes.
_EMPTY_QUOTES = re.compile(r"([\"'“”‘’«»])\s*([\"'“”‘’«»])")


def words_of(text: str) -> list[str]:
    """The case-folded words of `text`, in order: 'The word "CAT"!' -> ['the', 'word', 'cat']."""
    return [word.casefold() for word in _WORD.findall(text)]


def spotted_word_set(spotted: Iterable[str]) -> set[str]:
    """The distinct words of spotted text pieces (a piece may hold several words: 'NO ENTRY')."""
    return {word for piece in spotted for word in words_of(piece)}


def co_emb_text_rate(caption: str, spotted: Iterable[str]) -> float:
    """|distinct caption words that were spotted in the image| / |distinct caption words|.

    Raises ValueError for a caption with no words (its rate is undefined, and an empty caption is a
    bad record, not a clean one)."""
    caption_words = set(words_of(caption))
    if not caption_words:
        raise ValueError("the caption has no words")
    return len(caption_words & spotted_word_set(spotted)) / len(caption_words)


@dataclass(frozen=True)
class ParrotVerdict:
    rate: float  # the co-emb text rate of the original caption
    parroted: list[str]  # the caption's distinct words that were spotted in the image, in caption order
    is_parrot: bool  # rate >= threshold (and at least one word parroted)
    keep: bool  # False: drop the record
    caption: str  # the caption to keep: the original, or the rewrite
    reason: str | None = None  # why a dropped record was dropped


def rewrite_without(caption: str, spotted_words: set[str]) -> str:
    """The caption with every spotted word taken out, and the empty quotes and doubled spaces or
    commas this leaves tidied away: 'a red circle and the word "CAT"' -> 'a red circle and the word'."""
    text = _WORD.sub(lambda match: "" if match.group().casefold() in spotted_words else match.group(), caption)
    text = _EMPTY_QUOTES.sub("", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)  # no space before punctuation
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)  # ", ," -> ","
    text = re.sub(r"\s{2,}", " ", text).strip()
    return text.strip(" ,;:")


def judge_caption(caption: str, spotted: Iterable[str], threshold: float, mode: str = "remove") -> ParrotVerdict:
    """Score `caption` against the words spotted in its image and apply `mode` to a parrot caption
    (co-emb text rate >= `threshold`, with at least one word spotted):

    score    keep every caption unchanged (only the rate is wanted);
    remove   drop parrot captions;
    rewrite  take the spotted words out of a parrot caption; drop it if no word is left.

    Raises ValueError for a bad threshold or mode, or a caption with no words."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    spotted_words = spotted_word_set(spotted)
    rate = co_emb_text_rate(caption, spotted_words)
    seen: set[str] = set()
    parroted = []
    for word in words_of(caption):
        if word in spotted_words and word not in seen:
            seen.add(word)
            parroted.append(word)
    is_parrot = bool(parroted) and rate >= threshold
    if not is_parrot or mode == "score":
        return ParrotVerdict(rate, parroted, is_parrot, True, caption)
    reason = f"parrot caption: co-emb text rate {rate:.3f} >= {threshold} (spells {' '.join(parroted)})"
    if mode == "remove":
        return ParrotVerdict(rate, parroted, True, False, caption, reason)
    rewritten = rewrite_without(caption, spotted_words)
    if not words_of(rewritten):
        return ParrotVerdict(rate, parroted, True, False, caption, reason + "; nothing is left after rewriting")
    return ParrotVerdict(rate, parroted, True, True, rewritten)
