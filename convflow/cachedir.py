"""The cache directory's trust decision: is it private to this user, and where is it really?

The compiler caches below the cache directory (numba's index files are pickles, PyOpenCL's
invoker cache holds generated Python, PoCL's holds shared objects it ``dlopen``\\ s) are code
that the next convflow process runs, so whoever can write there can run code as the next
user. convflow uses the directory only when nobody else can write to it or replace it:

* it resolves the path one name at a time with ``lstat`` (never following a link blindly),
  so the physical directory it checks is the one every cache then uses;
* the cache directory itself must be a real directory (not a symbolic link) owned by this
  user and writable by nobody else (no group or other write bit); missing names are
  created mode 0700, one by one, inside directories already checked;
* each directory above it must be owned by this user or root and not writable by group or
  others, except a root-owned directory with the sticky bit (like ``/tmp``), where others
  cannot rename or remove what this user owns;
* a symbolic link on the way is followed only if this user or root owns it (its directory
  was already checked), and the target is checked the same way.

Otherwise, or when the directory cannot be made (a read-only or full file system, a file in
its place), every on-disk cache is skipped for the process, with one warning saying why:
convflow still computes, compiling in memory. ``convflow info`` shows the decision.

Nothing here can be raced by another user: every directory inspected is one only this user
or root can change, so what ``lstat`` saw stays true.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import stat
import threading
import warnings

from . import config
from .errors import CacheWarning

_MAX_LINKS = 40  # as the kernel's ELOOP limit


@dataclasses.dataclass(frozen=True)
class CacheTrust:
    """The trust decision on the cache directory.

    Attributes
    ----------
    configured : pathlib.Path
        The directory as configured (``CONVFLOW_CACHE_DIR`` or the platform default), absolute.
    path : pathlib.Path
        Its physical location (links resolved); use this one.
    trusted : bool
        Whether the caches below it are used.
    reason : str
        Why (for ``convflow info`` and the warning).
    """

    configured: pathlib.Path
    path: pathlib.Path
    trusted: bool
    reason: str


def _owner_ok(st: os.stat_result, uid: int) -> bool:
    return st.st_uid in (0, uid)


def _open_to_others(st: os.stat_result) -> bool:
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _who(uid: int) -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _resolve(configured: str, uid: int) -> tuple[str, str | None]:
    """Walk *configured* (absolute) name by name; return the physical path reached and why
    it is not private (``None`` when it is). Creates missing directories mode 0700."""
    pending = [part for part in configured.split("/") if part]
    current = "/"
    links = 0
    while pending:
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, name)
        last = not pending
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            try:
                os.mkdir(candidate, 0o700)
                st = os.lstat(candidate)
            except OSError as exc:
                return candidate, f"{candidate} cannot be created ({exc.strerror or exc})"
        except OSError as exc:
            return candidate, f"{candidate} cannot be inspected ({exc.strerror or exc})"
        if stat.S_ISLNK(st.st_mode):
            if last:
                return candidate, (f"{candidate} is a symbolic link; the cache directory itself "
                                   f"must be a real directory (convflow never writes where a "
                                   f"link points)")
            if not _owner_ok(st, uid):
                return candidate, (f"{candidate} is a symbolic link owned by {_who(st.st_uid)}, "
                                   f"who could point it anywhere")
            links += 1
            if links > _MAX_LINKS:
                return candidate, f"{candidate}: too many levels of symbolic links"
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = "/"
            pending = [part for part in target.split("/") if part] + pending
            continue
        if not stat.S_ISDIR(st.st_mode):
            return candidate, f"{candidate} is not a directory"
        if last and st.st_uid != uid:
            return candidate, (f"{candidate} is owned by {_who(st.st_uid)}, not by this user "
                               f"({_who(uid)})")
        if not _owner_ok(st, uid):
            return candidate, (f"{candidate} (above the cache directory) is owned by "
                               f"{_who(st.st_uid)}, who could replace what is below it")
        if _open_to_others(st):
            sticky_root = bool(st.st_mode & stat.S_ISVTX) and st.st_uid == 0
            if last or not sticky_root:
                where = "the cache directory" if last else "a directory above the cache directory"
                return candidate, (f"{candidate} ({where}) is writable by group or others (mode "
                                   f"{stat.S_IMODE(st.st_mode):04o}); make it private, e.g. "
                                   f"chmod 700 {candidate}")
        current = candidate
    return current, None


_decisions: dict[tuple[str, int], CacheTrust] = {}
_warned: set[tuple[str, str]] = set()
_lock = threading.Lock()


def trust() -> CacheTrust:
    """The trust decision on the current cache directory (made once per path and process;
    creates the directory, mode 0700, when it is missing)."""
    configured = config.cache_dir()
    uid = os.geteuid()
    key = (str(configured), uid)
    with _lock:
        decision = _decisions.get(key)
        if decision is None:
            physical, problem = _resolve(str(configured), uid)
            if problem is None:
                decision = CacheTrust(configured, pathlib.Path(physical), True,
                                      f"private: owned by {_who(uid)}, writable by nobody else")
            else:
                decision = CacheTrust(configured, pathlib.Path(physical), False,
                                      f"not used: {problem}; every on-disk cache is skipped")
            _decisions[key] = decision
        return decision


def forget() -> None:
    """Drop the remembered decisions (after a test changes the directory's owner or mode)."""
    with _lock:
        _decisions.clear()
        _warned.clear()


def warn_once(what: str, why: str, stacklevel: int = 3, once_per: str | None = None) -> None:
    """One :class:`CacheWarning` per process for each (what, why), or for each *once_per*
    when given (trouble that would otherwise repeat for every kernel of a cache)."""
    key = (what, why) if once_per is None else (once_per, "")
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(CacheWarning(f"convflow: {what}: {why}"), stacklevel=stacklevel)


def private_dir() -> pathlib.Path | None:
    """The physical cache directory when it is private, else ``None`` (after one warning):
    callers then skip their on-disk cache."""
    decision = trust()
    if decision.trusted:
        return decision.path
    warn_once(f"the cache directory {decision.configured}", decision.reason, stacklevel=4)
    return None


def private_subdir(name: str) -> pathlib.Path | None:
    """``<cache>/<name>`` as a private directory of this user (created 0700), or ``None``
    (with one warning) when the cache directory is not private or *name* is not a real
    directory of ours (a file, a link, another owner, read-only)."""
    base = private_dir()
    if base is None:
        return None
    path = base / name
    try:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            problem = "is not a directory" if not stat.S_ISLNK(st.st_mode) else "is a symbolic link"
        elif st.st_uid != os.geteuid() or _open_to_others(st):
            problem = f"is not private (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"
        elif not st.st_mode & stat.S_IWUSR or not os.access(path, os.W_OK | os.X_OK):
            problem = "is not writable"
        else:
            return path
    except OSError as exc:
        problem = f"cannot be used ({exc.strerror or exc})"
    warn_once(f"the cache {path}", f"it {problem}; this cache is skipped", stacklevel=4)
    return None
