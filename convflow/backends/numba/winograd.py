"""Winograd F(4x4, 3x3) for 2-D 3x3 convolutions with stride 1 and dilation 1.

oneDNN's default CPU path is direct convolution at the hardware limit, so the way ahead of it
on 3x3 layers is less arithmetic (Lavin & Gray, "Fast Algorithms for Convolutional Neural
Networks"; NNPACK's route). A 4x4 output tile needs a 6x6 input patch; in the transformed
domain each of its 36 elements is one product per (input, output) channel pair, so a tile
costs 36 multiplications per channel pair instead of 16 * 9 = 144:

    U[g, xi, k, c] = (G w[k, c] G^T)[xi]             filter transform, once per call
    V[xi, c, t]    = (B^T d[c, t] B)[xi]             input transform of the patches of tile t
    M[xi, k, t]    = sum_c U[g, xi, k, c] V[xi, c, t]    36 GEMMs (private BLAS, blas.py)
    y tile         = A^T M[:, k, t] A                 output transform (+ bias, activation)

The tiles of a call are split into blocks; one partition of numba's pool transforms a
block's inputs, runs its 36 GEMMs single-threaded and transforms its outputs, so V and M
stay in that core's cache and every parallel part runs on one pool.

Accuracy: the transforms use the points 0, +-1, +-2 and infinity (the matrices below), whose
float32 error stays within the test tolerance (3e-5 of the largest output value) for inputs
of unit scale; it is not bit-reproducible against direct loops, so deterministic mode keeps
Winograd out. An Inf or NaN operand would become NaN through the transforms' differences, so
the output transform recomputes every tile with a non-finite value by direct loops, and NaN
and Inf propagate exactly as they do there.
"""

from __future__ import annotations

import numpy as np
from numba import prange, uint64

from . import blas, workspace
from .kernels import _FASTMATH, _epilogue, _jit, _kernel, make_serial, thread_limit
from .plans import (  # noqa: F401 - the tiling plan shared with the workspace estimate
    ALPHA,
    JOBS_PER_THREAD,
    KERNEL,
    LANES,
    OUTPUT_TILE,
    Plan,
    leading_dimension,
    phased,
    phased_chunk,
    tiles_of,
)

# The transforms' matrices (Lavin & Gray's F(4, 3)); the inline functions below are their
# products written out, and tests/test_winograd.py checks the two agree.
BT = np.array([[4, 0, -5, 0, 1, 0],
               [0, -4, -4, 1, 1, 0],
               [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0],
               [0, 4, 0, -5, 0, 1]], dtype=np.float64)
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0],
               [0, 1, -1, 2, -2, 0],
               [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], dtype=np.float64)

# Rows of a part's lane work array: the 6x6 patch, then the half-transformed rows, then the
# 4x4 output tile.
ROWS = ALPHA * ALPHA
TILE = 2 * ALPHA * ALPHA
WORK_ROWS = TILE + OUTPUT_TILE * OUTPUT_TILE


@_jit(inline="always")
def input_1d(d0, d1, d2, d3, d4, d5, consts):  # type: ignore[no-untyped-def]
    """``BT @ d`` for one column of a patch; ``consts`` holds 2, 4, 5, 8 in the data's dtype, as a tuple of scalars
    (numba would widen float32 times an integer literal to float64)."""
    two, four, five = consts[0], consts[1], consts[2]
    return (four * d0 - five * d2 + d4,
            d3 + d4 - four * (d1 + d2),
            four * (d1 - d2) - d3 + d4,
            two * (d3 - d1) - d2 + d4,
            two * (d1 - d3) - d2 + d4,
            four * d1 - five * d3 + d5)


@_jit(inline="always")
def output_1d(m0, m1, m2, m3, m4, m5, consts):  # type: ignore[no-untyped-def]
    """``AT @ m`` for one column of a transformed tile (``consts`` as for :func:`input_1d`)."""
    two, four, eight = consts[0], consts[1], consts[3]
    plus, minus = m1 + m2, m1 - m2
    plus2, minus2 = m3 + m4, m3 - m4
    return m0 + plus + plus2, minus + two * minus2, plus + four * plus2, minus + eight * minus2 + m5


