"""The first line on which each 64-bit key was seen, kept in SQLite on disk.

Deduplication must remember every record it has seen. In Python dicts that takes about 1 KB per
record (an exact key and nine LSH band keys), so memory grows with the input. SQLite keeps the keys
in a B-tree on disk behind a small page cache: memory stays flat, and a lookup costs microseconds.
The index commits together with the runner's outputs, and `rollback_after` drops what a killed run
added after its last commit.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterable

TABLES = ("exact", "band")


def _signed(key: int) -> int:
    """SQLite integers are signed 64-bit; the keys are unsigned 64-bit hashes."""
    return key - (1 << 64) if key >= 1 << 63 else key


class KeyIndex:
    """Two tables of key -> first line: `exact` (normalised-text hashes) and `band` (LSH band keys)."""

    def __init__(self, path: Path | None, cache_mib: int = 16):
        self.path = path
        self.db = sqlite3.connect(str(path) if path is not None else ":memory:", isolation_level=None)
        self.db.execute(f"PRAGMA cache_size=-{cache_mib * 1024}")  # negative: KiB
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        for table in TABLES:
            self.db.execute(f"CREATE TABLE IF NOT EXISTS {table} (key INTEGER PRIMARY KEY, line INTEGER NOT NULL) "
                            "WITHOUT ROWID")
        self.db.execute("BEGIN")

    def first(self, table: str, keys: Iterable[int]) -> int | None:
        """The earliest line holding any of `keys`, or None."""
        keys = [_signed(key) for key in keys]
        if not keys:
            return None
        marks = ",".join("?" * len(keys))
        (line,) = self.db.execute(f"SELECT MIN(line) FROM {table} WHERE key IN ({marks})", keys).fetchone()
        return line

    def add(self, table: str, keys: Iterable[int], line: int) -> None:
        """Record `line` for each key not yet seen (the first line stays)."""
        self.db.executemany(f"INSERT OR IGNORE INTO {table} (key, line) VALUES (?, ?)",
                            [(_signed(key), line) for key in keys])

    def commit(self) -> None:
        self.db.execute("COMMIT")
        self.db.execute("BEGIN")

    def rollback_after(self, line: int) -> None:
        """Forget what lines after `line` added (a killed run's uncommitted part)."""
        for table in TABLES:
            self.db.execute(f"DELETE FROM {table} WHERE line > ?", (line,))
        self.commit()

    def size(self) -> int:
        return sum(self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in TABLES)

    def close(self, delete: bool) -> None:
        self.db.execute("COMMIT")
        self.db.close()
        if delete and self.path is not None:
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
