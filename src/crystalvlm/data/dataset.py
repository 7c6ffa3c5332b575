"""A training dataset: records checked once up front, then encoded lazily.

`prepare_dataset` reads every file of a mixture, checks every record (structure, placeholders,
every image verified from its header and file structure, the encoded length against `max_length`)
and returns the good records plus a report of the bad ones. Training never meets a bad record later,
and no good record is dropped: a record is either used or listed with its reason. How a record is
checked and encoded is the `SampleEncoder`'s (data/sample_encoder.py); this module walks the files,
spreads the check over worker processes, and keeps its results in a cache keyed by content
(data/check_cache.py), so a second run on the same data skips it.

With `keep_encodings` the token ids and labels of each record are kept in memory, as compact int
arrays (~8 bytes per token), from the check (when it ran rather than came from the cache) or from the
record's first sample: later epochs then only read the images. A template encodes every turn's prefix
separately, so tokenising a many-turn conversation costs milliseconds, and on a small model that is
a real share of a step spent on the main process between steps.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import torch

from crystalvlm.data.check_cache import CheckCache, encoder_fingerprint, images_stamp
from crystalvlm.data.records import ConversationRecord, RecordProblem, load_records
from crystalvlm.data.sample_encoder import SampleEncoder


@dataclass(frozen=True)
class DataSource:
    file: Path
    image_folder: Path | None


@dataclass
class EncodedRecord:
    record: ConversationRecord
    image_folder: Path | None
    length: int  # tokens after image expansion
    # (input_ids, labels) the check encoded, kept with `keep_encodings`; None: encoded when sampled
    encoding: tuple[array, array] | None = None


@dataclass
class PreparedData:
    items: list[EncodedRecord] = field(default_factory=list)
    problems: list[RecordProblem] = field(default_factory=list)
    cached: list[Path] = field(default_factory=list)  # sources whose check results came from the cache

    def length_stats(self) -> dict[str, float]:
        lengths = [item.length for item in self.items]
        if not lengths:
            return {"records": 0}
        ordered = sorted(lengths)
        return {
            "records": len(lengths),
            "with_image": sum(1 for item in self.items if item.record.has_image),
            "min": ordered[0],
            "mean": round(statistics.fmean(ordered), 1),
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "max": ordered[-1],
        }


PARALLEL_MIN_RECORDS = 1024  # below this, starting worker processes costs more than it saves
CHUNK = 256  # records per task sent to a worker


def default_check_workers(shared: bool = True) -> int:
    """Worker processes for the record check: the CPUs this process may use, shared among the
    processes of this machine (torchrun's LOCAL_WORLD_SIZE) unless `shared` is False (the others wait)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if shared else 1
    return max(1, cpus // max(1, sharing))


def prepare_dataset(sources: list[DataSource], encoder: SampleEncoder, progress: bool = False, *,
                    workers: int = 1, cache: CheckCache | None = None, keep_encodings: bool = False) -> PreparedData:
    """Every record of every source checked by `encoder.check_record`: good ones kept with their length,
    bad ones listed with their reason. `workers` > 1 spreads the check over that many processes (for
    sources of PARALLEL_MIN_RECORDS or more); with a `cache`, a source checked before with the same
    content, images and encoder is not checked again. `keep_encodings`: each good record checked here
    keeps the ids and labels the check encoded (`EncodedRecord.encoding`; None for cached sources)."""
    encoder.check_tokenizer()
    prepared = PreparedData()
    fingerprint = encoder_fingerprint(encoder) if cache is not None else ""
    for source in sources:
        loaded = load_records(source.file)
        prepared.problems += loaded.problems
        outcomes, encodings = None, None
        if cache is not None:
            key = cache.key(source.file, fingerprint)
            stamp = images_stamp(loaded.records, source.image_folder)
            outcomes = cache.load(key, stamp, len(loaded.records))
            if outcomes is not None:
                prepared.cached.append(source.file)
                if progress:
                    print(f"checking {source.file.name}: {len(outcomes)} record(s) already checked (cached)")
        if outcomes is None:
            checked = _check_records(loaded.records, source, encoder, workers, progress, keep_encodings)
            outcomes = [outcome for outcome, _ in checked]
            encodings = [encoding for _, encoding in checked] if keep_encodings else None
            if cache is not None:
                cache.store(key, stamp, outcomes)
        for index, (record, outcome) in enumerate(zip(loaded.records, outcomes)):
            if isinstance(outcome, str):
                prepared.problems.append(RecordProblem(record.source, record.record_id, outcome))
            else:
                prepared.items.append(EncodedRecord(record, source.image_folder, outcome,
                                                    encodings[index] if encodings is not None else None))
    return prepared


Checked = tuple[int | str, tuple[array, array] | None]  # (length or problem reason, kept encoding or None)


def _check_records(records: list[ConversationRecord], source: DataSource, encoder: SampleEncoder, workers: int,
                   progress: bool, keep_encodings: bool = False) -> list[Checked]:
    """Each record's encoded length or the reason it is bad, with its encoding if kept, in record order."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(records), desc=f"checking {source.file.name}", disable=not progress, leave=False)
    chunks = [records[start:start + CHUNK] for start in range(0, len(records), CHUNK)]
    outcomes: list[Checked] = []
    if workers > 1 and len(records) >= PARALLEL_MIN_RECORDS:
        # fork: the workers inherit the encoder (its tokenizer) instead of unpickling one each.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        with context.Pool(min(workers, len(chunks)), initializer=_init_worker,
                          initargs=(encoder, source.image_folder, keep_encodings)) as pool:
            for chunk_outcomes in pool.imap(_check_chunk_in_worker, chunks):
                outcomes += chunk_outcomes
                bar.update(len(chunk_outcomes))
    else:
        for chunk in chunks:
            outcomes += _check_chunk(chunk, encoder, source.image_folder, keep_encodings)
            bar.update(len(chunk))
    bar.close()
    return outcomes


def _check_chunk(records: list[ConversationRecord], encoder: SampleEncoder, image_folder: Path | None,
                 keep_encodings: bool = False) -> list[Checked]:
    outcomes: list[Checked] = []
    for record in records:
        if not keep_encodings:
            checked = encoder.check_record(record, image_folder)
            outcomes.append((checked.reason if isinstance(checked, RecordProblem) else checked, None))
            continue
        encoded = encoder.check_and_encode(record, image_folder)
        if isinstance(encoded, RecordProblem):
            outcomes.append((encoded.reason, None))
        else:
            outcomes.append((len(encoded[0]), _compact(*encoded)))
    return outcomes


def _compact(ids, labels) -> tuple[array, array]:
    """(input_ids, labels) as int arrays: ~8 bytes a token instead of two Python ints' references."""
    return array("i", ids), array("i", labels)


_WORKER: dict = {}


def _init_worker(encoder: SampleEncoder, image_folder: Path | None, keep_encodings: bool = False) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process
    _WORKER.update(encoder=encoder, image_folder=image_folder, keep_encodings=keep_encodings)


def _check_chunk_in_worker(records: list[ConversationRecord]) -> list[Checked]:
    return _check_chunk(records, _WORKER["encoder"], _WORKER["image_folder"], _WORKER["keep_encodings"])


class ConversationDataset(torch.utils.data.Dataset):
    """Encodes a prepared record on access: input_ids, labels and pixel_values (N_images, 3, S, S) or None.

    `keep_encodings`: a record's ids and labels are encoded once (by the check, or at its first access)
    and reused after; the samples are the same as without it. In DataLoader worker processes each
    worker keeps what it encoded."""

    def __init__(self, prepared: PreparedData, encoder: SampleEncoder, keep_encodings: bool = False):
        self.items = prepared.items
        self.encoder = encoder
        self.encodings: list[tuple[array, array] | None] | None = (
            [item.encoding for item in self.items] if keep_encodings else None)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> list[int]:
        return [item.length for item in self.items]

    @property
    def has_image(self) -> list[bool]:
        return [item.record.has_image for item in self.items]

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        if self.encodings is None:
            return self.encoder.sample(item.record, item.image_folder)
        kept = self.encodings[index]
        sample = self.encoder.sample(item.record, item.image_folder, encoding=kept)
        if kept is None:
            self.encodings[index] = _compact(sample["input_ids"], sample["labels"])
        return sample
