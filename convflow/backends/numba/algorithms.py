"""The numba backend's algorithms: direct, depthwise, 1x1 GEMM and tiled im2col + GEMM.

Each function takes C-contiguous 5-D arrays (1-D and 2-D problems lifted to 3-D) and fills a
preallocated output. GEMMs go through :func:`.blas.matmul` (convflow's private OpenBLAS, one
thread per block of numba's pool, so no second thread pool competes for the cores); the
im2col scratch is tiled so it never exceeds the workspace limit (``CONVFLOW_WORKSPACE_MB``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ...geometry import Geometry, RowSpan, Tile, plan_tiles
from ...params import ConvProblem, Direction
from ..base import data_gradient_flippable
from . import workspace
from .fft import PASSES as FFT_PASSES
from .plans import PACKED_PAIRS_PER_STEP, PACKED_VECTOR, SERIAL_FLOPS, im2col_tile_bytes

Array = np.ndarray


class _Deferred:
    """A module imported when first used, which then takes this stand-in's place: the rules
    and plans here run before numba is imported (see :mod:`.plans`), the passes after."""

    def __init__(self, name: str, alias: str) -> None:
        self._name, self._alias = name, alias

    def __getattr__(self, attribute: str) -> object:
        module = importlib.import_module(self._name, __package__)
        globals()[self._alias] = module
        return getattr(module, attribute)


kernels: Any = _Deferred(".kernels", "kernels")
blas: Any = _Deferred(".blas", "blas")


def lift(array: Array) -> Array:
    """View ``(N, C, *spatial)`` with 1-3 spatial dims as ``(N, C, D, H, W)``."""
    return array.reshape(array.shape[:2] + (1,) * (5 - array.ndim) + array.shape[2:])


class Epilogue(NamedTuple):
    """What the write-back adds: the bias (per output channel) and the activation code."""

    bias: np.ndarray
    has_bias: bool
    activation: int


def no_epilogue(dtype: np.dtype) -> Epilogue:
    return Epilogue(np.zeros(1, dtype=dtype), False, 0)


class _Im2colLayout:
    """Shapes, tiles and scratch buffers shared by the three im2col passes."""

    def __init__(self, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                 y_shape: tuple[int, ...], groups: int, dtype: np.dtype, budget: int) -> None:
        self.n_images = x_shape[0]
        self.c_out, self.c_per_group = w_shape[0], w_shape[1]
        self.kernel = w_shape[2:]
        self.c_out_per_group = self.c_out // groups
        self.rows = self.c_per_group * math.prod(self.kernel)
        self.out_d, self.out_h, self.out_w = y_shape[2:]
        self.rows_per_image = self.out_d * self.out_h
        per_column = (self.rows + self.c_out_per_group) * dtype.itemsize
        self.positions = self.rows_per_image * self.out_w
        self.tiles = plan_tiles(self.n_images, self.positions, per_column,
                                im2col_tile_bytes(budget), row_length=self.out_w)
        widest = max(t.columns for t in self.tiles)
        # From the per-thread workspace: fresh megabytes would page-fault on every call.
        scratch = workspace.scratch(dtype, (self.rows + self.c_out_per_group) * widest)
        self._col = scratch[:self.rows * widest]
        self._other = scratch[self.rows * widest:]

    def col(self, tile: Tile) -> Array:
        return self._col[: self.rows * tile.columns].reshape(self.rows, tile.columns)

    def other(self, tile: Tile) -> Array:
        return self._other[: self.c_out_per_group * tile.columns].reshape(
            self.c_out_per_group, tile.columns)

    def output_view(self, y_flat: Array, tile: Tile, c_first: int) -> Array | None:
        """A no-copy view of the tile in the flat output when it lies in one image."""
        span = self.row_span(tile)
        n, r = divmod(span.row0, self.rows_per_image)
        if span.w_count != self.out_w or r + span.n_rows > self.rows_per_image:
            return None
        return y_flat[n, c_first:c_first + self.c_out_per_group,
                      r * self.out_w:(r + span.n_rows) * self.out_w]

    def row_span(self, tile: Tile) -> RowSpan:
        return tile.row_span(self.positions, self.out_w)

    def tile_args(self, tile: Tile) -> tuple[int, ...]:
        return (*self.row_span(tile), self.out_d, self.out_h)

    def im2col(self, x: Array, c_first: int, tile: Tile, geometry: Geometry) -> Array:
        col = self.col(tile)
        kernels.im2col(x, c_first, col, *self.tile_args(tile), *self.kernel, *geometry.spatial_args)
        return col

    def gather_output(self, y: Array, y_flat: Array, tile: Tile, c_first: int) -> Array:
        view = self.output_view(y_flat, tile, c_first)
        if view is not None:
            return view
        gathered = self.other(tile)
        kernels.output_to_rows(y, gathered, c_first, *self.tile_args(tile))
        return gathered


def _flat(array: Array) -> Array:
    return array.reshape(array.shape[0], array.shape[1], -1)


def fprop_im2col(x: Array, w: Array, y: Array, geometry: Geometry, budget: int,
                 epilogue: Epilogue | None = None, variant: str = "") -> None:
    layout = _Im2colLayout(x.shape, w.shape, y.shape, geometry.groups, x.dtype, budget)
    w_mat = w.reshape(layout.c_out, layout.rows)
    y_flat = _flat(y)
    for g in range(geometry.groups):
        w_group = w_mat[g * layout.c_out_per_group:(g + 1) * layout.c_out_per_group]
        c_out_first = g * layout.c_out_per_group
        for tile in layout.tiles:
            col = layout.im2col(x, g * layout.c_per_group, tile, geometry)
            view = layout.output_view(y_flat, tile, c_out_first)
            if view is not None:
                blas.matmul(w_group, col, view)
            else:
                result = layout.other(tile)
                blas.matmul(w_group, col, result)
                kernels.rows_to_output(result, y, c_out_first, *layout.tile_args(tile))


def dgrad_im2col(dy: Array, w: Array, dx: Array, geometry: Geometry, budget: int,
                 epilogue: Epilogue | None = None, variant: str = "") -> None:
    layout = _Im2colLayout(dx.shape, w.shape, dy.shape, geometry.groups, dx.dtype, budget)
    w_mat = w.reshape(layout.c_out, layout.rows)
    dy_flat = _flat(dy)
    dx[...] = 0
    for g in range(geometry.groups):
        w_group_t = w_mat[g * layout.c_out_per_group:(g + 1) * layout.c_out_per_group].T
        for tile in layout.tiles:
            grad = layout.gather_output(dy, dy_flat, tile, g * layout.c_out_per_group)
            col = layout.col(tile)
            blas.matmul(w_group_t, grad, col)
            kernels.col2im(col, dx, g * layout.c_per_group, *layout.tile_args(tile),
                           *layout.kernel, *geometry.spatial_args)


def wgrad_im2col(x: Array, dy: Array, dw: Array, geometry: Geometry, budget: int,
                 epilogue: Epilogue | None = None, variant: str = "") -> None:
    layout = _Im2colLayout(x.shape, dw.shape, dy.shape, geometry.groups, x.dtype, budget)
    dw_mat = dw.reshape(layout.c_out, layout.rows)
    dw_mat[...] = 0
    dy_flat = _flat(dy)
    for g in range(geometry.groups):
        target = dw_mat[g * layout.c_out_per_group:(g + 1) * layout.c_out_per_group]
        for tile in layout.tiles:
            col = layout.im2col(x, g * layout.c_per_group, tile, geometry)
            grad = layout.gather_output(dy, dy_flat, tile, g * layout.c_out_per_group)
            blas.matmul(grad, col.T, target, accumulate=True)


# Variants: the code paths an algorithm has, chosen from the problem alone by the functions
# below and handed back to the pass, so the Decision names the path that runs.
IN_PLACE_GEMM = "in-place GEMM"
GATHERED_GEMM = "GEMM over im2col-gathered pixels (strided or cropped)"
ONE_PIXEL_GEMM = "one GEMM over the batch's single pixels"
SINGLE_PASS = "single-pass strategy (small problem: one single-threaded pass)"
IN_PLACE_1X1 = "in-place strategy (a 1x1 input read where it lies)"
PER_IMAGE = "per-image strategy"
CHANNELS_IN_LANES = "channels-in-lanes kernel"
PER_PLANE = "per-plane packed kernel"
PER_PLANE_SERIAL = "per-plane packed kernel, single-threaded (small problem)"


def pointwise_variant(problem: ConvProblem) -> str:
    """In place when unstrided and the output covers the input, else gathered first; maps
    of one pixel (classifier heads, squeeze-and-excitation) as one product over the batch,
    which reads the weights once where a product per image reads them once per image
    (8.5x slower at 1024 -> 1000 channels, batch 8). One image's single pixel is an in-place
    matrix-vector product."""
    in_place = not problem.is_strided() and problem.x_spatial == problem.y_spatial
    if in_place and math.prod(problem.x_spatial) == 1 and problem.batch > 1:
        return ONE_PIXEL_GEMM
    return IN_PLACE_GEMM if in_place else GATHERED_GEMM


def _group_slices(w: Array, groups: int) -> list[tuple[slice, slice]]:
    c_out, c_per_group = w.shape[0], w.shape[1]
    per = c_out // groups
    return [(slice(g * per, (g + 1) * per), slice(g * c_per_group, (g + 1) * c_per_group))
            for g in range(groups)]


def fprop_pointwise(x: Array, w: Array, y: Array, geometry: Geometry, budget: int,
                    epilogue: Epilogue | None = None, variant: str = IN_PLACE_GEMM) -> None:
    if variant == GATHERED_GEMM:
        fprop_im2col(x, w, y, geometry, budget)
        return
    w_mat = w.reshape(w.shape[0], w.shape[1])
    x_flat, y_flat = _flat(x), _flat(y)
    for out_slice, in_slice in _group_slices(w, geometry.groups):
        if variant == ONE_PIXEL_GEMM:
            blas.matmul(x_flat[:, in_slice, 0], w_mat[out_slice].T, y_flat[:, out_slice, 0])
        else:
            blas.matmul(w_mat[out_slice], x_flat[:, in_slice], y_flat[:, out_slice])


def dgrad_pointwise(dy: Array, w: Array, dx: Array, geometry: Geometry, budget: int,
                    epilogue: Epilogue | None = None, variant: str = IN_PLACE_GEMM) -> None:
    if variant == GATHERED_GEMM:
        dgrad_im2col(dy, w, dx, geometry, budget)
        return
    w_mat = w.reshape(w.shape[0], w.shape[1])
    dy_flat, dx_flat = _flat(dy), _flat(dx)
    for out_slice, in_slice in _group_slices(w, geometry.groups):
        if variant == ONE_PIXEL_GEMM:
            blas.matmul(dy_flat[:, out_slice, 0], w_mat[out_slice], dx_flat[:, in_slice, 0])
        else:
            blas.matmul(w_mat[out_slice].T, dy_flat[:, out_slice], dx_flat[:, in_slice])


def wgrad_pointwise(x: Array, dy: Array, dw: Array, geometry: Geometry, budget: int,
                    epilogue: Epilogue | None = None, variant: str = IN_PLACE_GEMM) -> None:
    if variant == GATHERED_GEMM:
        wgrad_im2col(x, dy, dw, geometry, budget)
        return
    dw_mat = dw.reshape(dw.shape[0], dw.shape[1])
    dw_mat[...] = 0
    x_flat, dy_flat = _flat(x), _flat(dy)
    for out_slice, in_slice in _group_slices(dw, geometry.groups):
        if variant == ONE_PIXEL_GEMM:
            blas.matmul(dy_flat[:, out_slice, 0].T, x_flat[:, in_slice, 0], dw_mat[out_slice],
                        accumulate=True)
            continue
        for n in range(x.shape[0]):
            blas.matmul(dy_flat[n, out_slice], x_flat[n, in_slice].T, dw_mat[out_slice],
                        accumulate=True)


def _direct(name: str) -> Callable[..., None]:
    # Looked up at call time: after a fork the module's kernels may be single-threaded twins.
    def run(a: Array, b: Array, out: Array, geometry: Geometry, budget: int,
            epilogue: Epilogue | None = None, variant: str = "") -> None:
        getattr(kernels, name)(a, b, out, *geometry.spatial_args, geometry.groups)

    return run


@dataclass(frozen=True, eq=False)
class PackedLayout:
    """Where every kernel tap of a packed direct convolution reads (``kernels.pack_input``).

    Layouts and their offset tables are cached: repeated calls of one problem reuse them.
    """

    phases: np.ndarray       # (P, 3) stride phases (a, b, e) that some tap reads
    dq: int
    hq: int
    wq: int
    tap_phase: np.ndarray    # (taps,) index into ``phases`` of each tap, in (kd, kh, kw) order
    tap_shift: np.ndarray    # (taps,) offset of each tap inside its phase plane

    @classmethod
    @functools.lru_cache(maxsize=256)
    def of(cls, kernel: tuple[int, ...], out: tuple[int, ...], geometry: Geometry) -> PackedLayout:
        (sd, sh, sw), (dd, dh, dw) = geometry.stride, geometry.dilation
        taps = [(kd, kh, kw) for kd in range(kernel[0]) for kh in range(kernel[1])
                for kw in range(kernel[2])]
        phase_of = [((kd * dd) % sd, (kh * dh) % sh, (kw * dw) % sw) for kd, kh, kw in taps]
        shift_of = [((kd * dd) // sd, (kh * dh) // sh, (kw * dw) // sw) for kd, kh, kw in taps]
        phases = sorted(set(phase_of))
        dq, hq, wq = (o + max(s[axis] for s in shift_of) for axis, o in enumerate(out))
        return cls(np.array(phases, dtype=np.int64).reshape(-1, 3), dq, hq, wq,
                   np.array([phases.index(p) for p in phase_of], dtype=np.int64),
                   np.array([(qd * hq + qh) * wq + qw for qd, qh, qw in shift_of], dtype=np.int64))

    @property
    def plane(self) -> int:
        return self.dq * self.hq * self.wq

    def output_span(self, out: tuple[int, ...], images: int) -> int:
        """Packed positions from the first output of *images* images to the last (the
        run the kernels compute; ``kernels._packed_extent`` computes the same in numba)."""
        per_image = ((out[0] - 1) * self.hq + out[1] - 1) * self.wq + out[2]
        return (images - 1) * self.plane + per_image

    def row_length(self, images: int) -> int:
        """Floats per channel of a packed tile of *images*, with a tail for whole vectors."""
        return len(self.phases) * images * self.plane + PACKED_VECTOR

    @functools.lru_cache(maxsize=256)  # noqa: B019 - layouts are few, cached and immortal
    def pair_offsets(self, groups: int, c_per_group: int, channel_stride: int,
                     phase_stride: int) -> np.ndarray:
        """``(groups, steps, 3)`` flat read offsets of every (channel, tap) pair."""
        taps = len(self.tap_shift)
        per = PACKED_PAIRS_PER_STEP
        pairs = c_per_group * taps
        steps = -(-pairs // per)
        q = np.minimum(np.arange(steps * per), pairs - 1)
        channel, tap = np.divmod(q, taps)
        within = channel * channel_stride + self.tap_phase[tap] * phase_stride + self.tap_shift[tap]
        group_base = np.arange(groups)[:, None] * c_per_group * channel_stride
        return (group_base + within[None, :]).reshape(groups, steps, per)


def packed_bytes_per_image(x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                           y_shape: tuple[int, ...], stride: tuple[int, ...],
                           dilation: tuple[int, ...], itemsize: int) -> int:
    """Scratch one image needs in :func:`fprop_packed` (its packed input)."""
    geometry = Geometry.of_shapes(x_shape, w_shape, y_shape, stride, (0,) * len(stride),
                                  dilation, 1)
    layout = PackedLayout.of(geometry.kernel, geometry.y_spatial, geometry)
    return x_shape[1] * layout.row_length(1) * itemsize


def _compute_itemsize(problem: ConvProblem) -> int:
    return 8 if problem.dtype == "float64" else 4  # half types are computed in float32


Shape = tuple[int, ...]


def packed_shapes(problem: ConvProblem) -> tuple[Shape, Shape, Shape]:
    """``(x, w, y)`` shapes of the forward pass packed_direct runs for *problem*: its own,
    or for the data gradient the forward pass of dy with the flipped weights."""
    if problem.direction != Direction.BACKWARD_DATA:
        return problem.x_shape, problem.w_shape, problem.y_shape
    w = problem.w_shape
    flipped = (problem.in_channels, w[0] // problem.groups, *w[2:])
    return problem.y_shape, flipped, problem.x_shape


def packed_variant(problem: ConvProblem, budget: int) -> str:
    """Which of :func:`fprop_packed`'s three strategies runs *problem*."""
    x_shape, w_shape, y_shape = packed_shapes(problem)
    per_image = packed_bytes_per_image(x_shape, w_shape, y_shape, problem.stride,
                                       problem.dilation, _compute_itemsize(problem))
    flops = 2 * math.prod(y_shape) * math.prod(w_shape[1:])
    if flops < SERIAL_FLOPS and problem.batch * per_image <= budget:
        return SINGLE_PASS
    reads_in_place = (problem.taps == 1 and not problem.is_strided()
                      and all(lo == 0 for lo, _ in problem.padding)
                      and problem.x_spatial == problem.y_spatial and not problem.channels_last)
    return IN_PLACE_1X1 if reads_in_place else PER_IMAGE


