"""Preference pairs in TRL's vision DPO layout, read strictly.

One JSON object per line:

    {"id": "...", "images": ["train/train_000001.png"],
     "prompt":   [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe ..."}]}],
     "chosen":   [{"role": "assistant", "content": [{"type": "text", "text": "The image shows ..."}]}],
     "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "The image shows ..."}]}]}

`images` are paths relative to the stage's image folder (as in LLaVA records); `content` may also be
a plain string. `id` is optional (the line number names the pair otherwise). Each pair becomes two
`ConversationRecord`s sharing the prompt, so the chosen and the rejected answer are encoded by the
same template as every other stage (the trained tokens are exactly the answer's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from crystalvlm.data.records import ConversationRecord, RecordProblem, parse_record
from crystalvlm.data.templates import IMAGE_PLACEHOLDER

ROLES = {"user": "human", "assistant": "gpt", "system": "system"}


@dataclass(frozen=True)
class PreferencePair:
    pair_id: str
    chosen: ConversationRecord
    rejected: ConversationRecord
    source: str  # "file:line" for error messages

    @property
    def has_image(self) -> bool:
        return self.chosen.has_image


@dataclass
class LoadedPairs:
    pairs: list[PreferencePair] = field(default_factory=list)
    problems: list[RecordProblem] = field(default_factory=list)


def _message_text(message: object, where: str) -> tuple[str, str]:
    """(LLaVA speaker, text with one `<image>` line per image item) of one chat message."""
    if not isinstance(message, dict) or "role" not in message or "content" not in message:
        raise ValueError(f"{where}: each message must be an object with 'role' and 'content'")
    role = ROLES.get(message["role"])
    if role is None:
        raise ValueError(f"{where}: unknown role {message['role']!r}; expected one of {', '.join(ROLES)}")
    content = message["content"]
    if isinstance(content, str):
        return role, content
    if not isinstance(content, list):
        raise ValueError(f"{where}: 'content' must be a string or a list of items")
    images, texts = 0, []
    for index, item in enumerate(content):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "image":
            images += 1
        elif kind == "text" and isinstance(item.get("text"), str):
            texts.append(item["text"])
        else:
            raise ValueError(f"{where}: content[{index}] must be {{'type': 'image'}} or {{'type': 'text', 'text': str}}")
    return role, f"{IMAGE_PLACEHOLDER}\n" * images + " ".join(texts)


def _messages(item: dict, key: str) -> list[tuple[str, str]]:
    value = item.get(key)
    if isinstance(value, str):  # TRL's standard (non-conversational) layout
        return [("human" if key == "prompt" else "gpt", value)]
    if not isinstance(value, list) or not value:
        raise ValueError(f"'{key}' must be a non-empty list of messages (or a string)")
    return [_message_text(message, f"{key}[{index}]") for index, message in enumerate(value)]


def parse_pair(source: str, item: object, fallback_id: str) -> PreferencePair:
    """One pair, validated as two conversations; raises ValueError with the reason."""
    if not isinstance(item, dict):
        raise ValueError(f"a pair must be a JSON object, got {type(item).__name__}")
    missing = [key for key in ("prompt", "chosen", "rejected") if key not in item]
    if missing:
        raise ValueError(f"missing {', '.join(repr(k) for k in missing)} (TRL's DPO layout: prompt, chosen, rejected)")
    images = item.get("images", [])
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        raise ValueError(f"'images' must be a list of image paths, got {images!r}")
    pair_id = str(item.get("id", fallback_id))
    prompt = _messages(item, "prompt")
    records = []
    for key in ("chosen", "rejected"):
        answer = _messages(item, key)
        if any(role != "gpt" for role, _ in answer):
            raise ValueError(f"'{key}' must hold assistant messages only")
        conversation = [{"from": role, "value": text} for role, text in prompt + answer]
        raw = {"id": f"{pair_id}:{key}", "conversations": conversation}
        if images:
            raw["image"] = images
        try:
            records.append(parse_record(source, raw))
        except ValueError as error:
            raise ValueError(f"{key}: {error}") from None
    return PreferencePair(pair_id, records[0], records[1], source)


def load_pairs(path: str | Path) -> LoadedPairs:
    """Every good pair of a JSON-lines file and every problem found in it (structure only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preference pairs file not found: {path}")
    loaded = LoadedPairs()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        source = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            loaded.problems.append(RecordProblem(source, None, f"invalid JSON line ({error.msg})"))
            continue
        pair_id = item.get("id") if isinstance(item, dict) else None
        try:
            loaded.pairs.append(parse_pair(source, item, f"pair-{number}"))
        except ValueError as error:
            loaded.problems.append(RecordProblem(source, None if pair_id is None else str(pair_id), str(error)))
    return loaded


def pair_line(pair_id: str, image: str | None, prompt: str, chosen: str, rejected: str) -> dict:
    """A pair as TRL's vision DPO layout writes it (one image at most, before the prompt's text)."""
    user = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": prompt}]
    return {
        "id": pair_id,
        "images": [image] if image is not None else [],
        "prompt": [{"role": "user", "content": user}],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": chosen}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": rejected}]}],
    }
