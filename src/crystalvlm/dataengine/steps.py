"""The parrot and caption maps as steps of the streaming runner (`data.curation.stream.run_stream`):
constant memory, resumable after a kill, a progress bar, bad lines reported per record, and
`prepare` in worker processes when `workers > 1`.

Models (a text reader, the captioner's engine) are loaded lazily, once per process, from what the
step was given (a reader spec, a checkpoint path): a step pickles as its settings, so worker
processes and distributed executors build their own copy.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from crystalvlm.data.curation.stream import KEEP, StreamStep, Verdict
from crystalvlm.dataengine.captioner import CaptionSettings, caption_batch
from crystalvlm.dataengine.parrot import ParrotSettings, TextReader, load_reader, parrot_batch

# Summary histogram of the co-emb text rate: exactly 0, then quarter-wide bins.
RATE_BINS = ((0.25, "(0, 0.25)"), (0.5, "[0.25, 0.5)"), (0.75, "[0.5, 0.75)"))


def _rate_bin(rate: float) -> str:
    if rate == 0:
        return "0"
    for high, label in RATE_BINS:
        if rate < high:
            return label
    return "[0.75, 1]"


class _CountingStep(StreamStep):
    """Tallies figures in `decide` (the main process), journals them per commit, restores them on resume."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._unjournaled: Counter[str] = Counter()

    def _count(self, key: str, amount: float = 1) -> None:
        self.counts[key] += amount
        self._unjournaled[key] += amount

    def take_journal(self) -> list:
        entries = [dict(self._unjournaled)] if self._unjournaled else []
        self._unjournaled = Counter()
        return entries

    def restore(self, entries: Iterable) -> None:
        for entry in entries:
            self.counts.update(entry)


class ParrotStep(_CountingStep):
    name = "parrot"

    def __init__(self, settings: ParrotSettings, reader: str | TextReader | None = None,
                 reader_model: str | None = None) -> None:
        super().__init__()
        if reader is None and settings.spotted_key is None:
            raise ValueError("data parrot needs --reader or --spotted-key (where the image's visible text comes from)")
        self.parrot_settings = settings
        self.reader_spec = reader if isinstance(reader, str) else None
        self.reader_model = reader_model
        self._loaded_reader = reader if reader is not None and not isinstance(reader, str) else None
        if self.reader_spec is not None:
            self._loaded_reader = load_reader(self.reader_spec, reader_model)  # fail now, not in a worker

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.reader_spec is not None:
            state["_loaded_reader"] = None  # rebuilt from its spec in the process that unpickles the step
        return state

    def reader(self) -> TextReader | None:
        if self._loaded_reader is None and self.reader_spec is not None:
            self._loaded_reader = load_reader(self.reader_spec, self.reader_model)
        return self._loaded_reader

    def prepare(self, records: list[dict]) -> list[Any]:
        prepared = []
        for record, outcome in zip(records, parrot_batch(records, self.parrot_settings, self.reader())):
            if outcome.reason is not None:
                verdict = Verdict(outcome.reason, outcome.detail)
            elif outcome.record != record:  # annotated or rewritten; else the input line is kept byte for byte
                verdict = Verdict(replacement=outcome.record)
            else:
                verdict = KEEP
            prepared.append((verdict, outcome.rate, outcome.parrot, outcome.rewritten))
        return prepared

    def decide(self, lines: list[int], records: list[dict], prepared: list[Any]) -> list[Verdict]:
        for verdict, rate, parrot, rewritten in prepared:
            if rate is None:
                continue
            self._count("scored")
            self._count("rate_sum", rate)
            self._count(f"rate {_rate_bin(rate)}")
            self._count("parrot", int(parrot))
            self._count("rewritten", int(rewritten))
        return [verdict for verdict, *_ in prepared]

    def settings(self) -> dict:
        s = self.parrot_settings
        return {"threshold": s.threshold, "mode": s.mode, "caption_key": s.caption_key, "image_key": s.image_key,
                "spotted_key": s.spotted_key, "annotate_key": s.annotate_key,
                "reader": self.reader_spec or (type(self._loaded_reader).__name__ if self._loaded_reader else None),
                "reader_model": self.reader_model}

    def summary(self) -> dict:
        scored = int(self.counts["scored"])
        histogram = {key[5:]: int(value) for key, value in sorted(self.counts.items()) if key.startswith("rate ")}
        return {"parrot": {
            "scored": scored,
            "parrot_captions": int(self.counts["parrot"]),
            "parrot_share": round(self.counts["parrot"] / scored, 4) if scored else None,
            "rewritten": int(self.counts["rewritten"]),
            "mean_co_emb_text_rate": round(self.counts["rate_sum"] / scored, 4) if scored else None,
            "co_emb_text_rate_histogram": histogram,
            "threshold": self.parrot_settings.threshold,
            "mode": self.parrot_settings.mode,
        }}


class CaptionStep(_CountingStep):
    name = "caption"

    def __init__(self, checkpoint: Path, settings: CaptionSettings, batch_size: int = 32, engine=None) -> None:
        super().__init__()
        self.checkpoint = Path(checkpoint)
        self.caption_settings = settings
        self.engine_batch_size = batch_size
        self._loaded_engine = engine

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_loaded_engine": None}  # rebuilt from the checkpoint in each process

    def engine(self):
        if self._loaded_engine is None:
            from crystalvlm.infer.engine import GenerationEngine

            self._loaded_engine = GenerationEngine.from_checkpoint(self.checkpoint, batch_size=self.engine_batch_size)
        return self._loaded_engine

    def prepare(self, records: list[dict]) -> list[Any]:
        prepared = []
        for result in caption_batch(records, self.engine(), self.caption_settings):
            if result.reason is not None:
                prepared.append((Verdict(result.reason, result.detail), None, False))
            else:
                caption = result.record[self.caption_settings.caption_key]
                prepared.append((Verdict(replacement=result.record), len(caption.split()), result.truncated))
        return prepared

    def decide(self, lines: list[int], records: list[dict], prepared: list[Any]) -> list[Verdict]:
        for _, words, truncated in prepared:
            if words is not None:
                self._count("captioned")
                self._count("words", words)
                self._count("truncated", int(truncated))
        return [verdict for verdict, *_ in prepared]

    def settings(self) -> dict:
        s = self.caption_settings
        return {"checkpoint": str(self.checkpoint.resolve()), "prompt": s.prompt, "max_new_tokens": s.max_new_tokens,
                "caption_key": s.caption_key, "image_key": s.image_key, "decoding": s.decoding}

    def summary(self) -> dict:
        captioned = int(self.counts["captioned"])
        return {"caption": {
            "captioned": captioned,
            "mean_words": round(self.counts["words"] / captioned, 2) if captioned else None,
            "truncated_at_max_new_tokens": int(self.counts["truncated"]),
            "checkpoint": str(self.checkpoint),
            "max_new_tokens": self.caption_settings.max_new_tokens,
        }}
