"""Facts about the host machine: CPU model, cores and memory (for checks, info and bench)."""

from __future__ import annotations

import os
import platform


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def cpu_name() -> str:
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_CGROUP_ROOT = "/sys/fs/cgroup"


def _cgroup_dirs() -> list[str]:
    """This process's memory cgroup directories, innermost first, up to the root: cgroup v1's
    ``memory`` controller line of ``/proc/self/cgroup`` where there is one, else v2's ``0::``."""
    found: dict[str, str] = {}
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if "memory" in controllers.split(","):
            found["v1"] = f"{_CGROUP_ROOT}/memory:{path}"
        elif hierarchy == "0" and controllers == "":
            found["v2"] = f"{_CGROUP_ROOT}:{path}"
    chosen = found.get("v1") or found.get("v2")
    if chosen is None:
        return [_CGROUP_ROOT, f"{_CGROUP_ROOT}/memory"]
    base, _, path = chosen.partition(":")
    parts = [p for p in path.split("/") if p and p != ".."]
    return [os.path.join(base, *parts[:depth]) for depth in range(len(parts), -1, -1)]


def _read_bytes(path: str) -> int | None:
    text = _read(path)
    value = text.strip() if text else ""
    return int(value) if value.isascii() and value.isdigit() else None


def _cgroup_room() -> tuple[int | None, int | None]:
    """The tightest memory limit of this process's cgroup and its ancestors, and the room
    left under it (limit minus usage, the smallest over the levels); None where unlimited."""
    limit_min = room_min = None
    for directory in _cgroup_dirs():
        for limit_name, usage_name in (("memory.max", "memory.current"),
                                       ("memory.limit_in_bytes", "memory.usage_in_bytes")):
            limit = _read_bytes(os.path.join(directory, limit_name))
            if limit is None or limit >= 1 << 60:  # "max" or v1's "unlimited" sentinel
                continue
            usage = _read_bytes(os.path.join(directory, usage_name)) or 0
            limit_min = limit if limit_min is None else min(limit_min, limit)
            room = max(limit - usage, 0)
            room_min = room if room_min is None else min(room_min, room)
    return limit_min, room_min


def _cgroup_limit() -> int | None:
    return _cgroup_room()[0]


def _address_space_room() -> int | None:
    """Room left under ``RLIMIT_AS`` (``ulimit -v``): the soft limit minus the address space
    in use now; None when unlimited or unknown."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    in_use = 0
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("VmSize:"):
            in_use = int(line.split()[1]) * 1024
            break
    return max(soft - in_use, 0)


def memory_total() -> int:
    """Physical memory in bytes, capped by a cgroup limit."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 1 << 62
    limit = _cgroup_limit()
    return min(total, limit) if limit else total


def memory_available() -> int:
    """Memory in bytes a new allocation can still get: MemAvailable, capped by the room left
    in this process's cgroup (and its ancestors) and under ``RLIMIT_AS``."""
    available = None
    text = _read("/proc/meminfo")
    if text:
        for line in text.splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    if available is None:
        available = memory_total()
    for room in (_cgroup_room()[1], _address_space_room()):
        if room is not None:
            available = min(available, room)
    return available
