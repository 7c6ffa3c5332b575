"""A training dataset: records checked once up front, then encoded lazily.

`prepare_dataset` reads every file of a mixture, checks every record completely (structure,
placeholders, every image opened and decoded, the encoded length against `max_length`) and returns
the good records plus a report of the bad ones. Training never meets a bad record later, and no
good record is dropped: a record is either used or listed with its reason. How a record is checked
and encoded is the `SampleEncoder`'s (data/sample_encoder.py); this module walks the files.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

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


def prepare_dataset(sources: list[DataSource], encoder: SampleEncoder, progress: bool = False) -> PreparedData:
    """Every record of every source checked by `encoder.check_record`: good ones kept with their length,
    bad ones listed with their reason."""
    from tqdm.auto import tqdm

    encoder.check_tokenizer()
    prepared = PreparedData()
    for source in sources:
        loaded = load_records(source.file)
        prepared.problems += loaded.problems
        for record in tqdm(loaded.records, desc=f"checking {source.file.name}", disable=not progress, leave=False):
            checked = encoder.check_record(record, source.image_folder)
            if isinstance(checked, RecordProblem):
                prepared.problems.append(checked)
            else:
                prepared.items.append(EncodedRecord(record, source.image_folder, checked))
    return prepared


class ConversationDataset(torch.utils.data.Dataset):
    """Encodes a prepared record on access: input_ids, labels and pixel_values (1, 3, S, S) or None."""

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
