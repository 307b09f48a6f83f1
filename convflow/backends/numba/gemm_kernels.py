"""The numba kernels that call the private BLAS (:mod:`.blas`) from numba's pool: one
single-threaded GEMM per block of the output, the blocks spread over the pool. They serve
:func:`convflow.backends.numba.blas.matmul` and the ``packed_gemm`` algorithm."""

from __future__ import annotations

import numpy as np
from numba import prange

from . import blas
from .kernels import _jit, _kernel, _serial, copy_run, make_serial, store_packed


@_jit(inline="always")
def _block(a, b, c, trans_a, trans_b, lda, ldb, ldc, m_step, n_step, beta, job):  # type: ignore[no-untyped-def]
    m, n = c.shape[1], c.shape[2]
    k = a.shape[2]
    m_blocks = -(-m // m_step)
    n_blocks = -(-n // n_step)
    i = job // (m_blocks * n_blocks)
    rest = job - i * m_blocks * n_blocks
    m0 = (rest // n_blocks) * m_step
    n0 = (rest - (rest // n_blocks) * n_blocks) * n_step
    a_i = a[0] if a.shape[0] == 1 else a[i]
    b_i = b[0] if b.shape[0] == 1 else b[i]
    # Logical views (a transposed operand keeps its transposed strides), so a block's first
    # element is found the same way whatever the storage order.
    a_sub = a_i[m0:]
    b_sub = b_i[:, n0:]
    if n == 1:
        # One column (a 1x1 convolution of a single pixel): a matrix-vector product.
        blas.gemv(trans_a, min(m_step, m - m0), k, a_sub, lda, b_sub, 1 if trans_b else ldb,
                  beta, c[i, m0:, n0:], ldc)
        return
    blas.gemm(trans_a, trans_b, min(m_step, m - m0), min(n_step, n - n0), k, a_sub, lda, b_sub,
              ldb, beta, c[i, m0:, n0:], ldc)


@_kernel()
def pool_gemm(a, b, c, trans_a, trans_b, lda, ldb, ldc, m_step, n_step, beta):  # type: ignore[no-untyped-def]
    """Blocks ``m_step x n_step`` of every ``c[i] (+)= op(a[i]) @ op(b[i])`` across the pool."""
    jobs = c.shape[0] * -(-c.shape[1] // m_step) * -(-c.shape[2] // n_step)
    for job in prange(jobs):
        _block(a, b, c, trans_a, trans_b, lda, ldb, ldc, m_step, n_step, beta, job)


serial_gemm = _serial(pool_gemm)


# Packed convolution as GEMMs ----------------------------------------------------------------
# The packed input (kernels.pack_input: every stride phase a dense plane) makes each kernel tap
# a unit-stride shifted read, so the taps that share a row offset form one matrix with the
# same leading dimension. With ``expanded`` holding, for every channel, one shifted copy per
# tap of a set E (rows ``(group, e, channel)``), tap row r of the kernel is the product of
# ``weights[r]`` (C_out x |E| * C_in/groups) with the columns of ``expanded`` from
# ``row_offsets[r]``. A job computes a block of output channels at a block of packed
# positions as one GEMM per tap row into its own accumulator, which stays in cache, and
# writes the positions that are outputs through the epilogue.

@_jit(inline="always")
def _packed_gemm_job(expanded, weights, row_offsets, y, n0, n_images, plane, hq, wq, per_image,  # type: ignore[no-untyped-def]
                     total, p_step, job, acc, bias, has_bias, act, zero, six):
    tap_rows, c_out, depth = weights.shape
    groups = expanded.shape[0] // depth
    per_group = c_out // groups
    m_step = acc.shape[0]
    m_blocks = -(-per_group // m_step)
    p_blocks = -(-total // p_step)
    g = job // (m_blocks * p_blocks)
    rest = job - g * (m_blocks * p_blocks)
    mb = rest // p_blocks
    p0 = (rest - mb * p_blocks) * p_step
    m0 = g * per_group + mb * m_step
    m = min(m_step, g * per_group + per_group - m0)
    n = min(p_step, total - p0)
    ld = expanded.shape[1]
    for r in range(tap_rows):
        blas.gemm(False, False, m, n, depth, weights[r, m0:], depth,
                  expanded[g * depth:, row_offsets[r] + p0:], ld, 0.0 if r == 0 else 1.0,
                  acc, p_step)
    store_packed(acc, y, n0, n_images, plane, hq, wq, per_image, p0, n, m0, m, bias, has_bias,
                 act, zero, six)


@_kernel()
def packed_gemm(expanded, weights, row_offsets, y, n0, n_images, plane, hq, wq, per_image,  # type: ignore[no-untyped-def]
                total, p_step, accumulators, bias, has_bias, act):
    """``y[n0:n0 + n_images]`` from the expanded packed input of those images (see above),
    in jobs of ``m_step`` output channels by ``p_step`` packed positions. Part ``i`` of the
    pool runs jobs ``i, i + parts, ...`` into its accumulator ``accumulators[i]``
    (``(parts, m_step, p_step)``, kept mapped between calls by the caller)."""
    c_out, depth = weights.shape[1], weights.shape[2]
    groups = expanded.shape[0] // depth
    per_group = c_out // groups
    parts, m_step = accumulators.shape[0], accumulators.shape[1]
    zero = np.zeros(1, dtype=y.dtype)[0]
    six = zero + 6
    jobs = groups * -(-per_group // m_step) * -(-total // p_step)
    for part in prange(parts):
        acc = accumulators[part]
        for job in range(part, jobs, parts):
            _packed_gemm_job(expanded, weights, row_offsets, y, n0, n_images, plane, hq, wq,
                             per_image, total, p_step, job, acc, bias, has_bias, act, zero, six)


@_kernel()
def packed_wgrad(grad, packed, tap_offsets, out, m_step, beta):  # type: ignore[no-untyped-def]
    """The weight gradient as one GEMM per kernel tap: ``out[t, o, c] = beta * out[t, o, c]
    + sum_p grad[o, p] * packed[g * C + c, tap_offsets[t] + p]`` (``grad`` is dy packed by
    kernels.pack_output, ``packed`` the packed input, C its channels per group), each
    product over every packed position of the tile; jobs are (group, tap, block of
    ``m_step`` output channels)."""
    taps, c_out, c_per_group = out.shape
    groups = packed.shape[0] // c_per_group
    per_group = c_out // groups
    m_blocks = -(-per_group // m_step)
    positions = grad.shape[1]
    for job in prange(groups * taps * m_blocks):
        g = job // (taps * m_blocks)
        rest = job - g * taps * m_blocks
        t = rest // m_blocks
        o0 = g * per_group + (rest - t * m_blocks) * m_step
        m = min(m_step, g * per_group + per_group - o0)
        blas.gemm(False, True, m, c_per_group, positions, grad[o0:], positions,
                  packed[g * c_per_group:, tap_offsets[t]:], packed.shape[1], beta, out[t, o0:],
                  c_per_group)


@_kernel()
def expand_taps(packed, expanded, column_offsets, c_per_group):  # type: ignore[no-untyped-def]
    """``expanded[(g, e, c)] = packed[g * c_per_group + c, column_offsets[e]:]`` (as many
    columns as ``expanded`` has): one shifted copy of every channel per expanded tap."""
    taps = column_offsets.shape[0]
    width = expanded.shape[1]
    for row in prange(expanded.shape[0]):
        g = row // (taps * c_per_group)
        rest = row - g * taps * c_per_group
        e = rest // c_per_group
        c = rest - e * c_per_group
        src = packed[g * c_per_group + c]
        start = column_offsets[e]
        copy_run(expanded[row], 0, src, start, width)


PARALLEL_KERNELS = ("pool_gemm", "packed_gemm", "packed_wgrad", "expand_taps")


def use_serial_kernels() -> None:
    """After a fork with the OpenMP pool started: every GEMM on the calling thread."""
    make_serial(globals(), PARALLEL_KERNELS)