# The filter transform as one matrix: ``(G f G^T)[i, j] = sum_ab G[i, a] G[j, b] f[a, b]``,
# i.e. the 36 transformed values of a filter are ``kron(G, G) @ f.ravel()``. Computed once in
# float64 and cast per dtype; every filter of a call is then one GEMM (see transform_filter).
FILTER_TRANSFORM = np.kron(G, G)
_FILTER_TRANSFORMS = {np.dtype(t): FILTER_TRANSFORM.astype(t) for t in (np.float32, np.float64)}
# Columns (filter taps of one (output, input) channel pair) per filter-transform job.
FILTER_CHUNK = 1024


@_kernel()
def transform_filter(w, u, kron_g, chunk):  # type: ignore[no-untyped-def]
    """``u[g, xi, k, c] = (G w[g * Kg + k, c] G^T)[xi]`` for 3x3 filters ``w`` (K, Cg, 3, 3):
    per group, ``u[g]`` viewed as (36, Kg * Cg) is ``kron(G, G) @ w_g^T`` with ``w_g`` viewed
    as (Kg * Cg, 9), one BLAS GEMM per ``chunk`` columns. The GEMM writes each row of ``u``
    as long contiguous runs; the scalar loops this replaces wrote 64 bytes to each of 36 rows
    ``Kg * Cg`` floats apart per channel group (a page per store once ``u`` outgrew the TLB's
    reach), and cost as much as the 36 GEMMs on batch-1 layers (3-4.5x slower than this)."""
    groups, k_per_group, c_per_group = u.shape[0], u.shape[2], u.shape[3]
    columns = k_per_group * c_per_group
    chunks = -(-columns // chunk)
    wf = w.reshape(-1)
    uf = u.reshape(-1)
    for job in prange(groups * chunks):
        g = job // chunks
        first = (job - g * chunks) * chunk
        blas.gemm(False, True, ALPHA * ALPHA, min(chunk, columns - first), KERNEL * KERNEL,
                  kron_g, KERNEL * KERNEL, wf[(g * columns + first) * KERNEL * KERNEL:],
                  KERNEL * KERNEL, 0.0, uf[g * ALPHA * ALPHA * columns + first:], columns)


def filter_chunk(columns: int, threads: int) -> int:
    """Columns per filter-transform job: at least two jobs per thread when there are columns
    enough, at most FILTER_CHUNK (whole lane groups)."""
    per_job = -(-columns // (JOBS_PER_THREAD * max(1, threads)))
    return max(LANES, min(FILTER_CHUNK, -(-per_job // LANES) * LANES))


def _transform_filter(w: np.ndarray, u: np.ndarray, threads: int) -> None:
    blas.load()
    transform_filter(w, u, _FILTER_TRANSFORMS[w.dtype], filter_chunk(u.shape[2] * u.shape[3],
                                                                     threads))


@_jit(inline="always")
def _tile_table(t0, count, tiles_h, tiles_w, ph, pw, in_h, in_w, table):  # type: ignore[no-untyped-def]
    """``table[j] = (image, top row, left column, whole)`` of the input patch of tile
    ``t0 + j`` (``whole``: the patch lies inside the plane), computed once per job: the
    divisions would otherwise run for every channel of every tile."""
    per_image = tiles_h * tiles_w
    for j in range(count):
        t = t0 + j
        n = t // per_image
        r = t - n * per_image
        ty = r // tiles_w
        ih0 = ty * OUTPUT_TILE - ph
        iw0 = (r - ty * tiles_w) * OUTPUT_TILE - pw
        table[j, 0] = n
        table[j, 1] = ih0
        table[j, 2] = iw0
        table[j, 3] = ih0 >= 0 and iw0 >= 0 and ih0 + ALPHA <= in_h and iw0 + ALPHA <= in_w


@_jit(inline="always")
def _transform_inputs(x, xf, g, c_per_group, count, table, vf, ld_v, work, consts):  # type: ignore[no-untyped-def]
    """``V[xi, c, j]`` (flat ``vf``, rows of ``ld_v``) for the ``count`` tiles of ``table``
    and the channels of group ``g``, LANES tiles at a time (vector lanes); lanes past
    ``count`` up to a multiple of LANES hold finite leftovers, so the GEMMs may run over
    whole lane groups. The hot loops index flat arrays with unsigned offsets: numba adds a
    negative-index check to every signed index, and a view costs two atomic reference-count
    updates."""
    n_channels, in_h, in_w = x.shape[1], x.shape[2], x.shape[3]
    plane = in_h * in_w
    lanes = uint64(LANES)
    xi_stride = uint64(c_per_group * ld_v)
    for c in range(c_per_group):
        channel = g * c_per_group + c
        for j0 in range(0, count, LANES):
            for jj in range(min(LANES, count - j0)):
                n, ih0, iw0, whole = table[j0 + jj, 0], table[j0 + jj, 1], table[j0 + jj, 2], table[j0 + jj, 3]
                if whole:
                    base = uint64((n * n_channels + channel) * plane + ih0 * in_w + iw0)
                    for i in range(ALPHA):
                        row = base + uint64(i * in_w)
                        for q in range(ALPHA):
                            work[uint64(i * ALPHA + q) * lanes + uint64(jj)] = xf[row + uint64(q)]
                else:
                    for i in range(ALPHA):
                        ih = ih0 + i
                        for q in range(ALPHA):
                            iw = iw0 + q
                            inside = 0 <= ih < in_h and 0 <= iw < in_w
                            work[(i * ALPHA + q) * LANES + jj] = x[n, channel, ih, iw] if inside else 0
            for q in range(ALPHA):
                for jj in range(LANES):
                    c0, c1, c2, c3, c4, c5 = input_1d(
                        work[q * LANES + jj], work[(ALPHA + q) * LANES + jj],
                        work[(2 * ALPHA + q) * LANES + jj], work[(3 * ALPHA + q) * LANES + jj],
                        work[(4 * ALPHA + q) * LANES + jj], work[(5 * ALPHA + q) * LANES + jj],
                        consts)
                    work[(ROWS + q) * LANES + jj] = c0
                    work[(ROWS + ALPHA + q) * LANES + jj] = c1
                    work[(ROWS + 2 * ALPHA + q) * LANES + jj] = c2
                    work[(ROWS + 3 * ALPHA + q) * LANES + jj] = c3
                    work[(ROWS + 4 * ALPHA + q) * LANES + jj] = c4
                    work[(ROWS + 5 * ALPHA + q) * LANES + jj] = c5
            for i in range(ALPHA):
                b = (ROWS + i * ALPHA) * LANES
                out = uint64(i * ALPHA) * xi_stride + uint64(c * ld_v + j0)
                for jj in range(LANES):
                    r0, r1, r2, r3, r4, r5 = input_1d(
                        work[b + jj], work[b + LANES + jj], work[b + 2 * LANES + jj],
                        work[b + 3 * LANES + jj], work[b + 4 * LANES + jj],
                        work[b + 5 * LANES + jj], consts)
                    o = out + uint64(jj)
                    vf[o] = r0
                    vf[o + xi_stride] = r1
                    vf[o + 2 * xi_stride] = r2
                    vf[o + 3 * xi_stride] = r3
                    vf[o + 4 * xi_stride] = r4
                    vf[o + 5 * xi_stride] = r5


@_jit(inline="always")
def _direct_tile(x, w, y, n, ko, g, oh0, ow0, ph, pw, pad_products):  # type: ignore[no-untyped-def]
    """Output tile ``(oh0, ow0)`` of channel ``ko`` by direct loops (for non-finite values):
    padding taps count as ``0 * w`` when ``pad_products`` (a forward pass), else not at all."""
    c_per_group = w.shape[1]
    in_h, in_w = x.shape[2], x.shape[3]
    out_h, out_w = y.shape[2], y.shape[3]
    zero = np.zeros(1, dtype=y.dtype)[0]
    for i in range(min(OUTPUT_TILE, out_h - oh0)):
        for j in range(min(OUTPUT_TILE, out_w - ow0)):
            acc = zero
            for c in range(c_per_group):
                plane = x[n, g * c_per_group + c]
                for a in range(KERNEL):
                    ih = oh0 + i - ph + a
                    for b in range(KERNEL):
                        iw = ow0 + j - pw + b
                        if 0 <= ih < in_h and 0 <= iw < in_w:
                            acc += plane[ih, iw] * w[ko, c, a, b]
                        elif pad_products:
                            acc += zero * w[ko, c, a, b]
            y[n, ko, oh0 + i, ow0 + j] = acc


@_jit(inline="always")
def _transform_outputs(x, w, y, g, k_per_group, count, table, ph, pw, mf, ld_m, work, consts,  # type: ignore[no-untyped-def]
                       bias, has_bias, act, pad_products):
    """Write ``A^T M A`` of the ``count`` tiles of ``table`` (``M`` flat in ``mf``, rows of
    ``ld_m``) into ``y`` (channels of group ``g``), LANES tiles at a time; a tile with a
    non-finite value is recomputed by direct loops."""
    n_out, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
    yf = y.reshape(-1)
    zero = np.zeros(1, dtype=y.dtype)[0]
    six = zero + 6
    xi_stride = uint64(k_per_group * ld_m)
    for k in range(k_per_group):
        ko = g * k_per_group + k
        for j0 in range(0, count, LANES):
            for q in range(ALPHA):
                src = uint64(q) * xi_stride + uint64(k * ld_m + j0)
                for jj in range(LANES):
                    o = src + uint64(jj)
                    c0, c1, c2, c3 = output_1d(
                        mf[o], mf[o + ALPHA * xi_stride], mf[o + 2 * ALPHA * xi_stride],
                        mf[o + 3 * ALPHA * xi_stride], mf[o + 4 * ALPHA * xi_stride],
                        mf[o + 5 * ALPHA * xi_stride], consts)
                    work[(ROWS + q) * LANES + jj] = c0
                    work[(ROWS + ALPHA + q) * LANES + jj] = c1
                    work[(ROWS + 2 * ALPHA + q) * LANES + jj] = c2
                    work[(ROWS + 3 * ALPHA + q) * LANES + jj] = c3
            for i in range(OUTPUT_TILE):
                b, o = (ROWS + i * ALPHA) * LANES, (TILE + i * OUTPUT_TILE) * LANES
                for jj in range(LANES):
                    r0, r1, r2, r3 = output_1d(
                        work[b + jj], work[b + LANES + jj], work[b + 2 * LANES + jj],
                        work[b + 3 * LANES + jj], work[b + 4 * LANES + jj],
                        work[b + 5 * LANES + jj], consts)
                    work[o + jj] = r0
                    work[o + LANES + jj] = r1
                    work[o + 2 * LANES + jj] = r2
                    work[o + 3 * LANES + jj] = r3
            for jj in range(min(LANES, count - j0)):
                n = table[j0 + jj, 0]
                oh0, ow0 = table[j0 + jj, 1] + ph, table[j0 + jj, 2] + pw
                rows, cols = min(OUTPUT_TILE, out_h - oh0), min(OUTPUT_TILE, out_w - ow0)
                base = uint64(((n * n_out + ko) * out_h + oh0) * out_w + ow0)
                probe = zero   # v - v is NaN for Inf or NaN: no branch per value
                for i in range(rows):
                    row = base + uint64(i * out_w)
                    for q in range(cols):
                        value = work[uint64((TILE + i * OUTPUT_TILE + q) * LANES + jj)]
                        probe += value - value
                        yf[row + uint64(q)] = value
                if probe != probe:
                    _direct_tile(x, w, y, n, ko, g, oh0, ow0, ph, pw, pad_products)
                if has_bias or act:
                    # A pass of its own: in the store loop above, the activation's branches
                    # made the write-back several times slower even with neither.
                    for i in range(rows):
                        row = base + uint64(i * out_w)
                        for q in range(cols):
                            yf[row + uint64(q)] = _epilogue(yf[row + uint64(q)], ko, bias,
                                                            has_bias, act, zero, six)


@_jit(inline="always")
def _lane_scratch(like, tiles):  # type: ignore[no-untyped-def]
    """What a job's transforms need besides V and M: the constants 2, 4, 5, 8 in the data's
    dtype (scalars, see :func:`input_1d`), the lane work array and a table for ``tiles``
    tiles. One array holds the patch, the half-transformed rows and the output tile, so
    loads and stores go off one base pointer at constant offsets, which LLVM vectorizes
    without runtime alias checks; zeroed, because lanes past a block's tiles are computed
    and discarded."""
    numbers = np.array([2, 4, 5, 8], dtype=like.dtype)
    constants = (numbers[0], numbers[1], numbers[2], numbers[3])
    return (constants, np.zeros(WORK_ROWS * LANES, dtype=like.dtype),
            np.empty((tiles, 4), dtype=np.int64))


@_jit(fastmath=_FASTMATH, nogil=True)
def _run_part(x, w, u, y, ph, pw, block_tiles, ld_v, ld_m, scratch, part, bias, has_bias, act,  # type: ignore[no-untyped-def]
              pad_products):
    """The jobs of one part of the pool (see :func:`winograd_forward`). A compiled function of
    its own rather than the parfor's loop body, as are the phased steps' blocks below: the
    body of a parfor is compiled by numba's parallel lowering, and the transforms were
    measured several times slower there (once, on a machine another process was loading,
    so the factor is not a clean measurement)."""
    groups, _, k_per_group, c_per_group = u.shape
    parts = scratch.shape[0]
    tiles_h = -(-y.shape[2] // OUTPUT_TILE)
    tiles_w = -(-y.shape[3] // OUTPUT_TILE)
    tiles = y.shape[0] * tiles_h * tiles_w
    blocks = -(-tiles // block_tiles)
    constants, work, table = _lane_scratch(y, block_tiles)
    v_size = ALPHA * ALPHA * c_per_group * ld_v
    m_size = ALPHA * ALPHA * k_per_group * ld_m
    vf = scratch[part, :v_size]
    mf = scratch[part, v_size:v_size + m_size]
    xf = x.reshape(-1)
    for job in range(part, groups * blocks, parts):
        g = job // blocks
        t0 = (job - g * blocks) * block_tiles
        count = min(block_tiles, tiles - t0)
        columns = -(-count // LANES) * LANES
        _tile_table(t0, count, tiles_h, tiles_w, ph, pw, x.shape[2], x.shape[3], table)
        _transform_inputs(x, xf, g, c_per_group, count, table, vf, ld_v, work, constants)
        for xi in range(ALPHA * ALPHA):
            blas.gemm(False, False, k_per_group, columns, c_per_group, u[g, xi], c_per_group,
                      vf[xi * c_per_group * ld_v:], ld_v, 0.0, mf[xi * k_per_group * ld_m:], ld_m)
        _transform_outputs(x, w, y, g, k_per_group, count, table, ph, pw, mf, ld_m, work,
                           constants, bias, has_bias, act, pad_products)


@_kernel()
def winograd_forward(x, w, u, y, ph, pw, block_tiles, ld_v, ld_m, scratch, bias, has_bias,  # type: ignore[no-untyped-def]
                     act, pad_products):
    """``y = conv(x, w)`` for 4-D ``x`` (N, C, H, W), ``y`` (N, K, OH, OW), with ``u`` the
    transformed filters (:func:`transform_filter`). Jobs are blocks of ``block_tiles`` tiles
    of one group; part ``p`` of the pool runs jobs ``p, p + parts, ...`` in order, with V and
    M (leading dimensions ``ld_v``, ``ld_m``) in row ``p`` of ``scratch``."""
    for part in prange(scratch.shape[0]):
        _run_part(x, w, u, y, ph, pw, block_tiles, ld_v, ld_m, scratch, part, bias, has_bias,
                  act, pad_products)


# Phased: for many channels a block of tiles that fits a core's cache holds too few tiles for
# efficient GEMMs (each call packs its 512x512 filter matrix to multiply 8 tiles: vgg19's
# 512x14x14 layers ran 2.7x slower than oneDNN). There the three steps each run over a chunk
# of tiles across the pool: all input transforms, then the 36 GEMMs (one per pool job, as wide
# as the chunk), then all output transforms.
@_jit(fastmath=_FASTMATH, nogil=True)
def _inputs_block(x, g, c_per_group, t_first, t0, count, tiles_h, tiles_w, ph, pw, vf, ld):  # type: ignore[no-untyped-def]
    constants, work, table = _lane_scratch(vf, count)
    _tile_table(t_first + t0, count, tiles_h, tiles_w, ph, pw, x.shape[2], x.shape[3], table)
    _transform_inputs(x, x.reshape(-1), g, c_per_group, count, table, vf[t0:], ld, work,
                      constants)


@_jit(fastmath=_FASTMATH, nogil=True)
def _outputs_block(x, w, y, g, k_per_group, t_first, t0, count, tiles_h, tiles_w, ph, pw, mf,  # type: ignore[no-untyped-def]
                   ld, bias, has_bias, act, pad_products):
    constants, work, table = _lane_scratch(mf, count)
    _tile_table(t_first + t0, count, tiles_h, tiles_w, ph, pw, x.shape[2], x.shape[3], table)
    _transform_outputs(x, w, y, g, k_per_group, count, table, ph, pw, mf[t0:], ld, work,
                       constants, bias, has_bias, act, pad_products)


@_kernel()
def phased_inputs(x, g, c_per_group, t_first, count, block, tiles_h, tiles_w, ph, pw, vf, ld):  # type: ignore[no-untyped-def]
    """V of tiles ``t_first .. t_first + count`` (columns 0 .. count of rows of ``ld``)."""
    for b in prange(-(-count // block)):
        t0 = b * block
        _inputs_block(x, g, c_per_group, t_first, t0, min(block, count - t0), tiles_h, tiles_w,
                      ph, pw, vf, ld)


@_kernel()
def phased_products(u, g, vf, mf, ld, columns):  # type: ignore[no-untyped-def]
    """``M[xi] = U[g, xi] @ V[xi]`` over ``columns`` columns, one GEMM per pool job."""
    k_per_group, c_per_group = u.shape[2], u.shape[3]
    for xi in prange(ALPHA * ALPHA):
        blas.gemm(False, False, k_per_group, columns, c_per_group, u[g, xi], c_per_group,
                  vf[xi * c_per_group * ld:], ld, 0.0, mf[xi * k_per_group * ld:], ld)


@_kernel()
def phased_outputs(x, w, y, g, k_per_group, t_first, count, block, tiles_h, tiles_w, ph, pw,  # type: ignore[no-untyped-def]
                   mf, ld, bias, has_bias, act, pad_products):
    """y of tiles ``t_first .. t_first + count`` from M (columns 0 .. count)."""
    for b in prange(-(-count // block)):
        t0 = b * block
        _outputs_block(x, w, y, g, k_per_group, t_first, t0, min(block, count - t0), tiles_h,
                       tiles_w, ph, pw, mf, ld, bias, has_bias, act, pad_products)


PARALLEL_KERNELS = ("transform_filter", "winograd_forward", "phased_inputs", "phased_products",
                    "phased_outputs")


def use_serial_kernels() -> None:
    """After a fork with the OpenMP pool started: single-threaded kernels (kernels.py)."""
    make_serial(globals(), PARALLEL_KERNELS)


def forward(x: np.ndarray, w: np.ndarray, y: np.ndarray, ph: int, pw: int, groups: int,
            threads: int, bias: np.ndarray, has_bias: bool, act: int,
            pad_products: bool = True) -> None:
    """Run the three steps on 4-D channels-first arrays (``x``, ``w``, ``y`` contiguous), on
    ``threads`` of numba's pool."""
    blas.load()
    n_out, c_per_group = w.shape[:2]
    k_per_group = n_out // groups
    itemsize = y.dtype.itemsize
    filters = ALPHA * ALPHA * n_out * c_per_group
    tiles_h, tiles_w = -(-y.shape[2] // OUTPUT_TILE), -(-y.shape[3] // OUTPUT_TILE)
    tiles = y.shape[0] * tiles_h * tiles_w
    if y.size == 0:  # an empty batch (validation allows no other empty dimension)
        return
    with thread_limit(threads):
        if phased(c_per_group, k_per_group):
            chunk = phased_chunk(tiles, c_per_group, k_per_group, itemsize)
            ld = leading_dimension(chunk, max(c_per_group, k_per_group), itemsize)
            memory = workspace.scratch(y.dtype, filters + ALPHA * ALPHA
                                       * (c_per_group + k_per_group) * ld)
            u = memory[:filters].reshape(groups, ALPHA * ALPHA, k_per_group, c_per_group)
            _transform_filter(w, u, threads)
            vf = memory[filters:filters + ALPHA * ALPHA * c_per_group * ld]
            mf = memory[filters + vf.size:]
            for g in range(groups):
                for t_first in range(0, tiles, chunk):
                    count = min(chunk, tiles - t_first)
                    # Whole lane groups: a block's last group writes all its lanes.
                    per_job = -(-count // (JOBS_PER_THREAD * threads))
                    block = -(-per_job // LANES) * LANES
                    phased_inputs(x, g, c_per_group, t_first, count, block, tiles_h, tiles_w,
                                  ph, pw, vf, ld)
                    phased_products(u, g, vf, mf, ld, -(-count // LANES) * LANES)
                    phased_outputs(x, w, y, g, k_per_group, t_first, count, block, tiles_h,
                                   tiles_w, ph, pw, mf, ld, bias, has_bias, act, pad_products)
            return
        plan = Plan.of(y.shape[0], y.shape[2], y.shape[3], c_per_group, k_per_group, groups,
                       threads, itemsize)
        part = plan.scratch_elements(c_per_group, k_per_group)
        memory = workspace.scratch(y.dtype, filters + plan.parts * part)
        u = memory[:filters].reshape(groups, ALPHA * ALPHA, k_per_group, c_per_group)
        _transform_filter(w, u, threads)
        winograd_forward(x, w, u, y, ph, pw, plan.block, plan.ld_v, plan.ld_m,
                         memory[filters:].reshape(plan.parts, part), bias, has_bias, act,
                         pad_products)
