"""A training dataset: records checked once up front, then encoded lazily.

`prepare_dataset` reads every file of a mixture, checks every record (structure, placeholders,
every image verified from its header and file structure, the encoded length against `max_length`)
and returns the good records plus a report of the bad ones. Training never meets a bad record later,
and no good record is dropped: a record is either used or listed with its reason. How a record is
checked and encoded is the `SampleEncoder`'s (data/sample_encoder.py); this module walks the files,
spreads the check over worker processes, and keeps its results in a cache keyed by content
(data/check_cache.py), so a second run on the same data skips it.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
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
                    workers: int = 1, cache: CheckCache | None = None) -> PreparedData:
    """Every record of every source checked by `encoder.check_record`: good ones kept with their length,
    bad ones listed with their reason. `workers` > 1 spreads the check over that many processes (for
    sources of PARALLEL_MIN_RECORDS or more); with a `cache`, a source checked before with the same
    content, images and encoder is not checked again."""
    encoder.check_tokenizer()
    prepared = PreparedData()
    fingerprint = encoder_fingerprint(encoder) if cache is not None else ""
    for source in sources:
        loaded = load_records(source.file)
        prepared.problems += loaded.problems
        outcomes = None
        if cache is not None:
            key = cache.key(source.file, fingerprint)
            stamp = images_stamp(loaded.records, source.image_folder)
            outcomes = cache.load(key, stamp, len(loaded.records))
            if outcomes is not None:
                prepared.cached.append(source.file)
                if progress:
                    print(f"checking {source.file.name}: {len(outcomes)} record(s) already checked (cached)")
        if outcomes is None:
            outcomes = _check_records(loaded.records, source, encoder, workers, progress)
            if cache is not None:
                cache.store(key, stamp, outcomes)
        for record, outcome in zip(loaded.records, outcomes):
            if isinstance(outcome, str):
                prepared.problems.append(RecordProblem(record.source, record.record_id, outcome))
            else:
                prepared.items.append(EncodedRecord(record, source.image_folder, outcome))
    return prepared


def _check_records(records: list[ConversationRecord], source: DataSource, encoder: SampleEncoder, workers: int,
                   progress: bool) -> list[int | str]:
    """Each record's encoded length, or the reason it is bad, in record order."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(records), desc=f"checking {source.file.name}", disable=not progress, leave=False)
    chunks = [records[start:start + CHUNK] for start in range(0, len(records), CHUNK)]
    outcomes: list[int | str] = []
    if workers > 1 and len(records) >= PARALLEL_MIN_RECORDS:
        # fork: the workers inherit the encoder (its tokenizer) instead of unpickling one each.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        with context.Pool(min(workers, len(chunks)), initializer=_init_worker,
                          initargs=(encoder, source.image_folder)) as pool:
            for chunk_outcomes in pool.imap(_check_chunk_in_worker, chunks):
                outcomes += chunk_outcomes
                bar.update(len(chunk_outcomes))
    else:
        for chunk in chunks:
            outcomes += _check_chunk(chunk, encoder, source.image_folder)
            bar.update(len(chunk))
    bar.close()
    return outcomes


def _check_chunk(records: list[ConversationRecord], encoder: SampleEncoder, image_folder: Path | None) -> list[int | str]:
    outcomes: list[int | str] = []
    for record in records:
        checked = encoder.check_record(record, image_folder)
        outcomes.append(checked.reason if isinstance(checked, RecordProblem) else checked)
    return outcomes


_WORKER: dict = {}


def _init_worker(encoder: SampleEncoder, image_folder: Path | None) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process
    _WORKER.update(encoder=encoder, image_folder=image_folder)


def _check_chunk_in_worker(records: list[ConversationRecord]) -> list[int | str]:
    return _check_chunk(records, _WORKER["encoder"], _WORKER["image_folder"])


class ConversationDataset(torch.utils.data.Dataset):
    """Encodes a prepared record on access: input_ids, labels and pixel_values (N_images, 3, S, S) or None."""

    def __init__(self, prepared: PreparedData, encoder: SampleEncoder):
        self.items = prepared.items
        self.encoder = encoder

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
        return self.encoder.sample(item.record, item.image_folder)
