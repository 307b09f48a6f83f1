"""A BLAS whose threads convflow owns, called from inside numba's parallel loops.

Why not numpy's BLAS: ``np.matmul`` runs on numpy's OpenBLAS and its own thread pool. Beside
numba's pool that makes two pools on the same cores: while one runs, the other's workers
spin, and when torch (or any OpenMP user) loaded first, numba's workers share its OpenMP
runtime and spin on its terms, so a layer of ~2 ms took ~8 ms (two scheduler ticks).
Setting numpy's BLAS to one thread would change the user's numpy, which convflow never does.

So the numba backend loads its own copy of OpenBLAS from the ``scipy-openblas32`` wheel
(the build numpy and scipy ship, well kept and tuned per CPU), privately (``RTLD_LOCAL``: its
symbols never resolve anyone else's calls), sets that copy to one thread, and calls its
``cblas_?gemm`` from the partitions of numba's ``prange`` loops. Every parallel part of a
call thus runs on numba's one pool; OpenBLAS only ever runs single-threaded on the caller's
thread, which is safe for concurrent callers.

The GEMM symbol is registered with LLVM by name (``convflow_cblas_sgemm``), so kernels that
call it can be cached on disk: the cached object code links to whatever address this
process loaded.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from typing import Any

import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from . import blas_library

ROW_MAJOR = 101
NO_TRANS = 111
TRANS = 112

_lock = threading.Lock()
_registered: list[bool] = []


def load() -> str:
    """Load the private OpenBLAS once (one thread, :func:`.blas_library.open_library`) and
    register its GEMMs with LLVM under convflow's names.

    Returns a description for ``convflow info``; raises ImportError (kept as the reason the
    GEMM algorithms cannot run) when the library is missing or lacks a symbol."""
    if _registered:
        return blas_library.open_library()[1]
    with _lock:
        library, description = blas_library.open_library()
        if not _registered:
            import llvmlite.binding as llvm

            for ours, theirs in blas_library.SYMBOLS.items():
                llvm.add_symbol(ours, ctypes.cast(getattr(library, theirs), ctypes.c_void_p).value)
            _registered.append(True)
        return description


_i32 = types.int32
_sgemm: Any = types.ExternalFunction("convflow_cblas_sgemm", types.void(
    _i32, _i32, _i32, _i32, _i32, _i32, types.float32, types.voidptr, _i32, types.voidptr,
    _i32, types.float32, types.voidptr, _i32))
_dgemm: Any = types.ExternalFunction("convflow_cblas_dgemm", types.void(
    _i32, _i32, _i32, _i32, _i32, _i32, types.float64, types.voidptr, _i32, types.voidptr,
    _i32, types.float64, types.voidptr, _i32))


_sgemv: Any = types.ExternalFunction("convflow_cblas_sgemv", types.void(
    _i32, _i32, _i32, _i32, types.float32, types.voidptr, _i32, types.voidptr, _i32,
    types.float32, types.voidptr, _i32))
_dgemv: Any = types.ExternalFunction("convflow_cblas_dgemv", types.void(
    _i32, _i32, _i32, _i32, types.float64, types.voidptr, _i32, types.voidptr, _i32,
    types.float64, types.voidptr, _i32))


@intrinsic
def _address(typingctx, array):  # type: ignore[no-untyped-def]
    """The address of ``array``'s first element (a view's, for a slice)."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.bitcast(ary.data, cgutils.voidptr_t)

    return types.voidptr(array), codegen


address: Any = _address  # typed by numba, not mypy


def _by_dtype(a: Any, single: Any, double: Any) -> tuple[Any, Any] | None:
    """The external routine and scalar type for the numba array type ``a`` (None: neither
    float32 nor float64, so the overload does not apply)."""
    if a.dtype == types.float32:
        return single, np.float32
    if a.dtype == types.float64:
        return double, np.float64
    return None


def gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):  # type: ignore[no-untyped-def]
    """Row-major ``C = op(A) @ op(B) + beta * C`` (``op`` transposes when ``trans_*``) on
    the first elements of ``a``, ``b``, ``c`` with leading dimensions ``ld*``; single-threaded.
    Callable from numba code only; the dtype of ``a`` picks sgemm or dgemm."""
    raise NotImplementedError("blas.gemm is called from numba kernels")


@overload(gemm, inline="always")
def _gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):  # type: ignore[no-untyped-def]
    chosen = _by_dtype(a, _sgemm, _dgemm)
    if chosen is None:
        return None
    external, scalar = chosen

    def run(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):  # type: ignore[no-untyped-def]
        external(ROW_MAJOR, TRANS if trans_a else NO_TRANS, TRANS if trans_b else NO_TRANS,
                 m, n, k, scalar(1.0), address(a), lda, address(b), ldb, scalar(beta),
                 address(c), ldc)
    return run


def gemv(trans_a, m, k, a, lda, x, inc_x, beta, y, inc_y):  # type: ignore[no-untyped-def]
    """Row-major ``y = op(A) @ x + beta * y`` for an ``m x k`` ``op(A)`` (stored ``k x m``
    when ``trans_a``), ``x`` and ``y`` with element strides ``inc_*``; single-threaded.
    OpenBLAS's GEMM with one column packs all of ``A`` to multiply it once: several times
    slower than its GEMV, which streams ``A``. Callable from numba code only."""
    raise NotImplementedError("blas.gemv is called from numba kernels")


