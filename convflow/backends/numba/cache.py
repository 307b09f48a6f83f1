"""numba's on-disk kernel cache, made safe to load and confined to convflow's cache directory.

numba's own cache (``cache=True``) trusts its files: a truncated, empty or garbage index
(``.nbi``) or data file (``.nbc``) raises from ``pickle`` at the next compile, in every later
process, and a data file linked to ``/dev/zero`` is read without limit. When its directory
is unusable it silently falls back to ``__pycache__`` inside the installed package or to
``~/.cache/numba``. Rather than patch numba, convflow's kernels use a subclass of its
``FunctionCache`` (the class ``cache=True`` installs) that

* looks only in the directory convflow chose (``<cache>/numba``, or ``NUMBA_CACHE_DIR`` when
  the user set it): no fallback locations, so when that directory cannot be written the
  kernels are compiled in memory, with one warning;
* writes each file with a header holding the SHA-256 of its contents, and before unpickling
  checks it, reading only regular files (``O_NOFOLLOW``, no devices or FIFOs) of a bounded
  size;
* treats any failure to load an entry as damage: removes that kernel's index and data files
  (links themselves, never what they point to), warns once, and compiles the kernel again,
  which writes fresh files;
* never lets a failed write (read-only directory, full disk) fail the call.

numba's cache classes are internal API; they have kept this shape since numba 0.49, and if
they change, :func:`enable` leaves the kernel uncached (with the reason in a warning) rather
than failing.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import os
import pickle
import stat
from typing import Any

from numba.core import caching

from ... import cachedir

_MAGIC = b"convflow-numba-cache-1\n"
_DIGEST = 32
_MAX_INDEX_BYTES = 4 << 20    # an index lists a few signatures: kilobytes
_MAX_DATA_BYTES = 256 << 20   # one kernel's object code: well under a megabyte


class DamagedEntry(Exception):
    """A cache file that is not what convflow wrote (damaged, truncated, replaced)."""


def _sealed(payload: bytes) -> bytes:
    return _MAGIC + hashlib.sha256(payload).digest() + payload


def read_sealed(path: str, limit: int) -> bytes:
    """The checked payload of a cache file. Raises FileNotFoundError when it is missing and
    DamagedEntry when it is not a regular file, is too large, or fails its checksum."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise DamagedEntry(f"{path} cannot be opened as a file ({exc.strerror})") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DamagedEntry(f"{path} is not a regular file")
        if st.st_size > limit:
            raise DamagedEntry(f"{path} is {st.st_size} bytes, more than a cache file holds")
        with os.fdopen(os.dup(fd), "rb") as handle:
            raw = handle.read(limit + 1)
    finally:
        os.close(fd)
    head = len(_MAGIC) + _DIGEST
    if len(raw) > limit or len(raw) < head or not raw.startswith(_MAGIC):
        raise DamagedEntry(f"{path} is not a convflow cache file (empty, truncated or foreign)")
    payload = raw[head:]
    if hashlib.sha256(payload).digest() != raw[len(_MAGIC):head]:
        raise DamagedEntry(f"{path} fails its checksum (damaged)")
    return payload


class _CheckedFiles(caching.IndexDataCacheFile):
    """numba's index + data files, sealed with a checksum and read with limits.

    Their names carry ``.sealed`` (``kernels.f-12.py311.sealed.nbi``): numba's own format
    keeps numba's names, so a convflow without these checks sharing the directory never
    reads a sealed file (it would fail to unpickle it) and this one never reads an unsealed one.
    """

    def __init__(self, cache_path: str, filename_base: str, source_stamp: Any) -> None:
        super().__init__(cache_path, filename_base + ".sealed", source_stamp)

    def _load_index(self) -> dict[Any, str]:
        try:
            payload = read_sealed(self._index_path, _MAX_INDEX_BYTES)
        except FileNotFoundError:
            return {}
        stream = io.BytesIO(payload)
        version = pickle.load(stream)
        if version != self._version:
            return {}  # another numba's index: numba would not read it either
        stamp, overloads = pickle.loads(stream.read())
        if stamp != self._source_stamp or not isinstance(overloads, dict):
            return {}
        return overloads

    def _save_index(self, overloads: dict[Any, str]) -> None:
        payload = pickle.dumps(self._version, protocol=-1) + self._dump(
            (self._source_stamp, overloads))
        with self._open_for_write(self._index_path) as handle:
            handle.write(_sealed(payload))

    def _load_data(self, name: str) -> Any:
        return pickle.loads(read_sealed(self._data_path(name), _MAX_DATA_BYTES))

    def _save_data(self, name: str, data: Any) -> None:
        with self._open_for_write(self._data_path(name)) as handle:
            handle.write(_sealed(self._dump(data)))

    def discard(self) -> None:
        """Remove this function's index and data files (a link is removed, not followed)."""
        base = self._index_path[:-len(".nbi")]
        for path in [self._index_path, *glob.glob(glob.escape(base) + ".*.nbc")]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


