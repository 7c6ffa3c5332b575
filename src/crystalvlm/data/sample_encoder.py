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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from crystalvlm.data.image_tokens import expand_image_tokens
from crystalvlm.data.images import DEFAULT_MAX_PIXELS, IMAGE_MODES, ImageError, open_image, preprocess, verify_image
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
    tokens_per_image: int  # ids one `<image>` expands to: the model's image_seq_length
    image_mode: str = "pad"
    image_processor: Any = None
    processor: Any = None  # renders the chat template when `template` is None
    max_length: int | None = None  # tokens after image expansion; longer records are refused, never truncated
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def from_processor(cls, processor, config, template: Template | None, image_mode: str = "pad", *,
                       max_length: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> "SampleEncoder":
        """From a (Llava) processor and the model config, which holds the image-token id and count."""
        if image_mode not in IMAGE_MODES:
            raise ValueError(f"unknown image preprocessing {image_mode!r}; choose one of {IMAGE_MODES}")
        image_token_id = getattr(config, "image_token_id", None)
        if image_token_id is None:  # older configs name it image_token_index
            image_token_id = config.image_token_index
        return cls(tokenizer=processor.tokenizer, template=template, image_token_id=int(image_token_id),
                   tokens_per_image=int(config.image_seq_length), image_mode=image_mode,
                   image_processor=processor.image_processor, processor=processor, max_length=max_length,
                   max_pixels=max_pixels)

    # ---------------------------------------------------------------- training data
    def check_tokenizer(self) -> None:
        """Refuse, before any record is read, a tokenizer that splits a template marker, or no template."""
        if self.template is None:
            raise ValueError("training data needs a conversation template (its labels); none was given and "
                             "the checkpoint names none")
        self.template.check_tokenizer(self.tokenizer)

    def encode(self, turns: Sequence[Turn]) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of a training conversation, each `<image>` expanded to the image-token run
        (labels IGNORE_INDEX there). Raises ConversationError for a conversation the template refuses."""
        if self.template is None:
            raise ConversationError("no conversation template: training samples need one")
        ids, labels = self.template.encode(turns, self.tokenizer)
        expanded_ids, expanded_labels = expand_image_tokens(ids, labels, self.image_token_id, self.tokens_per_image)
        return expanded_ids, expanded_labels  # type: ignore[return-value]

    def check_record(self, record: ConversationRecord, image_folder: Path | None) -> int | RecordProblem:
        """The record's encoded length, or the RecordProblem that rules it out.

        Every image is verified without decoding its pixels (path, format, size, file structure: a
        truncated PNG fails here); the decode itself happens when `sample` is called, in the loader's
        workers. A damaged file that only its full decode reveals (some truncated JPEGs) then stops
        training with an ImageError naming the record and file."""

        def problem(reason: str) -> RecordProblem:
            return RecordProblem(record.source, record.record_id, reason)

        if record.has_image:
            if image_folder is None:
                return problem("record has an image but no image folder was given")
            for relative in record.images:
                try:
                    verify_image(image_folder, relative, self.max_pixels)
                except ImageError as error:
                    return problem(str(error))
        try:
            ids, labels = self.encode(record.turns)
        except ConversationError as error:
            name = self.template.name if self.template is not None else None
            return problem(f"conversation cannot be encoded with template {name!r}: {error}")
        if self.max_length is not None and len(ids) > self.max_length:
            return problem(f"{len(ids)} tokens is over max_length {self.max_length} (skipped rather than truncated)")
        if not any(label >= 0 for label in labels):
            return problem("no trained token after encoding")
        return len(ids)

    def sample(self, record: ConversationRecord, image_folder: Path | None) -> dict:
        """A training sample: input_ids and labels (lists of T ints), pixel_values (N_images, 3, S, S) in the
        order of the record's `<image>` placeholders (its `image` list), or None."""
        ids, labels = self.encode(record.turns)
        pixel_values = None
        if record.has_image:
            try:
                images = [open_image(image_folder, path, self.max_pixels) for path in record.images]  # type: ignore[arg-type]
            except ImageError as error:
                raise ImageError(f"{record.source}: record {record.record_id!r}: {error}") from None
            pixel_values = self.pixel_values(images)
        return {"input_ids": ids, "labels": labels, "pixel_values": pixel_values}

    def pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, 3, S, S) float pixel values, shaped by the image mode."""
        return preprocess(images, self.image_processor, self.image_mode)

    # ---------------------------------------------------------------- inference
    def prompt(self, turns: Sequence[Turn], images: list[Image.Image]) -> tuple[list[int], torch.Tensor | None]:
        """A generation prompt: input_ids (T ints, image tokens expanded) and pixel_values (N, 3, S, S) or None.

        Raises ConversationError, with a message meant for the requester, when the conversation cannot
        be prompted (empty, refused by the template, placeholders and images disagree)."""
        return self.prompt_ids(turns, len(images)), (self.pixel_values(images) if images else None)

    def prompt_ids_many(self, conversations: Sequence[Sequence[Turn]], image_counts: Sequence[int]) -> list[list[int]]:
        """`prompt_ids` of several conversations; with a template, one tokenizer call for all of them.
        Raises ConversationError as `prompt_ids` does for the first one that cannot be prompted."""
        if self.template is None or not all(conversations):
            return [self.prompt_ids(turns, count) for turns, count in zip(conversations, image_counts)]
        try:
            encoded = self.template.encode_many(conversations, self.tokenizer, add_generation_prompt=True)
        except ValueError as error:  # ConversationError, or a tokenizer's own refusal
            raise ConversationError(str(error)) from None
        return [self._expanded(ids, count) for (ids, _), count in zip(encoded, image_counts)]

    def prompt_ids(self, turns: Sequence[Turn], image_count: int) -> list[int]:
        """The input_ids of `prompt` alone (image tokens expanded), for a caller that preprocesses the
        images itself (the engine preprocesses an image asked about by several requests once)."""
        if not turns:
            raise ConversationError("the conversation is empty")
        return self._expanded(self._prompt_ids(turns), image_count)

    def _expanded(self, ids: list[int], image_count: int) -> list[int]:
        """Prompt ids with each `<image>` id expanded to the image-token run, once the count is checked."""
        placeholders = sum(1 for token in ids if token == self.image_token_id)
        if placeholders != image_count:
            raise ConversationError(
                f"the conversation has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {image_count} image(s) "
                f"were given; put '{IMAGE_PLACEHOLDER}\\n' before the question once per image"
            )
        expanded, _ = expand_image_tokens(ids, None, self.image_token_id, self.tokens_per_image)
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


def _content_items(text: str) -> list[dict]:
    """HF message content: one image item per placeholder, then the remaining text."""
    images = text.count(IMAGE_PLACEHOLDER)
    remaining = text.replace(IMAGE_PLACEHOLDER + "\n", "").replace(IMAGE_PLACEHOLDER, "")
    items = [{"type": "image"} for _ in range(images)]
    if remaining:
        items.append({"type": "text", "text": remaining})
    return items
