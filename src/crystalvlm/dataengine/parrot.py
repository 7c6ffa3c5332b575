"""Parrot-caption detection and curation over image-caption records (`crystalvlm data parrot`).

For each record, the words visible in its image come either from the record itself (`spotted_key`:
OCR run elsewhere, or a synthetic world's ground truth) or from a *text reader* run on the image; the
caption is then scored with the co-emb text rate and kept, dropped or rewritten
(`data.curation.parrot.judge_caption`).

A text reader is anything with `read(images) -> words per image` (the `TextReader` protocol), so any
OCR engine plugs in with a few lines. `load_reader` knows one by name, `easyocr` (used only when it
is installed and its model files are already on disk: nothing downloads at run time), and loads any
other as `package.module:factory`, a callable that takes the `--reader-model` argument (or None) and
returns a reader.

`parrot_batch` is a pure per-batch map (records in, one outcome per record out), so the same code
runs in a single process, in worker processes or on a distributed engine.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from PIL import Image

from crystalvlm.data.curation.parrot import MODES, judge_caption, words_of
from crystalvlm.data.images import ImageError, open_image


@runtime_checkable
class TextReader(Protocol):
    """Reads the text visible in images: one list of words (or text pieces) per image, in order."""

    def read(self, images: list[Image.Image]) -> list[list[str]]: ...


class ReaderError(ValueError):
    """A reader that cannot be loaded (unknown name, not installed, no model files)."""


class EasyOcrReader:
    """EasyOCR (https://github.com/JaidedAI/EasyOCR) with its English model, never downloading."""

    def __init__(self, model_dir: str | None = None) -> None:
        try:
            import easyocr  # noqa: F401 - optional dependency
        except ImportError:
            raise ReaderError("reader 'easyocr': the easyocr package is not installed (pip install easyocr), "
                              "or give the spotted text with --spotted-key") from None
        import easyocr

        options = {"model_storage_directory": model_dir} if model_dir else {}
        try:
            self._reader = easyocr.Reader(["en"], gpu=False, download_enabled=False, verbose=False, **options)
        except Exception as error:  # easyocr raises plain exceptions for missing model files
            raise ReaderError(f"reader 'easyocr': its model files are not on this machine ({error}); "
                              "nothing is downloaded at run time") from None

    def read(self, images: list[Image.Image]) -> list[list[str]]:
        import numpy

        return [list(self._reader.readtext(numpy.asarray(image.convert("RGB")), detail=0)) for image in images]


BUILTIN_READERS = {"easyocr": EasyOcrReader}


def load_reader(spec: str, model: str | None = None) -> TextReader:
    """A reader by name (`easyocr`) or as `package.module:factory`; `model` goes to its constructor."""
    if spec in BUILTIN_READERS:
        reader = BUILTIN_READERS[spec](model)
    else:
        module_name, colon, attribute = spec.partition(":")
        if not colon or not module_name or not attribute:
            raise ReaderError(f"reader {spec!r}: not a known reader ({', '.join(BUILTIN_READERS)}) "
                              "and not of the form package.module:factory")
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise ReaderError(f"reader {spec!r}: cannot import it ({error})") from None
        reader = factory(model)
    if not isinstance(reader, TextReader):
        raise ReaderError(f"reader {spec!r}: {type(reader).__name__} has no read(images) method")
    return reader


@dataclass
class ParrotSettings:
    threshold: float = 0.5  # co-emb text rate at or above which a caption is a parrot caption
    mode: str = "remove"  # score | remove | rewrite (data.curation.parrot.judge_caption)
    caption_key: str = "caption"
    image_key: str = "image"
    spotted_key: str | None = None  # take the visible words from this record field instead of a reader
    annotate_key: str = "parrot"  # where kept records get their rate and words ("": kept records unchanged)
    image_folder: Path | None = None  # image paths are relative to it (and must stay inside it)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")


@dataclass
class Outcome:
    """One record's fate: kept (`reason` None; `record` is what to write) or removed (`reason`, a short
    category such as "parrot caption" or "missing image", and `detail` with the specifics)."""

    record: object
    reason: str | None = None
    detail: dict = field(default_factory=dict)
    parrot: bool = False  # a parrot caption (removed, rewritten, or only scored)
    rewritten: bool = False
    rate: float | None = None


def _spotted_from_record(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(piece, str) for piece in value):
        return value
    raise ValueError(f"must be a string or a list of strings, got {type(value).__name__}")


def _bad(record, reason: str, error: str) -> Outcome:
    return Outcome(record, reason, {"error": error})


def parrot_batch(records: list, settings: ParrotSettings, reader: TextReader | None = None) -> list[Outcome]:
    """One outcome per record, in order. Bad records (not an object, no caption, an empty caption, no
    spotted-text field, a missing or unreadable image) are removed with a reason naming the problem;
    nothing raises for one record."""
    if reader is None and settings.spotted_key is None:
        raise ValueError("parrot_batch needs a reader or settings.spotted_key")
    outcomes: list[Outcome | None] = [None] * len(records)
    spotted: dict[int, list[str]] = {}
    to_read: list[tuple[int, Image.Image]] = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            outcomes[index] = _bad(record, "not a JSON object", f"got {type(record).__name__}")
            continue
        caption = record.get(settings.caption_key)
        if caption is None or not isinstance(caption, str):
            error = f"no {settings.caption_key!r} field" if caption is None else \
                f"{settings.caption_key!r} is a {type(caption).__name__}, not a string"
            outcomes[index] = _bad(record, "missing caption", error)
            continue
        if not words_of(caption):
            outcomes[index] = _bad(record, "empty caption", f"{settings.caption_key!r} has no words")
            continue
        if settings.spotted_key is not None:
            if settings.spotted_key not in record:
                outcomes[index] = _bad(record, "missing spotted text", f"no {settings.spotted_key!r} field")
                continue
            try:
                spotted[index] = _spotted_from_record(record[settings.spotted_key])
            except ValueError as error:
                outcomes[index] = _bad(record, "missing spotted text", f"{settings.spotted_key!r} {error}")
            continue
        image_path = record.get(settings.image_key)
        if not isinstance(image_path, str) or not image_path:
            outcomes[index] = _bad(record, "missing image", f"no image path in field {settings.image_key!r}")
            continue
        try:
            to_read.append((index, open_image(settings.image_folder or Path("."), image_path)))
        except ImageError as error:
            outcomes[index] = _bad(record, "missing image" if "not found" in str(error) else "bad image", str(error))
    if to_read:
        words = reader.read([image for _, image in to_read])
        for (index, _), found in zip(to_read, words):
            spotted[index] = [str(piece) for piece in found]
    for index, words in spotted.items():
        record = records[index]
        verdict = judge_caption(record[settings.caption_key], words, settings.threshold, settings.mode)
        if not verdict.keep:
            outcomes[index] = Outcome(record, "parrot caption",
                                      {"co_emb_text_rate": round(verdict.rate, 4), "parroted": verdict.parroted,
                                       "note": verdict.reason},
                                      parrot=True, rate=verdict.rate)
            continue
        kept = dict(record)
        rewritten = verdict.caption != record[settings.caption_key]
        if rewritten:
            kept[settings.caption_key] = verdict.caption
        if settings.annotate_key:
            note = {"co_emb_text_rate": round(verdict.rate, 4), "spotted": words, "parroted": verdict.parroted}
            if rewritten:
                note["original_caption"] = record[settings.caption_key]
            kept[settings.annotate_key] = note
        outcomes[index] = Outcome(kept, parrot=verdict.is_parrot, rewritten=rewritten, rate=verdict.rate)
    return outcomes  # type: ignore[return-value]
