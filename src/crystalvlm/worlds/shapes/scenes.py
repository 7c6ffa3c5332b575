"""The shapes world's scenes: seeded sampling, PIL rendering and exact ground-truth annotations.

A scene is a light-grey square image split into a 3x3 grid of cells. Each of its 1-4 objects (a
filled shape of one colour, small or large) sits alone in one cell, so objects never overlap and
an object's position word ("top left", ..., "center", ..., "bottom right") is the cell holding its
centre — never a borderline case. A quarter of the scenes also carry a short word, a number or a
sum ("3+4") written in black across the top or bottom row; objects then use the other two rows.

Shapes are not drawn uniformly: each scene has a *theme* that favours three shapes (circle, square
and triangle in "geometry"; moon, star and circle in "night", ...). Some shapes are therefore more
frequent overall (circle, star) and some pairs co-occur far more than others (moon with star),
which is what makes POPE's popular and adversarial negatives differ from random ones.

Everything is drawn 4x larger and box-downsampled to the final size, so edges are anti-aliased and
the result depends only on the scene (and the Pillow build): the same seed gives the same bytes.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Sequence

from PIL import Image, ImageDraw, ImageFont

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "heart", "hexagon", "cross", "diamond", "moon", "arrow",
)
PLURALS: dict[str, str] = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}

# Well separated in hue or lightness, all clearly different from the background (no white).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 135, 15),
    "yellow": (240, 210, 20),
    "green": (30, 160, 50),
    "blue": (30, 80, 230),
    "purple": (135, 45, 180),
    "pink": (255, 120, 200),
    "black": (20, 20, 20),
}
BACKGROUND: tuple[int, int, int] = (232, 232, 232)
TEXT_COLOR: tuple[int, int, int] = (20, 20, 20)

SIZES: tuple[str, ...] = ("small", "large")
# Object extent (largest side) as a fraction of the image side; a grid cell is 1/3 of it.
SIZE_FRACTIONS: dict[str, float] = {"small": 0.18, "large": 0.28}
TEXT_FRACTION = 0.30  # font size (em) as a fraction of the image side, shrunk when the text is wide
SUPERSAMPLE = 4  # draw at 4x, then box-filter down: anti-aliased, deterministic
GRID = 3
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 1024
MAX_OBJECTS = 4

# (row, column) of a grid cell -> the position word of an object whose centre lies in it.
POSITION_NAMES: dict[tuple[int, int], str] = {
    (0, 0): "top left", (0, 1): "top", (0, 2): "top right",
    (1, 0): "left", (1, 1): "center", (1, 2): "right",
    (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right",
}
POSITIONS: tuple[str, ...] = tuple(POSITION_NAMES.values())
# The position word inside a sentence: "a red circle is at the top left", "... on the left", ...
POSITION_PHRASES: dict[str, str] = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}

THEMES: dict[str, tuple[str, ...]] = {
    "geometry": ("circle", "square", "triangle"),
    "night": ("moon", "star", "circle"),
    "cards": ("heart", "diamond", "star"),
    "signs": ("arrow", "cross", "hexagon"),
}

WORDS: tuple[str, ...] = ("CAT", "DOG", "SUN", "BUS", "CAR", "HAT", "CUP", "KEY", "MAP", "PEN", "STOP", "OPEN")
NUMBERS: tuple[str, ...] = tuple(str(n) for n in range(1, 21))
TEXT_KINDS: tuple[str, ...] = ("word", "number", "expression")

# World knowledge used by text-only questions and the reasoning benchmarks.
CORNERS: dict[str, int] = {"circle": 0, "triangle": 3, "square": 4, "diamond": 4, "hexagon": 6}
SIDES: dict[str, int] = {"triangle": 3, "square": 4, "diamond": 4, "hexagon": 6}
STAR_POINTS = 5
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def article(word: str) -> str:
    """'a' or 'an' for the word that follows."""
    return "an" if word[0] in "aeiou" else "a"


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def evaluate_expression(expression: str) -> int:
    """The value of a rendered sum or difference such as '3+4' or '9-2'."""
    for operator in "+-":
        left, found, right = expression.partition(operator)
        if found:
            a, b = int(left), int(right)
            return a + b if operator == "+" else a - b
    raise ValueError(f"not an expression of the shapes world: {expression!r}")


# ----------------------------------------------------------------------------------------------
# Geometry: every shape as an outline in unit coordinates, normalised so that its bounding box is
# centred on (0, 0) and its larger side is 2. Drawing maps unit coordinates onto a pixel box.


def _star_outline(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    outline = []
    for index in range(points * 2):
        angle = -math.pi / 2 + index * math.pi / points
        radius = 1.0 if index % 2 == 0 else inner
        outline.append((radius * math.cos(angle), radius * math.sin(angle)))
    return outline


def _heart_outline(steps: int = 72) -> list[tuple[float, float]]:
    outline = []
    for index in range(steps):
        t = 2 * math.pi * index / steps
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        outline.append((x, y))
    return outline


def _cross_outline(half_width: float = 0.32) -> list[tuple[float, float]]:
    w = half_width
    return [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]


_RAW_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
    "triangle": [(0, -1), (1, 0.8), (-1, 0.8)],
    "star": _star_outline(),
    "heart": _heart_outline(),
    "hexagon": [(math.cos(k * math.pi / 3), math.sin(k * math.pi / 3)) for k in range(6)],
    "cross": _cross_outline(),
    "diamond": [(0, -1), (0.65, 0), (0, 1), (-0.65, 0)],
    "arrow": [(-1, -0.25), (0.1, -0.25), (0.1, -0.65), (1, 0), (0.1, 0.65), (0.1, 0.25), (-1, 0.25)],
}
# The moon is a disc of radius 1 at (0, 0) minus a disc of radius 0.8 at (0.4, 0): a crescent
# opening to the right whose horns end at x = 0.65.
_MOON_OUTER, _MOON_INNER = ((0.0, 0.0), 1.0), ((0.4, 0.0), 0.8)
_RAW_EXTENTS_SPECIAL: dict[str, tuple[float, float, float, float]] = {
    "circle": (-1.0, -1.0, 1.0, 1.0),
    "moon": (-1.0, -1.0, 0.65, 1.0),
}
# A point well inside each filled shape (raw coordinates): the moon is empty at its centre and the
# arrow's shaft is thin, so their probes sit in the crescent's belly and in the arrow head.
_RAW_INTERIOR: dict[str, tuple[float, float]] = {
    "circle": (0, 0), "square": (0, 0), "triangle": (0, 0.25), "star": (0, 0.05), "heart": (0, 3),
    "hexagon": (0, 0), "cross": (0, 0), "diamond": (0, 0), "moon": (-0.7, 0), "arrow": (0.35, 0),
}


@dataclass(frozen=True)
class _UnitFrame:
    """Maps a shape's raw coordinates to unit ones: centred bounding box, larger side 2."""

    center_x: float
    center_y: float
    scale: float
    half_width: float  # of the normalised bounding box
    half_height: float

    def to_unit(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.center_x) * self.scale, (y - self.center_y) * self.scale


