"""The numba backend's algorithms: direct, depthwise, 1x1 GEMM and tiled im2col + GEMM.

Each function takes C-contiguous 5-D arrays (1-D and 2-D problems lifted to 3-D) and fills a
preallocated output. GEMMs go through ``numpy.matmul`` (the BLAS numpy ships); the im2col
scratch is tiled so it never exceeds the workspace limit (``CONVFLOW_WORKSPACE_MB``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import kernels

Array = np.ndarray


@dataclass(frozen=True)
class Geometry:
    """Stride, low padding and dilation lifted to three spatial dims, plus groups."""

    stride: tuple[int, int, int]
    pad_low: tuple[int, int, int]
    dilation: tuple[int, int, int]
    groups: int

    @classmethod
    def lift(cls, stride: tuple[int, ...], padding: tuple[tuple[int, int], ...],
             dilation: tuple[int, ...], groups: int) -> Geometry:
        missing = 3 - len(stride)
        return cls((1,) * missing + tuple(stride),  # type: ignore[arg-type]
                   (0,) * missing + tuple(lo for lo, _ in padding),  # type: ignore[arg-type]
                   (1,) * missing + tuple(dilation), groups)  # type: ignore[arg-type]

    @property
    def args(self) -> tuple[int, ...]:
        return (*self.stride, *self.pad_low, *self.dilation)

    def is_unit_stride(self) -> bool:
        return self.stride == (1, 1, 1)


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


@dataclass(frozen=True)
class Tile:
    """A block of output positions: global rows ``row0 .. row0 + n_rows`` (a row is one
    ``(n, od, oh)``) and columns ``w0 .. w0 + w_count`` of each."""

    row0: int
    n_rows: int
    w0: int
    w_count: int

    @property
    def columns(self) -> int:
        return self.n_rows * self.w_count


def plan_tiles(n_images: int, rows_per_image: int, out_w: int, bytes_per_column: int,
               budget_bytes: int) -> list[Tile]:
    """Split the output positions into tiles whose scratch fits *budget_bytes*.

    Small images are grouped several per tile (bigger GEMMs); large ones are split into
    whole rows, and rows wider than the budget into column chunks. A tile never has fewer
    than one column.
    """
    max_columns = max(1, budget_bytes // max(1, bytes_per_column))
    image_columns = rows_per_image * out_w
    tiles = []
    if image_columns <= max_columns:
        images = max_columns // image_columns
        for first in range(0, n_images, images):
            count = min(images, n_images - first)
            tiles.append(Tile(first * rows_per_image, count * rows_per_image, 0, out_w))
    elif out_w <= max_columns:
        rows = max_columns // out_w
        for n in range(n_images):
            for r in range(0, rows_per_image, rows):
                tiles.append(Tile(n * rows_per_image + r, min(rows, rows_per_image - r), 0, out_w))
    else:
        for row in range(n_images * rows_per_image):
            for w0 in range(0, out_w, max_columns):
                tiles.append(Tile(row, 1, w0, min(max_columns, out_w - w0)))
    return tiles


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
        self.tiles = plan_tiles(self.n_images, self.rows_per_image, self.out_w, per_column, budget)
        widest = max(t.columns for t in self.tiles)
        self._col = np.empty(self.rows * widest, dtype=dtype)
        self._other = np.empty(self.c_out_per_group * widest, dtype=dtype)

    def col(self, tile: Tile) -> Array:
        return self._col[: self.rows * tile.columns].reshape(self.rows, tile.columns)

    def other(self, tile: Tile) -> Array:
        return self._other[: self.c_out_per_group * tile.columns].reshape(
            self.c_out_per_group, tile.columns)

    def output_view(self, y_flat: Array, tile: Tile, c_first: int) -> Array | None:
        """A no-copy view of the tile in the flat output when it lies in one image."""
        n, r = divmod(tile.row0, self.rows_per_image)
        if tile.w_count != self.out_w or r + tile.n_rows > self.rows_per_image:
            return None
        return y_flat[n, c_first:c_first + self.c_out_per_group,
                      r * self.out_w:(r + tile.n_rows) * self.out_w]

    def tile_args(self, tile: Tile) -> tuple[int, ...]:
        return (tile.row0, tile.n_rows, tile.w0, tile.w_count, self.out_d, self.out_h)

    def im2col(self, x: Array, c_first: int, tile: Tile, geometry: Geometry) -> Array:
        col = self.col(tile)
        kernels.im2col(x, c_first, col, *self.tile_args(tile), *self.kernel, *geometry.args)
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
                 epilogue: Epilogue | None = None) -> None:
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
                np.matmul(w_group, col, out=view)
            else:
                result = layout.other(tile)
                np.matmul(w_group, col, out=result)
                kernels.rows_to_output(result, y, c_out_first, *layout.tile_args(tile))


def dgrad_im2col(dy: Array, w: Array, dx: Array, geometry: Geometry, budget: int,
                 epilogue: Epilogue | None = None) -> None:
    layout = _Im2colLayout(dx.shape, w.shape, dy.shape, geometry.groups, dx.dtype, budget)
    w_mat = w.reshape(layout.c_out, layout.rows)
    dy_flat = _flat(dy)
    dx[...] = 0
    for g in range(geometry.groups):
        w_group_t = w_mat[g * layout.c_out_per_group:(g + 1) * layout.c_out_per_group].T
        for tile in layout.tiles:
            grad = layout.gather_output(dy, dy_flat, tile, g * layout.c_out_per_group)
            col = layout.col(tile)
            np.matmul(w_group_t, grad, out=col)
            kernels.col2im(col, dx, g * layout.c_per_group, *layout.tile_args(tile),
                           *layout.kernel, *geometry.args)


def wgrad_im2col(x: Array, dy: Array, dw: Array, geometry: Geometry, budget: int,
                 epilogue: Epilogue | None = None) -> None:
    layout = _Im2colLayout(x.shape, dw.shape, dy.shape, geometry.groups, x.dtype, budget)
    dw_mat = dw.reshape(layout.c_out, layout.rows)
    dw_mat[...] = 0
    dy_flat = _flat(dy)
    partial = np.empty((layout.c_out_per_group, layout.rows), dtype=x.dtype)
    for g in range(geometry.groups):
        target = dw_mat[g * layout.c_out_per_group:(g + 1) * layout.c_out_per_group]
        for tile in layout.tiles:
            col = layout.im2col(x, g * layout.c_per_group, tile, geometry)
            grad = layout.gather_output(dy, dy_flat, tile, g * layout.c_out_per_group)
            np.matmul(grad, col.T, out=partial)
            target += partial


def _pointwise_in_place(x_shape: tuple[int, ...], y_shape: tuple[int, ...], geometry: Geometry) -> bool:
    """A 1x1 problem needs no gather when unstrided and the output covers the input."""
    return geometry.is_unit_stride() and x_shape[2:] == y_shape[2:]


def _group_slices(w: Array, groups: int) -> list[tuple[slice, slice]]:
    c_out, c_per_group = w.shape[0], w.shape[1]
    per = c_out // groups
    return [(slice(g * per, (g + 1) * per), slice(g * c_per_group, (g + 1) * c_per_group))
            for g in range(groups)]


def fprop_pointwise(x: Array, w: Array, y: Array, geometry: Geometry, budget: int,
                    epilogue: Epilogue | None = None) -> None:
    if not _pointwise_in_place(x.shape, y.shape, geometry):
        fprop_im2col(x, w, y, geometry, budget)
        return
    w_mat = w.reshape(w.shape[0], w.shape[1])
    x_flat, y_flat = _flat(x), _flat(y)
    for out_slice, in_slice in _group_slices(w, geometry.groups):
        np.matmul(w_mat[out_slice], x_flat[:, in_slice], out=y_flat[:, out_slice])


def dgrad_pointwise(dy: Array, w: Array, dx: Array, geometry: Geometry, budget: int,
                    epilogue: Epilogue | None = None) -> None:
    if not _pointwise_in_place(dx.shape, dy.shape, geometry):
        dgrad_im2col(dy, w, dx, geometry, budget)
        return
    w_mat = w.reshape(w.shape[0], w.shape[1])
    dy_flat, dx_flat = _flat(dy), _flat(dx)
    for out_slice, in_slice in _group_slices(w, geometry.groups):
        np.matmul(w_mat[out_slice].T, dy_flat[:, out_slice], out=dx_flat[:, in_slice])


def wgrad_pointwise(x: Array, dy: Array, dw: Array, geometry: Geometry, budget: int,
                    epilogue: Epilogue | None = None) -> None:
    if not _pointwise_in_place(x.shape, dy.shape, geometry):
        wgrad_im2col(x, dy, dw, geometry, budget)
        return
    dw_mat = dw.reshape(dw.shape[0], dw.shape[1])
    dw_mat[...] = 0
    x_flat, dy_flat = _flat(x), _flat(dy)
    for out_slice, in_slice in _group_slices(dw, geometry.groups):
        partial = np.empty((out_slice.stop - out_slice.start, in_slice.stop - in_slice.start),
                           dtype=x.dtype)
        for n in range(x.shape[0]):
            np.matmul(dy_flat[n, out_slice], x_flat[n, in_slice].T, out=partial)
            dw_mat[out_slice] += partial


def _direct(name: str) -> Callable[..., None]:
    # Looked up at call time: after a fork the module's kernels may be single-threaded twins.
    def run(a: Array, b: Array, out: Array, geometry: Geometry, budget: int,
            epilogue: Epilogue | None = None) -> None:
        getattr(kernels, name)(a, b, out, *geometry.args, geometry.groups)

    return run


def _depthwise(name: str) -> Callable[..., None]:
    def run(a: Array, b: Array, out: Array, geometry: Geometry, budget: int,
            epilogue: Epilogue | None = None) -> None:
        getattr(kernels, name)(a, b, out, *geometry.args)

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

    def row_length(self, images: int) -> int:
        """Floats per channel of a packed tile of *images*, with a tail for whole vectors."""
        return len(self.phases) * images * self.plane + kernels.PACKED_VECTOR

    @functools.lru_cache(maxsize=256)  # noqa: B019 - layouts are few, cached and immortal
    def pair_offsets(self, groups: int, c_per_group: int, channel_stride: int,
                     phase_stride: int) -> np.ndarray:
        """``(groups, steps, 3)`` flat read offsets of every (channel, tap) pair."""
        taps = len(self.tap_shift)
        per = kernels.PACKED_PAIRS_PER_STEP
        pairs = c_per_group * taps
        steps = -(-pairs // per)
        q = np.minimum(np.arange(steps * per), pairs - 1)
        channel, tap = np.divmod(q, taps)
        within = channel * channel_stride + self.tap_phase[tap] * phase_stride + self.tap_shift[tap]
        group_base = np.arange(groups)[:, None] * c_per_group * channel_stride
        return (group_base + within[None, :]).reshape(groups, steps, per)


def _reads_in_place(x: Array, layout: PackedLayout, geometry: Geometry) -> bool:
    """A 1x1 kernel without stride or padding can read a channels-first input where it lies."""
    return (len(layout.phases) == 1 and geometry.is_unit_stride() and geometry.pad_low == (0, 0, 0)
            and layout.tap_shift.tolist() == [0] and (layout.dq, layout.hq, layout.wq) == x.shape[2:]
            and all(x[n].flags.c_contiguous for n in range(min(1, x.shape[0]))))


def packed_bytes_per_image(x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                           y_shape: tuple[int, ...], stride: tuple[int, ...],
                           dilation: tuple[int, ...], itemsize: int) -> int:
    """Scratch one image needs in :func:`fprop_packed` (its packed input)."""
    lifted = (1,) * (3 - len(stride))
    geometry = Geometry(lifted + tuple(stride), (0, 0, 0),  # type: ignore[arg-type]
                        lifted + tuple(dilation), 1)  # type: ignore[arg-type]
    kernel = (1,) * (5 - len(w_shape)) + tuple(w_shape[2:])
    out = (1,) * (5 - len(y_shape)) + tuple(y_shape[2:])
    layout = PackedLayout.of(kernel, out, geometry)  # type: ignore[arg-type]
    return x_shape[1] * layout.row_length(1) * itemsize


def fprop_packed(x: Array, w: Array, y: Array, geometry: Geometry, budget: int,
                 epilogue: Epilogue | None = None) -> None:
    n_images, channels = x.shape[:2]
    layout = PackedLayout.of(w.shape[2:], y.shape[2:], geometry)
    groups, c_per_group = geometry.groups, w.shape[1]
    w2 = w.reshape(w.shape[0], -1)
    plane = layout.plane
    per_image = channels * layout.row_length(1) * x.dtype.itemsize
    ep = epilogue or no_epilogue(y.dtype)
    if 2 * y.size * w[0].size < kernels.SERIAL_FLOPS and n_images * per_image <= budget:
        length = layout.row_length(n_images)
        offsets = layout.pair_offsets(groups, c_per_group, length, n_images * plane)
        kernels.packed_small(x, w2, offsets, y, length, layout.phases, layout.dq, layout.hq,
                             layout.wq, *geometry.args[:6], *ep)
        return
    if _reads_in_place(x, layout, geometry):
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
                           layout.wq, *geometry.args[:6])
        offsets = layout.pair_offsets(groups, c_per_group, packed_x.shape[1], count * plane)
        kernels.packed_direct(packed_x.reshape(-1), w2, offsets, y, n0, count, plane,
                              layout.hq, layout.wq, True, *ep)


# Channels-last depthwise pays when each plane is small and the channels are many
# (measured against per-plane packing: faster at 7x7 and 14x14 outputs, slower from 28x28).
DEPTHWISE_CHANNELS_LAST_MAX_POSITIONS = 16 * 16
DEPTHWISE_CHANNELS_LAST_MIN_CHANNELS = 32


def depthwise_channels_last_applies(x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                                    y_shape: tuple[int, ...], channels_last: bool = False) -> bool:
    """Channels-last data always takes the channels-last kernel (it reads the data as it
    lies); channels-first data only when planes are small and channels many."""
    spatial_2d = len(x_shape) < 5 or x_shape[2] == 1
    if not (spatial_2d and w_shape[0] == x_shape[1]):
        return False
    return channels_last or (x_shape[1] >= DEPTHWISE_CHANNELS_LAST_MIN_CHANNELS
                             and math.prod(y_shape[2:]) <= DEPTHWISE_CHANNELS_LAST_MAX_POSITIONS)


def _channels_innermost(a: Array) -> Array:
    """``(N, C, D, H, W)`` viewed in ``(N, D, H, W, C)`` axis order (no copy)."""
    return a.transpose(0, 2, 3, 4, 1)


def fprop_depthwise(x: Array, w: Array, y: Array, geometry: Geometry, budget: int,
                    epilogue: Epilogue | None = None) -> None:
    ep = epilogue or no_epilogue(y.dtype)
    channels_last = x.strides[1] == x.itemsize and not x.flags.c_contiguous
    if depthwise_channels_last_applies(x.shape, w.shape, y.shape, channels_last):
        w_t = np.ascontiguousarray(w.reshape(w.shape[0], -1).T)
        kernels.depthwise_channels_last(_channels_innermost(x), w_t, _channels_innermost(y),
                                        w.shape[3], w.shape[4], *geometry.stride[1:],
                                        *geometry.pad_low[1:], *geometry.dilation[1:], *ep)
        return
    layout = PackedLayout.of(w.shape[2:], y.shape[2:], geometry)
    small = 2 * y.size * w[0].size < kernels.SERIAL_FLOPS
    kernel = kernels.depthwise_packed_serial if small else kernels.depthwise_packed
    kernel(x, w.reshape(w.shape[0], -1), layout.tap_phase, layout.tap_shift, y, layout.phases,
           layout.dq, layout.hq, layout.wq, *geometry.args[:6], *ep)


# algorithm name -> (forward, backward_data, backward_weight), each (a, b, out, geometry, budget,
# epilogue); None where the algorithm has no such pass (its rule lists the directions it
# serves). FUSED lists the (algorithm, pass) pairs that apply the epilogue in their own
# write-back; for the others the backend applies it in one pass afterwards.
FUSED = {("packed_direct", 0), ("depthwise", 0), ("fft", 0), ("fft", 1)}
PASSES: dict[str, tuple[Callable[..., None] | None, ...]] = {
    "packed_direct": (fprop_packed, None, None),
    "direct": (_direct("fprop_direct"), _direct("dgrad_direct"), _direct("wgrad_direct")),
    "depthwise": (fprop_depthwise, _depthwise("dgrad_depthwise"), _depthwise("wgrad_depthwise")),
    "gemm_1x1": (fprop_pointwise, dgrad_pointwise, wgrad_pointwise),
    "im2col_gemm": (fprop_im2col, dgrad_im2col, wgrad_im2col),
}


def _register_fft() -> None:
    # Its own module (scipy transforms, numba products); imported here so PASSES lists it.
    from . import fft

    PASSES["fft"] = fft.PASSES


_register_fft()
