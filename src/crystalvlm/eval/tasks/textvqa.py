"""TextVQA (val): questions about text in images, scored with EvalAI-normalised VQA accuracy.

Official files: `TextVQA_0.5.1_val.json` ({"data": [{question_id, image_id, question, answers
(10), ...}]}), images `train_images/<image_id>.jpg` (val images live in the train folder), and
optionally `TextVQA_Rosetta_OCR_v0.2_val.json` ({"data": [{image_id, ocr_tokens}]}).

Prompt: the question, then (OCR variant, as LLaVA-1.5's llava_textvqa_val_v051_ocr.jsonl and its
reported numbers) a line "Reference OCR token: tok1, tok2, ...", then the short-answer
instruction. lmms-eval's default differs: no OCR line and the question `str.capitalize()`d
(`capitalize_question=True`). Scoring is the same under both conventions
(crystalvlm.eval.textvqa_normalize).
"""

from __future__ import annotations

import re
from pathlib import Path

from crystalvlm.data.templates import IMAGE_PLACEHOLDER
from crystalvlm.eval.tasks.base import SHORT_ANSWER_INSTRUCTION, EvalSample, Task, check_scoring, safe_ratio
from crystalvlm.eval.tasks.files import BenchmarkFormatError, image_inside, read_json, require_keys
from crystalvlm.eval.tasks.hf_parquet import read_rows, save_image
from crystalvlm.eval.textvqa_normalize import vqa_accuracy

OCR_PREFIX = "Reference OCR token: "
_LEGACY_OCR_PROMPT = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def textvqa_prompt(question: str, ocr_tokens: list[str] | None, capitalize_question: bool = False) -> str:
    text = question.capitalize() if capitalize_question else question
    if ocr_tokens:
        text += f"\n{OCR_PREFIX}{', '.join(ocr_tokens)}"
    return f"{text}\n{SHORT_ANSWER_INSTRUCTION}"


def question_from_prompt(prompt: str) -> str:
    """The question inside an answer file's prompt, lower-cased (eval_textvqa.py's prompt_processor)."""
    lines = prompt.replace(IMAGE_PLACEHOLDER + "\n", "").split("\n")
    if prompt.startswith("OCR tokens: "):
        match = _LEGACY_OCR_PROMPT.search(prompt)
        if match is None:
            raise ValueError(f"prompt starts with 'OCR tokens: ' but has no 'Question: ... Short answer:': {prompt!r}")
        return match.group(1).lower()
    if OCR_PREFIX in prompt and len(lines) == 3:
        return (lines[1] if lines[0].startswith(OCR_PREFIX.strip()) else lines[0]).lower()
    if len(lines) == 2:
        return lines[0].lower()
    raise ValueError(f"cannot find the question in prompt {prompt!r} "
                     f"(expected: question, optional OCR line, instruction)")


