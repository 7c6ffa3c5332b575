"""The `World` interface: what a synthetic world gives the quickstart and the recipes that use it.

A world writes its data and pretrains its own tiny parts (`prepare`), names the recipe its
quickstart trains and the benchmark tasks it is judged on, may score trivial baselines, and adds
its own sections to the quickstart's report. `worlds.registry` maps a recipe's `prepare.world`
key to one. The library knows nothing of worlds; worlds use the library like any user's script.

Preparation survives a kill at any moment: `PreparedFolder` runs it as named steps, each writing
under a temporary name and renamed into place, and records each finished step in `prepared.json`
(written atomically). A rerun with the same settings and seed skips the finished steps and redoes
the one that was cut, from scratch; a rerun with other settings starts the folder afresh.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

MARKER = "prepared.json"


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON under a temporary name, flush it to disk, then rename it over `path`: a reader
    sees the old file or the new one, never half of one."""
    partial = path.with_name(path.name + f".partial-{os.getpid()}")
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(payload, indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


class PreparedFolder:
    """A world folder prepared in named steps, resumable after a kill.

    `prepared.json` holds {"settings", "seed", "steps": {name: what the step returned}}. It is
    written before the first step, so a folder cut short is still recognised as this preparation's
    and cleaned on the rerun; a non-empty folder without it is someone else's and is refused.
    """

    def __init__(self, folder: Path, settings: dict, seed: int, keep: tuple[str, ...] = ()) -> None:
        """`keep`: children never cleared, because they guard themselves (a nested prepared folder with
        its own marker, which redoes itself when its own settings change)."""
        self.folder = Path(folder)
        self.keep = tuple(keep)
        self.wanted = {"settings": settings, "seed": seed}
        self.marker = self.folder / MARKER
        self.record: dict = {**self.wanted, "steps": {}}

    def open(self) -> "PreparedFolder":
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"world folder {self.folder} exists and is not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        previous = self._read_marker()
        if previous is not None and {k: previous.get(k) for k in self.wanted} == self.wanted:
            self.record = {**self.wanted, **{k: v for k, v in previous.items() if k not in self.wanted}}
            self.record.setdefault("steps", {})
            return self
        if previous is None and any(self.folder.iterdir()):
            raise FileExistsError(f"{self.folder} is not empty and holds no prepared world (no {MARKER}); "
                                  "choose an empty or new folder")
        # Another preparation (other settings or seed) or a fresh folder: start from nothing.
        self.clear_outputs()
        write_json_atomic(self.marker, self.record)
        return self

    def clear_outputs(self) -> None:
        """Remove everything but the marker and the children named in `keep`: what a cut step left
        behind is redone, never trusted."""
        for child in self.folder.iterdir():
            if child.name != MARKER and child.name not in self.keep:
                _remove(child)

    def done(self, step: str) -> bool:
        return step in self.record["steps"]

    def result(self, step: str):
        return self.record["steps"][step]

    def run(self, step: str, work: Callable[[], Any]):
        """`work()` unless `step` finished before; its JSON-able result is recorded once it returns.
        The step must write its outputs atomically (e.g. through `staged`), so a cut step leaves
        nothing that looks finished."""
        if self.done(step):
            return self.result(step)
        result = work()
        self.record["steps"][step] = result
        write_json_atomic(self.marker, self.record)
        return result

    def finish(self, **summary) -> dict:
        """Record the whole preparation's summary beside its steps; return the record."""
        self.record.update(summary)
        write_json_atomic(self.marker, self.record)
        return self.record

    def _read_marker(self) -> dict | None:
        if not self.marker.is_file():
            return None
        try:
            record = json.loads(self.marker.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None  # cannot happen with atomic writes, but a damaged marker is never trusted
        return record if isinstance(record, dict) else None


@contextlib.contextmanager
def staged(destination: Path):
    """Yield a temporary folder beside `destination`; when the block ends normally, it replaces
    `destination` in one rename. Leftovers of a killed writer are removed first."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    for stale in destination.parent.glob(destination.name + ".partial-*"):
        _remove(stale)
    partial = destination.with_name(destination.name + f".partial-{os.getpid()}")
    partial.mkdir()
    yield partial
    if destination.exists():
        _remove(destination)
    os.replace(partial, destination)


def move_children(source: Path, destination: Path) -> None:
    """Move everything in `source` into `destination` (renames on one file system), then drop `source`."""
    for child in sorted(source.iterdir()):
        target = destination / child.name
        if target.exists():
            _remove(target)
        os.replace(child, target)
    source.rmdir()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@dataclass
class WorldContext:
    """What the quickstart hands a world's report hooks: where things are and what was measured."""
    world_dir: Path
    run_dir: Path
    settings: dict
    prepared: dict
    resources: Any = None
    details: dict[str, dict[str, list]] = field(default_factory=dict)  # column -> task -> per-sample detail


class World(ABC):
    """A synthetic world. Subclasses set `name` (the registry key), `recipe` (the shipped recipe its
    quickstart trains), `smoke_overrides` (`--set`-style overrides of a seconds-long run for tests)
    and `pretrained_parts` (the keys of `prepare`'s result that describe pretrained parts)."""

    name: str
    recipe: str
    smoke_overrides: tuple[str, ...] = ()
    pretrained_parts: tuple[str, ...] = ()

    @abstractmethod
    def prepare(self, folder: Path, settings: dict, seed: int = 0, progress: bool = True, resources=None) -> dict:
        """Write the world and pretrain its parts into `folder` (resumable); return what was done."""

    def resources(self, settings: dict):
        """A context manager holding what preparation, baselines and scoring share (a browser, say)."""
        return contextlib.nullcontext(None)

    @abstractmethod
    def tasks(self, folder: Path, settings: dict, resources=None) -> list:
        """The benchmark tasks the quickstart evaluates before and after training."""

    def baselines(self, folder: Path, tasks: list, resources, scale: str, seed: int) -> tuple[dict, dict]:
        """({task: metrics} of trivial baselines, {task: description}); none by default."""
        return {}, {}

    def report_metrics(self, task: str, metrics: dict[str, float]) -> dict[str, float]:
        """The metrics of `task` as the report shows them."""
        return dict(metrics)

    def quickstart(self, out: Path, scale: str, seed: int, batch_size: int) -> dict | None:
        """A world whose quickstart is a pipeline of its own (a study) runs it here and returns its
        report; None (the default) runs the common pipeline of `worlds.quickstart`."""
        return None

    @abstractmethod
    def add_to_report(self, report: dict, context: WorldContext) -> None:
        """World-specific entries of report.json (a verdict, counts, examples)."""

    @abstractmethod
    def write_html(self, out: Path, report: dict, context: WorldContext, engine, tasks: list) -> Path:
        """report.html."""

    @abstractmethod
    def print_summary(self, report: dict, out: Path, checkpoint: Path, context: WorldContext) -> None:
        """The console summary that ends the quickstart."""
