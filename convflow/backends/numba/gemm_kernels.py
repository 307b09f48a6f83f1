"""The numba kernels behind :func:`convflow.backends.numba.blas.matmul`: one single-threaded
private-BLAS GEMM per block of the output, the blocks spread over numba's pool."""

from __future__ import annotations

from numba import prange

from . import blas
from .kernels import _jit, _kernel, _serial


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
    blas.gemm(trans_a, trans_b, min(m_step, m - m0), min(n_step, n - n0), k, a_sub, lda, b_sub,
              ldb, beta, c[i, m0:, n0:], ldc)


@_kernel()
def pool_gemm(a, b, c, trans_a, trans_b, lda, ldb, ldc, m_step, n_step, beta):  # type: ignore[no-untyped-def]
    """Blocks ``m_step x n_step`` of every ``c[i] (+)= op(a[i]) @ op(b[i])`` across the pool."""
    jobs = c.shape[0] * -(-c.shape[1] // m_step) * -(-c.shape[2] // n_step)
    for job in prange(jobs):
        _block(a, b, c, trans_a, trans_b, lda, ldb, ldc, m_step, n_step, beta, job)


serial_gemm = _serial(pool_gemm)

PARALLEL_KERNELS = ("pool_gemm",)


def use_serial_kernels() -> None:
    """After a fork with the OpenMP pool started: every GEMM on the calling thread."""
    global pool_gemm
    pool_gemm = serial_gemm
