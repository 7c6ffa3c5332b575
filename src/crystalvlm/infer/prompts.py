"""From a conversation and its images to the model's input ids and pixel values.

The checkpoint's `SampleEncoder` (data/sample_encoder.py) builds the prompt, the same object that
encodes its training data. A checkpoint written by crystalvlm names its template: the prompt is
`template.encode(...)`, the very ids training used. A foreign HF checkpoint has only its
processor's chat template: the prompt string is rendered by it and tokenised as the processor
would. Either way the conversation carries one `<image>` per image (LLaVA's "<image>\\n" +
question), expanded to the model's image-token run. This module turns the encoder's refusals into
`RequestError`s and pads prompts into batches.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from crystalvlm.data.images import DEFAULT_MAX_PIXELS
from crystalvlm.data.sample_encoder import SampleEncoder
from crystalvlm.data.templates import ConversationError, Turn, get_template
from crystalvlm.infer.runner import PromptBatch


class RequestError(ValueError):
    """A request the engine cannot run; the message says what is wrong with it."""


@dataclass
class PreparedPrompt:
    input_ids: list[int]  # image tokens expanded
    pixel_values: torch.Tensor | None  # (n_images, 3, S, S); anyres: (n_images, P, 3, S, S)
    known_digests: list[bytes] | None = None  # image_digests, when the builder already computed them
    image_sizes: torch.Tensor | None = None  # anyres only: (n_images, 2) (height, width)
    image_runs: tuple[int, ...] | None = None  # anyres only: image tokens of each image, in order

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def image_count(self) -> int:
        return 0 if self.pixel_values is None else self.pixel_values.shape[0]

    @cached_property
    def image_digests(self) -> list[bytes]:
        """A digest of each image's pixel values: equal digests, same image (prefix sharing compares them)."""
        if self.known_digests is not None:
            return self.known_digests
        if self.pixel_values is None:
            return []
        return [pixel_digest(pixels) for pixels in self.pixel_values]


def pixel_digest(pixels: torch.Tensor) -> bytes:
    """A digest of one image's (3, S, S) pixel values."""
    return hashlib.blake2b(pixels.detach().float().cpu().contiguous().numpy().tobytes(), digest_size=16).digest()


class ImageMemo:
    """Pixel values and digest of each image object seen, so that an image several requests ask about
    (an evaluation's questions about one picture) is preprocessed and hashed once.

    Keyed by object identity; the memo keeps each image alive, so an id is never reused while it lives.
    Live it for one `generate` call: a caller that edits an image in place between calls must not
    share a memo across them."""

    def __init__(self, encoder: SampleEncoder) -> None:
        self.encoder = encoder
        self._seen: dict[int, tuple[Image.Image, torch.Tensor, bytes]] = {}

    def preprocess(self, images: list[Image.Image]) -> None:
        """Preprocess those of `images` not seen yet, in one call of the image processor."""
        missing = list({id(image): image for image in images if id(image) not in self._seen}.values())
        if missing:
            fresh = self.encoder.pixel_values(missing)  # (M, 3, S, S)
            for image, pixels in zip(missing, fresh):
                self._seen[id(image)] = (image, pixels, pixel_digest(pixels))

    def pixels(self, images: list[Image.Image]) -> tuple[torch.Tensor, list[bytes]]:
        """(N, 3, S, S) pixel values of `images` and their digests."""
        self.preprocess(images)
        entries = [self._seen[id(image)] for image in images]
        return torch.stack([entry[1] for entry in entries]), [entry[2] for entry in entries]


