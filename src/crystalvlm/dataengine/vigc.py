"""VIGC: visual instruction generation and correction with the model itself (VIGC, Wang et al. 2023).

Generation (VIG): a model trained to do so is shown an image and asked for a question of a named
type and its answer ("Generate a counting question about the image and answer it."), and replies
"Question: ... Answer: ...". Outputs that do not parse are dropped, each with its reason.

Correction (VIC): a long answer drifts away from the image as it grows, so it is rebuilt piece by
piece. Iteration t keeps the answer's first t sentences as a prefix and lets the model regenerate the
continuation (greedy), conditioned on the image, the question and that prefix. The correction stops
when an iteration returns the answer unchanged (stable) or after `max_iterations`. A one-sentence
answer is thus first answered afresh from the image and question alone (iteration 0: empty prefix);
an answer the model would give anyway is stable after one iteration.

Both steps run through the batched GenerationEngine: every item of an iteration is one request.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from crystalvlm.data.images import open_image
from crystalvlm.data.templates import IMAGE_PLACEHOLDER, Turn
from crystalvlm.infer.engine import DecodingConfig, GenerationEngine, GenerationRequest

VIG_PROMPT = "Generate a {question_type} question about the image and answer it."
# Searched, not matched at the start: a small model may stutter before the pair (" QuQuestion: ...").
_PAIR = re.compile(r"Question:\s*(?P<question>.+?)\s*Answer:\s*(?P<answer>.+?)\s*$", re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def vig_prompt(question_type: str) -> str:
    return VIG_PROMPT.format(question_type=question_type.replace("_", " "))


def vig_target(question: str, answer: str) -> str:
    """The reply a VIG model is trained to give (and `parse_pair` reads)."""
    return f"Question: {question} Answer: {answer}"


class JunkOutput(ValueError):
    """A generated output that is not a usable question-answer pair; the message is the reason."""


def parse_pair(text: str) -> tuple[str, str]:
    match = _PAIR.search(text)
    if match is None:
        raise JunkOutput("no 'Question: ... Answer: ...' in the output")
    question, answer = match["question"].strip(), match["answer"].strip()
    if "Question:" in answer or "Answer:" in answer:
        raise JunkOutput("more than one question-answer pair in the output")
    if not question.endswith("?"):
        raise JunkOutput("the question does not end with a question mark")
    if not answer:
        raise JunkOutput("empty answer")
    return question, answer


def sentences(text: str) -> list[str]:
    return [piece for piece in _SENTENCE_END.split(text.strip()) if piece]


@dataclass
class VigcItem:
    """One generated pair: where it came from, the answer before and after correction."""

    image: Path
    question_type: str
    question: str
    answer: str  # as generated
    corrected: str = ""
    iterations: int = 0
    history: list[str] = field(default_factory=list)  # the answer after each iteration


@dataclass
class VigcBatch:
    items: list[VigcItem]
    dropped: list[dict]  # {"image", "question_type", "reason", "output"}


def _request(image, question: str, prefix: str = "", question_suffix: str = "") -> GenerationRequest:
    text = f"{question}\n{question_suffix}" if question_suffix else question
    return GenerationRequest([Turn("user", f"{IMAGE_PLACEHOLDER}\n{text}")], [image], answer_prefix=prefix)


def _load(path: Path):
    return open_image(path.parent, path.name)


def generate_pairs(engine: GenerationEngine, images: list[Path], question_type: str, seed: int = 0,
                   temperature: float = 0.7, max_new_tokens: int = 64, progress: bool = False) -> VigcBatch:
    """One question of `question_type` and its answer per image (sampled, seeded); junk dropped with reasons."""
    # Each request its own random stream: with one shared seed, similar images got the same question.
    requests = [GenerationRequest([Turn("user", f"{IMAGE_PLACEHOLDER}\n{vig_prompt(question_type)}")], [_load(path)],
                                  seed=seed * 100_003 + index)
                for index, path in enumerate(images)]
    config = DecodingConfig(strategy="sample", temperature=temperature, seed=seed, max_new_tokens=max_new_tokens)
    results = engine.generate(requests, config, progress=progress)
    items, dropped = [], []
    for path, result in zip(images, results):
        try:
            question, answer = parse_pair(result.text)
        except JunkOutput as reason:
            dropped.append({"image": path.name, "question_type": question_type, "reason": str(reason),
                            "output": result.text})
            continue
        items.append(VigcItem(path, question_type, question, answer))
    return VigcBatch(items, dropped)


def correct_answers(engine: GenerationEngine, items: list[VigcItem], max_iterations: int = 3,
                    question_suffix: str = "", max_new_tokens: int = 64) -> list[VigcItem]:
    """VIC (module docstring) on every item, in place and batched per iteration; returns `items`."""
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be at least 1, got {max_iterations}")
    config = DecodingConfig(strategy="greedy", max_new_tokens=max_new_tokens)
    images = {item.image: _load(item.image) for item in items}
    for item in items:
        item.corrected, item.iterations, item.history = item.answer, 0, []
    active = list(items)
    for iteration in range(max_iterations):
        if not active:
            break
        prefixes = [" ".join(sentences(item.corrected)[:iteration]) for item in active]
        results = engine.generate([_request(images[item.image], item.question, prefix, question_suffix)
                                   for item, prefix in zip(active, prefixes)], config)
        still = []
        for item, prefix, result in zip(active, prefixes, results):
            continuation = result.text.strip()
            updated = f"{prefix} {continuation}".strip() if prefix else continuation
            item.iterations = iteration + 1
            item.history.append(updated)
            if updated == item.corrected:  # stable: this iteration changed nothing
                continue
            item.corrected = updated
            still.append(item)
        active = still
    return items


def vigc_records(items: list[VigcItem], image_folder: Path, id_prefix: str = "vigc", question_suffix: str = "",
                 corrected: bool = True) -> list[dict]:
    """LLaVA-format records of the pairs (the corrected answers unless `corrected` is False), each image
    copied into `image_folder` once; records name images relative to that folder."""
    image_folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index, item in enumerate(items):
        target = image_folder / item.image.name
        if not target.exists():
            shutil.copyfile(item.image, target)
        question = f"{item.question}\n{question_suffix}" if question_suffix else item.question
        records.append({"id": f"{id_prefix}-{index:06d}", "image": item.image.name,
                        "conversations": [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{question}"},
                                          {"from": "gpt", "value": item.corrected if corrected else item.answer}]})
    return records


def run_vigc(engine: GenerationEngine, images: list[Path], counts: dict[str, int], seed: int = 0,
             max_iterations: int = 3, question_suffix: str = "", question_types: dict[str, str] | None = None,
             progress: bool = False) -> VigcBatch:
    """`counts[kind]` pairs per question kind, on images drawn without replacement (seeded; with
    replacement once the images run out), generated then corrected."""
    if not images:
        raise ValueError("VIGC needs at least one image")
    items, dropped = [], []
    for kind, count in counts.items():
        rng = random.Random(f"vigc:{seed}:{kind}")
        chosen = rng.sample(images, count) if count <= len(images) else [rng.choice(images) for _ in range(count)]
        batch = generate_pairs(engine, chosen, (question_types or {}).get(kind, kind),
                               seed=seed, progress=progress)
        for item in batch.items:
            item.question_type = kind
        for entry in batch.dropped:
            entry["question_type"] = kind
        items += batch.items
        dropped += batch.dropped
    correct_answers(engine, items, max_iterations, question_suffix)
    return VigcBatch(items, dropped)


class VigcSource:
    """Records made by VIGC on unlabelled images (the source side of dataengine.loop): `model`, or the
    round's current model when None, generates and corrects; `question_types` names each capability's
    VIG question type."""

    def __init__(self, images: list[Path], question_types: dict[str, str], model: Path | None = None,
                 question_suffix: str = "", max_iterations: int = 3, batch_size: int = 32) -> None:
        self.images = list(images)
        self.question_types = question_types
        self.model = model
        self.question_suffix = question_suffix
        self.max_iterations = max_iterations
        self.batch_size = batch_size
        self.description = (f"vigc model={model.resolve() if model else 'current'} images={len(self.images)} "
                            f"types={sorted(question_types.items())} iterations={max_iterations}")

    def generate(self, counts: dict[str, int], folder: Path, seed: int, profile: dict, checkpoint: Path,
                 workspace: Path):
        from crystalvlm.dataengine.loop import GeneratedData

        engine = GenerationEngine.from_checkpoint(self.model or checkpoint, batch_size=self.batch_size)
        batch = run_vigc(engine, self.images, counts, seed, self.max_iterations, self.question_suffix,
                         self.question_types)
        records = vigc_records(batch.items, Path(folder) / "images", "vigc", self.question_suffix)
        return GeneratedData(records, [{**d, "capability": d["question_type"]} for d in batch.dropped])
