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


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        text = _read(path)
        if text and text.strip().isdigit():
            limit = int(text.strip())
            if limit < 1 << 60:
                return limit
    return None


def memory_total() -> int:
    """Physical memory in bytes, capped by a cgroup limit."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 1 << 62
    limit = _cgroup_limit()
    return min(total, limit) if limit else total


def memory_available() -> int:
    """Memory in bytes a new allocation can still get (MemAvailable, cgroup-capped)."""
    available = None
    text = _read("/proc/meminfo")
    if text:
        for line in text.splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    if available is None:
        available = memory_total()
    limit = _cgroup_limit()
    if limit:
        usage_text = _read("/sys/fs/cgroup/memory.current")
        usage = int(usage_text) if usage_text and usage_text.strip().isdigit() else 0
        available = min(available, max(limit - usage, 0))
    return available
