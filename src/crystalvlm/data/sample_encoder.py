"""One object that turns conversations into model inputs, for training, checking and inference.

What a sample becomes depends on six things: the template, the tokenizer, the image-token id, the
number of image tokens per image, the image preprocessing mode, and the limits (`max_length`,
`max_pixels`). They are read once from a processor and a model config into a `SampleEncoder`,
and every path that encodes uses it:

* `check_record` — the full check `prepare_dataset` and `crystalvlm data check` run on a record;
* `sample`       — a training sample (input_ids, labels, pixel_values) for `ConversationDataset`;
* `prompt`       — a generation prompt (input_ids, pixel_values) for the inference engine.

So the ids a model is trained on and the ids it is prompted with at inference come from the same
object: the same template, the same `<image>` expansion, the same image preprocessing.

anyres (LlavaNext checkpoints): one `<image>` expands to a run whose length depends on the image's
(height, width) (`image_tokens`), so every encoding takes the images' sizes, and samples and prompts
carry `image_sizes` (N, 2) beside pixel_values (N, P, 3, S, S).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from crystalvlm.data.image_tokens import GridError, anyres_token_count, expand_image_tokens
from crystalvlm.data.images import (DEFAULT_MAX_PIXELS, IMAGE_MODES, ImageError, open_image, preprocess,
                                    preprocess_anyres, processor_side, verify_image)
from crystalvlm.data.records import ConversationRecord, RecordProblem
from crystalvlm.data.templates import IMAGE_PLACEHOLDER, ConversationError, Template, Turn


@dataclass(frozen=True)
class SampleEncoder:
    """Encodes conversations for one model. Build it with `from_processor`.

    `template` None means the checkpoint names no template: prompts are then rendered by the
    processor's chat template (any HF Llava checkpoint), and training samples cannot be made
    (labels need a template). `image_processor` and `processor` may be None when only token ids
    are needed (checking records needs the tokenizer alone).
    """

    tokenizer: Any
    template: Template | None
    image_token_id: int
    tokens_per_image: int  # ids one `<image>` expands to: the model's image_seq_length (anyres: the whole view's)
    image_mode: str = "pad"
    image_processor: Any = None
    processor: Any = None  # renders the chat template when `template` is None
    max_length: int | None = None  # tokens after image expansion; longer records are refused, never truncated
    max_pixels: int = DEFAULT_MAX_PIXELS
    # anyres with SPHINX-X skip tokens (the model config's crystalvlm_skip_padded_subimages): each
    # sub-image that is all padding adds one token to its image's run
    skip_padded_subimages: bool = False

    @classmethod
    def from_processor(cls, processor, config, template: Template | None, image_mode: str = "pad", *,
                       max_length: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> "SampleEncoder":
        """From a (Llava) processor and the model config, which holds the image-token id and count."""
        if image_mode not in IMAGE_MODES:
            raise ValueError(f"unknown image preprocessing {image_mode!r}; choose one of {IMAGE_MODES}")
        image_token_id = getattr(config, "image_token_id", None)
        if image_token_id is None:  # older configs name it image_token_index
            image_token_id = config.image_token_index
        check_grid(processor, config, image_mode)
        return cls(tokenizer=processor.tokenizer, template=template, image_token_id=int(image_token_id),
                   tokens_per_image=int(config.image_seq_length), image_mode=image_mode,
                   image_processor=processor.image_processor, processor=processor, max_length=max_length,
                   max_pixels=max_pixels,
                   skip_padded_subimages=bool(getattr(config, "crystalvlm_skip_padded_subimages", False)))

    # ---------------------------------------------------------------- training data
    def check_tokenizer(self) -> None:
        """Refuse, before any record is read, a tokenizer that splits a template marker, or no template."""
        if self.template is None:
            raise ValueError("training data needs a conversation template (its labels); none was given and "
                             "the checkpoint names none")
        self.template.check_tokenizer(self.tokenizer)

    @property
    def anyres(self) -> bool:
        return self.image_mode == "anyres"

    def image_tokens(self, sizes: Sequence[tuple[int, int]]) -> int | list[int]:
        """The token run of each image given its (width, height): one count for all (fixed-size modes)
        or one per image (anyres). Raises GridError for an image the grid cannot tile."""
        if not self.anyres:
            return self.tokens_per_image
        side = processor_side(self.image_processor)
        return [anyres_token_count(self.processor, height, width, side, self.skip_padded_subimages)
                for width, height in sizes]

    def encode(self, turns: Sequence[Turn], image_sizes: Sequence[tuple[int, int]] | None = None) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of a training conversation, each `<image>` expanded to the image-token run
        (labels IGNORE_INDEX there). `image_sizes`: (width, height) of each image, needed by anyres.
        Raises ConversationError for a conversation the template refuses."""
        if self.template is None:
            raise ConversationError("no conversation template: training samples need one")
        ids, labels = self.template.encode(turns, self.tokenizer)
        expanded_ids, expanded_labels = self._expand(ids, labels, image_sizes)
        return expanded_ids, expanded_labels  # type: ignore[return-value]

    def _expand(self, ids: list[int], labels: list[int] | None, image_sizes: Sequence[tuple[int, int]] | None):
        if self.anyres and image_sizes is None:
            image_sizes = []  # a conversation without images; a placeholder then disagrees and is refused
        try:
            counts = self.image_tokens(image_sizes or [])
            return expand_image_tokens(ids, labels, self.image_token_id, counts)
        except (GridError, ValueError) as error:
            raise ConversationError(str(error)) from None

    def check_record(self, record: ConversationRecord, image_folder: Path | None) -> int | RecordProblem:
        """The record's encoded length, or the RecordProblem that rules it out.

        Every image is verified without decoding its pixels (path, format, size, file structure: a
        truncated PNG fails here); the decode itself happens when `sample` is called, in the loader's
        workers. A damaged file that only its full decode reveals (some truncated JPEGs) then stops
        training with an ImageError naming the record and file."""
        checked = self.check_and_encode(record, image_folder)
        return checked if isinstance(checked, RecordProblem) else len(checked[0])

    def check_and_encode(self, record: ConversationRecord,
                         image_folder: Path | None) -> tuple[list[int], list[int]] | RecordProblem:
        """`check_record`, returning the (input_ids, labels) the check encoded instead of their length:
        what `sample` would encode for the record, for a caller that keeps them (`encoding=`)."""

        def problem(reason: str) -> RecordProblem:
            return RecordProblem(record.source, record.record_id, reason)

        sizes: list[tuple[int, int]] = []
        if record.has_image:
            if image_folder is None:
                return problem("record has an image but no image folder was given")
            for relative in record.images:
                try:
                    sizes.append(verify_image(image_folder, relative, self.max_pixels))
                except ImageError as error:
                    return problem(str(error))
        try:
            counts = self.image_tokens(sizes)
        except GridError as error:
            return problem(f"{record.images}: {error}")
        try:
            ids, labels = self.encode(record.turns, sizes)
        except ConversationError as error:
            name = self.template.name if self.template is not None else None
            return problem(f"conversation cannot be encoded with template {name!r}: {error}")
        if self.max_length is not None and len(ids) > self.max_length:
            images = f" ({counts} of them image tokens for images of {sizes} px)" if self.anyres and sizes else ""
            return problem(f"{len(ids)} tokens{images} is over max_length {self.max_length} (skipped rather than truncated)")
        if not any(label >= 0 for label in labels):
            return problem("no trained token after encoding")
        return ids, labels

    def sample(self, record: ConversationRecord, image_folder: Path | None,
               encoding: tuple[Sequence[int], Sequence[int]] | None = None) -> dict:
        """A training sample: input_ids and labels (lists of T ints), pixel_values (N_images, 3, S, S) in the
        order of the record's `<image>` placeholders (its `image` list), or None; anyres: pixel_values
        (N_images, P, 3, S, S) and image_sizes (N_images, 2).

        `encoding`: the record's (input_ids, labels) as this encoder encoded them before (`check_and_encode`,
        or an earlier `sample`); given, the conversation is not tokenised again, only the images are read."""
        images: list[Image.Image] = []
        if record.has_image:
            try:
                images = [open_image(image_folder, path, self.max_pixels) for path in record.images]  # type: ignore[arg-type]
            except ImageError as error:
                raise ImageError(f"{record.source}: record {record.record_id!r}: {error}") from None
        if encoding is not None:
            ids, labels = list(encoding[0]), list(encoding[1])
        else:
            try:
                ids, labels = self.encode(record.turns, [image.size for image in images])
            except ConversationError as error:
                raise ConversationError(f"{record.source}: record {record.record_id!r}: {error}") from None
        sample = {"input_ids": ids, "labels": labels, "pixel_values": None}
        if images:
            pixel_values, image_sizes = self.pixel_inputs(images)
            sample["pixel_values"] = pixel_values
            if image_sizes is not None:
                sample["image_sizes"] = image_sizes
        return sample

    def pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, 3, S, S) float pixel values, shaped by the image mode (anyres: (N, P, 3, S, S))."""
        return self.pixel_inputs(images)[0]

    def pixel_inputs(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(pixel_values, image_sizes): image_sizes (N, 2) as (height, width) for anyres, else None."""
        if self.anyres:
            return preprocess_anyres(images, self.image_processor)
        return preprocess(images, self.image_processor, self.image_mode), None

    # ---------------------------------------------------------------- inference
    def prompt(self, turns: Sequence[Turn], images: list[Image.Image]) -> tuple[list[int], torch.Tensor | None]:
        """A generation prompt: input_ids (T ints, image tokens expanded) and pixel_values (N, 3, S, S) or None.
        anyres needs the images' sizes too: `prompt_inputs`."""
        ids, pixel_values, _ = self.prompt_inputs(turns, images)
        return ids, pixel_values

    def prompt_inputs(self, turns: Sequence[Turn], images: list[Image.Image]
                      ) -> tuple[list[int], torch.Tensor | None, torch.Tensor | None]:
        """A generation prompt: input_ids, pixel_values or None, image_sizes (N, 2) or None (anyres only).

        Raises ConversationError, with a message meant for the requester, when the conversation cannot
        be prompted (empty, refused by the template, placeholders and images disagree, an image the
        anyres grid cannot tile)."""
        sizes = [image.size for image in images]
        ids = self.prompt_ids(turns, sizes)
        if not images:
            return ids, None, None
        pixel_values, image_sizes = self.pixel_inputs(images)
        return ids, pixel_values, image_sizes

    def prompt_ids_many(self, conversations: Sequence[Sequence[Turn]],
                        image_sizes: Sequence[Sequence[tuple[int, int]]]) -> list[list[int]]:
        """`prompt_ids` of several conversations; with a template, one tokenizer call for all of them.
        Raises ConversationError as `prompt_ids` does for the first one that cannot be prompted."""
        if self.template is None or not all(conversations):
            return [self.prompt_ids(turns, sizes) for turns, sizes in zip(conversations, image_sizes)]
        try:
            encoded = self.template.encode_many(conversations, self.tokenizer, add_generation_prompt=True)
        except ValueError as error:  # ConversationError, or a tokenizer's own refusal
            raise ConversationError(str(error)) from None
        return [self._expanded(ids, sizes) for (ids, _), sizes in zip(encoded, image_sizes)]

    def prompt_ids(self, turns: Sequence[Turn], image_sizes: Sequence[tuple[int, int]]) -> list[int]:
        """The input_ids of `prompt` alone (image tokens expanded), for a caller that preprocesses the
        images itself (the engine preprocesses an image asked about by several requests once).
        `image_sizes`: (width, height) of each image; only anyres's token runs depend on them."""
        if not turns:
            raise ConversationError("the conversation is empty")
        return self._expanded(self._prompt_ids(turns), image_sizes)

    def _expanded(self, ids: list[int], image_sizes: Sequence[tuple[int, int]]) -> list[int]:
        """Prompt ids with each `<image>` id expanded to the image-token run, once the count is checked."""
        placeholders = sum(1 for token in ids if token == self.image_token_id)
        if placeholders != len(image_sizes):
            raise ConversationError(
                f"the conversation has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {len(image_sizes)} image(s) "
                f"were given; put '{IMAGE_PLACEHOLDER}\\n' before the question once per image"
            )
        expanded, _ = self._expand(ids, None, image_sizes)
        return expanded

    def _prompt_ids(self, turns: Sequence[Turn]) -> list[int]:
        """Prompt ids with one `<image>` id per image: the template's own segments (the very ids training
        used), or, without a template, the processor's chat template tokenised as the processor would."""
        if self.template is not None:
            try:
                ids, _ = self.template.encode(turns, self.tokenizer, add_generation_prompt=True)
            except ValueError as error:  # ConversationError, or a tokenizer's own refusal
                raise ConversationError(str(error)) from None
            return ids
        if self.processor is None:
            raise ConversationError("no conversation template and no processor chat template to build a prompt with")
        messages = [{"role": turn.role, "content": _content_items(turn.text)} for turn in turns]
        try:
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as error:  # jinja raises its own errors for conversations it refuses
            raise ConversationError(f"the checkpoint's chat template refused the conversation: {error}") from None
        bos = self.tokenizer.bos_token
        add_bos = not (bos and text.startswith(bos))  # the chat template may write BOS itself
        return list(self.tokenizer(text, add_special_tokens=add_bos)["input_ids"])