class PromptBuilder:
    """Generation prompts from a checkpoint's encoder; a prompt it cannot build is a RequestError."""

    def __init__(self, encoder: SampleEncoder) -> None:
        self.encoder = encoder

    def build(self, turns: list[Turn], images: list[Image.Image], memo: ImageMemo | None = None,
              input_ids: list[int] | None = None) -> PreparedPrompt:
        """The prompt of `turns` and `images`; `input_ids` when they were already encoded (`ids_of_many`)."""
        try:
            if self.encoder.anyres:
                # anyres images differ in sub-image count, so the memo's (N, 3, S, S) stacking does not
                # apply: each prompt preprocesses its own images.
                input_ids, pixel_values, image_sizes = self.encoder.prompt_inputs(turns, images)
                runs = self.encoder.image_tokens([image.size for image in images]) if image_sizes is not None else None
                return PreparedPrompt(input_ids, pixel_values, None, image_sizes,
                                      tuple(runs) if runs is not None else None)  # type: ignore[arg-type]
            if input_ids is None and (memo is None or not images):
                input_ids, pixel_values = self.encoder.prompt(turns, images)
                return PreparedPrompt(input_ids, pixel_values)
            if input_ids is None:
                input_ids = self.encoder.prompt_ids(turns, [image.size for image in images])
            if not images:
                return PreparedPrompt(input_ids, None)
        except ConversationError as error:
            raise RequestError(str(error)) from None
        if memo is None:
            memo = ImageMemo(self.encoder)
        pixel_values, digests = memo.pixels(images)
        return PreparedPrompt(input_ids, pixel_values, digests)

    def ids_of_many(self, conversations: list[list[Turn]], image_sizes: list[list[tuple[int, int]]]) -> list[list[int]] | None:
        """The input_ids of many prompts in one tokenizer call; None when one of them cannot be encoded
        (then `build` each alone, which names the one that fails).

        Equal prompts (an evaluation asks one question about many images) are tokenised once: the
        tokenizer's time grows with the texts it is given, and equal texts give equal ids."""
        first_of: dict[tuple, int] = {}  # prompt (turns and image sizes) -> index in `unique`
        unique: list[int] = []
        slots = []
        for index, (turns, sizes) in enumerate(zip(conversations, image_sizes)):
            key = (tuple((turn.role, turn.text) for turn in turns), tuple(sizes))
            if key not in first_of:
                first_of[key] = len(unique)
                unique.append(index)
            slots.append(first_of[key])
        try:
            encoded = self.encoder.prompt_ids_many([conversations[i] for i in unique], [image_sizes[i] for i in unique])
        except ConversationError:
            return None
        return [list(encoded[slot]) for slot in slots]  # own lists: a caller may extend one prompt's ids


def checkpoint_encoder(model: str | Path, template: str | None = None, *, max_length: int | None = None,
                       max_pixels: int = DEFAULT_MAX_PIXELS, require_template: bool = False) -> SampleEncoder:
    """The SampleEncoder of a checkpoint (a folder or a cached Hub id), without loading its weights.

    `template` overrides the one the checkpoint was trained with. With `require_template` (checking
    training data, whose labels need a template) a checkpoint that names none is refused; without it
    the encoder falls back to the processor's chat template. It lives here, above `data` and `models`,
    because it joins the two (`crystalvlm data check` uses it through the CLI)."""
    from crystalvlm.models.checkpoint import load_processor, template_name

    processor, config, info = load_processor(model)
    name = template_name(info, template)
    if name is None and require_template:
        raise ValueError(f"{model} does not say which template it uses; pass --template")
    return SampleEncoder.from_processor(processor, config, get_template(name) if name else None, info.image_mode,
                                        max_length=max_length, max_pixels=max_pixels)


def collate(prompts: list[PreparedPrompt], pad_token_id: int) -> PromptBatch:
    """Left-pad to the longest prompt; images concatenated in row order."""
    rows = [prompt.input_ids for prompt in prompts]
    input_ids, attention_mask = left_padded(rows, pad_token_id), left_padded_mask([len(row) for row in rows])
    pixels = [prompt.pixel_values for prompt in prompts if prompt.pixel_values is not None]
    sizes = [prompt.image_sizes for prompt in prompts if prompt.image_sizes is not None]
    return PromptBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values=stack_images(pixels) if pixels else None,
        prompt_lengths=[prompt.length for prompt in prompts],
        images_per_row=[prompt.image_count for prompt in prompts],
        image_sizes=torch.cat(sizes) if sizes else None,
    )


def left_padded(rows: list[list[int]], fill: int, width: int | None = None) -> torch.Tensor:
    """(len(rows), width) long tensor, each row at the right, `fill` before it (width: the longest row).
    Filled through numpy: a Python list becomes a tensor several times faster there than in torch."""
    width = max(len(row) for row in rows) if width is None else width
    array = np.full((len(rows), width), fill, dtype=np.int64)
    for index, row in enumerate(rows):
        if len(row):
            array[index, width - len(row) :] = row
    return torch.from_numpy(array)


def left_padded_mask(lengths: list[int], width: int | None = None) -> torch.Tensor:
    """(len(lengths), width) long tensor: 1 on the last `lengths[i]` positions of row i, 0 before."""
    width = max(lengths) if width is None else width
    starts = width - np.asarray(lengths, dtype=np.int64)
    return torch.from_numpy((np.arange(width)[None, :] >= starts[:, None]).astype(np.int64))


def stack_images(pixels: list[torch.Tensor]) -> torch.Tensor:
    """Images of several prompts in order: (I, 3, S, S); anyres (I, P, 3, S, S) with each prompt's
    sub-images zero-padded to the most P (the model drops the padding by each image's size)."""
    if pixels[0].dim() == 4:
        return torch.cat(pixels)
    most = max(tensor.shape[1] for tensor in pixels)
    return torch.cat([torch.nn.functional.pad(tensor, (0, 0, 0, 0, 0, 0, 0, most - tensor.shape[1])) for tensor in pixels])
