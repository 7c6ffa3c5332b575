"""`crystalvlm data balance`: a concept-balanced subset, LCS-558K's recipe as a general tool.

LLaVA built LCS-558K (and CC3M-595K before it) by counting the noun phrases of every caption over
the whole set, then keeping every caption of a rare phrase and only a capped random subset of the
captions of a frequent one. Here, in two streaming passes:

1. count: the concepts (noun phrases) of each record, counted over the file (memory grows with the
   number of distinct concepts, not of records); saved to OUT.concepts.json;
2. select: a record is kept when some concept c it names selects it: u(record) < cap / count(c),
   where u is a uniform number in [0, 1) hashed from the seed and the record's line number. A concept seen
   at most `cap` times keeps all its records; a frequent one keeps about `cap` of them (a random
   subset, as LLaVA took), plus those that another, rarer concept of theirs keeps. Deterministic
   (hashed, not drawn), so several workers and a resumed run select the same subset. Concepts seen fewer than `min_count`
   times are ignored (LLaVA skipped those under 3 as rare attribute combinations); a record with no
   counted concept is removed ("no concept").

The noun-phrase extractor is a light rule-based chunker (`noun_phrases`): spaCy's noun chunks need a
trained English pipeline, which is not installed and must not be downloaded at run time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from crystalvlm.data.curation.stream import KEEP, StreamStep, Verdict, run_stream

# Words that end a noun phrase: articles, pronouns, prepositions, conjunctions, auxiliaries and
# common verbs of captions. What lies between them (and punctuation) is a candidate phrase.
BREAK_WORDS = frozenset("""
a an the this that these those there here it its it's they them their he she his her him we our you your i my me
and or but nor so yet of in on at by for with without from to into onto over under above below behind beside
between near next up down out off through across along around against about as than then while when where which
who whom whose what why how is are was were be been being am do does did has have had having can could will would
shall should may might must not no yes very too also just only some any each every all both either neither
other another such more most less least few many much several one two three four five six seven eight nine ten
left right top bottom front back side middle center centre image picture photo photograph shown showing shows
sits sitting stands standing holds holding looks looking lying lays laying walks walking rides riding wearing
wears using uses has made make makes get gets got let lets
""".split())
TOKEN = re.compile(r"[A-Za-z][A-Za-z'-]*|\d+|[^\sA-Za-z\d]")
MAX_PHRASE_WORDS = 4


def noun_phrases(text: str) -> list[str]:
    """Candidate noun phrases, lower-cased, in order: maximal runs of content words between break
    words, numbers and punctuation, at most MAX_PHRASE_WORDS long (the last words, where English
    puts the head noun). 'A black arrow, a red circle and the word "SUN" on a gray background'
    -> ['black arrow', 'red circle', 'word', 'sun', 'gray background']."""
    phrases, current = [], []
    for token in TOKEN.findall(text.lower()):
        word = token.strip("'-")
        if word and word[0].isalpha() and word not in BREAK_WORDS and not _verb_like(word):
            current.append(word)
            continue
        if current:
            phrases.append(" ".join(current[-MAX_PHRASE_WORDS:]))
            current = []
    if current:
        phrases.append(" ".join(current[-MAX_PHRASE_WORDS:]))
    return phrases


def _verb_like(word: str) -> bool:
    """Progressive verbs ('riding') end a phrase; short -ing nouns ('ring', 'king', 'thing') do not."""
    return len(word) > 5 and word.endswith("ing")


def record_concepts(record: dict, text_key: str, heads: bool = False) -> list[str]:
    """The distinct concepts of a record, in order of first mention: its noun phrases, or with
    heads=True their last words ('red circle' and 'blue circle' are both 'circle')."""
    phrases = noun_phrases(record[text_key])
    return list(dict.fromkeys(phrase.rsplit(" ", 1)[-1] for phrase in phrases) if heads else dict.fromkeys(phrases))


@dataclass(frozen=True)
class BalanceSettings:
    text_key: str = "text"
    cap: int = 100  # about this many records kept per frequent concept
    min_count: int = 1
    seed: int = 0
    heads: bool = False  # count head nouns ('circle') instead of whole phrases ('red circle')

    def __post_init__(self):
        if self.cap < 1 or self.min_count < 1:
            raise ValueError(f"--cap and --min-count must be at least 1, got {self.cap} and {self.min_count}")


class ConceptCountStep(StreamStep):
    """Pass 1: count concepts (writes nothing; the counts are its journalled state)."""

    name = "balance-count"

    def __init__(self, settings: BalanceSettings):
        self.settings_ = settings
        self.counts: Counter = Counter()
        self.records = 0
        self._new: Counter = Counter()

    def prepare(self, records: list[dict]) -> list[list[str]]:
        return [record_concepts(record, self.settings_.text_key, self.settings_.heads) for record in records]

    def decide(self, lines, records, prepared) -> list[Verdict]:
        for concepts in prepared:
            self._new.update(concepts)
        self.records += len(records)
        return [KEEP] * len(records)

    def take_journal(self) -> list:
        self.counts.update(self._new)
        entries = [{"records": self.records, "new": dict(self._new)}] if self._new or self.records else []
        self._new = Counter()
        return entries

    def restore(self, entries) -> None:
        for entry in entries:
            self.counts.update(entry["new"])
            self.records = entry["records"]

    def settings(self) -> dict:
        return {"balance": {"text_key": self.settings_.text_key, "heads": self.settings_.heads}}


class BalanceSelectStep(StreamStep):
    """Pass 2: keep a record when one of its counted concepts selects it (see the module docstring)."""

    name = "balance"

    def __init__(self, settings: BalanceSettings, all_counts: dict[str, int]):
        self.settings_ = settings
        self.all_counts = all_counts  # every concept of the input: coverage before
        self.counts = {c: n for c, n in all_counts.items() if n >= settings.min_count}  # the ones that select
        self.kept_counts: Counter = Counter()
        self._new: Counter = Counter()

    def uniform(self, line: int) -> float:
        """A uniform number in [0, 1) from the seed and the line number: records with equal text still
        get independent draws."""
        digest = hashlib.blake2b(f"{self.settings_.seed}:{line}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2 ** 64

    def prepare(self, records: list[dict]) -> list[list[str]]:
        return [[c for c in record_concepts(record, self.settings_.text_key, self.settings_.heads) if c in self.counts]
                for record in records]

    def decide(self, lines, records, prepared) -> list[Verdict]:
        verdicts = []
        for line, concepts in zip(lines, prepared):
            if not concepts:
                verdicts.append(Verdict("no concept"))
                continue
            u = self.uniform(line)
            if any(u < self.settings_.cap / self.counts[c] for c in concepts):
                self._new.update(concepts)
                verdicts.append(KEEP)
            else:
                rarest = min(concepts, key=lambda c: self.counts[c])
                verdicts.append(Verdict("frequent concepts capped", {"rarest_concept": rarest,
                                                                     "count": self.counts[rarest]}))
        return verdicts

    def take_journal(self) -> list:
        self.kept_counts.update(self._new)
        entries = [dict(self._new)] if self._new else []
        self._new = Counter()
        return entries

    def restore(self, entries) -> None:
        for entry in entries:
            self.kept_counts.update(entry)

    def settings(self) -> dict:
        return {"balance": asdict(self.settings_), "concepts": len(self.counts)}

    def summary(self) -> dict:
        return {"coverage": {"before": coverage(self.all_counts), "after": coverage(self.kept_counts)},
                "cap": self.settings_.cap, "min_count": self.settings_.min_count}


def coverage(counts: dict[str, int]) -> dict:
    """How evenly a set of records covers its concepts: how many distinct concepts, how many
    mentions, the share of mentions taken by the 1% most frequent concepts, and the normalised
    entropy of the concept distribution (1.0: every concept equally often)."""
    values = sorted((v for v in counts.values() if v > 0), reverse=True)
    total = sum(values)
    if not values:
        return {"concepts": 0, "mentions": 0, "top1pct_share": None, "normalised_entropy": None,
                "concepts_seen_once": 0, "median_count": None}
    top = max(1, len(values) // 100)
    entropy = -sum(v / total * math.log(v / total) for v in values)
    return {"concepts": len(values), "mentions": total, "top1pct_share": round(sum(values[:top]) / total, 4),
            "normalised_entropy": round(entropy / math.log(len(values)), 4) if len(values) > 1 else 1.0,
            "concepts_seen_once": sum(1 for v in values if v == 1), "median_count": values[len(values) // 2]}


def balance_file(in_path: Path, out_path: Path, settings: BalanceSettings, *, workers: int = 1,
                 batch_size: int = 256, progress: bool = True) -> dict:
    """Both passes; a rerun after a kill continues the pass that was cut."""
    in_path, out_path = Path(in_path), Path(out_path)
    counts_path = out_path.with_name(out_path.name + ".concepts.json")
    stat = in_path.stat()
    identity = {"input": str(in_path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "text_key": settings.text_key, "heads": settings.heads}
    counted = json.loads(counts_path.read_text(encoding="utf-8")) if counts_path.exists() else None
    if counted is None or counted.get("identity") != identity:
        step = ConceptCountStep(settings)
        count_summary = run_stream(in_path, counts_path.with_suffix(""), step, text_key=settings.text_key,
                                   workers=workers, batch_size=batch_size, progress=progress, write_outputs=False)
        counted = {"identity": identity, "records": step.records, "counts": dict(step.counts.most_common()),
                   "seconds": count_summary["seconds"]}
        tmp = counts_path.with_name(counts_path.name + ".tmp")
        tmp.write_text(json.dumps(counted), encoding="utf-8")
        os.replace(tmp, counts_path)
    summary = run_stream(in_path, out_path, BalanceSelectStep(settings, counted["counts"]), text_key=settings.text_key,
                         workers=workers, batch_size=batch_size, progress=progress)
    summary["concept_counts"] = str(counts_path)
    summary["count_pass_seconds"] = counted["seconds"]
    return summary