@lru_cache(maxsize=None)
def _frame(shape: str) -> _UnitFrame:
    if shape in _RAW_EXTENTS_SPECIAL:
        x0, y0, x1, y1 = _RAW_EXTENTS_SPECIAL[shape]
    else:
        xs = [x for x, _ in _RAW_OUTLINES[shape]]
        ys = [y for _, y in _RAW_OUTLINES[shape]]
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    scale = 2.0 / max(x1 - x0, y1 - y0)
    return _UnitFrame((x0 + x1) / 2, (y0 + y1) / 2, scale, (x1 - x0) * scale / 2, (y1 - y0) * scale / 2)


_MASK_PAD = 2  # empty border (supersampled px) around a mask so its content never touches the edge


@lru_cache(maxsize=512)
def _shape_mask(shape: str, extent: int) -> Image.Image:
    """An 'L' mask (255 inside) of a shape whose larger side spans `extent` supersampled pixels."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; the shapes world has {', '.join(SHAPES)}")
    side = extent + 2 * _MASK_PAD
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    frame = _frame(shape)
    half = extent / 2
    middle = side / 2

    def to_pixels(x: float, y: float) -> tuple[float, float]:
        ux, uy = frame.to_unit(x, y)
        return middle + ux * half, middle + uy * half

    def disc(center: tuple[float, float], radius: float, fill: int) -> None:
        cx, cy = to_pixels(*center)
        r = radius * frame.scale * half
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)

    if shape == "circle":
        disc((0.0, 0.0), 1.0, 255)
    elif shape == "moon":
        disc(*_MOON_OUTER, 255)
        disc(*_MOON_INNER, 0)
    else:
        draw.polygon([to_pixels(x, y) for x, y in _RAW_OUTLINES[shape]], fill=255)
    return mask


def interior_point(shape: str, bbox: Sequence[int]) -> tuple[float, float]:
    """A pixel position well inside the drawn shape whose annotated bounding box is `bbox`.

    The bbox centre for most shapes; the crescent's belly for the moon (empty in the middle)."""
    frame = _frame(shape)
    ux, uy = frame.to_unit(*_RAW_INTERIOR[shape])
    x0, y0, x1, y1 = bbox
    return (x0 + (ux + frame.half_width) / (2 * frame.half_width) * (x1 - x0),
            y0 + (uy + frame.half_height) / (2 * frame.half_height) * (y1 - y0))


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled default font: the same glyphs on every machine, no font files needed.
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=1024)
def _text_mask(text: str, em: int) -> Image.Image:
    """An 'L' mask of `text` at font size `em` (supersampled px), cropped to its ink plus padding."""
    font = _font(em)
    left, top, right, bottom = font.getbbox(text)
    side_w, side_h = right - left + 2 * _MASK_PAD, bottom - top + 2 * _MASK_PAD
    mask = Image.new("L", (side_w, side_h), 0)
    ImageDraw.Draw(mask).text((_MASK_PAD - left, _MASK_PAD - top), text, fill=255, font=font)
    return mask


