"""Where an anyres image lands in its grid: which sub-images hold nothing but padding.

LlavaNextImageProcessor fits an image into its best grid resolution keeping the aspect ratio (the
long side fills the grid, the other side rounded up) and pads it equally on both sides; the grid
is then cut into tower-sized sub-images in row-major order. A sub-image entirely outside the fitted
image is all padding: SPHINX-X's skip token stands in for it. The data side (token counts) and the
model side (which sub-images the tower skips) both ask this one function, so they cannot disagree.
A leaf module: `data` and `models` may not import each other.
"""

from __future__ import annotations

import math


def fitted_box(height: int, width: int, grid_height: int, grid_width: int) -> tuple[int, int, int, int]:
    """(top, left, fitted height, fitted width) of the image inside the padded grid resolution,
    computed exactly as transformers' get_patch_output_size and LlavaNext's centred padding."""
    scale_w, scale_h = grid_width / width, grid_height / height
    if scale_w < scale_h:
        new_width, new_height = grid_width, min(math.ceil(height * scale_w), grid_height)
    else:
        new_height, new_width = grid_height, min(math.ceil(width * scale_h), grid_width)
    return (grid_height - new_height) // 2, (grid_width - new_width) // 2, new_height, new_width


def padded_subimages(height: int, width: int, pinpoints: list[list[int]], side: int) -> list[bool]:
    """For each grid sub-image of an image (row-major, the whole view excluded): whether it is all padding."""
    from transformers.image_processing_utils import select_best_resolution

    grid_height, grid_width = select_best_resolution([height, width], pinpoints)
    top, left, fitted_height, fitted_width = fitted_box(height, width, grid_height, grid_width)
    padded = []
    for row in range(grid_height // side):
        for column in range(grid_width // side):
            y0, x0 = row * side, column * side
            outside = (y0 + side <= top or y0 >= top + fitted_height or x0 + side <= left or x0 >= left + fitted_width)
            padded.append(outside)
    return padded
