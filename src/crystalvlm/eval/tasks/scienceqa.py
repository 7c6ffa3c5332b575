"""ScienceQA (test split) and its image subset ScienceQA-IMG, multiple choice answered by letter.

Official files: `problems.json` ({pid: {question, choices, answer (index), hint, image, split, ...}}),
`pid_splits.json` ({split: [pid, ...]}) and `images/<split>/<pid>/image.png`.

Prompt as in LLaVA-1.5's llava_test_CQM-A.json and lmms-eval's default format::

    Context: <hint>            (only when the hint is not empty)
    <question>
    A. <choice 0>
    B. <choice 1>
    Answer with the option's letter from the given choices directly.

Answer parsing (docs/eval-conventions.md):
- llava (llava/eval/eval_science_qa.py): the text is exactly a letter A-E; or starts with
  "<letter>. "; or contains "The answer is <X>." exactly once; a letter outside the problem's
  choices, anything else, or no answer at all is wrong. IMG-accuracy counts a problem as
  multimodal only when its answer exists and has an image (the script reads '<image>' off the
  answer's prompt, and a missing answer has none).
- lmms-eval (tasks/scienceqa/utils.py): the raw text equals the letter, or starts with an
  upper-case letter followed by '.', which is then compared with the target letter.
"""

from __future__ import annotations

import re
from pathlib import Path

from crystalvlm.eval.tasks.base import EvalSample, Task, check_scoring, safe_ratio
from crystalvlm.eval.tasks.files import BenchmarkFormatError, image_inside, read_json, require_keys
from crystalvlm.eval.tasks.hf_parquet import read_rows, save_image

LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
LLAVA_OPTIONS = ("A", "B", "C", "D", "E")  # eval_science_qa.py's --options default
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")  # '.' matches any character, as in the script


def scienceqa_prompt(question: str, hint: str | None, choices: list[str]) -> str:
    context = f"Context: {hint}\n" if hint else ""
    options = "\n".join(f"{chr(ord('A') + index)}. {choice}" for index, choice in enumerate(choices))
    return f"{context}{question}\n{options}\n{LETTER_INSTRUCTION}"


def parse_llava(text: str) -> str | None:
    """The letter LLaVA's script reads from an answer, or None ("FAILED")."""
    if text in LLAVA_OPTIONS:
        return text
    if len(text) >= 3 and text[0] in LLAVA_OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else None


def correct_llava(text: str | None, answer_index: int, num_choices: int) -> bool:
    if text is None:
        return False
    letter = parse_llava(text.strip())  # model_vqa_science strips its output before writing it
    # get_pred_idx: a letter beyond the problem's choices is index -1, never right.
    return letter is not None and letter in LLAVA_OPTIONS[:num_choices] and LLAVA_OPTIONS.index(letter) == answer_index


def correct_lmms_eval(text: str | None, target: str) -> bool:
    if text is None:
        return False
    # No strip here: lmms-eval compares the generated text as the model wrapper returned it.
    if text == target:
        return True
    return len(text) >= 2 and text[0].isupper() and text[1] == "." and text[0] == target


