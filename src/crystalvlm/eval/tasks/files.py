"""Reading benchmark files strictly: every problem names the file (and line) it came from.

Benchmarks ship as plain JSON (ScienceQA's problems.json, TextVQA's annotation file), JSON lines
(POPE's coco_pope_*.json, despite the extension) or folders of small text files (MME). These
helpers turn a malformed file into a `BenchmarkFormatError` that says exactly where it broke,
instead of a bare `KeyError` from deep inside a scoring loop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class BenchmarkFormatError(ValueError):
    """A benchmark or answers file does not have the layout the official release has."""


def read_json(path: Path, what: str) -> Any:
    """A whole-file JSON document; `what` says which benchmark file this is supposed to be."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkFormatError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BenchmarkFormatError(f"{path}: {what} is not valid JSON ({error})") from None


def read_json_lines(path: Path, what: str) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a line that is not a JSON object raises."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkFormatError(f"{path}: {what} not found")
    rows: list[tuple[int, dict]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue  # a trailing newline or blank separator line carries no record
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise BenchmarkFormatError(f"{path}:{number}: {what}: not a JSON line ({error.msg})") from None
        if not isinstance(item, dict):
            raise BenchmarkFormatError(f"{path}:{number}: {what}: expected a JSON object, got {type(item).__name__}")
        rows.append((number, item))
    return rows


def image_inside(image_folder: Path, relative: str, where: str) -> Path:
    """The absolute path of a benchmark record's image inside the benchmark's image folder.

    Image names come from the benchmark's files, which may be hostile: a name such as
    "../../home/user/.ssh/id_rsa" or a symlink out of the folder would make the runner read (and a
    model describe) any file. `resolve_inside` resolves symlinks and refuses names that escape; the
    error says which record named the path.
    """
    from crystalvlm.data.images import ImageError, resolve_inside

    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise BenchmarkFormatError(f"{where}: image name must be a non-empty string, got {relative!r}")
    try:
        return resolve_inside(image_folder, relative)
    except ImageError as error:
        raise BenchmarkFormatError(f"{where}: {error}") from None


def require_keys(item: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [key for key in keys if key not in item]
    if missing:
        raise BenchmarkFormatError(f"{where}: missing key(s) {missing}; present: {sorted(item)}")
