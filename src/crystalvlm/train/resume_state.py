"""Training state for exact resume, written atomically.

A resume checkpoint is a folder `step-NNNNNNN` holding the full model weights (safetensors), the
optimizer and scheduler state, every RNG state and the step counter. It is written under a
temporary name, fsynced, then renamed; the `latest` file is replaced atomically afterwards. A kill
at any moment therefore leaves either the previous complete checkpoint or the new one as latest,
never a half-written one.

`trainer.pt` holds tensors and plain values only (the RNG states included) and is read with
`torch.load(weights_only=True)`, so a run folder from elsewhere cannot run code on `--resume`.

Under FSDP (`Shards` given) every rank takes part: rank 0 writes the gathered weights, the
scheduler and the step as above, and each rank writes its own shard of the optimizer state and its
own RNG states into `optimizer-rankRRRRR-of-WWWWW.pt` in the same staging folder before the folder
is renamed. `state.json` records the number of shards; a resume must use as many processes.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file


@dataclass
class Shards:
    """This rank's part in writing and reading a sharded (FSDP) resume state."""

    rank: int
    world: int
    barrier: Callable[[], None]  # every rank waits here until all arrive
    local_optimizer_state: Callable[[], dict]  # this rank's optimizer shard, plain tensors only
    load_local_optimizer_state: Callable[[dict, Path], None]
    load_full_weights: Callable[[dict[str, torch.Tensor]], None]  # rank 0's full weights into the sharded model

    def file_name(self, rank: int | None = None) -> str:
        return f"optimizer-rank{self.rank if rank is None else rank:05d}-of-{self.world:05d}.pt"


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


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def save_resume_state(folder: Path, step: int, model_state: dict[str, torch.Tensor], optimizer, scheduler,
                      keep: int = 2, shards: Shards | None = None) -> Path:
    """Write the resume state of `step`. Without `shards`: called by the main process only. With
    `shards`: called by every rank; `model_state` (the gathered weights) is read on rank 0 only."""
    main = shards is None or shards.rank == 0
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:07d}"
    if main:
        for stale in folder.glob(".step-*.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed writer
        staging = folder / f".step-{step:07d}.tmp-{os.getpid()}"
        staging.mkdir()
    if shards is not None:
        shards.barrier()  # the staging folder exists, the only one for this step (stale ones are gone)
        (staging,) = folder.glob(f".step-{step:07d}.tmp-*")
        shard_file = staging / shards.file_name()
        torch.save({"optimizer": shards.local_optimizer_state(), "rng": _rng_state()}, shard_file)
        _fsync(shard_file)
        shards.barrier()  # every rank's shard is on disk before rank 0 completes and renames the folder
    if main:
        save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()}, str(staging / "model.safetensors"))
        trainer_state = {"scheduler": scheduler.state_dict(), "rng": _rng_state()}
        if shards is None:
            trainer_state["optimizer"] = optimizer.state_dict()
        torch.save(trainer_state, staging / "trainer.pt")
        (staging / "state.json").write_text(json.dumps({"step": step, "optimizer_shards": shards.world if shards else 0}))
        for path in staging.iterdir():
            _fsync(path)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        _atomic_write_text(folder / "latest", final.name)
        for old in sorted(folder.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    if shards is not None:
        shards.barrier()  # no rank runs ahead (and saves again) before this state is complete
    return final


def latest_resume_state(folder: Path) -> Path | None:
    pointer = folder / "latest"
    if not pointer.is_file():
        return None
    candidate = folder / pointer.read_text().strip()
    return candidate if (candidate / "state.json").is_file() else None


def load_resume_state(path: Path, model, optimizer, scheduler, shards: Shards | None = None) -> int:
    """Restore everything; return the number of optimizer steps already taken. With `shards`
    (FSDP), every rank calls it and reads its own optimizer shard."""
    saved = _load_trainer_state(path / "trainer.pt")  # first: a refused file changes nothing
    written_shards = json.loads((path / "state.json").read_text()).get("optimizer_shards", 0)
    if (shards.world if shards else 0) != written_shards:
        launch = f"a sharded (FSDP) launch of {shards.world} processes" if shards else "an unsharded launch"
        written = f"a sharded (FSDP) run of {written_shards} processes" if written_shards else "an unsharded run"
        raise ValueError(f"resume state {path} was written by {written}; this is {launch}. Resume it the way it "
                         "was started (same --fsdp and process count), or run the stage again without --resume")
    if shards is None:
        local = None
    else:
        local = _load_trainer_state(path / shards.file_name())
    # Sharded: rank 0 alone reads the weights and broadcasts them (one host copy, not one per rank).
    weights = load_file(str(path / "model.safetensors")) if shards is None or shards.rank == 0 else {}
    if shards is None:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or [m for m in missing if m in dict(model.named_parameters())]:
            raise ValueError(f"resume checkpoint {path} does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        optimizer.load_state_dict(saved["optimizer"])
    else:
        shards.load_full_weights(weights)
        shards.load_local_optimizer_state(local["optimizer"], path / shards.file_name())
    scheduler.load_state_dict(saved["scheduler"])
    _restore_rng(saved["rng"] if local is None else local["rng"])
    return json.loads((path / "state.json").read_text())["step"]