# ----------------------------------------------------------------------------------------------
# Scenes


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    bbox: tuple[int, int, int, int]  # final pixels, x1/y1 exclusive
    position: str
    # How to draw it: the mask's extent and its paste origin, in supersampled pixels.
    extent: int = field(repr=False, compare=True)
    origin: tuple[int, int] = field(repr=False, compare=True)

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return (x0 + x1) / 2, (y0 + y1) / 2

    def to_annotation(self) -> dict:
        return {"shape": self.shape, "color": self.color, "size": self.size, "bbox": list(self.bbox),
                "position": self.position}


@dataclass(frozen=True)
class Scene:
    image_size: int
    theme: str
    objects: tuple[SceneObject, ...]
    text: str | None = None
    text_kind: str | None = None  # "word" | "number" | "expression"
    text_bbox: tuple[int, int, int, int] | None = None
    text_em: int = field(default=0, repr=False)
    text_origin: tuple[int, int] = field(default=(0, 0), repr=False)

    def to_annotation(self, file: str) -> dict:
        return {
            "file": file,
            "objects": [obj.to_annotation() for obj in self.objects],
            "text": self.text,
            "text_kind": self.text_kind,
            "text_bbox": None if self.text_bbox is None else list(self.text_bbox),
            "theme": self.theme,
        }

    def signature(self) -> tuple:
        """Everything that determines the pixels: equal signatures render to equal images."""
        return (self.image_size, tuple((o.shape, o.color, o.extent, o.origin) for o in self.objects),
                self.text, self.text_em, self.text_origin)

    # Questions about a scene, shared by the instruction and benchmark writers.

    def shape_counts(self) -> Counter[str]:
        return Counter(obj.shape for obj in self.objects)

    def present_shapes(self) -> list[str]:
        """Distinct shapes in the scene, in vocabulary order."""
        counts = self.shape_counts()
        return [shape for shape in SHAPES if counts[shape]]

    def absent_shapes(self) -> list[str]:
        counts = self.shape_counts()
        return [shape for shape in SHAPES if not counts[shape]]

    def reading_order(self) -> list[SceneObject]:
        return sorted(self.objects, key=lambda o: (row_of(o), column_of(o)))


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn; the defaults are what the quickstart trains on."""

    text_probability: float = 0.25
    object_count_weights: tuple[float, ...] = (0.2, 0.3, 0.3, 0.2)  # for 1, 2, 3, 4 objects
    theme_weights: tuple[tuple[str, float], ...] = (("geometry", 0.35), ("night", 0.25), ("cards", 0.2), ("signs", 0.2))
    theme_strength: float = 0.8  # chance that an object's shape comes from the scene's theme
    large_probability: float = 0.5
    text_kind_weights: tuple[tuple[str, float], ...] = (("word", 0.5), ("number", 0.25), ("expression", 0.25))
    # Biases beyond the themes, off by default (a world that hallucinates turns them on):
    # `partners` (shape, partner): a scene holding the shape also holds the partner with
    # `partner_probability`; `frequent_shape` is put into a scene with `frequent_probability`.
    partners: tuple[tuple[str, str], ...] = ()
    partner_probability: float = 0.0
    frequent_shape: str | None = None
    frequent_probability: float = 0.0

    def __post_init__(self) -> None:
        for pair in self.partners:
            if len(pair) != 2 or not set(pair) <= set(SHAPES) or pair[0] == pair[1]:
                raise ValueError(f"SceneConfig.partners: each entry is two different shapes of the world, got {pair!r}")
        if self.frequent_shape is not None and self.frequent_shape not in SHAPES:
            raise ValueError(f"SceneConfig.frequent_shape {self.frequent_shape!r} is not a shape; known: {', '.join(SHAPES)}")
        for name in ("partner_probability", "frequent_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SceneConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.text_probability <= 1.0:
            raise ValueError(f"SceneConfig.text_probability must be in [0, 1], got {self.text_probability}")
        if not 0.0 <= self.theme_strength <= 1.0:
            raise ValueError(f"SceneConfig.theme_strength must be in [0, 1], got {self.theme_strength}")
        if not 0.0 <= self.large_probability <= 1.0:
            raise ValueError(f"SceneConfig.large_probability must be in [0, 1], got {self.large_probability}")
        if len(self.object_count_weights) != MAX_OBJECTS or min(self.object_count_weights) < 0 \
                or sum(self.object_count_weights) <= 0:
            raise ValueError(f"SceneConfig.object_count_weights needs {MAX_OBJECTS} non-negative weights (for 1..4 "
                             f"objects) with a positive sum, got {self.object_count_weights}")
        for name, _ in self.theme_weights:
            if name not in THEMES:
                raise ValueError(f"SceneConfig.theme_weights names unknown theme {name!r}; known: {', '.join(THEMES)}")
        if not self.theme_weights or min(w for _, w in self.theme_weights) < 0 or sum(w for _, w in self.theme_weights) <= 0:
            raise ValueError(f"SceneConfig.theme_weights must be non-negative with a positive sum, got {self.theme_weights}")
        for kind, _ in self.text_kind_weights:
            if kind not in TEXT_KINDS:
                raise ValueError(f"SceneConfig.text_kind_weights names unknown kind {kind!r}; known: {', '.join(TEXT_KINDS)}")
        if min(w for _, w in self.text_kind_weights) < 0 or sum(w for _, w in self.text_kind_weights) <= 0:
            raise ValueError(f"SceneConfig.text_kind_weights must be non-negative with a positive sum, got {self.text_kind_weights}")

    def to_dict(self) -> dict:
        return {
            "text_probability": self.text_probability,
            "object_count_weights": list(self.object_count_weights),
            "theme_weights": dict(self.theme_weights),
            "theme_strength": self.theme_strength,
            "large_probability": self.large_probability,
            "text_kind_weights": dict(self.text_kind_weights),
            # The biases are listed only when on, so a plain world's manifest reads as it always did.
            **({"partners": [list(p) for p in self.partners], "partner_probability": self.partner_probability}
               if self.partners and self.partner_probability else {}),
            **({"frequent_shape": self.frequent_shape, "frequent_probability": self.frequent_probability}
               if self.frequent_shape and self.frequent_probability else {}),
        }

    @property
    def biased(self) -> bool:
        return bool((self.partners and self.partner_probability) or (self.frequent_shape and self.frequent_probability))

    def apply_biases(self, shapes: list[str], rng: random.Random) -> list[str]:
        """`shapes` with the frequent shape and the partners put in (drawing from `rng` only when a
        bias is on, so unbiased scenes are the same as without this step). A shape that comes in
        takes a free slot while there is one (at most MAX_OBJECTS), else replaces another shape."""
        if not self.biased:
            return shapes
        shapes = list(shapes)

        def put(shape: str, keep: set[str]) -> None:
            if len(shapes) < MAX_OBJECTS:
                shapes.append(shape)
                return
            replaceable = [i for i, s in enumerate(shapes) if s not in keep]
            if replaceable:
                shapes[rng.choice(replaceable)] = shape

        if self.frequent_shape and rng.random() < self.frequent_probability and self.frequent_shape not in shapes:
            shapes[rng.randrange(len(shapes))] = self.frequent_shape
        for shape, partner in self.partners:
            if shape in shapes and partner not in shapes and rng.random() < self.partner_probability:
                put(partner, {shape, self.frequent_shape or ""})
        return shapes


AUTO = "auto"


def check_image_size(image_size: int) -> None:
    if not isinstance(image_size, int) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels, got {image_size!r}")


_CELL_OF_POSITION: dict[str, tuple[int, int]] = {name: cell for cell, name in POSITION_NAMES.items()}


def column_of(obj: SceneObject) -> int:
    """0, 1 or 2: the grid column holding the object's centre."""
    return _CELL_OF_POSITION[obj.position][1]


