"""Plain-text lines from conversation records: the text a world's tiny LM is pretrained on."""

from __future__ import annotations

from crystalvlm.data.templates import IMAGE_PLACEHOLDER


def corpus_line(record: dict) -> str:
    """A record's conversation as one line of plain text (no image placeholder, no newlines)."""
    parts = []
    for message in record["conversations"]:
        text = message["value"].replace(IMAGE_PLACEHOLDER, " ").replace("\n", " ")
        parts.append(" ".join(text.split()))
    return " ".join(p for p in parts if p)
