"""POPE: yes/no object-existence probes ("Is there a dog in the image?") on COCO images.

Official files: `coco_pope_{random,popular,adversarial}.json`, JSON lines of
`{"question_id", "image", "text", "label": "yes"|"no"}`; images from COCO val2014.

Answer parsing differs sharply between the conventions (docs/eval-conventions.md):

- llava (llava/eval/eval_pope.py): keep the text before the first '.', drop commas, split on
  single spaces; the answer is "no" if one of the words is exactly "No", "no" or "not",
  otherwise it is "yes" -- so an empty or off-topic answer counts as yes. yes_ratio is the
  fraction of *predicted* yes.
- lmms-eval (tasks/pope/utils.py): the lower-cased, stripped text must equal "yes" or "no";
  "yes." or "Yes, there is" match neither. Such answers are wrong for accuracy and are left out
  of precision and recall. yes_ratio is the fraction of *ground-truth* yes.
"""

from __future__ import annotations

from pathlib import Path

from crystalvlm.eval.tasks.base import SHORT_ANSWER_INSTRUCTION, EvalSample, Task, check_scoring, safe_ratio
from crystalvlm.eval.tasks.files import BenchmarkFormatError, image_inside, read_json_lines, require_keys
from crystalvlm.eval.tasks.hf_parquet import read_rows, save_image

POPE_SPLITS = ("random", "popular", "adversarial")


def pope_prompt(question: str) -> str:
    return f"{question.strip()}\n{SHORT_ANSWER_INSTRUCTION}"


def parse_llava(text: str) -> str:
    """LLaVA's rule: "no" iff the first sentence has the word No/no/not; anything else is "yes"."""
    first_sentence = text.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")  # single spaces, as the script does: "No\n" is not "No"
    return "no" if {"No", "no", "not"} & set(words) else "yes"


def parse_lmms_eval(text: str) -> str:
    """lmms-eval's rule: exact match after lower() and strip(); anything else stays as written."""
    return text.lower().strip()


def pope_metrics(pairs: list[tuple[str, str]], scoring: str) -> dict[str, float]:
    """pairs are (parsed prediction, ground truth); ground truth is "yes"/"no"."""
    true_pos = sum(1 for pred, gold in pairs if pred == "yes" and gold == "yes")
    false_pos = sum(1 for pred, gold in pairs if pred == "yes" and gold == "no")
    false_neg = sum(1 for pred, gold in pairs if pred == "no" and gold == "yes")
    precision = safe_ratio(true_pos, true_pos + false_pos)
    # Under lmms-eval an unparsable answer to a "yes" question is neither TP nor FN, so it leaves
    # recall's denominator; under llava every answer is yes or no, so the two recall formulas agree.
    recall = safe_ratio(true_pos, true_pos + false_neg)
    if scoring == "llava":
        yes_ratio = safe_ratio(sum(1 for pred, _ in pairs if pred == "yes"), len(pairs))
    else:
        yes_ratio = safe_ratio(sum(1 for _, gold in pairs if gold == "yes"), len(pairs))
    return {
        "accuracy": safe_ratio(sum(1 for pred, gold in pairs if pred == gold), len(pairs)),
        "precision": precision,
        "recall": recall,
        "f1": safe_ratio(2 * precision * recall, precision + recall),
        "yes_ratio": yes_ratio,
    }