class TextVQATask(Task):
    name = "textvqa"
    max_new_tokens = 128  # model_vqa_loader's default

    def __init__(self, annotation_json: Path, image_folder: Path, ocr_json: Path | None = None,
                 capitalize_question: bool = False, max_new_tokens: int | None = None) -> None:
        self.annotation_json = Path(annotation_json)
        self.image_folder = Path(image_folder)
        self.ocr_json = Path(ocr_json) if ocr_json is not None else None
        self.capitalize_question = capitalize_question
        if max_new_tokens is not None:
            self.max_new_tokens = max_new_tokens

    def _ocr_tokens(self) -> dict[str, list[str]] | None:
        if self.ocr_json is None:
            return None
        document = read_json(self.ocr_json, "TextVQA OCR file")
        entries = document.get("data") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise BenchmarkFormatError(f"{self.ocr_json}: expected {{'data': [{{'image_id', 'ocr_tokens'}}, ...]}}")
        tokens = {}
        for index, entry in enumerate(entries):
            require_keys(entry, ("image_id", "ocr_tokens"), f"{self.ocr_json}: data[{index}]")
            tokens[str(entry["image_id"])] = [str(token) for token in entry["ocr_tokens"]]
        return tokens

    def load_samples(self) -> list[EvalSample]:
        document = read_json(self.annotation_json, "TextVQA annotation file")
        entries = document.get("data") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise BenchmarkFormatError(
                f"{self.annotation_json}: expected {{'data': [...]}} as in TextVQA_0.5.1_val.json")
        ocr = self._ocr_tokens()
        samples = []
        for index, entry in enumerate(entries):
            where = f"{self.annotation_json}: data[{index}]"
            require_keys(entry, ("question_id", "image_id", "question", "answers"), where)
            image_id = str(entry["image_id"])
            tokens = None
            if ocr is not None:
                if image_id not in ocr:
                    raise BenchmarkFormatError(f"{self.ocr_json}: no OCR tokens for image {image_id} ({where})")
                tokens = ocr[image_id]
            samples.append(self._sample(entry, image_inside(self.image_folder, f"{image_id}.jpg", where), tokens, where))
        return samples

    def _sample(self, entry: dict, image: Path, ocr_tokens: list[str] | None, where: str) -> EvalSample:
        answers = entry["answers"]
        if not isinstance(answers, list) or not answers:
            raise BenchmarkFormatError(f"{where}: 'answers' must be a non-empty list of strings")
        return EvalSample(
            sample_id=str(entry["question_id"]),
            image=image,
            prompt=textvqa_prompt(entry["question"], ocr_tokens, self.capitalize_question),
            target=[str(answer) for answer in answers],
            meta={"image_id": str(entry["image_id"]), "question": entry["question"], "ocr": ocr_tokens is not None},
        )

    def answer_sample_id(self, question_id: str, prompt: str | None) -> str:
        """Our answer files use question ids; LLaVA's use the image id and carry the question in the prompt."""
        index = self._sample_index()
        if question_id in index:
            return question_id
        if prompt is None:
            raise KeyError(f"TextVQA answer {question_id!r} is neither a question id nor has a prompt to match")
        question = question_from_prompt(prompt)
        for sample in index.values():  # eval_textvqa.py keys annotations by (image_id, question.lower())
            if sample.meta["image_id"] == question_id and sample.meta["question"].lower() == question:
                return sample.sample_id
        raise KeyError(f"TextVQA answer for image {question_id!r} asks {question!r}, which the annotations do not have")

    def score(self, predictions: dict[str, str], scoring: str = "llava") -> dict[str, float]:
        check_scoring(scoring)  # both conventions use the same EvalAI normalisation and accuracy
        scores = [vqa_accuracy(text, sample.target) for sample, text in self.paired(predictions)]
        return {"accuracy": safe_ratio(sum(scores), len(scores))}

    def sample_scores(self, predictions: dict[str, str], scoring: str = "llava") -> dict[str, float]:
        check_scoring(scoring)
        return {sample.sample_id: float(vqa_accuracy(text, sample.target)) for sample, text in self.paired(predictions)}


class TextVQAParquetTask(TextVQATask):
    """TextVQA val from a local copy of lmms-lab/textvqa (which carries `ocr_tokens` per question)."""

    def __init__(self, shard_files: list[Path], image_cache: Path, use_ocr: bool = True,
                 capitalize_question: bool = False, max_new_tokens: int | None = None) -> None:
        if not shard_files:
            raise BenchmarkFormatError("lmms-lab/textvqa: no parquet shards given")
        super().__init__(Path(shard_files[0]), Path(image_cache), None, capitalize_question, max_new_tokens)
        self.shard_files = [Path(file) for file in shard_files]
        self.image_cache = Path(image_cache)
        self.use_ocr = use_ocr

    def load_samples(self) -> list[EvalSample]:
        samples = []
        for index, row in enumerate(read_rows(self.shard_files)):
            where = f"lmms-lab/textvqa row {index}"
            require_keys(row, ("question_id", "image_id", "question", "answers", "image"), where)
            tokens = [str(token) for token in row.get("ocr_tokens") or []] if self.use_ocr else None
            image = save_image(row["image"], self.image_cache / "textvqa", str(row["image_id"]), where)
            samples.append(self._sample(row, image, tokens, where))
        return samples
