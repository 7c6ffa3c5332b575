"""Batching: the only place that turns samples into tensors.

Samples are right-padded into (B, T) tensors with an attention mask; images of the batch are
stacked into (N_images, 3, S, S) in sample order, which is the order LlavaForConditionalGeneration
scatters image features into `<image>` tokens. Sequence packing would replace this function alone
(concatenating samples and emitting position_ids), leaving the model untouched.
"""

from __future__ import annotations

import torch

from crystalvlm.data.templates import IGNORE_INDEX


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
    pixel_values = [sample["pixel_values"] for sample in samples if sample["pixel_values"] is not None]
    if pixel_values:
        if any("image_sizes" in sample for sample in samples):
            batch.update(stack_anyres_images(samples))
        else:
            batch["pixel_values"] = torch.cat(pixel_values, dim=0)  # (N_images, 3, S, S)
    return batch


def stack_anyres_images(samples: list[dict]) -> dict[str, torch.Tensor]:
    """anyres (LlavaNext) images: each sample's (n, P_i, 3, S, S) zero-padded to the batch's most
    sub-images P and stacked to (N_images, P, 3, S, S), with image_sizes (N_images, 2); the model
    reads each image's true sub-image count from its size and drops the padding."""
    images = [sample["pixel_values"] for sample in samples if sample["pixel_values"] is not None]
    most = max(pixels.shape[1] for pixels in images)
    padded = [torch.nn.functional.pad(pixels, (0, 0, 0, 0, 0, 0, 0, most - pixels.shape[1])) for pixels in images]
    sizes = [sample["image_sizes"] for sample in samples if sample["pixel_values"] is not None]
    return {"pixel_values": torch.cat(padded, dim=0), "image_sizes": torch.cat(sizes, dim=0)}
