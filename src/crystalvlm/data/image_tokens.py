"""Expanding the single `<image>` id of a template's output into the model's image-token run.

HF's LlavaProcessor writes `image_seq_length` copies of the image token per image and the model
scatters one projected patch feature into each. Templates keep `<image>` as one id so that token
counts stay readable; this is the one place that expands it (labels of image tokens are ignored).

With anyres (LlavaNext) the run's length depends on the image's size: `anyres_token_count` asks the
checkpoint's LlavaNextProcessor for it (the same rule its own text expansion uses), so the ids we
train and prompt with are the ids plain transformers builds.
"""

from __future__ import annotations

from typing import Sequence

from crystalvlm.data.templates import IGNORE_INDEX
from crystalvlm.subimage_grid import padded_subimages


def expand_image_tokens(
    input_ids: list[int], labels: list[int] | None, image_token_id: int, tokens_per_image: int | Sequence[int]
) -> tuple[list[int], list[int] | None]:
    """`tokens_per_image`: one count for every image, or one count per image in placeholder order."""
    counts = None if isinstance(tokens_per_image, int) else list(tokens_per_image)
    if counts is not None:
        placeholders = sum(1 for token in input_ids if token == image_token_id)
        if placeholders != len(counts):
            raise ValueError(f"{placeholders} image placeholder(s) for {len(counts)} image(s); they must match")
    expanded_ids: list[int] = []
    expanded_labels: list[int] | None = [] if labels is not None else None
    image_index = 0
    for position, token in enumerate(input_ids):
        if token == image_token_id:
            run = tokens_per_image if counts is None else counts[image_index]
            image_index += 1
            expanded_ids += [image_token_id] * run  # type: ignore[operator]
            if expanded_labels is not None:
                expanded_labels += [IGNORE_INDEX] * run  # type: ignore[operator]
        else:
            expanded_ids.append(token)
            if expanded_labels is not None:
                expanded_labels.append(labels[position])  # type: ignore[index]
    return expanded_ids, expanded_labels


class GridError(ValueError):
    """An image the anyres grid cannot tile into a usable feature map; the message says why."""


def anyres_token_count(processor, height: int, width: int, side: int, skip_padded_subimages: bool = False) -> int:
    """Image tokens of one (height x width) image under a LlavaNextProcessor: the whole view's
    patches, the unpadded sub-image features and one `image_newline` per feature row, less the CLS
    token for strategy `default`. `side` is the tower's input side (the sub-image size). With
    `skip_padded_subimages` each sub-image that is all padding adds its one skip token.

    Raises GridError for an image too elongated for the grid: fitted into its best layout it leaves
    less than one feature row or column, so its sub-images would add nothing but padding."""
    from transformers.image_processing_utils import select_best_resolution

    best_height, best_width = select_best_resolution([height, width], processor.image_processor.image_grid_pinpoints)
    patches = side // processor.patch_size
    area, rows = processor._get_unpadded_features(height, width, patches, patches, best_height // side, best_width // side)
    if rows < 1 or area < rows:
        raise GridError(f"a {width}x{height} image is too elongated for the grid {processor.image_processor.image_grid_pinpoints}: "
                        f"fitted into {best_width}x{best_height} it leaves less than one feature row or column")
    count = processor._get_number_of_features(height, width, side, side)
    if processor.vision_feature_select_strategy == "default":
        count -= 1
    if skip_padded_subimages:
        count += sum(padded_subimages(height, width, processor.image_processor.image_grid_pinpoints, side))
    return int(count)
