"""The perf-db: autotune results that persist across processes.

One SQLite file in the cache directory (``CONVFLOW_CACHE_DIR``, else the user cache directory
from platformdirs). Each row maps a problem key (JSON of everything that changes which
algorithm is fastest: backend, device and driver identity, convflow version, dtype, layout,
shapes, every convolution parameter, deterministic and TF32 policy) to the chosen algorithm
and the measured times (JSON). Values are only ever parsed as JSON, never executed or
unpickled. SQLite's own locking makes writes atomic and lets several processes tune into one
file at once. An in-memory dictionary sits in front of it.

Failures never lose records and never reach the caller raw: only real corruption (SQLite
says the file is not a database or is malformed, or ``PRAGMA quick_check`` fails) moves the
file aside, under a name no other quarantine can take, after checking again under an
exclusive lock so two processes never both move a file (the second would move the first's
fresh one). Every other failure (disk full, locked past the timeout, a read-only or
unreadable file or directory) skips the file for that call with one
:class:`~convflow.errors.CacheWarning`; the record stays in memory and the file as it was.
When the cache directory is not private (:mod:`convflow.cachedir`), only memory is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import pathlib
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from . import cachedir, config
from .errors import CacheError

SCHEMA_VERSION = 1
FILE_NAME = f"perfdb-v{SCHEMA_VERSION}.sqlite3"
# Writers hold SQLite's lock for milliseconds; a lock held longer belongs to a stuck process,
# and the call goes on without the file rather than waiting on it.
_TIMEOUT_S = 10.0
# SQLite's result codes for a damaged file (the only ones that move it aside).
_CORRUPTION = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


class _Corrupt(Exception):
    """The file is damaged (not merely unreachable)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """A perf-db record: the fastest algorithm and what every candidate measured."""

    algorithm: str
    timings: Mapping[str, float | str]
    created: float


