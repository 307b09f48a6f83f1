"""Where PyOpenCL and PoCL keep their on-disk caches, and how convflow keeps them harmless.

PoCL loads what its kernel cache holds without checking it: a garbage or truncated kernel
``.so`` or ``program.bc`` aborts the interpreter (SIGABRT, SIGBUS) at the first launch, in
every later process; a full disk ends the process in LLVM ("No space left"). Nothing can
catch that inside the process, so convflow checks the cache before PoCL ever sees it:

* **Seals.** When a process that used PoCL exits, convflow records the size and SHA-256 of
  every file in PoCL's cache (``<cache>/pocl/seals.json``, written atomically).
* **Check before use.** The first time a process starts OpenCL, convflow hashes every file
  and removes each program entry (``kcache/XX/HASH/``) holding a file that is not sealed or
  fails its seal, and anything that is not a plain file or directory (a link, a device);
  PoCL then rebuilds those programs. Hashing costs about 2 ms per MiB (a cache holding a
  whole network's kernels is tens of MiB) against about 0.45 s to rebuild one program, so a
  checked cache keeps nearly all of its worth.
* **Live processes.** Every process using the cache holds a shared ``flock`` on
  ``<cache>/pocl/lock`` while it runs. Unsealed entries may be another live process's
  fresh work (PoCL writes each file under a temporary name and renames it, so they are
  whole); they are removed only by a process that gets the lock exclusively, i.e. when no
  other process uses the cache. Entries that fail their seal are removed always.
* **Room.** PoCL is started only when its directory's file system has at least
  :data:`MIN_FREE_BYTES` free; otherwise the backend reports why instead of letting LLVM
  end the process.
* **No usable directory** (the cache directory is not private, ``pocl`` is a file or
  read-only): PoCL compiles in a fresh private temporary directory with its cache off, which
  is removed at exit.

PyOpenCL's own caches (its invoker cache is a pytools SQLite file of pickled Python code, its
binary cache feeds drivers compiled programs) are switched off (``PYOPENCL_NO_CACHE``) when
convflow imports pyopencl, unless the user set that variable: the invoker code they save is
generated in about a millisecond per kernel signature, PoCL caches programs itself, and a
damaged SQLite file or binary could otherwise fail every call or crash a driver.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pathlib
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

from ... import cachedir, config

logger = logging.getLogger("convflow")

MIN_FREE_BYTES = 64 << 20  # LLVM needs a few MiB per build; the rest is margin
SEALS = "seals.json"
_MAX_SEALS_BYTES = 64 << 20
# PoCL rewrites this one file of each entry as it uses it; it holds no code.
_UNSEALED_NAMES = {"last_accessed"}


class PoclCacheTrouble(Exception):
    """PoCL cannot be started safely here (no room to compile); the message says why."""


def _digest(path: str) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _read_seals(path: pathlib.Path) -> dict[str, list[Any]]:
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_SEALS_BYTES:
            return {}
        seals = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}  # no seals: every entry counts as unsealed
    return seals if isinstance(seals, dict) else {}


def _entries(kcache: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """(entry directory, its regular files (relative), its odd paths) for every program
    entry ``kcache/XX/HASH``; odd paths are links, devices, anything but files and dirs."""
    for top in sorted(os.listdir(kcache)):
        top_path = os.path.join(kcache, top)
        mode = os.lstat(top_path).st_mode
        if stat.S_ISREG(mode):
            continue  # PoCL's own temporary files (tempfile_*), never loaded as code
        if not stat.S_ISDIR(mode):
            yield top_path, [], [top_path]
            continue
        for name in sorted(os.listdir(top_path)):
            entry = os.path.join(top_path, name)
            files: list[str] = []
            odd: list[str] = []
            if not stat.S_ISDIR(os.lstat(entry).st_mode):
                odd.append(entry)
            else:
                for root, dirs, names in os.walk(entry):
                    for item in dirs + names:
                        full = os.path.join(root, item)
                        mode = os.lstat(full).st_mode
                        if stat.S_ISREG(mode):
                            files.append(os.path.relpath(full, kcache))
                        elif not stat.S_ISDIR(mode):
                            odd.append(full)
            yield entry, files, odd


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)  # a link is removed, never followed


def check_kcache(kcache: str, seals: dict[str, list[Any]], remove_unsealed: bool) -> list[str]:
    """Remove every entry of *kcache* that is damaged (a file not matching its seal, or
    anything not a file or directory) or, if *remove_unsealed*, that is not sealed.
    Returns the removed entries with the reason, for the log."""
    removed = []
    for entry, files, odd in _entries(kcache):
        why = f"{odd[0]} is not a regular file" if odd else ""
        for rel in files:
            if why:
                break
            if os.path.basename(rel) in _UNSEALED_NAMES:
                continue
            seal = seals.get(rel)
            full = os.path.join(kcache, rel)
            if seal is None:
                if remove_unsealed:
                    why = f"{rel} is not sealed (left by a process that did not exit cleanly)"
            elif os.lstat(full).st_size != seal[0] or _digest(full) != seal[1]:
                why = f"{rel} does not match its seal (damaged)"
        if why:
            _remove(entry)
            removed.append(f"{entry}: {why}")
    return removed


def seal_kcache(kcache: str, seals_path: pathlib.Path) -> None:
    """Record the size and digest of every file in *kcache* (merged with the seals already
    there, under an exclusive lock, written to a temporary file and renamed)."""
    lock = os.open(seals_path.with_name(SEALS + ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW,
                   0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        seals = _read_seals(seals_path)
        fresh: dict[str, list[Any]] = {}
        for _, files, _ in _entries(kcache):
            for rel in files:
                if os.path.basename(rel) in _UNSEALED_NAMES:
                    continue
                full = os.path.join(kcache, rel)
                size = os.lstat(full).st_size
                known = seals.get(rel)
                # A sealed file is trusted as sealed; a changed one keeps its old seal, so
                # the next check removes it.
                fresh[rel] = known if known is not None else [size, _digest(full)]
        descriptor, temporary = tempfile.mkstemp(dir=seals_path.parent, prefix=SEALS + ".")
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(fresh, handle)
        os.replace(temporary, seals_path)
    finally:
        os.close(lock)


class PoclCache:
    """The PoCL cache location of this process, checked once before PoCL starts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prepared: dict[str, str] | None = None
        self._error: str | None = None
        self._hold: int | None = None

    def environment(self) -> dict[str, str]:
        """The variables PoCL must see when it starts (prepared once per process). Raises
        PoclCacheTrouble when PoCL cannot be started safely."""
        with self._lock:
            if self._prepared is None and self._error is None:
                try:
                    self._prepared = self._prepare()
                except PoclCacheTrouble as exc:
                    self._error = str(exc)
            if self._error is not None:
                raise PoclCacheTrouble(self._error)
            assert self._prepared is not None
            return self._prepared

    def _prepare(self) -> dict[str, str]:
        base = cachedir.private_subdir("pocl")
        if base is not None:
            try:
                return self._checked(base)
            except OSError as exc:
                cachedir.warn_once(f"PoCL's cache {base}", f"it cannot be checked ({exc}); "
                                   f"PoCL compiles in a temporary directory instead")
        scratch = tempfile.mkdtemp(prefix="convflow-pocl-")
        atexit.register(shutil.rmtree, scratch, True)
        self._check_room(scratch)
        return {"POCL_CACHE_DIR": scratch, "POCL_KERNEL_CACHE": "0"}

    @staticmethod
    def _check_room(directory: str) -> None:
        free = shutil.disk_usage(directory).free
        if free < MIN_FREE_BYTES:
            raise PoclCacheTrouble(
                f"{directory} has {free / 2**20:.1f} MiB free, less than the "
                f"{MIN_FREE_BYTES >> 20} MiB PoCL may need to compile kernels (a full disk ends "
                f"the process inside LLVM); free space there or point CONVFLOW_CACHE_DIR "
                f"elsewhere")

    def _checked(self, base: pathlib.Path) -> dict[str, str]:
        kcache = base / "kcache"
        with contextlib.suppress(FileExistsError):
            os.mkdir(kcache, 0o700)
        if not stat.S_ISDIR(os.lstat(kcache).st_mode):
            _remove(str(kcache))
            os.mkdir(kcache, 0o700)
        self._check_room(str(base))
        hold = os.open(base / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                       0o600)
        try:
            fcntl.flock(hold, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        removed = check_kcache(str(kcache), _read_seals(base / SEALS), remove_unsealed=alone)
        for line in removed:
            logger.debug("PoCL cache entry removed before use: %s", line)
        if removed:
            cachedir.warn_once(f"PoCL's cache {kcache}",
                               f"{len(removed)} damaged or unsealed program(s) were removed "
                               f"and will be rebuilt (first: {removed[0]})")
        # Held (shared) until exit: tells other processes this cache is in use.
        fcntl.flock(hold, fcntl.LOCK_SH)
        self._hold = hold
        atexit.register(self._seal, str(kcache), base / SEALS)
        return {"POCL_CACHE_DIR": str(kcache)}

    @staticmethod
    def _seal(kcache: str, seals_path: pathlib.Path) -> None:
        try:
            seal_kcache(kcache, seals_path)
        except OSError as exc:  # at exit: a full disk costs the seals only
            logger.debug("PoCL cache not sealed: %s", exc)


POCL = PoclCache()


@contextlib.contextmanager
def pocl_scope() -> Iterator[None]:
    """Around the calls that start PoCL (platforms, contexts): its cache location, unless
    the user set POCL_CACHE_DIR. Raises PoclCacheTrouble when PoCL cannot start safely."""
    if "POCL_CACHE_DIR" in os.environ:
        yield
        return
    with contextlib.ExitStack() as stack:
        for name, value in POCL.environment().items():
            stack.enter_context(config.environment_default(name, value))
        yield


@contextlib.contextmanager
def pyopencl_import_scope() -> Iterator[None]:
    """Around the first import of pyopencl: its caches off (see the module docstring) and,
    should the user turn them back on, kept under the cache directory when it is private."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(config.environment_default("PYOPENCL_NO_CACHE", "1"))
        base = cachedir.private_dir()
        if base is not None:
            stack.enter_context(config.environment_default("XDG_CACHE_HOME", str(base)))
        yield


def pyopencl_cache_dir() -> str | bool:
    """``cache_dir`` for ``Program.build``: ``<cache>/pyopencl`` when usable, else False
    (no cache). pyopencl ignores it while PYOPENCL_NO_CACHE is set."""
    directory = cachedir.private_subdir("pyopencl")
    return str(directory) if directory is not None else False
