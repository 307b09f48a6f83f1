"""The ``fft`` algorithm's per-frequency channel sums (numba kernels; see :mod:`.fft`)."""

from __future__ import annotations

import numpy as np
from numba import prange

from . import kernels
from .plans import FREQUENCY_BLOCK


@kernels._jit(inline="always")
def _job(job, blocks, middle, inner, freqs):  # type: ignore[no-untyped-def]
    """Job -> (outer, middle, inner index, first and last frequency of its block)."""
    block = job % blocks
    rest = job // blocks
    i = rest % inner
    rest //= inner
    f0 = block * FREQUENCY_BLOCK
    return rest // middle, rest % middle, i, f0, min(freqs, f0 + FREQUENCY_BLOCK)


@kernels._kernel()
def contract(p, q, out):  # type: ignore[no-untyped-def]
    """``out[n, g, i, f] = sum_r p[n, g, r, f] * q[g, i, r, f]`` (complex)."""
    n_images, groups, reduced, freqs = p.shape
    produced = q.shape[1]
    blocks = (freqs + FREQUENCY_BLOCK - 1) // FREQUENCY_BLOCK
    for job in prange(n_images * groups * produced * blocks):
        n, g, i, f0, f1 = _job(job, blocks, groups, produced, freqs)
        row = out[n, g, i]
        for f in range(f0, f1):
            row[f] = 0
        for r in range(reduced):
            a = p[n, g, r]
            b = q[g, i, r]
            for f in range(f0, f1):
                row[f] += a[f] * b[f]


@kernels._kernel()
def accumulate_weight(x, d, acc):  # type: ignore[no-untyped-def]
    """``acc[g, k, c, f] += sum_n x[n, g, c, f] * conj(d[n, g, k, f])`` (complex)."""
    n_images, groups, channels, freqs = x.shape
    produced = d.shape[2]
    blocks = (freqs + FREQUENCY_BLOCK - 1) // FREQUENCY_BLOCK
    for job in prange(groups * produced * channels * blocks):
        g, k, c, f0, f1 = _job(job, blocks, produced, channels, freqs)
        row = acc[g, k, c]
        for n in range(n_images):
            a = x[n, g, c]
            b = d[n, g, k]
            for f in range(f0, f1):
                row[f] += a[f] * np.conj(b[f])


PARALLEL_KERNELS = ("contract", "accumulate_weight")


def use_serial_kernels() -> None:
    """After a fork with the OpenMP pool started: single-threaded products."""
    kernels.make_serial(globals(), PARALLEL_KERNELS)
