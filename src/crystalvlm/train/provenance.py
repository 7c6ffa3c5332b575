"""What a run needs to be reproduced: versions, the project's revision, data hashes, the seed.

Hashing every image of a large data set takes minutes, so it never holds a run up: the main process
hashes in a background thread (`start_provenance`) while every rank trains, and file digests are
cached by (path, size, modification time) under `$CRYSTALVLM_CACHE/file-hashes`, so a second run on
the same images reads them instead of hashing again. provenance.json is written (atomically) when the
hashing is done; the run waits for it only at its very end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path

from crystalvlm.data.check_cache import cache_root, file_digest

log = logging.getLogger(__name__)

PACKAGES = ("crystalvlm", "torch", "transformers", "accelerate", "tokenizers", "safetensors", "pillow", "numpy")


def sha256_file(path: Path) -> str:
    return file_digest(path)  # the record-check cache's digest: one SHA-256 reader for the package


def sha256_folder(folder: Path, cache_dir: Path | None = None) -> dict[str, object]:
    """One digest over every file below `folder` (relative path and content), plus the count. With
    `cache_dir`, each file's digest is reused while its size and modification time are unchanged."""
    cache_file = None
    known: dict[str, list] = {}
    if cache_dir is not None:
        cache_file = cache_dir / (hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:32] + ".json")
        try:
            known = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            known = {}
    fresh: dict[str, list] = {}
    digest = hashlib.sha256()
    count = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = str(path.relative_to(folder))
        stat = path.stat()
        entry = known.get(relative) if isinstance(known, dict) else None
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == [stat.st_size, stat.st_mtime_ns]:
            file_digest = entry[2]
        else:
            file_digest = sha256_file(path)
        fresh[relative] = [stat.st_size, stat.st_mtime_ns, file_digest]
        digest.update(relative.encode() + b"\0" + file_digest.encode())
        count += 1
    if cache_file is not None:
        try:
            _write_atomically(cache_file, json.dumps(fresh))
        except OSError as error:  # an unwritable cache only costs the next run the hashing
            log.warning("file-hash cache not written (%s)", error)
    return {"sha256": digest.hexdigest(), "files": count}


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    staging.write_text(text)
    os.replace(staging, path)


def git_revision() -> str | None:
    source = Path(__file__).resolve().parent
    try:
        revision = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return revision + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, object]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info: dict[str, object] = {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
                               "git_revision": git_revision()}
    try:
        import torch

        info["cuda"] = torch.version.cuda
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - provenance must never stop a run
        pass
    return info


def write_provenance(run_dir: Path, seed: int, data_files: list[Path], image_folders: list[Path],
                     cache_dir: Path | None = None) -> dict:
    """RUN/provenance.json. Data of stages run earlier into the same folder (a later stage run on its
    own, e.g. a dpo stage on pairs made after the previous stage) is kept beside this run's."""
    path = run_dir / "provenance.json"
    earlier: dict = {}
    if path.is_file():
        try:
            earlier = json.loads(path.read_text())
        except json.JSONDecodeError:
            earlier = {}
    record = {
        "seed": seed,
        "environment": environment(),
        "data_files": {**earlier.get("data_files", {}), **{str(p): sha256_file(p) for p in data_files}},
        "image_folders": {**earlier.get("image_folders", {}),
                          **{str(p): sha256_folder(p, cache_dir) for p in image_folders}},
    }
    _write_atomically(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


class ProvenanceWriter:
    """`write_provenance` in a background thread; `finish()` waits for it (a failure is logged: provenance
    never stops a run)."""

    def __init__(self, run_dir: Path, seed: int, data_files: list[Path], image_folders: list[Path]):
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="provenance", daemon=True,
                                        args=(run_dir, seed, data_files, image_folders))
        self._thread.start()

    def _run(self, run_dir: Path, seed: int, data_files: list[Path], image_folders: list[Path]) -> None:
        try:
            write_provenance(run_dir, seed, data_files, image_folders, cache_dir=cache_root() / "file-hashes")
        except BaseException as error:  # noqa: BLE001 - reported by finish()
            self.error = error

    def finish(self) -> None:
        self._thread.join()
        if self.error is not None:
            log.warning("provenance.json was not written: %s", self.error)


def start_provenance(run_dir: Path, seed: int, data_files: list[Path], image_folders: list[Path]) -> ProvenanceWriter:
    return ProvenanceWriter(run_dir, seed, data_files, image_folders)
