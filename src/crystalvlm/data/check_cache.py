"""The record check's results, cached by content, so a second run on the same data starts at once.

A source's check depends on the data file's bytes, the images it names and the encoder (tokenizer,
template, image-token id and count, image mode, limits). The cache key is a digest of the data file's
path and content and of the encoder; the entry also holds a stamp of every named image (its size and
modification time, not its content: reading 665K images again is what the cache avoids) and is used
only while that stamp still matches. An entry is one JSON file written atomically; a damaged or
foreign entry is ignored and recomputed, never trusted.

The location is `$CRYSTALVLM_CACHE/record-checks` (default `~/.cache/crystalvlm/record-checks`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

from crystalvlm.data.records import ConversationRecord

log = logging.getLogger(__name__)

CHECK_VERSION = 2  # 2: records with several images are accepted. Bump when what check_record verifies changes: old entries then stop matching


def cache_root() -> Path:
    """crystalvlm's cache folder: $CRYSTALVLM_CACHE, default ~/.cache/crystalvlm."""
    return Path(os.environ.get("CRYSTALVLM_CACHE") or Path.home() / ".cache" / "crystalvlm")


def default_cache_dir() -> Path:
    return cache_root() / "record-checks"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """A digest of everything that decides the tokenizer's ids: its serialised backend (a fast tokenizer)
    or its vocabulary, plus its added tokens."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    added = {str(token): index for token, index in getattr(tokenizer, "added_tokens_encoder", {}).items()}
    digest.update(json.dumps(sorted(added.items())).encode())
    digest.update(repr(getattr(tokenizer, "legacy", None)).encode())
    return digest.hexdigest()


def encoder_fingerprint(encoder) -> str:
    """Everything of a SampleEncoder that decides a record's check result."""
    parts = [CHECK_VERSION, repr(encoder.template), tokenizer_fingerprint(encoder.tokenizer), encoder.image_token_id,
             encoder.tokens_per_image, encoder.image_mode, encoder.max_length, encoder.max_pixels]
    if encoder.image_mode == "anyres":  # the grid decides each image's token count
        parts += [getattr(encoder.image_processor, "image_grid_pinpoints", None), encoder.skip_padded_subimages]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def images_stamp(records: Sequence[ConversationRecord], image_folder: Path | None) -> str:
    """A digest of (path, size, mtime) of every image the records name; a missing one counts as such."""
    digest = hashlib.sha256(str(image_folder.resolve() if image_folder else None).encode())
    for record in records:
        for relative in record.images:
            try:
                stat = (image_folder / relative).stat() if image_folder is not None else None
                digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode() if stat else b"-\n")
            except OSError:
                digest.update(f"{relative}\0missing\n".encode())
    return digest.hexdigest()


class CheckCache:
    """One JSON entry per (data file content, encoder): each record's encoded length or problem reason."""

    def __init__(self, folder: Path | None = None):
        self.folder = Path(folder) if folder is not None else default_cache_dir()

    def key(self, data_file: Path, encoder_print: str) -> str:
        source = f"{data_file.resolve()}\0{file_digest(data_file)}\0{encoder_print}"
        return hashlib.sha256(source.encode()).hexdigest()[:32]

    def load(self, key: str, stamp: str, count: int) -> list[int | str] | None:
        """The outcomes (int length, or str problem reason) of `count` records, or None on a miss."""
        path = self.folder / f"{key}.json"
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        outcomes = entry.get("outcomes") if isinstance(entry, dict) else None
        if entry.get("images") != stamp or not isinstance(outcomes, list) or len(outcomes) != count:
            return None
        if not all(isinstance(o, (int, str)) and not isinstance(o, bool) for o in outcomes):
            return None
        return outcomes

    def store(self, key: str, stamp: str, outcomes: list[int | str]) -> None:
        """Write the entry atomically; a cache that cannot be written (read-only home) only costs the
        next run a check, so it is a warning, not an error."""
        path = self.folder / f"{key}.json"
        staging = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            staging.write_text(json.dumps({"images": stamp, "outcomes": outcomes}))
            os.replace(staging, path)
        except OSError as error:
            log.warning("record-check cache not written (%s); the next run checks the data again", error)