class ScienceQATask(Task):
    max_new_tokens = 1024  # model_vqa_science.py (lmms-eval's scienceqa yaml uses 16)

    def __init__(self, root: Path, split: str = "test", images_only: bool = False,
                 max_new_tokens: int | None = None) -> None:
        self.root = Path(root)
        self.split = split
        self.images_only = images_only
        self.name = "scienceqa_img" if images_only else "scienceqa"
        if max_new_tokens is not None:
            self.max_new_tokens = max_new_tokens

    def load_samples(self) -> list[EvalSample]:
        problems = read_json(self.root / "problems.json", "ScienceQA problems.json")
        splits = read_json(self.root / "pid_splits.json", "ScienceQA pid_splits.json")
        if not isinstance(problems, dict) or not isinstance(splits, dict):
            raise BenchmarkFormatError(f"{self.root}: problems.json and pid_splits.json must be JSON objects")
        if self.split not in splits:
            raise BenchmarkFormatError(
                f"{self.root / 'pid_splits.json'}: no split {self.split!r}; has {sorted(splits)}")
        samples = []
        for pid in splits[self.split]:
            pid = str(pid)
            where = f"{self.root / 'problems.json'}: problem {pid}"
            if pid not in problems:
                raise BenchmarkFormatError(
                    f"{where}: listed in pid_splits.json[{self.split!r}] but not in problems.json")
            problem = problems[pid]
            require_keys(problem, ("question", "choices", "answer"), where)
            image_name = problem.get("image")
            if self.images_only and not image_name:
                continue
            image = (image_inside(self.root / "images" / self.split, f"{pid}/{image_name}", where)
                     if image_name else None)
            samples.append(self._sample(pid, problem, image, where))
        return samples

    @staticmethod
    def _sample(pid: str, problem: dict, image: Path | None, where: str) -> EvalSample:
        choices = problem["choices"]
        answer = problem["answer"]
        if not isinstance(choices, list) or not 2 <= len(choices) <= len(LLAVA_OPTIONS):
            raise BenchmarkFormatError(f"{where}: 'choices' must be a list of 2 to 5 options")
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise BenchmarkFormatError(f"{where}: 'answer' must index 'choices', got {answer!r}")
        return EvalSample(
            sample_id=pid,
            image=image,
            prompt=scienceqa_prompt(problem["question"], problem.get("hint"), choices),
            target=LLAVA_OPTIONS[answer],
            meta={"answer_index": answer, "num_choices": len(choices), "has_image": image is not None},
        )

    def score(self, predictions: dict[str, str], scoring: str = "llava") -> dict[str, float]:
        """accuracy over the selected problems and img_accuracy over those with an image."""
        check_scoring(scoring)
        correct_all = total = correct_img = total_img = 0
        for sample, text in self.paired(predictions, allow_missing=True):  # missing answer = wrong
            if scoring == "llava":
                correct = correct_llava(text, sample.meta["answer_index"], sample.meta["num_choices"])
                multimodal = sample.meta["has_image"] and text is not None
            else:
                correct = correct_lmms_eval(text, sample.target)
                multimodal = sample.meta["has_image"]
            total += 1
            correct_all += correct
            if multimodal:
                total_img += 1
                correct_img += correct
        return {"accuracy": safe_ratio(correct_all, total), "img_accuracy": safe_ratio(correct_img, total_img)}

    def sample_scores(self, predictions: dict[str, str], scoring: str = "llava") -> dict[str, float]:
        check_scoring(scoring)
        scores = {}
        for sample, text in self.paired(predictions, allow_missing=True):  # missing answer = wrong
            if scoring == "llava":
                scores[sample.sample_id] = float(correct_llava(text, sample.meta["answer_index"], sample.meta["num_choices"]))
            else:
                scores[sample.sample_id] = float(correct_lmms_eval(text, sample.target))
        return scores

    def sample_capability(self, sample: EvalSample) -> str:
        return f"{self.name}/{'image' if sample.meta['has_image'] else 'text'}"


class ScienceQAParquetTask(ScienceQATask):
    """ScienceQA-IMG from a local copy of lmms-lab/ScienceQA (config ScienceQA-IMG).

    That copy has no problem ids, so samples are numbered by row order ("0", "1", ...); answers
    written for the official files' problem ids cannot be rescored against it.
    """

    def __init__(self, shard_files: list[Path], image_cache: Path, max_new_tokens: int | None = None) -> None:
        if not shard_files:
            raise BenchmarkFormatError("lmms-lab/ScienceQA: no parquet shards given")
        super().__init__(Path(shard_files[0]).parent, split="test", images_only=True, max_new_tokens=max_new_tokens)
        self.shard_files = [Path(file) for file in shard_files]
        self.image_cache = Path(image_cache)

    def load_samples(self) -> list[EvalSample]:
        samples = []
        for index, row in enumerate(read_rows(self.shard_files)):
            where = f"lmms-lab/ScienceQA row {index}"
            if row.get("image") is None:
                continue
            image = save_image(row["image"], self.image_cache / "scienceqa", f"{index}", where)
            require_keys(row, ("question", "choices", "answer"), where)
            samples.append(self._sample(str(index), row, image, where))
        return samples