class _OnlyChosenDirectory(caching.CompileResultCacheImpl):
    # Only the directory in numba.config.CACHE_DIR: never the package's __pycache__ or
    # ~/.cache/numba, whatever happens to the chosen one.
    _locator_classes = [caching.UserProvidedCacheLocator]  # noqa: RUF012 (numba's name)


_misses = [0]
_enabled = [False]


def misses() -> int:
    """How many times, in this process, a kernel was not in the disk cache (and compiled)."""
    return _misses[0]


def enabled() -> bool:
    """Whether convflow's kernels are cached on disk in this process."""
    return _enabled[0]


class CheckedFunctionCache(caching.FunctionCache):
    """numba's per-function cache with checked files; loading or saving never fails a
    compile (a damaged entry is removed and the kernel compiled again)."""

    _impl_class = _OnlyChosenDirectory

    def __init__(self, py_func: Any) -> None:
        super().__init__(py_func)
        self._cache_file: _CheckedFiles = _CheckedFiles(
            cache_path=self._cache_path, filename_base=self._impl.filename_base,
            source_stamp=self._impl.locator.get_source_stamp())

    def load_overload(self, sig: Any, target_context: Any) -> Any:
        try:
            loaded = super().load_overload(sig, target_context)
        except Exception as exc:  # any failure to load is damage: rebuild, never fail
            self._cache_file.discard()
            cachedir.warn_once(f"numba's cache entry for {self._py_func.__qualname__}",
                               f"it was unreadable ({type(exc).__name__}: {exc}); it was "
                               f"removed and the kernel compiled again (other damaged entries "
                               f"of this cache are treated alike, without more warnings)",
                               stacklevel=6, once_per=f"numba load {self._cache_path}")
            loaded = None
        if loaded is None:
            _misses[0] += 1
        return loaded

    def save_overload(self, sig: Any, data: Any) -> None:
        try:
            super().save_overload(sig, data)
        except Exception as exc:  # a full disk or read-only directory costs the cache only
            self.disable()
            cachedir.warn_once(f"numba's cache in {self._cache_path}",
                               f"a kernel could not be written ({type(exc).__name__}: {exc}); "
                               f"kernels that cannot be written are compiled in memory",
                               stacklevel=6, once_per=f"numba save {self._cache_path}")


def enable(dispatcher: Any) -> None:
    """Cache *dispatcher*'s compiled kernels with :class:`CheckedFunctionCache`; when the
    directory cannot hold them, warn once and leave the kernel uncached."""
    try:
        dispatcher._cache = CheckedFunctionCache(dispatcher.py_func)
        _enabled[0] = True
    except Exception as exc:  # no usable directory, or numba's internals changed
        cachedir.warn_once("numba's kernel cache", f"it cannot be used ({type(exc).__name__}: "
                           f"{exc}); kernels are compiled in memory", stacklevel=4,
                           once_per="numba enable")


def configure(wanted: bool) -> bool:
    """Point numba's cache at ``<cache>/numba`` (unless the user set NUMBA_CACHE_DIR) and
    say whether kernels are cached: not when CONVFLOW_NUMBA_CACHE is off or the cache
    directory (or its ``numba`` folder) is unusable."""
    if not wanted:
        return False
    if "NUMBA_CACHE_DIR" in os.environ:
        return True  # the user's choice of location; still only that one (see above)
    directory = cachedir.private_subdir("numba")
    if directory is None:
        return False
    from numba import config as numba_config

    numba_config.CACHE_DIR = str(directory)  # type: ignore[attr-defined]
    return True
