"""The perf-db: autotune results that persist across processes.

One SQLite file in the cache directory (``CONVFLOW_CACHE_DIR``, else the user cache directory
from platformdirs). Each row maps a problem key (JSON of everything that changes which
algorithm is fastest: backend, device and driver identity, convflow version, dtype, layout,
shapes, every convolution parameter, deterministic and TF32 policy) to the chosen algorithm
and the measured times (JSON). Values are only ever parsed as JSON, never executed or
unpickled. SQLite's own locking makes writes atomic and lets several processes tune into one
file at once. A corrupted or truncated file is detected, reported once as a warning, moved
aside and replaced by an empty one. An in-memory dictionary sits in front of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from . import config

SCHEMA_VERSION = 1
FILE_NAME = f"perfdb-v{SCHEMA_VERSION}.sqlite3"
_TIMEOUT_S = 60.0


@dataclasses.dataclass(frozen=True)
class Entry:
    """A perf-db record: the fastest algorithm and what every candidate measured."""

    algorithm: str
    timings: Mapping[str, float | str]
    created: float


class PerfDB:
    """One perf-db file, opened lazily; thread-safe."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.path = directory / FILE_NAME
        self._memory: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self._checked = False

    # Connection handling ---------------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.directory.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=_TIMEOUT_S, isolation_level=None)
        try:
            yield connection
        finally:
            connection.close()

    def _ensure(self) -> None:
        """Create the table once; check integrity once per process, rebuilding if broken."""
        if self._checked:
            return
        try:
            with self._connect() as db:
                result = db.execute("PRAGMA quick_check").fetchone()
                if result is None or result[0] != "ok":
                    raise sqlite3.DatabaseError(f"integrity check failed: {result}")
                self._create(db)
        except sqlite3.DatabaseError as exc:
            self._quarantine(exc)
            with self._connect() as db:
                self._create(db)
        self._checked = True

    @staticmethod
    def _create(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, algorithm TEXT "
                   "NOT NULL, timings TEXT NOT NULL, created REAL NOT NULL)")

    def _quarantine(self, error: Exception) -> None:
        moved = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path, moved)
        for suffix in ("-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{self.path}{suffix}")
        warnings.warn(f"convflow: the perf-db {self.path} was unreadable ({error}); it was "
                      f"moved to {moved.name} and a new one started", RuntimeWarning, stacklevel=4)

    # Records ---------------------------------------------------------------------------
    def lookup(self, key: str) -> Entry | None:
        with self._lock:
            if key in self._memory:
                return self._memory[key]
            self._ensure()
            try:
                with self._connect() as db:
                    row = db.execute("SELECT algorithm, timings, created FROM entries WHERE key = ?",
                                     (key,)).fetchone()
            except sqlite3.DatabaseError as exc:
                self._quarantine(exc)
                self._checked = False
                return None
            if row is None:
                return None
            try:
                timings = json.loads(row[1])
                if not isinstance(timings, dict) or not isinstance(row[0], str):
                    raise ValueError("unexpected record shape")
            except ValueError:
                return None
            entry = Entry(row[0], timings, float(row[2]))
            self._memory[key] = entry
            return entry

    def store(self, key: str, entry: Entry) -> None:
        with self._lock:
            self._memory[key] = entry
            self._ensure()
            try:
                with self._connect() as db:
                    db.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?)",
                               (key, entry.algorithm, json.dumps(dict(entry.timings)),
                                entry.created))
            except sqlite3.DatabaseError as exc:
                self._quarantine(exc)
                self._checked = False

    def info(self) -> dict[str, Any]:
        with self._lock:
            self._ensure()
            with self._connect() as db:
                total = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
                by_backend: dict[str, int] = {}
                for (key,) in db.execute("SELECT key FROM entries"):
                    backend = json.loads(key).get("backend", "?")
                    by_backend[backend] = by_backend.get(backend, 0) + 1
        return {"path": str(self.path), "entries": total, "bytes": self.path.stat().st_size,
                "by_backend": by_backend}

    def clear(self) -> int:
        """Remove every record; return how many there were."""
        with self._lock:
            self._memory.clear()
            self._ensure()
            with self._connect() as db:
                count = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
                db.execute("DELETE FROM entries")
                db.execute("VACUUM")
            return int(count)


_databases: dict[pathlib.Path, PerfDB] = {}
_databases_lock = threading.Lock()


def current() -> PerfDB:
    """The perf-db of the current CONVFLOW_CACHE_DIR."""
    directory = config.private_cache_dir()
    with _databases_lock:
        db = _databases.get(directory)
        if db is None:
            db = _databases[directory] = PerfDB(directory)
        return db


def problem_key(fields: Mapping[str, Any]) -> str:
    """The canonical text of a key: sorted JSON, so equal problems give equal text."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))
