"""The LLaVA conversation format, read strictly.

A record is `{"id", "image"?, "conversations": [{"from": "human"|"gpt"|"system", "value": str}]}`
where `image` is a path relative to an image folder, a list of such paths, or absent (text-only).
Each image is placed by its own `<image>` in the conversation's text: the n-th `<image>` (reading the
turns in order) is the n-th path of `image`, so images may sit anywhere, between words and across
turns (interleaved, multi-image records). Placeholders and paths must be equally many.
Files are a JSON list or JSON lines. Reading never stops at a bad record: every problem is kept as
a `RecordProblem` naming the file, the line or index, the record id and the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from crystalvlm.data.templates import IMAGE_PLACEHOLDER, Turn

ROLE_OF_SPEAKER = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class ConversationRecord:
    record_id: str
    images: tuple[str, ...]  # relative paths, in placeholder order
    turns: tuple[Turn, ...]
    source: str  # "file:line" or "file[index]" for error messages

    @property
    def has_image(self) -> bool:
        return bool(self.images)


@dataclass(frozen=True)
class RecordProblem:
    source: str
    record_id: str | None
    reason: str

    def __str__(self) -> str:
        who = f"record {self.record_id!r}" if self.record_id is not None else "record"
        return f"{self.source}: {who}: {self.reason}"


@dataclass
class LoadedRecords:
    records: list[ConversationRecord] = field(default_factory=list)
    problems: list[RecordProblem] = field(default_factory=list)


def _raw_items(path: Path) -> tuple[list[tuple[str, object]], list[RecordProblem]]:
    """(source, parsed object) per record; a JSON list or JSON lines."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error}); a JSON list cannot be read record by record") from None
        return [(f"{path}[{index}]", item) for index, item in enumerate(items)], []
    parsed: list[tuple[str, object]] = []
    problems: list[RecordProblem] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            parsed.append((f"{path}:{number}", json.loads(line)))
        except json.JSONDecodeError as error:
            problems.append(RecordProblem(f"{path}:{number}", None, f"invalid JSON line ({error.msg})"))
    return parsed, problems


def parse_record(source: str, item: object) -> ConversationRecord:
    """One record, validated structurally; raises ValueError with the reason."""
    if not isinstance(item, dict):
        raise ValueError(f"a record must be a JSON object, got {type(item).__name__}")
    record_id = item.get("id")
    if record_id is None:
        raise ValueError("missing 'id'")
    conversations = item.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise ValueError("'conversations' must be a non-empty list")
    turns: list[Turn] = []
    for index, message in enumerate(conversations):
        if not isinstance(message, dict) or "from" not in message or "value" not in message:
            raise ValueError(f"conversation turn {index} must be an object with 'from' and 'value'")
        role = ROLE_OF_SPEAKER.get(message["from"])
        if role is None:
            raise ValueError(f"conversation turn {index} has unknown speaker {message['from']!r}")
        if not isinstance(message["value"], str) or not message["value"].strip():
            raise ValueError(f"conversation turn {index} ({message['from']}) is empty")
        turns.append(Turn(role, message["value"]))
    image = item.get("image")
    if image is None:
        images: tuple[str, ...] = ()
    elif isinstance(image, str) and image:
        images = (image,)
    elif isinstance(image, list) and image and all(isinstance(p, str) and p for p in image):
        images = tuple(image)
    else:
        raise ValueError(f"'image' must be a path or a non-empty list of paths, got {image!r}")
    placeholders = sum(turn.text.count(IMAGE_PLACEHOLDER) for turn in turns)
    if placeholders != len(images):
        raise ValueError(
            f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) in the conversation for {len(images)} image(s) in "
            f"'image'; each image needs its own {IMAGE_PLACEHOLDER} in the text, in the order of 'image'"
        )
    body = turns[1:] if turns[0].role == "system" else turns
    if not body or body[0].role != "user":
        raise ValueError("the first non-system turn must be from 'human'")
    for index, turn in enumerate(body):
        expected = "user" if index % 2 == 0 else "assistant"
        if turn.role != expected:
            raise ValueError(f"turns must alternate human/gpt; turn {index} is {turn.role}")
    if body[-1].role != "assistant":
        raise ValueError("the conversation must end with a 'gpt' answer")
    return ConversationRecord(str(record_id), images, tuple(turns), source)


def load_records(path: str | Path) -> LoadedRecords:
    """Every good record of a file and every problem found in it (structure only; images are
    checked by `crystalvlm.data.validate`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    items, problems = _raw_items(path)
    loaded = LoadedRecords(problems=list(problems))
    for source, item in items:
        record_id = item.get("id") if isinstance(item, dict) else None
        try:
            loaded.records.append(parse_record(source, item))
        except ValueError as error:
            loaded.problems.append(RecordProblem(source, None if record_id is None else str(record_id), str(error)))
    return loaded


def read_record(path: str | Path, index: int) -> ConversationRecord:
    """The record at position `index` (0-based, in file order) of a data file; a record that is
    malformed, or an index past the end, raises ValueError naming where."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    items, problems = _raw_items(path)
    if index < 0 or index >= len(items):
        unreadable = f" ({len(problems)} unreadable line(s) not counted)" if problems else ""
        raise ValueError(f"{path}: no record at index {index}; the file has {len(items)} record(s){unreadable}")
    source, item = items[index]
    try:
        return parse_record(source, item)
    except ValueError as error:
        record_id = item.get("id") if isinstance(item, dict) else None
        who = f"record {str(record_id)!r}" if record_id is not None else "record"
        raise ValueError(f"{source}: {who} is malformed: {error}") from None
