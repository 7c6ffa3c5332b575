"""`crystalvlm data show`: one record's tokens as the model sees them, with the trained ones marked.

The ids are the encoder's training ids (the whole conversation tokenised as one string, each
`<image>` expanded to the model's image-token run); labels are IGNORE_INDEX (-100) where not trained.
It is the first thing to look at when a loss looks wrong: a sample whose answer is not trained, or
trained on its prompt, shows here at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crystalvlm.data.images import verify_image
from crystalvlm.data.records import ConversationRecord, RecordProblem
from crystalvlm.data.sample_encoder import SampleEncoder
from crystalvlm.data.templates import IGNORE_INDEX


@dataclass(frozen=True)
class ShownRecord:
    record: ConversationRecord
    input_ids: list[int]  # T ids, image tokens expanded
    labels: list[int]  # T labels, IGNORE_INDEX where not trained
    problem: RecordProblem | None  # what the full record check found (image, length), if anything

    def as_json(self) -> dict:
        return {"input_ids": self.input_ids, "labels": self.labels}


def show_record(record: ConversationRecord, image_folder: Path | None, encoder: SampleEncoder) -> ShownRecord:
    """Encode a record as training does. Its images are checked when an image folder is given (anyres
    needs it: an image's token count depends on its size)."""
    sizes = None
    if encoder.anyres and record.has_image:
        if image_folder is None:
            raise ValueError(f"record {record.record_id!r}: with anyres an image's token count depends on its size; "
                             "give the image folder")
        sizes = [verify_image(image_folder, relative, encoder.max_pixels) for relative in record.images]
    input_ids, labels = encoder.encode(record.turns, sizes)
    problem = None
    if image_folder is not None or not record.has_image:
        checked = encoder.check_record(record, image_folder)
        problem = checked if isinstance(checked, RecordProblem) else None
    return ShownRecord(record, input_ids, labels, problem)


def format_record(shown: ShownRecord, encoder: SampleEncoder) -> str:
    """A readable view: a summary line, the runs of trained and untrained text, then every token with
    the trained ones in [brackets] (an image-token run is shown once with its length)."""
    tokenizer = encoder.tokenizer
    ids, labels = shown.input_ids, shown.labels
    trained = sum(1 for label in labels if label != IGNORE_INDEX)
    images = sum(1 for token in ids if token == encoder.image_token_id)
    template = encoder.template.name if encoder.template is not None else None
    lines = [f"record {shown.record.record_id!r} ({shown.record.source}), template {template!r}: "
             f"{len(ids)} tokens ({images} image tokens), {trained} trained"]
    if shown.problem is not None:
        lines.append(f"problem: {shown.problem.reason}")
    lines.append("runs (T = trained):")
    for start, end, is_trained in _runs(ids, labels, encoder.image_token_id):
        if ids[start] == encoder.image_token_id:
            text = _image_run(end - start, encoder.tokens_per_image)
        else:
            text = repr(tokenizer.decode(ids[start:end], skip_special_tokens=False))
        lines.append(f"  {'T' if is_trained else '-'} {end - start:5d}  {text}")
    lines.append("tokens (trained in [brackets]):")
    pieces = []
    for start, end, is_trained in _runs(ids, labels, encoder.image_token_id):
        if ids[start] == encoder.image_token_id:
            pieces.append(f"<image>x{end - start}")
            continue
        for token in tokenizer.convert_ids_to_tokens(ids[start:end]):
            pieces.append(f"[{token}]" if is_trained else token)
    lines.append(" ".join(pieces))
    return "\n".join(lines)


def _image_run(length: int, tokens_per_image: int) -> str:
    """An image-token run: `<image> x576`, or for images placed side by side `<image> x576 (x2 images)`."""
    if tokens_per_image and length > tokens_per_image and length % tokens_per_image == 0:
        return f"<image> x{tokens_per_image} (x{length // tokens_per_image} images)"
    return f"<image> x{length}"


def _runs(ids: list[int], labels: list[int], image_token_id: int) -> list[tuple[int, int, bool]]:
    """(start, end, trained) of each maximal run of tokens alike in being trained and being image tokens."""
    runs: list[tuple[int, int, bool]] = []
    start = 0
    for position in range(1, len(ids) + 1):
        if position == len(ids) or (labels[position] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX) \
                or (ids[position] == image_token_id) != (ids[start] == image_token_id):
            runs.append((start, position, labels[start] != IGNORE_INDEX))
            start = position
    return runs
