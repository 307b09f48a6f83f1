"""Scratch memory that stays mapped between calls.

A fresh buffer of more than a few hundred KiB comes from ``mmap``, and every one of its pages
faults (and is zeroed by the kernel) when first written: for a layer of about a millisecond,
re-faulting a few MiB of scratch on every call costs a third of its time. So the numba
backend's kernels take their scratch from a buffer kept per calling Python thread (calls
from several threads never share one), grown when a call needs more and reused by the next
call. Buffers above ``KEEP_BYTES`` are not kept: one huge call does not pin its scratch.
"""

from __future__ import annotations

import threading

import numpy as np

KEEP_BYTES = 64 << 20

_local = threading.local()


def scratch(dtype: np.dtype, count: int) -> np.ndarray:
    """A 1-D array of ``count`` elements of ``dtype``, contents undefined, valid until this
    thread asks again (a kernel call uses it and returns before the next request)."""
    dtype = np.dtype(dtype)
    nbytes = max(1, count) * dtype.itemsize
    if nbytes > KEEP_BYTES:
        return np.empty(max(1, count), dtype)
    buffer = getattr(_local, "buffer", None)
    if buffer is None or buffer.nbytes < nbytes:
        # Grown by half again, so a sequence of growing layers does not reallocate each time.
        buffer = np.empty(min(KEEP_BYTES, max(nbytes, (buffer.nbytes * 3) // 2 if buffer is not None else 0)),
                          np.uint8)
        _local.buffer = buffer
    return buffer[:nbytes].view(dtype)


def release() -> None:
    """Drop this thread's buffer (tests, and a caller done with convolutions)."""
    _local.buffer = None
