"""Batching: the only place that turns samples into tensors.

Two layouts of the same samples:

- padded (`collate_conversations`): samples right-padded into (B, T) tensors with an attention mask.
- packed (`collate_packed`): several samples per row (rows chosen by `data.packing.pack_rows`), with
  `position_ids` restarting at 0 at each sample and no attention mask. `transformers` reads the
  restarts as sample boundaries and keeps attention inside each sample (a block-diagonal causal mask
  for sdpa/eager, varlen for flash attention); that detection needs `attention_mask=None` and no cache.

In both, the images of the batch are concatenated into (N_images, 3, S, S) in sample order, which is
the order LlavaForConditionalGeneration scatters image features into `<image>` tokens, so each image
lands in its own sample whichever row the sample sits in.
"""

from __future__ import annotations

import torch

from crystalvlm.data.packing import pack_rows
from crystalvlm.data.templates import IGNORE_INDEX

# Keys of a batch that describe it rather than feed the model.
BOOKKEEPING_KEYS = ("labels", "sample_lengths")


def collate_conversations(samples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    longest = max(len(sample["input_ids"]) for sample in samples)
    batch_size = len(samples)
    input_ids = torch.full((batch_size, longest), pad_token_id, dtype=torch.long)  # (B, T)
    labels = torch.full((batch_size, longest), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((batch_size, longest), dtype=torch.long)  # (B, T)
    for row, sample in enumerate(samples):
        length = len(sample["input_ids"])
        input_ids[row, :length] = torch.tensor(sample["input_ids"])
        labels[row, :length] = torch.tensor(sample["labels"])
        attention_mask[row, :length] = 1
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    return _with_images(batch, samples)


def collate_packed(samples: list[dict], pad_token_id: int, row_length: int | None = None) -> dict[str, torch.Tensor]:
    """The samples packed into rows (see `data.packing`): input_ids, labels, position_ids (R, W) and
    sample_lengths (n_samples,) in the order the samples are laid out. The tail of a row is padding
    with its own positions from 0: a segment of its own that no sample attends to, and untrained."""
    lengths = [len(sample["input_ids"]) for sample in samples]
    rows = pack_rows(lengths, row_length)
    width = max(sum(lengths[i] for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)  # (R, W)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # (R, W)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)  # (R, W)
    order: list[int] = []
    for row, members in enumerate(rows):
        start = 0
        for index in members:
            end = start + lengths[index]
            input_ids[row, start:end] = torch.tensor(samples[index]["input_ids"])
            labels[row, start:end] = torch.tensor(samples[index]["labels"])
            # A sample's first label is never a target in a padded batch (targets are shifted by one);
            # packed, it would be predicted from the previous sample's last token: it stays untrained.
            labels[row, start] = IGNORE_INDEX
            position_ids[row, start:end] = torch.arange(lengths[index])
            start = end
        position_ids[row, start:] = torch.arange(width - start)
        order += members
    batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
             "sample_lengths": torch.tensor([lengths[i] for i in order], dtype=torch.long)}
    return _with_images(batch, [samples[i] for i in order])


def _with_images(batch: dict[str, torch.Tensor], samples: list[dict]) -> dict[str, torch.Tensor]:
    pixel_values = [sample["pixel_values"] for sample in samples if sample["pixel_values"] is not None]
    if pixel_values:
        if any("image_sizes" in sample for sample in samples):
            batch.update(stack_anyres_images(samples))
        else:
            batch["pixel_values"] = torch.cat(pixel_values, dim=0)  # (N_images, 3, S, S)
    return batch


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keyword arguments of the model's forward: the batch less its labels and bookkeeping."""
    return {key: value for key, value in batch.items() if key not in BOOKKEEPING_KEYS}


def input_token_count(batch: dict[str, torch.Tensor]) -> int:
    """Non-padding positions of a padded or packed batch (image tokens included)."""
    if "sample_lengths" in batch:
        return int(batch["sample_lengths"].sum())
    return int(batch["attention_mask"].sum())


def stack_anyres_images(samples: list[dict]) -> dict[str, torch.Tensor]:
    """anyres (LlavaNext) images: each sample's (n, P_i, 3, S, S) zero-padded to the batch's most
    sub-images P and stacked to (N_images, P, 3, S, S), with image_sizes (N_images, 2); the model
    reads each image's true sub-image count from its size and drops the padding."""
    images = [sample["pixel_values"] for sample in samples if sample["pixel_values"] is not None]
    most = max(pixels.shape[1] for pixels in images)
    padded = [torch.nn.functional.pad(pixels, (0, 0, 0, 0, 0, 0, 0, most - pixels.shape[1])) for pixels in images]
    sizes = [sample["image_sizes"] for sample in samples if sample["pixel_values"] is not None]
    return {"pixel_values": torch.cat(padded, dim=0), "image_sizes": torch.cat(sizes, dim=0)}