class PopeTask(Task):
    max_new_tokens = 128  # model_vqa_loader's default, and lmms-eval's pope.yaml

    def __init__(self, annotation_file: Path, image_folder: Path, split_name: str | None = None,
                 max_new_tokens: int | None = None) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_folder = Path(image_folder)
        if split_name is None:
            stem = self.annotation_file.stem
            if not stem.startswith("coco_pope_"):
                raise ValueError(f"{self.annotation_file}: cannot tell the POPE split from the file name; "
                                 f"pass split_name")
            split_name = stem[len("coco_pope_"):]
        self.split_name = split_name
        self.name = f"pope_{split_name}"
        if max_new_tokens is not None:
            self.max_new_tokens = max_new_tokens

    def load_samples(self) -> list[EvalSample]:
        samples = []
        for number, row in read_json_lines(self.annotation_file, "POPE annotation file"):
            where = f"{self.annotation_file}:{number}"
            require_keys(row, ("question_id", "image", "text", "label"), where)
            if row["label"] not in ("yes", "no"):
                raise BenchmarkFormatError(f"{where}: label must be 'yes' or 'no', got {row['label']!r}")
            samples.append(EvalSample(
                sample_id=str(row["question_id"]),
                image=image_inside(self.image_folder, row["image"], where),
                prompt=pope_prompt(row["text"]),
                target=row["label"],
                meta={"split": self.split_name, "question": row["text"]},
            ))
        if not samples:
            raise BenchmarkFormatError(f"{self.annotation_file}: no questions")
        return samples

    def answer_sample_id(self, question_id: str, prompt: str | None) -> str:
        sample_id = super().answer_sample_id(question_id, prompt)
        # Guard against answers of another split: POPE question ids restart at 1 in every split file.
        question = self._sample_index()[sample_id].meta["question"].strip()
        if prompt is not None and question not in prompt:
            raise KeyError(f"question_id {question_id!r} of {self.name} asks {question!r}, but the answer's prompt "
                           f"is {prompt!r}; are these answers for another POPE split?")
        return sample_id

    def score(self, predictions: dict[str, str], scoring: str = "llava") -> dict[str, float]:
        check_scoring(scoring)
        parse = parse_llava if scoring == "llava" else parse_lmms_eval
        # LLaVA's answer writer strips the decoded text; strip() is a no-op on its files.
        pairs = [(parse(text.strip()), sample.target) for sample, text in self.paired(predictions)]
        return pope_metrics(pairs, scoring)

    def sample_scores(self, predictions: dict[str, str], scoring: str = "llava") -> dict[str, float]:
        check_scoring(scoring)
        parse = parse_llava if scoring == "llava" else parse_lmms_eval
        return {sample.sample_id: float(parse(text.strip()) == sample.target) for sample, text in self.paired(predictions)}


class PopeParquetTask(PopeTask):
    """POPE from a local copy of lmms-lab/POPE (default config: one `test` table, split = `category` column;
    "Full" config: shards named after the split)."""

    def __init__(self, shard_files: list[Path], split_name: str, image_cache: Path,
                 max_new_tokens: int | None = None) -> None:
        if not shard_files:
            raise BenchmarkFormatError("lmms-lab/POPE: no parquet shards given")
        super().__init__(Path(shard_files[0]), Path(image_cache), split_name, max_new_tokens)
        self.shard_files = [Path(file) for file in shard_files]
        self.image_cache = Path(image_cache)

    def load_samples(self) -> list[EvalSample]:
        samples = []
        for index, row in enumerate(read_rows(self.shard_files)):
            where = f"lmms-lab/POPE row {index}"
            require_keys(row, ("question_id", "question", "answer", "image"), where)
            # The default config mixes the splits in one table; the "Full" config has one file per split.
            if row.get("category", self.split_name) != self.split_name:
                continue
            label = str(row["answer"]).strip().lower()
            if label not in ("yes", "no"):
                raise BenchmarkFormatError(f"{where}: answer must be yes or no, got {row['answer']!r}")
            # Many questions share one COCO image; image_source names it, so it is written once.
            stem = str(row.get("image_source") or row["question_id"])
            image = save_image(row["image"], self.image_cache / "pope", stem, where)
            samples.append(EvalSample(str(row["question_id"]), image, pope_prompt(row["question"]), label,
                                      {"split": self.split_name, "question": row["question"]}))
        if not samples:
            raise BenchmarkFormatError(f"lmms-lab/POPE shards {self.shard_files}: no rows of split {self.split_name!r}")
        return samples
