"""Reading images safely and shaping them the way the recipe says.

`open_image` (and `verify_image`, its checks without the pixel decode) refuses, with a reason: a path that escapes the image folder, a missing file, a file
that is not a decodable image (truncated, corrupt), a decompression bomb (more pixels than
`max_pixels`, checked from the header before any pixel is decoded) and a format outside a short
list. Only the decoders of the listed formats ever see the bytes: Pillow knows some forty formats,
and a few hand the file to other programs (EPS to Ghostscript) or are rarely exercised parsers, so
an untrusted file in such a format is refused by name instead of being parsed.

Preprocessing modes (LLaVA's `image_aspect_ratio`):
* `pad`    — expand to a square with the image processor's mean colour, then resize (LLaVA-1.5);
* `square` — resize straight to a square, ignoring the aspect ratio;
* `crop`   — the image processor's own resize and centre crop;
* `anyres` — LLaVA-NeXT's tiling by the processor's grid pinpoints (a LlavaNextImageProcessor): a
             whole view plus tower-sized sub-images; the model needs each image's size beside it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # about 8000x8000; far above any real training image
# The formats an image from outside (an upload, a data URL, a fetched URL) may have.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
# Files of a data set on disk: the same, plus TIFF (benchmark shards store some images as .tif).
DATA_IMAGE_FORMATS = IMAGE_FORMATS + ("TIFF",)
IMAGE_MODES = ("pad", "square", "crop", "anyres")


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and the reason."""


def resolve_inside(image_folder: str | Path, relative: str) -> Path:
    """The absolute path of `relative` inside `image_folder`; refuses paths that escape it."""
    folder = Path(image_folder).resolve()
    candidate = (folder / relative).resolve()
    if candidate != folder and folder not in candidate.parents:
        raise ImageError(f"image path {relative!r} escapes the image folder {folder}")
    return candidate


def _decode(data: bytes | Path, label: str, max_pixels: int, formats: tuple[str, ...],
            on_size: Callable[[int, int], None] | None = None, verify_only: bool = False) -> Image.Image | None:
    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else data
        # `formats`: Pillow tries only these decoders, so no other parser ever reads the bytes.
        with Image.open(source, formats=list(formats)) as probe:
            width, height = probe.size  # from the header only
            if width * height > max_pixels:
                raise ImageError(
                    f"{label}: {width}x{height} = {width * height} pixels is over the limit of {max_pixels} "
                    "(possible decompression bomb)"
                )
            if on_size is not None:
                on_size(width, height)  # may refuse (e.g. a server's budget of pixels), before decoding
            if verify_only:
                # Pillow's structural check without decoding pixels: a PNG's chunks and CRCs to IEND
                # (a truncated or damaged file fails here); formats without one pass on their header.
                probe.verify()
                return None
            probe.load()
            return probe.convert("RGB")
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError(f"{label}: decompression bomb refused ({error})") from None
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found") from None
    except UnidentifiedImageError:
        found = sniff_format(data)
        if found is not None and found not in formats:
            raise ImageError(f"{label}: the image is {found}, a format refused here; accepted formats: "
                             f"{', '.join(formats)}") from None
        if found is not None:
            raise ImageError(f"{label}: not a readable image (a damaged {found} file)") from None
        raise ImageError(f"{label}: not a readable image (no accepted format recognises it: {', '.join(formats)})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{label}: not a readable image ({error})") from None


def sniff_format(data: bytes | Path) -> str | None:
    """The format Pillow would read `data` as, from its first bytes only (each format's signature
    test; no decoder runs). None when no format claims the bytes."""
    if isinstance(data, Path):
        try:
            with open(data, "rb") as file:
                prefix = file.read(16)
        except OSError:
            return None
    else:
        prefix = data[:16]
    Image.init()
    for name, (_factory, accept) in Image.OPEN.items():
        try:
            claimed = accept is not None and accept(prefix)
        except Exception:  # a signature test that chokes on a short prefix claims nothing
            continue
        if claimed and not isinstance(claimed, str):
            return name
    return None