def row_of(obj: SceneObject) -> int:
    return _CELL_OF_POSITION[obj.position][0]


def position_name(center_x: float, center_y: float, image_size: int) -> str:
    """The position word of a point: which third of the image it lies in, across and down."""
    column = min(GRID - 1, int(center_x * GRID // image_size))
    row = min(GRID - 1, int(center_y * GRID // image_size))
    return POSITION_NAMES[(row, column)]


def is_left_of(a: SceneObject, b: SceneObject) -> bool:
    """`a` is in a column left of `b`'s (objects in the same column are neither left nor right)."""
    return column_of(a) < column_of(b)


def is_above(a: SceneObject, b: SceneObject) -> bool:
    return row_of(a) < row_of(b)


def _weighted_choice(rng: random.Random, pairs: Sequence[tuple[str, float]]) -> str:
    names = [name for name, _ in pairs]
    return rng.choices(names, weights=[weight for _, weight in pairs])[0]


def _sample_text(rng: random.Random, kind: str) -> str:
    if kind == "word":
        return rng.choice(WORDS)
    if kind == "number":
        return rng.choice(NUMBERS)
    if rng.random() < 0.6:
        return f"{rng.randint(1, 9)}+{rng.randint(1, 9)}"
    a = rng.randint(2, 9)
    return f"{a}-{rng.randint(1, a - 1)}"


def _to_final_box(x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
    """Supersampled ink box -> the final-pixel box covering every touched pixel (x1/y1 exclusive)."""
    k = SUPERSAMPLE
    return math.floor(x0 / k), math.floor(y0 / k), math.ceil(x1 / k), math.ceil(y1 / k)


def sample_scene(
    rng: random.Random,
    image_size: int = 64,
    config: SceneConfig = SceneConfig(),
    *,
    min_objects: int = 1,
    min_distinct_shapes: int = 1,
    text_kind: str | None = AUTO,
) -> Scene:
    """One random scene.

    `text_kind` is "auto" (text with `config.text_probability`), None (never) or a kind to force.
    `min_objects` / `min_distinct_shapes` condition the draw (POPE needs 3 different shapes)."""
    check_image_size(image_size)
    if not 1 <= min_objects <= MAX_OBJECTS:
        raise ValueError(f"min_objects must be 1..{MAX_OBJECTS}, got {min_objects}")
    if not 1 <= min_distinct_shapes <= MAX_OBJECTS:
        raise ValueError(f"min_distinct_shapes must be 1..{MAX_OBJECTS}, got {min_distinct_shapes}")
    if text_kind not in (AUTO, None, *TEXT_KINDS):
        raise ValueError(f"text_kind must be 'auto', None or one of {TEXT_KINDS}, got {text_kind!r}")
    lowest = max(min_objects, min_distinct_shapes)
    count_weights = [(str(n), w if n >= lowest else 0.0) for n, w in enumerate(config.object_count_weights, start=1)]
    if sum(w for _, w in count_weights) <= 0:
        count_weights = [(str(MAX_OBJECTS), 1.0)]

    kind = text_kind
    if kind == AUTO:
        kind = _weighted_choice(rng, config.text_kind_weights) if rng.random() < config.text_probability else None
    theme = _weighted_choice(rng, config.theme_weights)
    n_objects = int(_weighted_choice(rng, count_weights))
    theme_shapes = THEMES[theme]
    for _ in range(10_000):
        shapes = [rng.choice(theme_shapes) if rng.random() < config.theme_strength else rng.choice(SHAPES)
                  for _ in range(n_objects)]
        shapes = config.apply_biases(shapes, rng)
        if len(set(shapes)) >= min_distinct_shapes:
            break
    else:  # pragma: no cover - only reachable with a degenerate config
        raise RuntimeError(f"could not draw {min_distinct_shapes} distinct shapes for theme {theme!r}")

    side = image_size * SUPERSAMPLE
    cell = side / GRID
    text_row = rng.choice((0, GRID - 1)) if kind is not None else None
    free_cells = [(r, c) for r in range(GRID) for c in range(GRID) if r != text_row]
    n_objects = len(shapes)  # a bias may have added a shape
    cells = rng.sample(free_cells, n_objects)

    objects = []
    for shape, (row, column) in zip(shapes, cells):
        color = rng.choice(tuple(COLORS))
        size = "large" if rng.random() < config.large_probability else "small"
        extent = round(SIZE_FRACTIONS[size] * side)
        ink_x0, ink_y0, ink_x1, ink_y1 = _shape_mask(shape, extent).getbbox()
        ink_w, ink_h = ink_x1 - ink_x0, ink_y1 - ink_y0
        # Jitter inside the cell, keeping one final pixel of air on each side so neighbours never touch.
        slack_x = max(0, int((cell - ink_w) / 2) - SUPERSAMPLE)
        slack_y = max(0, int((cell - ink_h) / 2) - SUPERSAMPLE)
        center_x = (column + 0.5) * cell + rng.randint(-slack_x, slack_x)
        center_y = (row + 0.5) * cell + rng.randint(-slack_y, slack_y)
        origin = (round(center_x - (ink_x0 + ink_x1) / 2), round(center_y - (ink_y0 + ink_y1) / 2))
        bbox = _to_final_box(origin[0] + ink_x0, origin[1] + ink_y0, origin[0] + ink_x1, origin[1] + ink_y1)
        position = position_name((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2, image_size)
        if position != POSITION_NAMES[(row, column)]:  # pragma: no cover - geometry invariant
            raise AssertionError(f"object placed in cell {(row, column)} but its centre reads {position!r}")
        objects.append(SceneObject(shape, color, size, bbox, position, extent, origin))

    text = text_bbox = None
    text_em, text_origin = 0, (0, 0)
    if kind is not None:
        text = _sample_text(rng, kind)
        text_em = round(TEXT_FRACTION * side)
        max_w, max_h = 0.9 * side, cell - 2 * SUPERSAMPLE
        while True:  # shrink wide text until it fits its band
            mask = _text_mask(text, text_em)
            ink_x0, ink_y0, ink_x1, ink_y1 = mask.getbbox()
            ink_w, ink_h = ink_x1 - ink_x0, ink_y1 - ink_y0
            if (ink_w <= max_w and ink_h <= max_h) or text_em <= 8:
                break
            text_em = max(8, math.floor(text_em * min(max_w / ink_w, max_h / ink_h, 0.95)))
        slack_x = max(0, int((max_w - ink_w) / 2))
        center_x = side / 2 + rng.randint(-slack_x, slack_x)
        center_y = (text_row + 0.5) * cell
        text_origin = (round(center_x - (ink_x0 + ink_x1) / 2), round(center_y - (ink_y0 + ink_y1) / 2))
        text_bbox = _to_final_box(text_origin[0] + ink_x0, text_origin[1] + ink_y0,
                                  text_origin[0] + ink_x1, text_origin[1] + ink_y1)
    return Scene(image_size, theme, tuple(objects), text, kind, text_bbox, text_em, text_origin)


def render_scene(scene: Scene) -> Image.Image:
    """The scene as an RGB image of `scene.image_size` pixels a side."""
    side = scene.image_size * SUPERSAMPLE
    canvas = Image.new("RGB", (side, side), BACKGROUND)
    for obj in scene.objects:
        canvas.paste(COLORS[obj.color], obj.origin, _shape_mask(obj.shape, obj.extent))
    if scene.text is not None:
        canvas.paste(TEXT_COLOR, scene.text_origin, _text_mask(scene.text, scene.text_em))
    # reduce() averages each 4x4 block: exact area anti-aliasing, and untouched blocks stay background.
    return canvas.reduce(SUPERSAMPLE)


# ----------------------------------------------------------------------------------------------
# Statistics over a set of scenes (POPE's popular / adversarial sampling, hard negatives)


@dataclass(frozen=True)
class ShapeStatistics:
    """How many scenes hold each shape, and each pair of shapes together."""

    image_frequency: dict[str, int]
    cooccurrence: dict[str, dict[str, int]]

    @classmethod
    def from_shape_sets(cls, shape_sets: Iterable[Iterable[str]]) -> "ShapeStatistics":
        frequency = {shape: 0 for shape in SHAPES}
        cooccurrence = {a: {b: 0 for b in SHAPES if b != a} for a in SHAPES}
        for shapes in shape_sets:
            distinct = sorted(set(shapes))
            for a in distinct:
                frequency[a] += 1
                for b in distinct:
                    if a != b:
                        cooccurrence[a][b] += 1
        return cls(frequency, cooccurrence)

    @classmethod
    def from_scenes(cls, scenes: Iterable[Scene]) -> "ShapeStatistics":
        return cls.from_shape_sets(scene.present_shapes() for scene in scenes)

    def popularity_ranking(self) -> list[str]:
        """Shapes from most to least frequent (ties in vocabulary order)."""
        return sorted(SHAPES, key=lambda s: (-self.image_frequency[s], SHAPES.index(s)))

    def cooccurrence_score(self, candidate: str, present: Iterable[str]) -> int:
        """How often `candidate` appeared together with the present shapes, summed over them."""
        return sum(self.cooccurrence[p][candidate] for p in set(present) if p != candidate)

    def adversarial_ranking(self, present: Iterable[str]) -> list[str]:
        """Absent shapes from most to least co-occurring with the present ones."""
        present = set(present)
        absent = [s for s in SHAPES if s not in present]
        return sorted(absent, key=lambda s: (-self.cooccurrence_score(s, present), SHAPES.index(s)))

    def to_dict(self) -> dict:
        return {"image_frequency": dict(self.image_frequency), "cooccurrence": {a: dict(b) for a, b in self.cooccurrence.items()}}