def check_grid(processor, config, image_mode: str) -> None:
    """Refuse to encode for a checkpoint with a sub-image layout it was not trained with: anyres on a
    model without a grid (a Llava), a plain mode on a LlavaNext (its features would not match), or
    a processor whose grid pinpoints differ from the model's."""
    model_grid = getattr(config, "image_grid_pinpoints", None)
    processor_grid = getattr(getattr(processor, "image_processor", None), "image_grid_pinpoints", None)
    if image_mode == "anyres":
        if model_grid is None:
            raise ValueError(f"image_mode anyres: this {type(config).__name__} was not trained with sub-images "
                             "(no image_grid_pinpoints); use the image mode it was trained with")
        if processor_grid is not None and [list(p) for p in processor_grid] != [list(p) for p in model_grid]:
            raise ValueError(f"the image processor tiles by {processor_grid} but the model was trained with the grid "
                             f"{model_grid}; sub-image layouts must match the checkpoint's")
    elif model_grid is not None:
        raise ValueError(f"image_mode {image_mode!r}: this checkpoint ({type(config).__name__}) was trained with anyres "
                         f"sub-images on the grid {model_grid}; use image_mode anyres")


def _content_items(text: str) -> list[dict]:
    """HF message content: one image item per placeholder, then the remaining text."""
    images = text.count(IMAGE_PLACEHOLDER)
    remaining = text.replace(IMAGE_PLACEHOLDER + "\n", "").replace(IMAGE_PLACEHOLDER, "")
    items = [{"type": "image"} for _ in range(images)]
    if remaining:
        items.append({"type": "text", "text": remaining})
    return items
