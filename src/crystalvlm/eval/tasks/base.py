"""The Task interface: one benchmark = load official files, build prompts, score answers.

A task turns a benchmark folder (laid out like the official release) into `EvalSample`s for the
generation runner, and scores the runner's answers with either of the two scoring conventions that
public model cards use:

- ``"llava"``: the scripts shipped with LLaVA-1.5 (llava/eval/eval_pope.py, MME's eval_tool
  calculation.py after LLaVA's answer conversion, eval_science_qa.py, eval_textvqa.py with the
  m4c evaluator);
- ``"lmms-eval"``: the `process_results`/aggregation functions of lmms-eval's tasks.

docs/eval-conventions.md lists every place where the two differ.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCORING_CONVENTIONS = ("llava", "lmms-eval")

# LLaVA-1.5's short-answer instruction (POPE, MME, TextVQA); lmms-eval's default post_prompt is the same.
SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."


def check_scoring(scoring: str) -> str:
    if scoring not in SCORING_CONVENTIONS:
        raise ValueError(f"unknown scoring convention {scoring!r}; known: {', '.join(SCORING_CONVENTIONS)}")
    return scoring


@dataclass(frozen=True)
class EvalSample:
    sample_id: str  # unique within the task; also the question_id written to answer files
    image: Path | None  # absolute path of the image (None for text-only)
    prompt: str  # the user's text for the first human turn, WITHOUT the <image> placeholder
    target: Any  # ground truth, JSON-serialisable
    meta: dict  # anything scoring needs (subtask, category, ...), JSON-serialisable


@dataclass
class TaskScore:
    """A task's metrics and, where the task keeps any, its per-sample detail (WCGB: each scored
    page with its renders), for reports that show examples."""
    metrics: dict[str, float]
    per_sample: list = field(default_factory=list)


class Task(ABC):
    """A benchmark. Subclasses read their files in `load_samples` and score in `score`.

    `samples()` caches what `load_samples()` read and honours `select()`, so a runner can evaluate
    a subset (`task.select(ids)`) and `score` then expects exactly that subset.
    """

    name: str  # e.g. "pope_random", "mme", "scienceqa_img", "textvqa", "chair"
    max_new_tokens: int  # generation budget the official harness used for this benchmark

    _loaded: list[EvalSample] | None = None
    _selection: frozenset[str] | None = None

    @abstractmethod
    def load_samples(self) -> list[EvalSample]:
        """Every sample of the benchmark, in the official order, read from the files."""

    @abstractmethod
    def score(self, predictions: dict[str, str], scoring: str = "llava") -> dict[str, float]:
        """Metrics from raw generated text keyed by sample_id, under the named convention."""

    def score_samples(self, predictions: dict[str, str], scoring: str = "llava") -> TaskScore:
        """`score` plus per-sample detail; tasks that keep detail override this."""
        return TaskScore(self.score(predictions, scoring=scoring))

    def sample_scores(self, predictions: dict[str, str], scoring: str = "llava") -> dict[str, float]:
        """Each selected sample's score in [0, 1] (1: right) under the task's own answer rule, for
        bad-case analysis. Tasks whose metric is not a mean over samples (CHAIR, WCGB) have none."""
        raise ValueError(f"{self.name}: this task has no per-sample score, so it cannot be analysed per sample")

    def sample_capability(self, sample: EvalSample) -> str:
        """The capability a sample tests (a subtask, a question type); by default the task itself."""
        return self.name

    def samples(self) -> list[EvalSample]:
        if self._loaded is None:
            loaded = self.load_samples()
            seen: set[str] = set()
            for sample in loaded:
                if sample.sample_id in seen:
                    raise ValueError(f"{self.name}: sample id {sample.sample_id!r} occurs twice in the benchmark files")
                seen.add(sample.sample_id)
            self._loaded = loaded
        if self._selection is None:
            return list(self._loaded)
        return [sample for sample in self._loaded if sample.sample_id in self._selection]

    def select(self, sample_ids: Iterable[str]) -> Task:
        """A copy of this task restricted to `sample_ids` (for quick or sharded runs)."""
        wanted = frozenset(str(sample_id) for sample_id in sample_ids)
        known = {sample.sample_id for sample in self.samples()}
        unknown = sorted(wanted - known)
        if unknown:
            raise KeyError(f"{self.name}: unknown sample id(s) {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        restricted = copy.copy(self)
        restricted._selection = wanted
        return restricted

    def answer_sample_id(self, question_id: str, prompt: str | None) -> str:
        """The sample an answers-file line belongs to (rescoring of LLaVA-style answer files).

        By default the line's question_id is the sample id; tasks whose official answer files key
        answers differently (MME by image, TextVQA by image id + question) override this.
        Raises KeyError when the line matches no sample.
        """
        known = self._sample_index()
        if question_id not in known:
            raise KeyError(f"question_id {question_id!r} is not a sample of {self.name}")
        return question_id

    def paired(self, predictions: dict[str, str], allow_missing: bool = False) -> list[tuple[EvalSample, str | None]]:
        """(sample, generated text or None) for every selected sample, in benchmark order.

        An id that is not a sample is always an error (it usually means the answers belong to a
        different split). A sample without a prediction is an error unless the official script
        scores it as wrong (`allow_missing`), because a silently smaller denominator changes the
        number a user compares with a model card.
        """
        samples = self.samples()
        ids = {sample.sample_id for sample in samples}
        unknown = sorted(set(predictions) - ids)
        if unknown:
            raise ValueError(
                f"{self.name}: {len(unknown)} prediction(s) for ids that are not (selected) samples, "
                f"e.g. {unknown[:5]}"
            )
        missing = [sample.sample_id for sample in samples if sample.sample_id not in predictions]
        if missing and not allow_missing:
            raise ValueError(
                f"{self.name}: {len(missing)} of {len(samples)} samples have no prediction, e.g. {missing[:5]}; "
                f"score a subset with task.select(ids)"
            )
        return [(sample, predictions.get(sample.sample_id)) for sample in samples]

    def _sample_index(self) -> dict[str, EvalSample]:
        return {sample.sample_id: sample for sample in self.samples()}


def safe_ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, 0.0 when nothing was counted (the official scripts divide by zero there)."""
    return float(numerator) / float(denominator) if denominator else 0.0