def _is_corruption(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", None)
    if name:  # extended codes too, e.g. SQLITE_CORRUPT_INDEX
        return any(name == code or name.startswith(code + "_") for code in _CORRUPTION)
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


class PerfDB:
    """One perf-db file, opened lazily; thread-safe.

    Parameters
    ----------
    directory : pathlib.Path or None
        The (private) cache directory; ``None`` keeps records in memory only.
    """

    def __init__(self, directory: pathlib.Path | None, shown: pathlib.Path | None = None) -> None:
        self.directory = directory
        self.path = (directory or shown or pathlib.Path(".")) / FILE_NAME
        self._memory: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self._checked = False

    # Connection handling ---------------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self.directory is None:
            raise sqlite3.OperationalError("the cache directory is not private")
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.path)
            if not stat.S_ISREG(st.st_mode):
                # A link or a device in its place: never write where it points.
                raise sqlite3.OperationalError(f"{self.path} is not a regular file")
        connection = sqlite3.connect(self.path, timeout=_TIMEOUT_S, isolation_level=None)
        try:
            yield connection
        finally:
            connection.close()

    def _check(self, db: sqlite3.Connection) -> None:
        try:
            result = db.execute("PRAGMA quick_check").fetchone()
        except sqlite3.Error as exc:
            if _is_corruption(exc):
                raise _Corrupt(str(exc)) from exc
            raise
        if result is None or result[0] != "ok":
            raise _Corrupt(f"integrity check failed: {result}")

    def _ensure(self) -> bool:
        """Create the table and check integrity once per process; quarantine a corrupt
        file. Returns whether the file can be used now (else one warning says why)."""
        if self._checked:
            return True
        try:
            try:
                with self._connect() as db:
                    self._check(db)
                    self._create(db)
            except _Corrupt as exc:
                self._quarantine(str(exc))
                with self._connect() as db:
                    self._create(db)
        except (sqlite3.Error, OSError) as exc:
            self._skip(exc)
            return False
        self._checked = True
        return True

    @staticmethod
    def _create(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, algorithm TEXT "
                   "NOT NULL, timings TEXT NOT NULL, created REAL NOT NULL)")

    def _skip(self, error: BaseException) -> None:
        if self.directory is None:
            return  # cachedir already warned that the directory is not private
        cachedir.warn_once(f"the perf-db {self.path}",
                           f"it cannot be used now ({type(error).__name__}: {error}); this "
                           f"call goes on without it and nothing in it is lost", stacklevel=6)

    def _quarantine(self, error: str) -> None:
        """Move a corrupt file aside, once, under a unique name (checked again under an
        exclusive lock: another process may have replaced it by a fresh one already)."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                with self._connect() as db:
                    self._check(db)
                return  # repaired meanwhile by another process
            except _Corrupt:
                pass
            moved = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
                                        f"-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.path, moved)
            for suffix in ("-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(f"{self.path}{suffix}")
        finally:
            os.close(fd)
        cachedir.warn_once(f"the perf-db {self.path}", f"it was unreadable as a database ({error}); it was moved "
                           f"to {moved.name} and a new one started", stacklevel=7)

    # Records ---------------------------------------------------------------------------
    def lookup(self, key: str) -> Entry | None:
        with self._lock:
            if key in self._memory:
                return self._memory[key]
            if not self._ensure():
                return None
            try:
                with self._connect() as db:
                    row = db.execute("SELECT algorithm, timings, created FROM entries WHERE key = ?",
                                     (key,)).fetchone()
            except (sqlite3.Error, OSError) as exc:
                self._failed(exc)
                return None
            if row is None:
                return None
            try:
                timings = json.loads(row[1])
                if not isinstance(timings, dict) or not isinstance(row[0], str):
                    raise ValueError("unexpected record shape")
                entry = Entry(row[0], timings, float(row[2]))
            except (ValueError, TypeError):
                return None
            self._memory[key] = entry
            return entry

    def store(self, key: str, entry: Entry) -> None:
        with self._lock:
            self._memory[key] = entry
            if not self._ensure():
                return
            try:
                with self._connect() as db:
                    db.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?)",
                               (key, entry.algorithm, json.dumps(dict(entry.timings)),
                                entry.created))
            except (sqlite3.Error, OSError) as exc:
                self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        """After a failed read or write: corruption found now is checked (and quarantined)
        at the next call; anything else skips the file for this call."""
        if isinstance(exc, sqlite3.Error) and _is_corruption(exc):
            self._checked = False
        self._skip(exc)

    def info(self) -> dict[str, Any]:
        """Where the file is, how many records (per backend) and bytes; ``error`` says why
        the counts are missing when the file cannot be read."""
        with self._lock:
            if not self._ensure():
                return {"path": str(self.path), "entries": 0, "bytes": 0, "by_backend": {},
                        "error": "cannot be used now (see the warning)"}
            try:
                with self._connect() as db:
                    total = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
                    by_backend: dict[str, int] = {}
                    for (key,) in db.execute("SELECT key FROM entries"):
                        try:
                            backend = json.loads(key).get("backend", "?")
                        except (ValueError, AttributeError):
                            backend = "?"
                        by_backend[backend] = by_backend.get(backend, 0) + 1
                    size = self.path.stat().st_size
            except (sqlite3.Error, OSError) as exc:
                return {"path": str(self.path), "entries": 0, "bytes": 0, "by_backend": {},
                        "error": f"{type(exc).__name__}: {exc}"}
        return {"path": str(self.path), "entries": total, "bytes": size,
                "by_backend": by_backend}

    def clear(self) -> int:
        """Remove every record; return how many there were. Raises CacheError when the
        file cannot be changed (read-only, locked, disk full)."""
        with self._lock:
            self._memory.clear()
            if not self._ensure():
                raise CacheError(f"the perf-db {self.path} cannot be cleared now; see the "
                                 f"warning above for why")
            try:
                with self._connect() as db:
                    count = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
                    db.execute("DELETE FROM entries")
                    db.execute("VACUUM")
            except (sqlite3.Error, OSError) as exc:
                raise CacheError(f"the perf-db {self.path} cannot be cleared now "
                                 f"({type(exc).__name__}: {exc})") from exc
            return int(count)


_databases: dict[pathlib.Path, PerfDB] = {}
_databases_lock = threading.Lock()


def current() -> PerfDB:
    """The perf-db of the current CONVFLOW_CACHE_DIR (memory only when that directory is
    not private)."""
    configured = config.cache_dir()
    with _databases_lock:
        db = _databases.get(configured)
        if db is None:
            db = _databases[configured] = PerfDB(cachedir.private_dir(), configured)
        return db


def problem_key(fields: Mapping[str, Any]) -> str:
    """The canonical text of a key: sorted JSON, so equal problems give equal text."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))
