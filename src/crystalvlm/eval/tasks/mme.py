"""MME: 14 yes/no subtasks, two questions per image, scored in "MME points".

Release layout (MME_Benchmark_release_version/): one folder per subtask. Per image a `.txt` with
two lines `question<TAB>Yes|No`, either beside the image (existence, count, ...) or in
`questions_answers_YN/` with the images in `images/` (artwork, celebrity, landmark, posters,
scene). Folders that are not one of the 14 subtasks (eval_tool/, ...) are not benchmark data.

Subtask score = 100 * acc + 100 * acc+, where acc is the fraction of questions answered right and
acc+ the fraction of images with both questions right (0..200 per subtask). Perception sums the 10
perception subtasks present, cognition the 4 cognition subtasks present.

Answer parsing (docs/eval-conventions.md):
- llava (MME eval_tool/calculation.py, fed by LLaVA's convert_answer_to_mme.py): lower-case;
  exactly "yes"/"no", else look at the first 4 characters: containing "yes" -> yes, else
  containing "no" -> no, else "other" (always wrong).
- lmms-eval (tasks/mme/utils.py): lower-case, strip, delete every '.', then the same rules plus
  the single letters "y" -> yes and "n" -> no.
"""

from __future__ import annotations

import re
from pathlib import Path

from crystalvlm.data.templates import IMAGE_PLACEHOLDER
from crystalvlm.eval.tasks.base import SHORT_ANSWER_INSTRUCTION, EvalSample, Task, check_scoring, safe_ratio
from crystalvlm.eval.tasks.files import BenchmarkFormatError, require_keys
from crystalvlm.eval.tasks.hf_parquet import read_rows, save_image

PERCEPTION_SUBTASKS = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                       "artwork", "OCR")
COGNITION_SUBTASKS = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MME_SUBTASKS = PERCEPTION_SUBTASKS + COGNITION_SUBTASKS
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")

# MME questions end in "Please answer yes or no." (a few with two spaces before it); LLaVA-1.5's
# question file and lmms-eval both replace that with the short-answer instruction on a new line.
_YES_NO_SUFFIX = re.compile(r"\s*Please answer yes or no\.\s*$")


def core_question(text: str) -> str:
    """The question without MME's yes/no suffix or LLaVA's short-answer instruction."""
    text = text.replace(SHORT_ANSWER_INSTRUCTION, "").strip()
    return _YES_NO_SUFFIX.sub("", text).strip()


def mme_prompt(question: str) -> str:
    return f"{core_question(question)}\n{SHORT_ANSWER_INSTRUCTION}"


