"""Training state for exact resume, written atomically.

A resume checkpoint is a folder `step-NNNNNNN` holding the full model weights (safetensors), the
optimizer and scheduler state, every RNG state and the step counter. It is written under a
temporary name, fsynced, then renamed; the `latest` file is replaced atomically afterwards. A kill
at any moment therefore leaves either the previous complete checkpoint or the new one as latest,
never a half-written one.

`trainer.pt` holds tensors and plain values only (the RNG states included) and is read with
`torch.load(weights_only=True)`, so a run folder from elsewhere cannot run code on `--resume`.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


class UnsafeResumeState(ValueError):
    """A resume file that would need arbitrary unpickling: refused before anything in it runs."""


def _rng_state() -> dict:
    python_version, python_internal, python_gauss = random.getstate()  # (3, 625 ints, float | None)
    numpy_algorithm, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    return {
        "python": {"version": python_version, "internal": torch.tensor(python_internal, dtype=torch.int64),
                   "gauss_next": python_gauss},
        # numpy_keys: (624,) uint32, kept exactly in int64.
        "numpy": {"algorithm": numpy_algorithm, "keys": torch.from_numpy(numpy_keys.astype(np.int64)),
                  "pos": int(numpy_pos), "has_gauss": int(numpy_has_gauss), "cached_gaussian": float(numpy_gauss)},
        "torch": torch.get_rng_state(),
    }


def _restore_rng(state: dict) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["algorithm"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])


def _load_trainer_state(path: Path) -> dict:
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message is a page of advice; its one useful line names the refused global.
        lines = [line.split("WeightsUnpickler error:", 1)[1] for line in str(error).splitlines()
                 if "WeightsUnpickler error:" in line]
        reason = lines[0].split(". ")[0].strip() if lines else type(error).__name__
        raise UnsafeResumeState(
            f"refusing to resume from {path}: it holds Python objects beyond tensors and plain values, and "
            f"loading them could run code ({reason}). crystalvlm never writes such a file; if this one is yours "
            f"from an older crystalvlm, run the stage again without --resume"
        ) from None


def _atomic_write_text(path: Path, text: str) -> None:
    staging = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(staging, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)


def save_resume_state(folder: Path, step: int, model_state: dict[str, torch.Tensor], optimizer, scheduler,
                      keep: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:07d}"
    staging = folder / f".step-{step:07d}.tmp-{os.getpid()}"
    for stale in folder.glob(".step-*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed writer
    staging.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()}, str(staging / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state()},
               staging / "trainer.pt")
    (staging / "state.json").write_text(json.dumps({"step": step}))
    for path in staging.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    _atomic_write_text(folder / "latest", final.name)
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_resume_state(folder: Path) -> Path | None:
    pointer = folder / "latest"
    if not pointer.is_file():
        return None
    candidate = folder / pointer.read_text().strip()
    return candidate if (candidate / "state.json").is_file() else None


def load_resume_state(path: Path, model, optimizer, scheduler) -> int:
    """Restore everything; return the number of optimizer steps already taken."""
    saved = _load_trainer_state(path / "trainer.pt")  # first: a refused file changes nothing
    weights = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or [m for m in missing if m in dict(model.named_parameters())]:
        raise ValueError(f"resume checkpoint {path} does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    _restore_rng(saved["rng"])
    return json.loads((path / "state.json").read_text())["step"]
