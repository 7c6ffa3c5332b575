"""Scenes of the high-resolution shapes world: a large, often non-square white canvas holding one
small 8 x 8 tile. The tile's colour is visible at any scale; its pattern (horizontal or vertical
stripes, a checkerboard, diagonal stripes) is a 1-pixel detail: every pattern inks exactly half of
the tile's pixels, so a view downscaled by 2 or more turns all four into the same tinted blob and
only a full-resolution view can tell them apart.

The tile sits on the 8-pixel lattice, so at full resolution it fills exactly one 8-pixel patch of
a tiny ViT (the tower reads it with its patch embedding alone).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image

TILE = 8
PATTERNS = ("horizontal", "vertical", "checkered", "diagonal")
COLOURS = {"red": (210, 30, 30), "green": (20, 150, 50), "blue": (40, 60, 220), "orange": (240, 140, 20)}
BACKGROUND = (255, 255, 255)
# (width, height) of the canvases, from 1:1 to 3:1 and 1:3 (the tower's side is 32).
CANVASES = ((96, 32), (32, 96), (64, 32), (32, 64), (64, 64))


def pattern_inked(pattern: str, x: int, y: int) -> bool:
    """Whether pixel (x, y) of the tile is inked; each pattern inks exactly 32 of its 64 pixels."""
    if pattern == "horizontal":
        return y % 2 == 0
    if pattern == "vertical":
        return x % 2 == 0
    if pattern == "checkered":
        return (x + y) % 2 == 0
    if pattern == "diagonal":
        return (x + y) % 4 < 2
    raise ValueError(f"unknown pattern {pattern!r}; known: {', '.join(PATTERNS)}")


@dataclass(frozen=True)
class HiresScene:
    width: int
    height: int
    tile_x: int  # top-left corner, multiples of TILE
    tile_y: int
    pattern: str
    colour: str


def sample_scene(rng: random.Random, canvases=CANVASES) -> HiresScene:
    width, height = rng.choice(canvases)
    return HiresScene(width, height, TILE * rng.randrange(width // TILE), TILE * rng.randrange(height // TILE),
                      rng.choice(PATTERNS), rng.choice(sorted(COLOURS)))


def render_scene(scene: HiresScene) -> Image.Image:
    image = Image.new("RGB", (scene.width, scene.height), BACKGROUND)
    ink = COLOURS[scene.colour]
    pixels = image.load()
    for y in range(TILE):
        for x in range(TILE):
            if pattern_inked(scene.pattern, x, y):
                pixels[scene.tile_x + x, scene.tile_y + y] = ink
    return image