def parse_llava(text: str) -> str:
    """calculation.py's parse_pred_ans on the lower-cased answer: 'yes', 'no' or 'other'."""
    answer = text.lower()
    if answer in ("yes", "no"):
        return answer
    prefix = answer[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def parse_lmms_eval(text: str) -> str:
    """lmms-eval's parse_pred_ans: periods deleted first, single letters y/n accepted."""
    answer = text.lower().strip().replace(".", "")
    if answer in ("yes", "no"):
        return answer
    if len(answer) == 1:
        return {"y": "yes", "n": "no"}.get(answer, "other")
    prefix = answer[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def subtask_score(images: list[list[bool]]) -> float:
    """MME points of one subtask from per-image lists of per-question correctness (2 per image)."""
    questions = [correct for image in images for correct in image]
    accuracy = safe_ratio(sum(questions), len(questions))
    accuracy_plus = safe_ratio(sum(1 for image in images if all(image)), len(images))
    return 100.0 * accuracy + 100.0 * accuracy_plus


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


class MMETask(Task):
    name = "mme"
    max_new_tokens = 128  # model_vqa_loader's default (lmms-eval's mme.yaml uses 16)

    def __init__(self, root: Path, max_new_tokens: int | None = None) -> None:
        self.root = Path(root)
        if max_new_tokens is not None:
            self.max_new_tokens = max_new_tokens

    def load_samples(self) -> list[EvalSample]:
        if not self.root.is_dir():
            raise BenchmarkFormatError(f"{self.root}: MME release folder not found")
        samples: list[EvalSample] = []
        for subtask in MME_SUBTASKS:
            folder = self.root / subtask
            if not folder.is_dir():
                continue
            if (folder / "images").is_dir():
                image_folder, qa_folder = folder / "images", folder / "questions_answers_YN"
                if not qa_folder.is_dir():
                    raise BenchmarkFormatError(f"{folder}: has images/ but no questions_answers_YN/")
            else:
                image_folder = qa_folder = folder
            for qa_file in sorted(qa_folder.glob("*.txt")):
                image = _find_image(image_folder, qa_file.stem)
                if image is None:
                    raise BenchmarkFormatError(f"{qa_file}: no image named {qa_file.stem}.* in {image_folder}")
                for index, (question, answer) in enumerate(self._read_pair(qa_file), start=1):
                    samples.append(EvalSample(
                        sample_id=f"{subtask}/{image.name}#{index}",
                        image=image.resolve(),
                        prompt=mme_prompt(question),
                        target=answer,
                        meta={"subtask": subtask, "image_key": f"{subtask}/{image.name}", "question": question},
                    ))
        if not samples:
            raise BenchmarkFormatError(f"{self.root}: no MME subtask folders ({', '.join(MME_SUBTASKS)})")
        return samples

    @staticmethod
    def _read_pair(qa_file: Path) -> list[tuple[str, str]]:
        pairs = []
        for number, line in enumerate(qa_file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.strip().split("\t")
            if len(parts) != 2 or parts[1].strip().lower() not in ("yes", "no"):
                raise BenchmarkFormatError(f"{qa_file}:{number}: expected 'question<TAB>Yes|No', got {line!r}")
            pairs.append((parts[0], parts[1].strip()))
        if len(pairs) != 2:
            # acc+ is defined per image over exactly two questions; the official tool pairs lines.
            raise BenchmarkFormatError(f"{qa_file}: MME has two questions per image, found {len(pairs)}")
        return pairs

    def answer_sample_id(self, question_id: str, prompt: str | None) -> str:
        """Our answer files use sample ids; LLaVA's use '<subtask>/<image file>' plus the prompt."""
        index = self._sample_index()
        if question_id in index:
            return question_id
        subtask, _, file_name = question_id.partition("/")
        # convert_answer_to_mme.py keys ground truth by (subtask, image stem + '.txt', question).
        stem = file_name.split("/")[-1].split(".")[0]
        if prompt is None:
            raise KeyError(f"MME answer {question_id!r} has no prompt to tell its two questions apart")
        wanted = core_question(prompt.replace(IMAGE_PLACEHOLDER, ""))
        for sample in index.values():
            key_subtask, _, key_file = sample.meta["image_key"].partition("/")
            same_image = key_subtask == subtask and key_file.split(".")[0] == stem
            if same_image and core_question(sample.meta["question"]) == wanted:
                return sample.sample_id
        raise KeyError(f"MME answer {question_id!r} with prompt {prompt!r} matches no question of that image")

    def score(self, predictions: dict[str, str], scoring: str = "llava") -> dict[str, float]:
        check_scoring(scoring)
        parse = parse_llava if scoring == "llava" else parse_lmms_eval
        per_image: dict[str, list[bool]] = {}
        subtask_of: dict[str, str] = {}
        for sample, text in self.paired(predictions):
            # LLaVA's answer writer strips the decoded text before MME's tool reads it.
            correct = parse(text.strip()) == sample.target.lower()
            per_image.setdefault(sample.meta["image_key"], []).append(correct)
            subtask_of[sample.meta["image_key"]] = sample.meta["subtask"]
        by_subtask: dict[str, list[list[bool]]] = {}
        for image_key, answers in per_image.items():
            if len(answers) != 2:
                raise ValueError(f"MME image {image_key} has {len(answers)} selected question(s); "
                                 f"select both questions of an image (acc+ needs the pair)")
            by_subtask.setdefault(subtask_of[image_key], []).append(answers)
        scores = {subtask: subtask_score(images) for subtask, images in by_subtask.items()}
        result = {
            "perception": sum(scores.get(name, 0.0) for name in PERCEPTION_SUBTASKS),
            "cognition": sum(scores.get(name, 0.0) for name in COGNITION_SUBTASKS),
        }
        result.update({name: scores[name] for name in MME_SUBTASKS if name in scores})
        return result

    def sample_scores(self, predictions: dict[str, str], scoring: str = "llava") -> dict[str, float]:
        check_scoring(scoring)
        parse = parse_llava if scoring == "llava" else parse_lmms_eval
        return {sample.sample_id: float(parse(text.strip()) == sample.target.lower())
                for sample, text in self.paired(predictions)}

    def sample_capability(self, sample: EvalSample) -> str:
        return f"{self.name}/{sample.meta['subtask']}"


class MMEParquetTask(MMETask):
    """MME from a local copy of lmms-lab/MME (question_id is '<subtask>/<image file>', category the subtask)."""

    def __init__(self, shard_files: list[Path], image_cache: Path, max_new_tokens: int | None = None) -> None:
        if not shard_files:
            raise BenchmarkFormatError("lmms-lab/MME: no parquet shards given")
        super().__init__(Path(shard_files[0]).parent, max_new_tokens)
        self.shard_files = [Path(file) for file in shard_files]
        self.image_cache = Path(image_cache)

    def load_samples(self) -> list[EvalSample]:
        rows_by_image: dict[str, list[tuple[int, dict]]] = {}
        for index, row in enumerate(read_rows(self.shard_files)):
            require_keys(row, ("question_id", "question", "answer", "image", "category"), f"lmms-lab/MME row {index}")
            rows_by_image.setdefault(str(row["question_id"]), []).append((index, row))
        samples = []
        for image_key, rows in rows_by_image.items():
            if len(rows) != 2:
                raise BenchmarkFormatError(f"lmms-lab/MME: image {image_key} has {len(rows)} questions, expected 2")
            for number, (index, row) in enumerate(rows, start=1):
                where = f"lmms-lab/MME row {index}"
                if row["category"] not in MME_SUBTASKS:
                    raise BenchmarkFormatError(f"{where}: unknown subtask {row['category']!r}")
                answer = str(row["answer"]).strip()
                if answer.lower() not in ("yes", "no"):
                    raise BenchmarkFormatError(f"{where}: answer must be Yes or No, got {row['answer']!r}")
                image = save_image(row["image"], self.image_cache / "mme", image_key, where)
                samples.append(EvalSample(f"{image_key}#{number}", image, mme_prompt(row["question"]), answer,
                                          {"subtask": row["category"], "image_key": image_key,
                                           "question": row["question"]}))
        return samples
