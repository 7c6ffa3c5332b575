"""`crystalvlm data clean`: quality and language filters, PII, exact and near-duplicate removal.

One pass over the input through `stream.run_stream`, in this order (the first rule that fires gives
the record's `reason`):

1. bad lines (the runner): broken JSON, not UTF-8, not an object, missing or empty text;
2. `quality: <rule>`: datatrove's Gopher quality rules (word count, mean word length, symbol and
   bullet ratios, share of words with a letter, stop words) with thresholds set by `CleanSettings`;
   `repetition: <rule>`: datatrove's Gopher repetition rules (opt-in: they target long web pages);
3. `language: <code>`: py3langid, whose model ships inside the package, when `languages` is given;
   when py3langid is not installed the filter is skipped and the summary says so (nothing downloads);
4. `pii: <kinds>` (only with pii="remove"): e-mail addresses, public IP addresses, phone numbers;
5. `exact duplicate`: the same text after normalisation;
6. `near duplicate`: MinHash (datasketch) over word n-grams of the normalised text, LSH banding;
   records chain into groups, and of a group the first record in input order is kept.

Normalisation (NFKC, case folding, whitespace collapsed) builds the matching keys only: kept
records are written byte for byte as they came. PII is reported by default (counts in the summary);
pii="remove" removes records that hold any, and pii="scrub" is the one opt-in exception to
"kept records unchanged": the text field of a kept record is rewritten with placeholders.

Steps 1-4 and the MinHash signatures are per-record work (`prepare`, parallel across workers);
5-6 keep an index of what was seen (`decide`, in input order), in SQLite beside the outputs
(`key_index.KeyIndex`: OUT.index.sqlite, deleted when the run completes), so memory stays flat.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crystalvlm.data.curation.key_index import KeyIndex
from crystalvlm.data.curation.stream import KEEP, StreamStep, Verdict

WORD = re.compile(r"\w+(?:['’]\w+)*")

FILTERS = ("gopher-quality", "gopher-repetition")
PII_MODES = ("report", "remove", "scrub")
# An e-mail address, a dotted IPv4 address (kept only when public), a phone number written the way
# people write them (+country code, groups of digits, separators); datatrove's PIIFormatter has the
# first two and no phone pattern, so all three are written here with one scheme of placeholders.
EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b")
IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
PHONE = re.compile(r"(?<![\w.+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,3}(?!\w|[.-]\d)")
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _is_phone(match: str) -> bool:
    """Seven digits or more, and not a date like 2024-05-06."""
    return sum(c.isdigit() for c in match) >= 7 and not ISO_DATE.fullmatch(match.strip())
PII_PLACEHOLDERS = {"email": "<EMAIL>", "ip": "<IP>", "phone": "<PHONE>"}


@dataclass(frozen=True)
class CleanSettings:
    """Everything that decides what `clean` removes (a resumed run must use the same)."""

    text_key: str = "text"
    filters: tuple[str, ...] = ("gopher-quality",)
    min_words: int = 3  # Gopher's 50 suits web pages; captions and chat lines are shorter
    max_words: int = 100_000
    min_stop_words: int = 0  # Gopher asks for 2 English stop words; short captions often have none
    min_mean_word_length: float = 3.0  # Gopher's; captions of short words ("a red cat") fall below it
    languages: tuple[str, ...] = ()  # e.g. ("en",); empty: no language filter
    pii: str = "report"
    exact: bool = True
    near: bool = True
    near_threshold: float = 0.8  # estimated Jaccard similarity of word n-gram sets
    shingle: int = 3  # words per n-gram
    num_perm: int = 128
    seed: int = 1

    def __post_init__(self):
        unknown = sorted(set(self.filters) - set(FILTERS))
        if unknown:
            raise ValueError(f"unknown filter(s) {', '.join(unknown)}; known: {', '.join(FILTERS)}")
        if self.pii not in PII_MODES:
            raise ValueError(f"--pii {self.pii}: choose one of {', '.join(PII_MODES)}")
        if not 0.0 < self.near_threshold < 1.0:
            raise ValueError(f"--near-threshold must be between 0 and 1, got {self.near_threshold}")
        if self.shingle < 1 or self.num_perm < 16 or self.min_words < 0:
            raise ValueError("--shingle must be at least 1, --num-perm at least 16, --min-words at least 0")


def normalise(text: str) -> str:
    """The matching form of a text: NFKC (full-width and ligature forms folded), case folded,
    whitespace runs collapsed to one space. Used for keys only, never written."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def find_pii(text: str) -> dict[str, int]:
    """{"email": n, "ip": n, "phone": n} for the kinds found (private and reserved IPs are not PII)."""
    found = {}
    emails = len(EMAIL.findall(text))
    ips = sum(1 for match in IPV4.findall(text) if _public_ip(match))
    phones = sum(1 for m in PHONE.findall(EMAIL.sub(" ", IPV4.sub(" ", text))) if _is_phone(m))
    for kind, count in (("email", emails), ("ip", ips), ("phone", phones)):
        if count:
            found[kind] = count
    return found


