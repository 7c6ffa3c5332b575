"""Records written by an OpenAI-compatible endpoint (MLLM-DataEngine's GPT-4 step), with prompt
templates refined from the failures.

A text-only LLM does not see the image: each image comes with a description (a caption, its
annotations), and the LLM writes a question of the requested capability that the description
answers, and the answer, as one JSON object `{"question": ..., "answer": ...}`.

The prompt of a capability is refined from two kinds of failure (the paper's interactive prompt
optimisation, done automatically):
* the model's: the previous round's worst examples of that capability (question, the model's wrong
  answer, the truth) are shown as the skill to practise;
* the LLM's own: after a reply that does not parse, the reason is added to that capability's prompt
  ("a reply was rejected: ...; reply with the JSON object only"), once per distinct reason.
The refined templates are written to the round's workspace (`templates.json`).

Unusable replies are counted and dropped with their reasons. Requests go through
`web2code.openai_http.chat_completion` (retries on network errors, 429 and 5xx, then an
EndpointError naming the endpoint). Replies are cached in the round's workspace as they arrive, so a
round cut by an endpoint failure or a kill resumes without asking again what was answered, and
replays the same refinements in the same order.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from crystalvlm.data.templates import IMAGE_PLACEHOLDER
from crystalvlm.web2code.openai_http import ChatEndpoint, EndpointError, chat_completion

__all__ = ["DescribedImage", "EndpointError", "EndpointSource", "parse_reply"]

BASE_TEMPLATE = (
    "You write training data for a vision-language model.\n"
    "Image description: {description}\n"
    "Write one {capability} question about this image that the description answers, and its correct answer."
    "{answer_format}\n"
    "{refinements}"
    'Reply with one JSON object and nothing else: {{"question": "...", "answer": "..."}}'
)
MAX_QUESTION_CHARS = 400
MAX_ANSWER_CHARS = 1000


@dataclass(frozen=True)
class DescribedImage:
    path: Path
    description: str  # what the text-only LLM knows of the image


class JunkReply(ValueError):
    """A reply that is not a usable record; the message is the reason."""


def parse_reply(text: str) -> tuple[str, str]:
    """(question, answer) from a reply; JunkReply says why not. A ```json fence around the object is allowed."""
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        raise JunkReply("the reply is not a JSON object") from None
    if not isinstance(data, dict):
        raise JunkReply("the reply is JSON but not an object")
    question, answer = data.get("question"), data.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise JunkReply("no 'question' string")
    if not isinstance(answer, str) or not answer.strip():
        raise JunkReply("no 'answer' string")
    question, answer = question.strip(), answer.strip()
    if not question.endswith("?"):
        raise JunkReply("the question does not end with a question mark")
    if len(question) > MAX_QUESTION_CHARS or len(answer) > MAX_ANSWER_CHARS:
        raise JunkReply(f"longer than {MAX_QUESTION_CHARS} (question) or {MAX_ANSWER_CHARS} (answer) characters")
    if IMAGE_PLACEHOLDER in question or IMAGE_PLACEHOLDER in answer:
        raise JunkReply(f"the text contains the image placeholder {IMAGE_PLACEHOLDER}")
    return question, answer


class ReplyCache:
    """key -> reply, appended (and synced) as replies arrive; only complete lines count after a kill."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.replies: dict[str, str] = {}
        if self.path.is_file():
            data = self.path.read_bytes()
            complete = data[: data.rfind(b"\n") + 1]
            if len(complete) != len(data):  # a write cut by a kill
                with open(self.path, "r+b") as handle:
                    handle.truncate(len(complete))
            for line in complete.decode("utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                    self.replies[entry["key"]] = entry["reply"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    def get(self, key: str) -> str | None:
        return self.replies.get(key)

    def put(self, key: str, reply: str) -> None:
        self.replies[key] = reply
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


class PromptTemplates:
    """Each capability's prompt: the base template plus refinements from the failures (module docstring)."""

    def __init__(self, answer_format: str = "") -> None:
        self.answer_format = answer_format
        self.refinements: dict[str, list[str]] = {}

    def learn_from_profile(self, capability: str, profile: dict, examples: int = 3) -> None:
        worst = (profile.get("worst_examples") or {}).get(capability) or []
        if worst:
            lines = [f"- {e['prompt'].splitlines()[0]} (the model answered {e['response']!r}; right: {e['target']!r})"
                     for e in worst[:examples]]
            self.refinements.setdefault(capability, []).append(
                "The model being trained gets questions like these wrong; practise the same skill:\n" + "\n".join(lines))

    def learn_from_junk(self, capability: str, reason: str) -> None:
        note = f"A reply was rejected ({reason}); follow the reply format exactly."
        notes = self.refinements.setdefault(capability, [])
        if note not in notes:
            notes.append(note)

    def prompt(self, capability: str, description: str) -> str:
        refinements = "".join(f"{text}\n" for text in self.refinements.get(capability, []))
        answer_format = f" {self.answer_format}" if self.answer_format else ""
        return BASE_TEMPLATE.format(description=description, capability=capability.replace("_", " "),
                                    answer_format=answer_format, refinements=refinements)


class EndpointSource:
    """The source side of dataengine.loop backed by an OpenAI-compatible endpoint."""

    def __init__(self, endpoint: ChatEndpoint, images: list[DescribedImage], answer_format: str = "",
                 question_suffix: str = "", temperature: float = 0.7) -> None:
        if not images:
            raise ValueError("the endpoint source needs at least one described image")
        self.endpoint = endpoint
        self.images = list(images)
        self.answer_format = answer_format  # told to the LLM ("Answer with a single word or phrase.")
        self.question_suffix = question_suffix  # put after each question in the records
        self.temperature = temperature
        self.description = f"endpoint {endpoint.base_url} model={endpoint.model} images={len(self.images)}"

    def generate(self, counts: dict[str, int], folder: Path, seed: int, profile: dict, checkpoint: Path,
                 workspace: Path):
        from crystalvlm.dataengine.loop import GeneratedData
        from crystalvlm.eval.outputs import write_atomically

        cache = ReplyCache(Path(workspace) / "endpoint_cache.jsonl")
        templates = PromptTemplates(self.answer_format)
        images_out = Path(folder) / "images"
        images_out.mkdir(parents=True, exist_ok=True)
        records, dropped = [], []
        for capability, count in counts.items():
            templates.learn_from_profile(capability, profile)
            rng = random.Random(f"endpoint:{seed}:{capability}")
            chosen = (rng.sample(self.images, count) if count <= len(self.images)
                      else [rng.choice(self.images) for _ in range(count)])
            for index, image in enumerate(chosen):
                prompt = templates.prompt(capability, image.description)
                key = hashlib.sha256(json.dumps([self.endpoint.model, self.temperature, seed, capability, index,
                                                 prompt]).encode()).hexdigest()[:24]
                reply = cache.get(key)
                if reply is None:
                    reply = chat_completion(self.endpoint, [{"role": "user", "content": prompt}],
                                            temperature=self.temperature, max_tokens=512, seed=seed)
                    cache.put(key, reply)
                try:
                    question, answer = parse_reply(reply)
                except JunkReply as reason:
                    dropped.append({"capability": capability, "image": image.path.name, "reason": str(reason),
                                    "reply": reply[:500]})
                    templates.learn_from_junk(capability, str(reason))
                    continue
                target = images_out / image.path.name
                if not target.exists():
                    shutil.copyfile(image.path, target)
                asked = f"{question}\n{self.question_suffix}" if self.question_suffix else question
                records.append({"id": f"endpoint-{capability}-{index:05d}", "image": image.path.name,
                                "conversations": [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{asked}"},
                                                  {"from": "gpt", "value": answer}]})
        write_atomically(Path(workspace) / "templates.json",
                         json.dumps({c: templates.prompt(c, "{description}") for c in counts}, indent=2))
        return GeneratedData(records, dropped)
