"""What a run needs to be reproduced: versions, the project's revision, data hashes, the seed."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("crystalvlm", "torch", "transformers", "accelerate", "tokenizers", "safetensors", "pillow", "numpy")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_folder(folder: Path) -> dict[str, object]:
    """One digest over every file below `folder` (relative path and content), plus the count."""
    digest = hashlib.sha256()
    count = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + sha256_file(path).encode())
        count += 1
    return {"sha256": digest.hexdigest(), "files": count}


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


def write_provenance(run_dir: Path, seed: int, data_files: list[Path], image_folders: list[Path]) -> dict:
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
        "image_folders": {**earlier.get("image_folders", {}), **{str(p): sha256_folder(p) for p in image_folders}},
    }
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    partial.replace(path)
    return record