def fprop_packed(x: Array, w: Array, y: Array, geometry: Geometry, budget: int,
                 epilogue: Epilogue | None = None, variant: str = PER_IMAGE) -> None:
    n_images, channels = x.shape[:2]
    layout = PackedLayout.of(w.shape[2:], y.shape[2:], geometry)
    groups, c_per_group = geometry.groups, w.shape[1]
    w2 = w.reshape(w.shape[0], -1)
    plane = layout.plane
    per_image = channels * layout.row_length(1) * x.dtype.itemsize
    ep = epilogue or no_epilogue(y.dtype)
    if variant == SINGLE_PASS:
        length = layout.row_length(n_images)
        offsets = layout.pair_offsets(groups, c_per_group, length, n_images * plane)
        kernels.packed_small(x, w2, offsets, y, length, layout.phases, layout.dq, layout.hq,
                             layout.wq, *geometry.spatial_args[:6], *ep)
        return
    if variant == IN_PLACE_1X1:
        offsets = layout.pair_offsets(groups, c_per_group, plane, 0)
        for n in range(n_images):
            kernels.packed_direct(x[n].reshape(-1), w2, offsets, y, n, 1, plane, layout.hq,
                                  layout.wq, False, *ep)
        return
    images = max(1, min(n_images, budget // per_image))
    packed_x = np.empty((channels, layout.row_length(images)), dtype=x.dtype)
    for n0 in range(0, n_images, images):
        count = min(images, n_images - n0)
        kernels.pack_input(x, n0, count, packed_x, layout.phases, layout.dq, layout.hq,
                           layout.wq, *geometry.spatial_args[:6])
        offsets = layout.pair_offsets(groups, c_per_group, packed_x.shape[1], count * plane)
        kernels.packed_direct(packed_x.reshape(-1), w2, offsets, y, n0, count, plane,
                              layout.hq, layout.wq, True, *ep)


# Packed GEMM ---------------------------------------------------------------------------------
# The packed input of packed_direct, with the taps as GEMMs on the private BLAS (see
# gemm_kernels.packed_gemm): no im2col copy, and the BLAS micro-kernel's register blocking
# instead of accumulators in L1. A GEMM's depth is the channels per group times the taps
# expanded into it; below PACKED_GEMM_MIN_DEPTH the BLAS kernel runs short (its packing
# costs as much as its arithmetic), so each channel is copied once per tap of a kernel row
# (``row``), or once per tap (``all``: im2col over the packed input, for stems of 3 channels).
PACKED_GEMM_MIN_DEPTH = 64
PACKED_GEMM_MAX_ROWS = 256          # output channels per job
PACKED_GEMM_ACC_FLOATS = 64 * 1024  # a job's accumulator: 256 KiB of float32, inside L2
PACKED_GEMM_LONGEST_RUN = 512       # packed positions per job at most
PACKED_GEMM_TAPS = "per-tap GEMMs over the packed input"
PACKED_GEMM_ROWS = "a GEMM per kernel row, its taps as shifted copies of each channel"
PACKED_GEMM_ALL = "one GEMM, every tap a shifted copy of each channel"


def packed_gemm_expansion(c_per_group: int, kernel: tuple[int, ...]) -> str:
    """Which taps ``packed_gemm`` copies into its GEMMs' depth: none, a kernel row's or all."""
    if c_per_group >= PACKED_GEMM_MIN_DEPTH or math.prod(kernel) == 1:
        return PACKED_GEMM_TAPS
    if c_per_group * kernel[-1] >= PACKED_GEMM_MIN_DEPTH and kernel[-1] > 1:
        return PACKED_GEMM_ROWS
    return PACKED_GEMM_ALL


def packed_gemm_variant(problem: ConvProblem) -> str:
    kernel = (1,) * (3 - len(problem.kernel_size)) + tuple(problem.kernel_size)
    return packed_gemm_expansion(problem.in_channels_per_group, kernel)


def _expanded_taps(variant: str, kernel: tuple[int, ...]) -> int:
    return {PACKED_GEMM_TAPS: 1, PACKED_GEMM_ROWS: kernel[-1],
            PACKED_GEMM_ALL: math.prod(kernel)}[variant]


def packed_gemm_bytes_per_image(x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                                y_shape: tuple[int, ...], stride: tuple[int, ...],
                                dilation: tuple[int, ...], itemsize: int) -> int:
    """Scratch one image needs in :func:`fprop_packed_gemm`: its packed input and, when taps
    are expanded, the shifted copies."""
    packed = packed_bytes_per_image(x_shape, w_shape, y_shape, stride, dilation, itemsize)
    kernel = (1,) * (5 - len(w_shape)) + tuple(w_shape[2:])
    copies = _expanded_taps(packed_gemm_expansion(w_shape[1], kernel), kernel)
    return packed * (1 + copies) if copies > 1 else packed


@functools.lru_cache(maxsize=256)
def _packed_gemm_offsets(layout: PackedLayout, copies: int, images: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """``(row_offsets, column_offsets)``: tap ``r * copies + e`` (kernel order) reads the
    packed run at ``row_offsets[r] + column_offsets[e]``. A tap's offset is its phase plane's
    plus its shift; phases and shifts are products over the axes, so a kernel row's taps
    differ from its first by the same column offsets in every row."""
    bases = layout.tap_phase * (images * layout.plane) + layout.tap_shift
    by_row = bases.reshape(-1, copies)
    rows, columns = by_row[:, 0] - by_row[0, 0], by_row[0] - by_row[0, 0]
    assert np.array_equal(rows[:, None] + columns[None, :] + by_row[0, 0], by_row)
    return (rows + by_row[0, 0]).astype(np.int64), columns.astype(np.int64)


def _packed_gemm_steps(per_group: int, groups: int, total: int, threads: int
                       ) -> tuple[int, int]:
    """``(m_step, p_step)``: output channels and packed positions per job. Each job's GEMMs
    pack their weight rows (cost ~ m_step) and input columns (cost ~ p_step) anew, so jobs are
    kept wide on both sides: long runs of positions first, then the output channels split
    until every thread has about two jobs (never below 32 rows), and the accumulator kept in
    L2."""
    def round16(count: int) -> int:
        return max(16, -(-count // 16) * 16)

    wanted = 2 * threads if threads > 1 else 1
    p_step = min(round16(total), PACKED_GEMM_LONGEST_RUN)
    p_blocks = -(-total // p_step)
    m_blocks = max(-(-per_group // PACKED_GEMM_MAX_ROWS), -(-wanted // (groups * p_blocks)))
    m_blocks = max(1, min(m_blocks, per_group // 32))
    m_step = -(-per_group // m_blocks)
    p_step = min(p_step, round16(PACKED_GEMM_ACC_FLOATS // m_step - 15))
    jobs = groups * m_blocks * -(-total // p_step)
    if jobs < wanted:
        p_step = round16(-(-total // -(-wanted // (groups * m_blocks))))
    return m_step, p_step


def fprop_packed_gemm(x: Array, w: Array, y: Array, geometry: Geometry, budget: int,
                      epilogue: Epilogue | None = None, variant: str = PACKED_GEMM_TAPS) -> None:
    from . import gemm_kernels

    n_images, channels = x.shape[:2]
    kernel = tuple(w.shape[2:])
    layout = PackedLayout.of(kernel, y.shape[2:], geometry)
    groups, c_per_group = geometry.groups, w.shape[1]
    copies = _expanded_taps(variant, kernel)
    c_out = w.shape[0]
    tap_rows = math.prod(kernel) // copies
    # weights[r, o, e * C + c] = w[o, c, tap r * copies + e]
    weights = np.ascontiguousarray(
        w.reshape(c_out, c_per_group, tap_rows, copies).transpose(2, 0, 3, 1)
    ).reshape(tap_rows, c_out, copies * c_per_group)
    ep = epilogue or no_epilogue(y.dtype)
    per_image = packed_gemm_bytes_per_image(x.shape, w.shape, y.shape, geometry.stride,
                                            geometry.dilation, x.dtype.itemsize)
    images = max(1, min(n_images, budget // max(1, per_image)))
    flops = 2 * math.prod(y.shape) * math.prod(w.shape[1:])
    threads = 1 if flops < SERIAL_FLOPS else kernels.pool_threads()
    per_out_image = layout.output_span(y.shape[2:], 1)

    def extent(count: int) -> tuple[int, int]:
        """(packed positions of *count* images, columns of their expanded copies)."""
        total = layout.output_span(y.shape[2:], count)
        return total, total + int(_packed_gemm_offsets(layout, copies, count)[0].max())

    total, width = extent(images)
    m_step, p_step = _packed_gemm_steps(c_out // groups, groups, total, threads)
    # One scratch request (workspace.scratch is per calling thread): packed input, its
    # shifted copies and the accumulators of the pool's parts.
    packed_size = channels * layout.row_length(images)
    expanded_size = channels * copies * width if copies > 1 else 0
    acc_size = threads * m_step * p_step
    scratch = workspace.scratch(x.dtype, packed_size + expanded_size + acc_size)
    accumulators = scratch[packed_size + expanded_size:].reshape(threads, m_step, p_step)
    with kernels.thread_limit(threads):
        for n0 in range(0, n_images, images):
            count = min(images, n_images - n0)
            row_offsets, column_offsets = _packed_gemm_offsets(layout, copies, count)
            total, width = extent(count)
            packed = scratch[:channels * layout.row_length(count)].reshape(channels, -1)
            kernels.pack_input(x, n0, count, packed, layout.phases, layout.dq, layout.hq,
                               layout.wq, *geometry.spatial_args[:6])
            expanded = packed
            if copies > 1:
                expanded = scratch[packed_size:packed_size + channels * copies * width].reshape(
                    channels * copies, width)
                gemm_kernels.expand_taps(packed, expanded, column_offsets, c_per_group)
            gemm_kernels.packed_gemm(expanded, weights, row_offsets, y, n0, count, layout.plane,
                                     layout.hq, layout.wq, per_out_image, total, p_step,
                                     accumulators, *ep)


def packed_wgrad_bytes_per_image(x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                                 y_shape: tuple[int, ...], stride: tuple[int, ...],
                                 dilation: tuple[int, ...], itemsize: int) -> int:
    """Scratch one image needs in :func:`wgrad_packed_gemm`: its packed input and its
    packed output gradient."""
    geometry = Geometry.of_shapes(x_shape, w_shape, y_shape, stride, (0,) * len(stride),
                                  dilation, 1)
    layout = PackedLayout.of(geometry.kernel, geometry.y_spatial, geometry)
    return (x_shape[1] * layout.row_length(1) + w_shape[0] * layout.plane) * itemsize


def wgrad_packed_gemm(x: Array, dy: Array, dw: Array, geometry: Geometry, budget: int,
                      epilogue: Epilogue | None = None, variant: str = "") -> None:
    """The weight gradient over the packed input: ``dy`` is laid out at the packed output
    positions (zeros between rows and images), so each tap's gradient is one GEMM of it with
    the tap's shifted run of the packed input, summed over a whole tile of images. Those
    zeros meet real input values (padding columns, neighbouring images), so an input holding
    Inf or NaN, whose product with zero is NaN, takes the im2col pass instead."""
    from . import gemm_kernels

    n_images, channels = x.shape[:2]
    if n_images == 0:
        dw[...] = 0
        return
    if not np.isfinite(x).all():
        wgrad_im2col(x, dy, dw, geometry, budget)
        return
    kernel = tuple(dw.shape[2:])
    layout = PackedLayout.of(kernel, dy.shape[2:], geometry)
    c_out, c_per_group = dw.shape[:2]
    taps = math.prod(kernel)
    per_image = packed_wgrad_bytes_per_image(x.shape, dw.shape, dy.shape, geometry.stride,
                                             geometry.dilation, x.dtype.itemsize)
    images = max(1, min(n_images, budget // max(1, per_image)))
    flops = 2 * math.prod(dy.shape) * math.prod(dw.shape[1:])
    threads = 1 if flops < SERIAL_FLOPS else kernels.pool_threads()
    per_group = c_out // geometry.groups
    wanted = -(-4 * threads // (geometry.groups * taps)) if threads > 1 else 1
    m_step = -(-per_group // max(1, min(wanted, per_group // 16 or 1)))
    packed_size = channels * layout.row_length(images)
    grad_size = c_out * layout.output_span(dy.shape[2:], images)
    scratch = workspace.scratch(x.dtype, packed_size + grad_size)
    result = np.empty((taps, c_out, c_per_group), dtype=dw.dtype)
    with kernels.thread_limit(threads):
        for n0 in range(0, n_images, images):
            count = min(images, n_images - n0)
            packed = scratch[:channels * layout.row_length(count)].reshape(channels, -1)
            kernels.pack_input(x, n0, count, packed, layout.phases, layout.dq, layout.hq,
                               layout.wq, *geometry.spatial_args[:6])
            total = layout.output_span(dy.shape[2:], count)
            grad = scratch[packed_size:packed_size + c_out * total].reshape(c_out, total)
            kernels.pack_output(dy, n0, count, grad, layout.plane, layout.hq, layout.wq)
            tap_offsets = _packed_gemm_offsets(layout, 1, count)[0]
            gemm_kernels.packed_wgrad(grad, packed, tap_offsets, result, m_step,
                                      0.0 if n0 == 0 else 1.0)
    dw[...] = result.transpose(1, 2, 0).reshape(dw.shape)


def dgrad_packed(dy: Array, w: Array, dx: Array, geometry: Geometry, budget: int,
                 epilogue: Epilogue | None = None, variant: str = PER_IMAGE) -> None:
    """The data gradient of a stride-1 pass as packed_direct's forward pass of ``dy`` with
    the flipped weights (``Geometry.flipped``). That forward pass multiplies its padding
    zeros by the weights, which the data gradient does not (0 * Inf is NaN), so weights
    holding Inf or NaN take im2col's data gradient, which sums real products only."""
    if not np.isfinite(w).all():
        dgrad_im2col(dy, w, dx, geometry, budget)
        if epilogue is not None and (epilogue.has_bias or epilogue.activation):
            kernels.apply_epilogue(dx, *epilogue)   # the record says packed_direct fuses it
        return
    fprop_packed(dy, flipped_weights(w, geometry.groups), dx, geometry.flipped(), budget,
                 epilogue, variant)


# Channels-last depthwise pays on channels-first data when each plane is small and the
# channels are many. Measured against per-plane packing once its jobs took runs of planes
# (MobileNetV2's and ShuffleNet's layers, batch 1 and 8): faster at 7x7 outputs (0.6-0.8),
# slower at 14x14 (1.3-1.9x) and beyond.
DEPTHWISE_CHANNELS_LAST_MAX_POSITIONS = 8 * 8
DEPTHWISE_CHANNELS_LAST_MIN_CHANNELS = 32


def depthwise_channels_last_applies(x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                                    y_shape: tuple[int, ...], channels_last: bool = False,
                                    max_positions: int = DEPTHWISE_CHANNELS_LAST_MAX_POSITIONS
                                    ) -> bool:
    """Whether a 2-D depthwise pass without channel multiplier runs a channels-in-lanes
    kernel: channels-last data always (it reads the data as it lies); channels-first data
    only when channels are many and the forward output (``y_shape``: ``dy`` for the
    gradients) has at most *max_positions*."""
    spatial_2d = len(x_shape) < 5 or x_shape[2] == 1
    if not (spatial_2d and w_shape[0] == x_shape[1]):
        return False
    return channels_last or (x_shape[1] >= DEPTHWISE_CHANNELS_LAST_MIN_CHANNELS
                             and math.prod(y_shape[2:]) <= max_positions)


def _taps_by_channel(w: Array) -> Array:
    """A depthwise weight ``(C, 1, kd, kh, kw)`` as the contiguous ``(taps, C)`` the
    channels-in-lanes kernels read a vector of channels from."""
    return np.ascontiguousarray(w.reshape(w.shape[0], -1).T)


def _channels_innermost(a: Array) -> Array:
    """``(N, C, D, H, W)`` viewed in ``(N, D, H, W, C)`` axis order (no copy)."""
    return a.transpose(0, 2, 3, 4, 1)


# Depthwise planes are memory-bound: two threads pay from about 0.5 MFLOP (measured: 192x28x28
# takes 0.11 ms on two threads, 0.18 ms on one).
DEPTHWISE_SERIAL_FLOPS = SERIAL_FLOPS // 8


# The gradients' channels-in-lanes kernels against the per-plane ones, on MobileNetV2's and
# ShuffleNet's depthwise layers at batch 1 and 8 (in-process, 2 threads): up to 14x14 dy the
# strided data gradient takes 0.21-0.46 of the time (576x14x14 at stride 2, batch 8: 2.03 ->
# 0.48 ms); on 28x28 dy and beyond it loses (1.4-8x). The unit-stride data gradient's flipped
# forward kernel keeps 14x14 (the lanes took 0.94-1.28 of its time) and gives 7x7 up
# (0.76-0.93). The weight gradient's lanes take up to 7x7 dy (0.39-0.91 of the batched dots'
# time, 960x7x7 at batch 1: 0.073 vs 0.19 ms); since the dots sum a 3x3 kernel's nine taps in
# one pass, they win at 14x14 (384x14x14 at batch 8: 0.33 vs 0.53 ms; even at batch 1).
DEPTHWISE_GRADIENT_LANES_MAX_POSITIONS = 14 * 14
FLIPPED_FORWARD = "the forward kernel over dy with the filters turned half a turn"
SCATTER = "scatter kernel over phase-split padded planes"
BATCH_PACKED = "one dot per tap over the batch's packed planes"


def depthwise_variant(problem: ConvProblem) -> str:
    """Which kernel a depthwise pass runs (the data gradient's flipped forward kernel gives
    way to the scatter kernel when the weights hold Inf or NaN, known only at run time)."""
    lift_shape = lambda shape: (*shape[:2], *(1,) * (5 - len(shape)), *shape[2:])  # noqa: E731
    shapes = (lift_shape(problem.x_shape), lift_shape(problem.w_shape),
              lift_shape(problem.y_shape))
    if problem.direction == Direction.FORWARD:
        return _depthwise_kernel(*shapes, problem.channels_last)
    unit_dgrad = problem.direction == Direction.BACKWARD_DATA and not problem.is_strided()
    wgrad = problem.direction == Direction.BACKWARD_WEIGHT
    limit = (DEPTHWISE_CHANNELS_LAST_MAX_POSITIONS if unit_dgrad or wgrad
             else DEPTHWISE_GRADIENT_LANES_MAX_POSITIONS)
    # The weight gradient gets channels-first copies of channels-last data (the record's
    # channels_last covers the other passes), so only its sizes decide.
    in_place = problem.channels_last and problem.direction == Direction.BACKWARD_DATA
    if depthwise_channels_last_applies(*shapes, in_place, limit):
        return CHANNELS_IN_LANES
    if problem.direction == Direction.BACKWARD_WEIGHT:
        return BATCH_PACKED
    if data_gradient_flippable(problem) and problem.out_channels == problem.in_channels:
        return f"{FLIPPED_FORWARD} ({SCATTER} for weights holding Inf or NaN)"
    return SCATTER


def _depthwise_kernel(x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                      y_shape: tuple[int, ...], channels_last: bool) -> str:
    if depthwise_channels_last_applies(x_shape, w_shape, y_shape, channels_last):
        return CHANNELS_IN_LANES
    flops = 2 * math.prod(y_shape) * math.prod(w_shape[1:])
    return PER_PLANE_SERIAL if flops < DEPTHWISE_SERIAL_FLOPS else PER_PLANE


def fprop_depthwise(x: Array, w: Array, y: Array, geometry: Geometry, budget: int,
                    epilogue: Epilogue | None = None, variant: str = PER_PLANE) -> None:
    ep = epilogue or no_epilogue(y.dtype)
    if variant == CHANNELS_IN_LANES:
        w_t = _taps_by_channel(w)
        kernels.depthwise_channels_last(_channels_innermost(x), w_t, _channels_innermost(y),
                                        w.shape[3], w.shape[4], *geometry.stride[1:],
                                        *geometry.pad_low[1:], *geometry.dilation[1:], *ep)
        return
    layout = PackedLayout.of(w.shape[2:], y.shape[2:], geometry)
    # A small problem runs the parallel kernel on one thread (no pool wake-up), not its
    # single-threaded twin: compiled without parfors, the twin's plane loops ran 17x slower
    # (1.8 vs 0.11 ms on 192x28x28).
    threads = 1 if variant == PER_PLANE_SERIAL else None
    with kernels.thread_limit(threads):
        kernels.depthwise_packed(x, w.reshape(w.shape[0], -1), layout.tap_phase,
                                 layout.tap_shift, y, layout.phases, layout.dq, layout.hq,
                                 layout.wq, *geometry.spatial_args[:6], *ep,
                                 kernels.pool_threads())


# Winograd F(4x4, 3x3) -----------------------------------------------------------------------
WINOGRAD_POOL = "F(4x4,3x3), blocks of tiles across the pool, one GEMM thread per block"
WINOGRAD_SERIAL = "F(4x4,3x3), single-threaded (small problem)"


def winograd_variant(problem: ConvProblem) -> str:
    flops = 2 * math.prod(problem.y_shape) * math.prod(problem.w_shape[1:])
    return WINOGRAD_SERIAL if flops < SERIAL_FLOPS else WINOGRAD_POOL


def _winograd(x: Array, w: Array, y: Array, geometry: Geometry, epilogue: Epilogue | None,
              variant: str) -> None:
    from . import winograd

    ep = epilogue or no_epilogue(y.dtype)
    threads = 1 if variant == WINOGRAD_SERIAL else kernels.pool_threads()
    winograd.forward(x[:, :, 0], w[:, :, 0], y[:, :, 0], geometry.pad_low[1],
                     geometry.pad_low[2], geometry.groups, threads, *ep,
                     pad_products=geometry.pad_products)


def fprop_winograd(x: Array, w: Array, y: Array, geometry: Geometry, budget: int,
                   epilogue: Epilogue | None = None, variant: str = WINOGRAD_POOL) -> None:
    _winograd(x, w, y, geometry, epilogue, variant)


def flipped_weights(w: Array, groups: int) -> Array:
    """``(C, K / groups, *k)``: the weights of the data gradient as a forward pass, each
    group's channels swapped and its kernels rotated half a turn."""
    k_out, c_per_group = w.shape[:2]
    spatial = w.shape[2:]
    per_group = w.reshape(groups, k_out // groups, c_per_group, *spatial)
    rotated = np.flip(per_group, axis=tuple(range(3, 3 + len(spatial))))
    return np.ascontiguousarray(rotated.swapaxes(1, 2)).reshape(
        groups * c_per_group, k_out // groups, *spatial)


def dgrad_winograd(dy: Array, w: Array, dx: Array, geometry: Geometry, budget: int,
                   epilogue: Epilogue | None = None, variant: str = WINOGRAD_POOL) -> None:
    _winograd(dy, flipped_weights(w, geometry.groups), dx, geometry.flipped(), epilogue,
              variant)


# Long passes in chunks ------------------------------------------------------------------------
# numba kernels run on the calling thread (nogil) and Python runs its SIGINT handler only
# between bytecodes, so one long kernel call holds a Ctrl-C until it returns. A pass estimated
# to be long is therefore run as a sequence of kernel calls, each computing an independent
# part of the output: the interrupt lands after the current chunk, nothing runs on in the
# background, and the output (a fresh array) is dropped with the exception. The alternative,
# a worker thread while the caller waits in short joins, answers at once but leaves the
# worker computing (and holding numba's thread pool) until its chunk ends anyway, so it
# would need the same chunks and adds a thread per call.
# CHUNK_FLOPS is ~0.25 s of one thread at ~4 GFLOP/s (the direct kernel, AVX2): the pass of
# the issue (1x1x2048x2048 * 63x63, 33 GFLOP) runs as ~34 calls, and a call's dispatch (tens
# of microseconds at most) is under 0.1% of a chunk. Passes under LONG_PASS_FLOPS are never
# split (the tiny-call path is unchanged: the plan is made once per problem and cached).
CHUNK_FLOPS = 1_000_000_000
LONG_PASS_FLOPS = 2 * CHUNK_FLOPS


@dataclass(frozen=True)
class Chunk:
    """Images ``n0 .. n1`` (forward and data gradient), groups ``g0 .. g1`` and, when
    ``rows`` is set, rows ``r0 .. r1`` of one axis: the output rows (forward), the input
    rows (data gradient) or the kernel rows (weight gradient)."""

    n0: int
    n1: int
    g0: int
    g1: int
    rows: tuple[int, int] | None = None


def _blocks(total: int, cost_each: float, budget: float) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges covering ``range(total)``, each costing about *budget* or less
    (at least one unit each)."""
    step = max(1, int(budget // max(cost_each, 1.0)))
    return [(lo, min(total, lo + step)) for lo in range(0, total, step)]


def plan_chunks(pass_index: int, batch: int, groups: int, rows: int, flops: int,
                split_groups_and_rows: bool, chunk_flops: int = CHUNK_FLOPS) -> list[Chunk]:
    """Split a pass of *flops* into independent chunks of about *chunk_flops*: blocks of
    images first (forward and data gradient: each image is its own problem), then, when
    one image (or, for the weight gradient, the whole pass) is still too long and the
    algorithm allows it (*split_groups_and_rows*, direct only), blocks of whole groups, then
    blocks of *rows*. Each output's sum runs over the same terms in the same order as in the
    unsplit pass, so results are bitwise identical."""
    images = batch if pass_index != 2 else 1
    per_image = flops / max(1, images)
    if images > 1 and (per_image <= chunk_flops or not split_groups_and_rows):
        return [Chunk(n0, n1, 0, groups) for n0, n1 in _blocks(images, per_image, chunk_flops)]
    if not split_groups_and_rows:
        return [Chunk(0, batch, 0, groups)]
    per_group = per_image / groups
    chunks = []
    for n in range(images):
        n0, n1 = (n, n + 1) if pass_index != 2 else (0, batch)
        if per_group <= chunk_flops or rows == 1:
            chunks += [Chunk(n0, n1, g0, g1) for g0, g1 in _blocks(groups, per_group, chunk_flops)]
            continue
        for g in range(groups):
            chunks += [Chunk(n0, n1, g, g + 1, r) for r in _blocks(rows, per_group / rows,
                                                                   chunk_flops)]
    return chunks


def _row_window(pass_index: int, chunk_rows: tuple[int, int], a_rows: int, k_rows: int,
                stride: int, pad: int, dilation: int) -> tuple[int, int, int]:
    """For a chunk of rows ``r0 .. r1``: the rows ``s .. e`` of the input operand it reads
    (the weight gradient reads every row) and the low padding that makes the sliced
    operands address the same elements."""
    r0, r1 = chunk_rows
    if pass_index == 0:   # output rows r0..r1 read input rows r0*s - p .. (r1-1)*s - p + (k-1)*d
        first = r0 * stride - pad
        s = min(max(0, first), a_rows)
        e = max(s, min(a_rows, (r1 - 1) * stride - pad + (k_rows - 1) * dilation + 1))
        return s, e, pad - r0 * stride + s
    if pass_index == 1:   # input rows r0..r1 gather the output rows that read them
        s = min(max(0, -(-(r0 + pad - (k_rows - 1) * dilation) // stride)), a_rows)
        e = max(s, min(a_rows, (r1 - 1 + pad) // stride + 1))
        return s, e, pad + r0 - s * stride
    return 0, a_rows, pad - r0 * dilation   # kernel rows r0..r1: tap kh reads kh * d - p


def chunk_operands(pass_index: int, chunk: Chunk, a: Array, b: Array, out: Array,
                   geometry: Geometry) -> tuple[Array, Array, Array, Geometry]:
    """Views of the operands and the output that one chunk reads and writes, and its
    geometry. Every array is ``(N, C, D, H, W)``; for the weight gradient *out* is the weight."""
    if pass_index != 2:   # the weight gradient sums over the batch: never split there
        a, out = a[chunk.n0:chunk.n1], out[chunk.n0:chunk.n1]
    if (chunk.g0, chunk.g1) != (0, geometry.groups):
        # Channels of groups g0..g1 in each operand: the weight (or weight gradient) holds
        # output channels on its first axis, activations their channels on the second.
        w_like = b if pass_index != 2 else out
        per_out = w_like.shape[0] // geometry.groups
        per_in = w_like.shape[1]
        out_block = slice(chunk.g0 * per_out, chunk.g1 * per_out)
        in_block = slice(chunk.g0 * per_in, chunk.g1 * per_in)
        if pass_index == 0:
            a, b, out = a[:, in_block], b[out_block], out[:, out_block]
        elif pass_index == 1:
            a, b, out = a[:, out_block], b[out_block], out[:, in_block]
        else:
            a, b, out = a[:, in_block], b[:, out_block], out[out_block]
        geometry = dataclasses.replace(geometry, groups=chunk.g1 - chunk.g0)
    if chunk.rows is not None:
        r0, r1 = chunk.rows
        weight = b if pass_index != 2 else out
        s, e, pad = _row_window(pass_index, chunk.rows, a.shape[3], weight.shape[3],
                                geometry.stride[1], geometry.pad_low[1], geometry.dilation[1])
        if pass_index == 2:
            out = out[:, :, :, r0:r1]
        else:
            a, out = a[:, :, :, s:e], out[:, :, :, r0:r1]
        pad_low = (geometry.pad_low[0], pad, geometry.pad_low[2])
        geometry = dataclasses.replace(geometry, pad_low=pad_low)
    # The chunk's own shapes, so the geometry describes exactly the call it goes with.
    s0, s1, s2 = (tuple(array.shape) for array in (a, b, out))
    x, w, y = ((s0, s1, s2), (s2, s1, s0), (s0, s2, s1))[pass_index]  # (a, b, out) per pass
    geometry = dataclasses.replace(geometry, x=x, w=w, y=y)  # type: ignore[arg-type]
    return a, b, out, geometry


# The passes of the direct algorithm and depthwise's gradients, by the names the backend's
# algorithm records give (each ``(a, b, out, geometry, budget, epilogue, variant)``).
fprop_fft, dgrad_fft, wgrad_fft = FFT_PASSES
from .numpy_taps import dgrad_numpy_taps, fprop_numpy_taps, wgrad_numpy_taps  # noqa: E402, F401

fprop_direct = _direct("fprop_direct")
dgrad_direct = _direct("dgrad_direct")
wgrad_direct = _direct("wgrad_direct")
def _scatter_dgrad_depthwise(dy: Array, w: Array, dx: Array, geometry: Geometry) -> None:
    kernels.dgrad_depthwise(dy, w, dx, *geometry.spatial_args, kernels.pool_threads())


def dgrad_depthwise(dy: Array, w: Array, dx: Array, geometry: Geometry, budget: int,
                    epilogue: Epilogue | None = None, variant: str = "") -> None:
    """The depthwise data gradient. On small maps with many channels (CHANNELS_IN_LANES)
    every ``dy`` vector of channels is scattered into a padded buffer. Otherwise, without
    stride, channel multiplier or padding past the kernel's reach (FLIPPED_FORWARD, see
    :func:`depthwise_variant`) it is the depthwise forward pass of ``dy`` with the kernels
    rotated half a turn (the packed kernel, several times faster than scattering); a forward
    pass would multiply the padding zeros by the weights, so non-finite weights take the
    scatter kernel, which sums real entries only."""
    if variant == CHANNELS_IN_LANES:
        w_t = _taps_by_channel(w)
        kernels.dgrad_depthwise_channels_last(_channels_innermost(dy), w_t,
                                              _channels_innermost(dx), w.shape[3], w.shape[4],
                                              *geometry.stride[1:], *geometry.pad_low[1:],
                                              *geometry.dilation[1:])
        return
    if variant.startswith(FLIPPED_FORWARD) and np.isfinite(w).all():
        flipped = flipped_weights(w, geometry.groups)
        kernel = _depthwise_kernel(dy.shape, flipped.shape, dx.shape, geometry.channels_last)
        fprop_depthwise(dy, flipped, dx, geometry.flipped(), budget, variant=kernel)
        return
    _scatter_dgrad_depthwise(dy, w, dx, geometry)


def wgrad_depthwise(x: Array, dy: Array, dw: Array, geometry: Geometry, budget: int,
                    epilogue: Epilogue | None = None, variant: str = "") -> None:
    if variant == CHANNELS_IN_LANES:
        dw_t = np.empty((dw.shape[3] * dw.shape[4], dw.shape[0]), dtype=dw.dtype)
        kernels.wgrad_depthwise_channels_last(_channels_innermost(x), _channels_innermost(dy),
                                              dw_t, dw.shape[3], dw.shape[4],
                                              *geometry.stride[1:], *geometry.pad_low[1:],
                                              *geometry.dilation[1:])
        dw.reshape(dw.shape[0], -1)[...] = dw_t.T
        return
    layout = PackedLayout.of(dw.shape[2:], dy.shape[2:], geometry)
    kernels.wgrad_depthwise(x, dy, dw, *geometry.spatial_args, layout.tap_phase,
                            layout.tap_shift, layout.phases, layout.dq, layout.hq, layout.wq,
                            kernels.pool_threads())