def open_image(image_folder: str | Path, relative: str, max_pixels: int = DEFAULT_MAX_PIXELS,
               formats: tuple[str, ...] = DATA_IMAGE_FORMATS) -> Image.Image:
    path = resolve_inside(image_folder, relative)
    if not path.is_file():
        raise ImageError(f"{relative}: file not found in {Path(image_folder)}")
    return _decode(path, str(relative), max_pixels, formats)  # type: ignore[return-value]


def verify_image(image_folder: str | Path, relative: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                 formats: tuple[str, ...] = DATA_IMAGE_FORMATS) -> tuple[int, int]:
    """The checks of `open_image` that need no pixel decoding (folder escape, missing file, format,
    size against `max_pixels`, the file's structure): cheap enough for every image of a data set up
    front. The full decode happens when the sample is made, in the data loader's workers.
    Returns the image's (width, height) from its header (anyres token counts depend on it)."""
    path = resolve_inside(image_folder, relative)
    if not path.is_file():
        raise ImageError(f"{relative}: file not found in {Path(image_folder)}")
    size: list[tuple[int, int]] = []
    _decode(path, str(relative), max_pixels, formats, on_size=lambda width, height: size.append((width, height)),
            verify_only=True)
    return size[0]


def decode_image_bytes(data: bytes, label: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS,
                       formats: tuple[str, ...] = IMAGE_FORMATS,
                       on_size: Callable[[int, int], None] | None = None) -> Image.Image:
    """An RGB image from encoded bytes. `on_size(width, height)` is called after the header checks
    and before any pixel is decoded; an exception it raises refuses the image."""
    return _decode(data, label, max_pixels, formats, on_size)  # type: ignore[return-value]


def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Pad the short side equally on both sides (LLaVA-1.5's expand2square)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def mean_colour(image_processor) -> tuple[int, int, int]:
    return tuple(int(round(channel * 255)) for channel in image_processor.image_mean)  # type: ignore[return-value]


def processor_side(image_processor) -> int:
    """The square side the vision tower expects."""
    crop = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop:
        return int(crop["height"])
    size = image_processor.size
    return int(size.get("height") or size.get("shortest_edge"))


def preprocess(images: list[Image.Image], image_processor, mode: str):
    """(N, 3, S, S) float pixel values for the vision tower; for `anyres` use `preprocess_anyres`."""
    if mode not in IMAGE_MODES:
        raise ValueError(f"unknown image preprocessing {mode!r}; choose one of {IMAGE_MODES}")
    if mode == "anyres":
        raise ValueError("anyres images come with their sizes: use preprocess_anyres")
    if mode == "pad" and getattr(image_processor, "do_pad", False):
        # The processor pads itself (LlavaImageProcessor's do_pad: LLaVA's expand2square with the
        # mean colour), exactly as plain transformers, vLLM and lmms-eval run it on the checkpoint.
        return image_processor(images=images, return_tensors="pt")["pixel_values"]
    side = processor_side(image_processor)
    if mode == "pad":
        fill = mean_colour(image_processor)
        images = [expand_to_square(image, fill).resize((side, side), Image.BICUBIC) for image in images]
    elif mode == "square":
        images = [image.resize((side, side), Image.BICUBIC) for image in images]
    return image_processor(images=images, return_tensors="pt")["pixel_values"]


def preprocess_anyres(images: list[Image.Image], image_processor):
    """LLaVA-NeXT tiling by the processor itself (a LlavaNextImageProcessor, whose grid pinpoints
    decide the layout): pixel_values (N, P, 3, S, S), each image's whole view then its sub-images,
    zero-padded to the most sub-images P of the list, and image_sizes (N, 2) as (height, width)."""
    if not hasattr(image_processor, "image_grid_pinpoints"):
        raise ValueError(f"image_mode anyres needs a LlavaNextImageProcessor (grid pinpoints); the checkpoint has "
                         f"a {type(image_processor).__name__}, trained without sub-images")
    output = image_processor(images=images, return_tensors="pt")
    return output["pixel_values"], output["image_sizes"]
