"""Host geometry shared by every backend: pure functions of shapes, no device library.

* :class:`Geometry` -- one pass of a problem lifted to five dims: x ``(N, C, D, H, W)``,
  w ``(K, C / groups, KD, KH, KW)``, y ``(N, K, OD, OH, OW)``, with stride, low padding and
  dilation per spatial dim (1-D and 2-D problems get leading unit dims), groups, and the
  derived sizes the kernels take. Each backend packs it into its own kernel arguments
  (``GEOM_ARGS`` for OpenCL, ``CF_GEOM_PARAMS`` for CUDA, the spatial parameters for numba).
* :class:`Tile` and :func:`plan_tiles` -- how an im2col-style algorithm splits the
  ``(image, output position)`` columns so that its scratch fits a workspace budget.

Everything here imports only :mod:`convflow.params`, so it is unit-tested without a backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

from .params import ConvProblem

Dims3 = tuple[int, int, int]
Shape5 = tuple[int, int, int, int, int]


def lift_spatial(values: tuple[int, ...], fill: int) -> Dims3:
    """Per-spatial-dim *values* (1 to 3 of them) with leading *fill* up to three dims."""
    lifted = (fill,) * (3 - len(values)) + tuple(values)
    return lifted  # type: ignore[return-value]


def lift_shape(shape: tuple[int, ...]) -> Shape5:
    """An ``(N, C, *spatial)`` shape with 1 to 3 spatial dims as ``(N, C, D, H, W)``."""
    return (*shape[:2], *lift_spatial(tuple(shape[2:]), 1))  # type: ignore[return-value]


@dataclass(frozen=True)
class Geometry:
    """A pass's geometry lifted to three spatial dims.

    Shapes are channels-first; ``channels_last`` says the activations the pass receives
    (x and y, or dx and dy) lie as ``(N, D, H, W, C)`` in memory. ``pad_low`` is the low
    padding of each dim (any sign: a negative value crops); the high padding follows from
    the output shape. ``pad_products`` says whether a tap that reads the zero padding stands
    for a product ``0 * w`` (NaN for an Inf or NaN weight), as in a forward pass; the data
    gradient computed as the forward pass of the flipped problem has none (the scatter
    definition sums real entries only).
    """

    x: Shape5
    w: Shape5
    y: Shape5
    stride: Dims3
    pad_low: Dims3
    dilation: Dims3
    groups: int
    channels_last: bool = False
    pad_products: bool = True

    @classmethod
    def from_problem(cls, problem: ConvProblem) -> Geometry:
        """The channels-first geometry of *problem* (its memory layout is the caller's)."""
        return cls(lift_shape(problem.x_shape), lift_shape(problem.w_shape),
                   lift_shape(problem.y_shape), lift_spatial(problem.stride, 1),
                   lift_spatial(tuple(lo for lo, _ in problem.padding), 0),
                   lift_spatial(problem.dilation, 1), problem.groups)

    @classmethod
    def of_shapes(cls, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                  y_shape: tuple[int, ...], stride: tuple[int, ...],
                  pad_low: tuple[int, ...], dilation: tuple[int, ...],
                  groups: int) -> Geometry:
        """The geometry of unlifted shapes and per-spatial-dim parameters."""
        return cls(lift_shape(x_shape), lift_shape(w_shape), lift_shape(y_shape),
                   lift_spatial(stride, 1), lift_spatial(pad_low, 0),
                   lift_spatial(dilation, 1), groups)

    @property
    def n(self) -> int:
        return self.x[0]

    @property
    def c(self) -> int:
        return self.x[1]

    @property
    def k(self) -> int:
        return self.w[0]

    @property
    def x_spatial(self) -> Dims3:
        return self.x[2:]  # type: ignore[return-value]

    @property
    def y_spatial(self) -> Dims3:
        return self.y[2:]  # type: ignore[return-value]

    @property
    def kernel(self) -> Dims3:
        return self.w[2:]  # type: ignore[return-value]

    @property
    def spatial_args(self) -> tuple[int, ...]:
        """Stride, low padding and dilation of the three dims, in that order."""
        return (*self.stride, *self.pad_low, *self.dilation)

    @property
    def taps(self) -> int:
        return math.prod(self.kernel)

    @property
    def in_plane(self) -> int:
        """Input positions per channel of one image."""
        return math.prod(self.x_spatial)

    @property
    def out_plane(self) -> int:
        """Output positions per channel of one image."""
        return math.prod(self.y_spatial)

    @property
    def in_per_group(self) -> int:
        return self.c // self.groups

    @property
    def out_per_group(self) -> int:
        return self.k // self.groups

    @property
    def rows(self) -> int:
        """Rows of the im2col matrix: every (input channel, tap)."""
        return self.c * self.taps

    @property
    def group_rows(self) -> int:
        """Rows of one group's im2col matrix (the reduction length of its GEMM)."""
        return self.in_per_group * self.taps

    def unit_stride(self) -> bool:
        return self.stride == (1, 1, 1)

    def flipped(self) -> Geometry:
        """The data gradient of a stride-1 pass as a forward convolution of dy with the
        flipped, channel-swapped weights and padding ``dilation * (k - 1) - pad``
        (negative values crop), whose padding taps stand for no product."""
        assert self.unit_stride()
        pad = tuple(d * (kk - 1) - p for d, kk, p in zip(self.dilation, self.kernel,
                                                         self.pad_low))
        return replace(self, x=self.y, y=self.x,
                       w=(self.c, self.out_per_group, *self.kernel),
                       pad_low=pad, pad_products=False)  # type: ignore[arg-type]


class RowSpan(NamedTuple):
    """A tile as rows of output positions: global rows ``row0 .. row0 + n_rows`` (a row is
    one ``(n, od, oh)``) and columns ``w0 .. w0 + w_count`` of each."""

    row0: int
    n_rows: int
    w0: int
    w_count: int


@dataclass(frozen=True)
class Tile:
    """Images ``n0 .. n0 + count - 1`` and output positions ``p0 .. p0 + width - 1`` of each."""

    n0: int
    count: int
    p0: int
    width: int

    @property
    def columns(self) -> int:
        return self.count * self.width

    def covers_whole_images(self, positions: int) -> bool:
        return self.p0 == 0 and self.width == positions

    def row_span(self, positions: int, row_length: int) -> RowSpan:
        """This tile as rows of *row_length* positions, for a tile planned with that
        ``row_length`` (whole rows, or a part of one row)."""
        row0 = self.n0 * (positions // row_length) + self.p0 // row_length
        if self.p0 % row_length == 0 and self.width % row_length == 0:
            return RowSpan(row0, self.count * self.width // row_length, 0, row_length)
        return RowSpan(row0, 1, self.p0 % row_length, self.width)


def plan_tiles(n_images: int, positions: int, bytes_per_column: int, budget_bytes: int, *,
               min_columns: int = 1, row_length: int = 1) -> list[Tile]:
    """Split ``n_images x positions`` output columns into tiles whose scratch fits the budget.

    Whole images are grouped while they fit (bigger GEMMs); a larger image is split into
    consecutive position ranges that start at 0, each a whole number of rows of
    *row_length* positions, and rows wider than the budget into ranges of one row. A tile
    has at least *min_columns* columns (at least one), so a budget too small for even one
    column still makes progress.
    """
    if n_images <= 0 or positions <= 0:
        return []
    max_columns = max(min_columns, 1, budget_bytes // max(1, bytes_per_column))
    if positions <= max_columns:
        per_tile = max_columns // positions
        return [Tile(n0, min(per_tile, n_images - n0), 0, positions)
                for n0 in range(0, n_images, per_tile)]
    if row_length <= max_columns:
        step = max_columns // row_length * row_length
        return [Tile(n, 1, p0, min(step, positions - p0))
                for n in range(n_images) for p0 in range(0, positions, step)]
    return [Tile(n, 1, row + w0, min(max_columns, row_length - w0))
            for n in range(n_images) for row in range(0, positions, row_length)
            for w0 in range(0, row_length, max_columns)]
