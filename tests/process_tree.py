"""Killing a launched command the way a crash or an OOM killer would: every process it started.

torchrun starts each rank in a session of its own, so SIGKILL to the launcher's process group
leaves the ranks running (they would finish the job and race the resumed run). The tree is found
through /proc, frozen with SIGSTOP so no process can start another or write one more byte, then
killed.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after its ')'.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def kill_tree(pid: int) -> list[int]:
    """SIGSTOP then SIGKILL `pid` and every descendant; returns the pids signalled."""
    tree = [pid]
    for _ in range(3):  # a process may have started another between the scan and the stop
        for member in tree:
            _signal(member, signal.SIGSTOP)
        grown = [pid] + descendants(pid)
        if set(grown) == set(tree):
            break
        tree = grown
    for member in tree:
        _signal(member, signal.SIGKILL)
    return tree


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
