"""Local copies of lmms-lab's Hugging Face benchmark datasets (lmms-lab/POPE, lmms-lab/MME, ...).

Those repositories store each split as parquet shards (`data/test-00000-of-00004.parquet`) whose
image column holds the encoded file as `{"bytes": ..., "path": ...}`. Tasks need image paths, so
images are written once into a cache folder. pyarrow is optional: it is imported only here, and
only when such a copy is actually read.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from crystalvlm.eval.tasks.files import BenchmarkFormatError, image_inside

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")


def split_files(root: Path, split: str) -> list[Path]:
    """The parquet shards of `split` in root or one folder below (`data/test-00000-of-00002.parquet`).

    Only two levels are searched: benchmark folders also hold tens of thousands of images.
    """
    root = Path(root)
    found = [*root.glob("*.parquet"), *root.glob("*/*.parquet")]
    return sorted(path for path in found if path.name.startswith(f"{split}-") or path.stem == split)


def read_rows(files: list[Path]) -> list[dict]:
    """All rows of the shards, in shard order, as plain dicts."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise ImportError(
            "reading lmms-lab parquet copies needs pyarrow, which is not installed: pip install pyarrow"
        ) from None
    if not files:
        raise BenchmarkFormatError("no parquet shards given")
    rows: list[dict] = []
    for file in files:
        rows.extend(parquet.read_table(file).to_pylist())
    return rows


def save_image(cell: object, folder: Path, stem: str, where: str) -> Path:
    """Write an embedded image cell to folder/<stem>.<ext> once and return the path.

    `stem` may contain '/' (MME keys images as 'subtask/file'); sub-folders are created. It comes
    from the data (question_id, image_source, image_id), so it is confined to `folder`: a row
    naming "../../site-packages/x.pth" or an absolute path, or a name that reaches out through a
    symlink, is refused with the row and the name, before anything is created or written.
    """
    if not isinstance(cell, dict) or not isinstance(cell.get("bytes"), (bytes, bytearray)):
        raise BenchmarkFormatError(f"{where}: image column is not an embedded image ({{'bytes': ...}})")
    data = bytes(cell["bytes"])
    # Only a known image suffix is taken from the cell's own path; anything else is sniffed.
    suffix = Path(str(cell.get("path") or "")).suffix
    if suffix.lower() not in _IMAGE_SUFFIXES:
        suffix = ".png" if data.startswith(_PNG_MAGIC) else ".jpg"
    name = stem if Path(stem).suffix else stem + suffix
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = image_inside(folder, name, where)
    if target == folder.resolve():
        raise BenchmarkFormatError(f"{where}: image name {stem!r} names the image folder itself")
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp creates a new file (O_EXCL), so a planted symlink at a fixed ".partial" name
        # cannot redirect the write; the rename is atomic, so a killed extraction never leaves a
        # truncated image behind.
        handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
        try:
            os.fchmod(handle, 0o644)  # mkstemp's 0600 would hide the images from other users of a shared cache
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(partial, target)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
    return target