@overload(gemv, inline="always")
def _gemv(trans_a, m, k, a, lda, x, inc_x, beta, y, inc_y):  # type: ignore[no-untyped-def]
    chosen = _by_dtype(a, _sgemv, _dgemv)
    if chosen is None:
        return None
    external, scalar = chosen

    def run(trans_a, m, k, a, lda, x, inc_x, beta, y, inc_y):  # type: ignore[no-untyped-def]
        # cblas takes the stored matrix's shape: k x m when transposed.
        if trans_a:
            external(ROW_MAJOR, TRANS, k, m, scalar(1.0), address(a), lda, address(x), inc_x,
                     scalar(beta), address(y), inc_y)
        else:
            external(ROW_MAJOR, NO_TRANS, m, k, scalar(1.0), address(a), lda, address(x),
                     inc_x, scalar(beta), address(y), inc_y)
    return run


# GEMMs across numba's pool -------------------------------------------------------------------
# Each call splits C into blocks and runs one single-threaded GEMM per block on numba's
# threads, so a BLAS product never brings a second pool onto the cores. Blocks are split
# along N (columns, in multiples of 16) where it is wide, else along M.
BLOCK_ALIGN = 16
MIN_BLOCK_COLUMNS = 64
MIN_BLOCK_ROWS = 16


def _operand(array: np.ndarray) -> tuple[np.ndarray, bool, int]:
    """``(array, transposed, leading dimension)`` of a 2-D or stacked 3-D view whose rows or
    columns are contiguous, as cblas takes it."""
    itemsize = array.itemsize
    rows, cols = array.strides[-2], array.strides[-1]
    if cols == itemsize and rows % itemsize == 0 and rows >= array.shape[-1] * itemsize:
        return array, False, max(1, rows // itemsize)
    if rows == itemsize and cols % itemsize == 0 and cols >= array.shape[-2] * itemsize:
        return array, True, max(1, cols // itemsize)
    contiguous = np.ascontiguousarray(array)
    return contiguous, False, max(1, contiguous.shape[-1])


def _kernels() -> Any:
    from . import gemm_kernels

    return gemm_kernels


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray, *, accumulate: bool = False,
           threads: int | None = None) -> None:
    """``out = a @ b`` (or ``out += a @ b`` when ``accumulate``) for 2-D views, or stacks of
    them (3-D; ``a`` or ``b`` may be one matrix for every product), across ``threads``
    partitions of numba's pool (default: the pool's size; one below SERIAL_FLOPS). Operands
    are any views whose rows or columns are contiguous (a transposed view is passed as such,
    not copied); an ``out`` with contiguous columns gets the transposed product, any other
    ``out`` a contiguous result copied into it."""
    from .kernels import SERIAL_FLOPS, pool_threads

    load()
    if out.strides[-1] != out.itemsize and out.shape[-1] > 1:
        if out.strides[-2] == out.itemsize:
            # Columns contiguous (a channels-last result): C^T = B^T A^T, rows contiguous.
            matmul(b.swapaxes(-1, -2), a.swapaxes(-1, -2), out.swapaxes(-1, -2),
                   accumulate=accumulate, threads=threads)
            return
        target = np.ascontiguousarray(out) if accumulate else np.empty(out.shape, out.dtype)
        matmul(a, b, target, accumulate=accumulate, threads=threads)
        out[...] = target
        return
    stacked = out.ndim == 3
    a3 = a if a.ndim == 3 else a[None]
    b3 = b if b.ndim == 3 else b[None]
    c3 = out if stacked else out[None]
    a3, trans_a, lda = _operand(a3)
    b3, trans_b, ldb = _operand(b3)
    ldc = max(1, c3.strides[-2] // c3.itemsize)
    m, n = c3.shape[1], c3.shape[2]
    k = a3.shape[-1]
    batch = c3.shape[0]
    if m == 0 or n == 0:
        return
    if k == 0:
        if not accumulate:
            c3[...] = 0
        return
    if threads is None:
        threads = 1 if 2 * batch * m * n * k < SERIAL_FLOPS else pool_threads()
    m_step, n_step = m, n
    wanted = max(1, threads) if batch < threads else 1
    if wanted > 1 and n >= wanted * MIN_BLOCK_COLUMNS:
        per_part = -(-n // wanted)
        n_step = -(-per_part // BLOCK_ALIGN) * BLOCK_ALIGN
    elif wanted > 1 and m >= wanted * MIN_BLOCK_ROWS:
        m_step = -(-m // wanted)
    blocks = batch * -(-m // m_step) * -(-n // n_step)
    kernel = _kernels().pool_gemm if threads > 1 and blocks > 1 else _kernels().serial_gemm
    kernel(a3, b3, c3, trans_a, trans_b, lda, ldb, ldc, m_step, n_step, 1.0 if accumulate else 0.0)


# Kernels that call these routines may come from the disk cache, linked by name: register
# the names before any of them can load (whoever imports this module is about to run one).
# A missing library leaves them unregistered: the rules then keep every GEMM algorithm off.
with contextlib.suppress(ImportError):
    load()