def scrub_pii(text: str) -> str:
    """The text with each e-mail address, public IP and phone number replaced by a placeholder."""
    text = EMAIL.sub(PII_PLACEHOLDERS["email"], text)
    text = IPV4.sub(lambda m: PII_PLACEHOLDERS["ip"] if _public_ip(m.group(0)) else m.group(0), text)
    return PHONE.sub(lambda m: PII_PLACEHOLDERS["phone"] if _is_phone(m.group(0)) else m.group(0), text)


def _public_ip(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).is_global
    except ValueError:
        return False


# ----------------------------------------------------------------------------- filters
def _word_tokenizer():
    """datatrove's English word tokenizer needs spaCy; a regex word split gives the Gopher rules
    the same counts on English text without it (punctuation is not a word)."""
    from datatrove.utils.word_tokenizers import WordTokenizer

    class RegexWordTokenizer(WordTokenizer):
        def word_tokenize(self, text: str) -> list[str]:
            return WORD.findall(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return [part for part in re.split(r"(?<=[.!?])\s+", text) if part]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [match.span() for match in re.finditer(r"[^.!?]+[.!?]*", text)]

    return RegexWordTokenizer("en")


def _language_identifier():
    """py3langid's classify (its model is a file inside the package), or None when not installed."""
    try:
        import py3langid
    except ImportError:
        return None
    return py3langid.classify


@dataclass
class RecordFeatures:
    """What `prepare` learns of one record (small: it travels back from a worker)."""

    reason: str | None = None
    detail: dict | None = None
    pii: dict | None = None
    exact_key: int | None = None
    band_keys: list[int] | None = None
    scrubbed: str | None = None


@dataclass
class _Counters:
    pii_records: int = 0
    pii_found: dict = field(default_factory=dict)


class CleanStep(StreamStep):
    """The `data clean` map (see the module docstring)."""

    name = "clean"

    def __init__(self, settings: CleanSettings):
        self.settings_ = settings
        self.notes: list[str] = []
        self._filters = None  # built lazily in each process (datatrove objects, the language model)
        self._language = None
        self._minhash = None
        self.bands, self.rows = _lsh_shape(settings.near_threshold, settings.num_perm)
        self.index: KeyIndex | None = None  # opened by `open` beside the outputs
        self.index_entries = 0
        self.last_line = 0
        self.counters = _Counters()
        if settings.languages and _language_identifier() is None:
            self.notes.append("language filter skipped: py3langid is not installed (pip install py3langid; "
                              "its model ships with the package, nothing is downloaded)")

    def __getstate__(self):  # workers rebuild the filters themselves
        state = dict(self.__dict__)
        state.update(_filters=None, _language=None, _minhash=None, index=None)
        return state

    # ---------------------------------------------------------------- per record (parallel)
    def _build_filters(self):
        if self._filters is None:
            from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter

            s = self.settings_
            tokenizer = _word_tokenizer()
            built = []
            if "gopher-quality" in s.filters:
                built.append(("quality", GopherQualityFilter(
                    min_doc_words=s.min_words or None, max_doc_words=s.max_words, min_stop_words=s.min_stop_words or None,
                    min_avg_word_length=s.min_mean_word_length or None, language=tokenizer)))
            if "gopher-repetition" in s.filters:
                built.append(("repetition", GopherRepetitionFilter(language=tokenizer)))
            self._filters = built
            self._language = _language_identifier() if s.languages else None
        return self._filters

    def features(self, text: str) -> RecordFeatures:
        from datatrove.data import Document

        s = self.settings_
        for kind, rule in self._build_filters():
            verdict = rule.filter(Document(text=text, id=""))
            if verdict is not True:
                name = verdict[1] if isinstance(verdict, tuple) else "rejected"
                return RecordFeatures(reason=f"{kind}: {name.removeprefix('gopher_')}")
        if self._language is not None:
            language, score = self._language(text)
            if language not in s.languages:
                return RecordFeatures(reason=f"language: {language}", detail={"language_score": round(float(score), 2)})
        pii = find_pii(text)
        if pii and s.pii == "remove":
            return RecordFeatures(reason=f"pii: {'+'.join(sorted(pii))}", pii=pii)
        matching = normalise(text)
        return RecordFeatures(
            pii=pii or None,
            exact_key=_hash64(matching.encode("utf-8")) if s.exact else None,
            band_keys=self._band_keys(matching) if s.near else None,
            scrubbed=scrub_pii(text) if pii and s.pii == "scrub" else None,
        )

    def _band_keys(self, matching: str) -> list[int]:
        from datasketch import MinHash

        words = WORD.findall(matching)
        n = self.settings_.shingle
        shingles = {" ".join(words[i:i + n]).encode("utf-8") for i in range(max(1, len(words) - n + 1))}
        if self._minhash is None:  # its permutations cost more than hashing a caption: made once
            self._minhash = MinHash(num_perm=self.settings_.num_perm, seed=self.settings_.seed)
        signature = self._minhash.copy()  # an empty signature sharing the permutations
        signature.update_batch(list(shingles))
        values = signature.hashvalues  # (num_perm,) uint64
        # one key per band: the band's index and its `rows` values hashed to 64 bits
        return [_hash64(bytes([band]) + values[band * self.rows:(band + 1) * self.rows].tobytes())
                for band in range(self.bands)]

    def prepare(self, records: list[dict]) -> list[RecordFeatures]:
        return [self.features(record[self.settings_.text_key]) for record in records]

    def encode_prepared(self, item: RecordFeatures) -> dict:
        return {key: value for key, value in asdict(item).items() if value is not None}

    def decode_prepared(self, encoded: dict) -> RecordFeatures:
        return RecordFeatures(**encoded)

    # ---------------------------------------------------------------- in input order (stateful)
    def open(self, out_path: Path, resuming: bool) -> None:
        path = Path(out_path).with_name(Path(out_path).name + ".index.sqlite")
        if not resuming:
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        self.index = KeyIndex(path)

    def close(self, complete: bool) -> None:
        if self.index is not None:
            self.index_entries = self.index.size()
            self.index.close(delete=complete)
            self.index = None

    def decide(self, lines: list[int], records: list[dict], prepared: list[Any]) -> list[Verdict]:
        if self.index is None:  # used outside run_stream: an index in memory
            self.index = KeyIndex(None)
        verdicts = []
        for line, record, features in zip(lines, records, prepared):
            self.last_line = line
            if features.reason is not None:
                verdicts.append(Verdict(features.reason, features.detail))
                continue
            exact = [features.exact_key] if features.exact_key is not None else []
            first = self.index.first("exact", exact)
            if first is not None:
                verdicts.append(Verdict("exact duplicate", {"duplicate_of": first}))
                continue
            bands = features.band_keys or []
            match = self.index.first("band", bands)
            # a removed near duplicate still joins the index, so a chain a~b~c is one group whose first is kept
            self.index.add("exact", exact, line)
            self.index.add("band", bands, line)
            if match is not None:
                verdicts.append(Verdict("near duplicate", {"duplicate_of": match}))
                continue
            if features.pii:
                self.counters.pii_records += 1
                for kind, count in features.pii.items():
                    self.counters.pii_found[kind] = self.counters.pii_found.get(kind, 0) + count
            if features.scrubbed is not None:
                verdicts.append(Verdict(replacement={**record, self.settings_.text_key: features.scrubbed}))
            else:
                verdicts.append(KEEP)
        return verdicts

    def take_journal(self) -> list:
        """Called at each commit: the index commits, and the journal records up to which line it is
        valid and the PII counts so far."""
        if self.index is not None:
            self.index.commit()
        return [["upto", self.last_line, asdict(self.counters)]]

    def restore(self, entries) -> None:
        upto = 0
        for _, upto, counters in entries:
            self.counters = _Counters(**counters)
        self.last_line = upto
        self.index.rollback_after(upto)  # what a killed run indexed after its last commit

    def settings(self) -> dict:
        return {"clean": asdict(self.settings_)}

    def summary(self) -> dict:
        s = self.settings_
        return {
            "filters": list(s.filters) + (["language"] if s.languages and _language_identifier() else []),
            "near_duplicate_lsh": {"threshold": s.near_threshold, "num_perm": s.num_perm, "bands": self.bands,
                                   "rows": self.rows, "shingle_words": s.shingle} if s.near else None,
            "pii": {"mode": s.pii, "kept_records_with_pii": self.counters.pii_records,
                    "found_in_kept_records": self.counters.pii_found},
            "index_entries": self.index_entries if self.index is None else self.index.size(),
            "notes": self.notes,
        }


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _lsh_shape(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) that datasketch's MinHashLSH picks for this threshold (balancing false
    positives and false negatives)."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r
