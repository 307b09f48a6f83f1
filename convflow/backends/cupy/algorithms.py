"""The cupy backend's own algorithms, written against an array module and a kernel launcher.

On a GPU the array module is CuPy and the launcher compiles and launches the kernels of
``kernels/cuda/`` (:mod:`.kernels`); the test suite runs the same functions with numpy and a
host build of the kernels' per-element functions, so the orchestration (tiles, groups,
reshapes, GEMMs, accumulation) is checked without a GPU.

Arrays are C-contiguous ``(N, C, *spatial)``; every pass allocates its output and never
writes to its inputs. float16 and bfloat16 accumulate in float32: the kernels sum in
float32, cuBLAS GEMMs use a float32 compute type (CuPy's default for float16; bfloat16
products are formed in float32, :func:`matmul_wide`), and sums across tiles are kept in
float32.

Epilogue: forward and data-gradient passes end with the bias and ``problem.activation``.
The direct and depthwise kernels apply both as they write each output; a result written by
cuBLAS (or col2im) gets both in one ``bias_activation`` pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ...activations import ACTIVATION_CODES
from ...params import ConvProblem, Direction
from .geometry import KernelGeometry, Tile, plan_tiles

Array = Any


class KernelLauncher(Protocol):
    """Runs the CUDA kernels (or, in tests, their host builds) on arrays of one dtype."""

    def fprop_direct(self, x: Array, w: Array, bias: Array | None, y: Array,
                     geometry: KernelGeometry, activation: int = 0) -> None: ...

    def dgrad_direct(self, dy: Array, w: Array, bias: Array | None, dx: Array,
                     geometry: KernelGeometry, activation: int = 0) -> None: ...

    def wgrad_direct(self, x: Array, dy: Array, dw: Array, geometry: KernelGeometry) -> None: ...

    def fprop_depthwise(self, x: Array, w: Array, bias: Array | None, y: Array,
                        geometry: KernelGeometry, activation: int = 0) -> None: ...

    def dgrad_depthwise(self, dy: Array, w: Array, bias: Array | None, dx: Array,
                        geometry: KernelGeometry, activation: int = 0) -> None: ...

    def wgrad_depthwise(self, x: Array, dy: Array, dw: Array,
                        geometry: KernelGeometry) -> None: ...

    def im2col(self, x: Array, col: Array, geometry: KernelGeometry, tile: Tile,
               wide: bool) -> None: ...

    def col2im(self, col: Array, out: Array, geometry: KernelGeometry, tile: Tile,
               accumulate: bool) -> None: ...

    def bias_activation(self, y: Array, bias: Array | None, activation: int,
                        channels_last: bool = False) -> None: ...


@dataclass(frozen=True)
class Context:
    """What an algorithm runs with: the array module, the launcher, the GEMM, the budget."""

    xp: Any
    launcher: KernelLauncher
    matmul: Callable[..., Array]
    workspace_bytes: int

    def accumulator(self, dtype: Any) -> Any:
        """float32 for the 16-bit types (the accumulation type), else the dtype itself."""
        dtype = self.xp.dtype(dtype)
        return self.xp.dtype(self.xp.float32) if dtype.itemsize == 2 else dtype


def activation_code(problem: ConvProblem) -> int:
    return ACTIVATION_CODES[problem.activation]


def _epilogue(ctx: Context, out: Array, b: Array | None, problem: ConvProblem) -> None:
    """The bias and activation of a result cuBLAS or col2im wrote: one pass, or none."""
    if b is not None or problem.activation:
        ctx.launcher.bias_activation(out, b, activation_code(problem))


def matmul_wide(xp: Any, matmul: Callable[..., Array]) -> Callable[..., Array]:
    """*matmul* with bfloat16 products formed and summed in float32 and rounded once (as
    cuBLAS does for float16 with CuPy's float32 compute type); other dtypes unchanged."""

    def run(a: Array, b: Array, out: Array | None = None) -> Array:
        if a.dtype.name != "bfloat16":
            return matmul(a, b) if out is None else matmul(a, b, out=out)
        result = matmul(a.astype(xp.float32), b.astype(xp.float32)).astype(a.dtype)
        if out is None:
            return result
        out[...] = result
        return out

    return run


def _groups_view(a: Array, groups: int) -> Array:
    """``(N, C, *spatial)`` viewed as ``(N, groups, C / groups, positions)``."""
    return a.reshape(a.shape[0], groups, a.shape[1] // groups, -1)


def _weight_matrix(w: Array, groups: int) -> Array:
    """The weight as ``(groups, C_out / groups, C_in / groups * taps)``."""
    return w.reshape(groups, w.shape[0] // groups, -1)


def _weight_matrix_t(ctx: Context, w: Array, groups: int) -> Array:
    """The transposed weight, ``(groups, C_in / groups * taps, C_out / groups)``, contiguous."""
    return ctx.xp.ascontiguousarray(_weight_matrix(w, groups).transpose(0, 2, 1))


def _positions(shape: tuple[int, ...]) -> int:
    return math.prod(shape[2:])


# Direct and depthwise: one kernel per pass --------------------------------------------------

def fprop_direct(ctx: Context, x: Array, w: Array, b: Array | None, problem: ConvProblem) -> Array:
    y = ctx.xp.empty(problem.y_shape, dtype=x.dtype)
    ctx.launcher.fprop_direct(x, w, b, y, KernelGeometry.from_problem(problem),
                              activation_code(problem))
    return y


def dgrad_direct(ctx: Context, dy: Array, w: Array, b: Array | None,
                 problem: ConvProblem) -> Array:
    dx = ctx.xp.empty(problem.x_shape, dtype=dy.dtype)
    ctx.launcher.dgrad_direct(dy, w, b, dx, KernelGeometry.from_problem(problem),
                              activation_code(problem))
    return dx


def wgrad_direct(ctx: Context, x: Array, dy: Array, problem: ConvProblem) -> Array:
    dw = ctx.xp.empty(problem.w_shape, dtype=x.dtype)
    ctx.launcher.wgrad_direct(x, dy, dw, KernelGeometry.from_problem(problem))
    return dw


def fprop_depthwise(ctx: Context, x: Array, w: Array, b: Array | None,
                    problem: ConvProblem) -> Array:
    y = ctx.xp.empty(problem.y_shape, dtype=x.dtype)
    ctx.launcher.fprop_depthwise(x, w, b, y, KernelGeometry.from_problem(problem),
                                 activation_code(problem))
    return y


def dgrad_depthwise(ctx: Context, dy: Array, w: Array, b: Array | None,
                    problem: ConvProblem) -> Array:
    dx = ctx.xp.empty(problem.x_shape, dtype=dy.dtype)
    ctx.launcher.dgrad_depthwise(dy, w, b, dx, KernelGeometry.from_problem(problem),
                                 activation_code(problem))
    return dx


def wgrad_depthwise(ctx: Context, x: Array, dy: Array, problem: ConvProblem) -> Array:
    dw = ctx.xp.empty(problem.w_shape, dtype=x.dtype)
    ctx.launcher.wgrad_depthwise(x, dy, dw, KernelGeometry.from_problem(problem))
    return dw


# im2col + GEMM ------------------------------------------------------------------------------

def _tiles(ctx: Context, geometry: KernelGeometry, rows: int, itemsize: int) -> list[Tile]:
    """Tiles of output columns whose scratch (``rows`` values per column) fits the budget."""
    return plan_tiles(geometry.n, geometry.out_plane, rows * itemsize, ctx.workspace_bytes)


def fprop_im2col(ctx: Context, x: Array, w: Array, b: Array | None,
                 problem: ConvProblem) -> Array:
    """``y[n, g] = W[g] @ col[n, g]`` per image and group, batched in one cuBLAS call per tile."""
    xp, geometry = ctx.xp, KernelGeometry.from_problem(problem)
    groups, positions = problem.groups, geometry.out_plane
    y = xp.empty(problem.y_shape, dtype=x.dtype)
    w_mat = _weight_matrix(w, groups)
    # Scratch per output column: the im2col rows, and the product when a tile covers part
    # of an image (it cannot be written into y in place).
    tiles = _tiles(ctx, geometry, geometry.rows + geometry.k, x.dtype.itemsize)
    widest = max(t.columns for t in tiles)
    scratch = xp.empty(geometry.rows * widest, dtype=x.dtype)
    y_flat = y.reshape(problem.batch, problem.out_channels, positions)
    for tile in tiles:
        col = scratch[: geometry.rows * tile.columns].reshape(tile.count, geometry.rows,
                                                              tile.width)
        ctx.launcher.im2col(x, col, geometry, tile, wide=False)
        col_g = col.reshape(tile.count, groups, geometry.group_rows, tile.width)
        if tile.covers_whole_images(positions):
            out = y_flat[tile.n0:tile.n0 + tile.count].reshape(
                tile.count, groups, geometry.out_per_group, positions)
            ctx.matmul(w_mat, col_g, out=out)
        else:
            product = ctx.matmul(w_mat, col_g)
            y_flat[tile.n0:tile.n0 + tile.count, :, tile.p0:tile.p0 + tile.width] = (
                product.reshape(tile.count, problem.out_channels, tile.width))
    _epilogue(ctx, y, b, problem)
    return y


def dgrad_im2col(ctx: Context, dy: Array, w: Array, b: Array | None,
                 problem: ConvProblem) -> Array:
    """``col[n, g] = W[g]^T @ dy[n, g]`` by cuBLAS, then col2im sums the columns into dx."""
    xp, geometry = ctx.xp, KernelGeometry.from_problem(problem)
    groups, positions = problem.groups, geometry.out_plane
    dx = xp.empty(problem.x_shape, dtype=dy.dtype)
    acc_dtype = ctx.accumulator(dy.dtype)
    w_t = _weight_matrix_t(ctx, w, groups)
    dy_flat = dy.reshape(problem.batch, problem.out_channels, positions)
    tiles = _tiles(ctx, geometry, geometry.rows + geometry.k, dy.dtype.itemsize)
    widest = max(t.columns for t in tiles)
    scratch = xp.empty(geometry.rows * widest, dtype=dy.dtype)
    # 16-bit types sum in a float32 buffer, rounded once an image range is complete.
    buffer = None
    if acc_dtype != dy.dtype:
        largest = max(t.count for t in tiles)
        buffer = xp.empty((largest, *problem.x_shape[1:]), dtype=acc_dtype)
    for index, tile in enumerate(tiles):
        grad = dy_flat[tile.n0:tile.n0 + tile.count]
        if not tile.covers_whole_images(positions):
            grad = xp.ascontiguousarray(grad[:, :, tile.p0:tile.p0 + tile.width])
        grad_g = grad.reshape(tile.count, groups, geometry.out_per_group, tile.width)
        col = scratch[: geometry.rows * tile.columns].reshape(
            tile.count, groups, geometry.group_rows, tile.width)
        ctx.matmul(w_t, grad_g, out=col)
        target = dx[tile.n0:tile.n0 + tile.count] if buffer is None else buffer[:tile.count]
        ctx.launcher.col2im(col, target, geometry, tile, accumulate=tile.p0 > 0)
        last_of_images = index + 1 == len(tiles) or tiles[index + 1].n0 != tile.n0
        if buffer is not None and last_of_images:
            dx[tile.n0:tile.n0 + tile.count] = buffer[:tile.count].astype(dx.dtype)
    _epilogue(ctx, dx, b, problem)
    return dx


def wgrad_im2col(ctx: Context, x: Array, dy: Array, problem: ConvProblem) -> Array:
    """``dW[g] += dy[g] @ col[g]^T`` per tile, with the tile's images side by side."""
    xp, geometry = ctx.xp, KernelGeometry.from_problem(problem)
    groups, positions = problem.groups, geometry.out_plane
    acc_dtype = ctx.accumulator(x.dtype)
    total = xp.zeros((groups, geometry.out_per_group, geometry.group_rows), dtype=acc_dtype)
    dy_flat = dy.reshape(problem.batch, problem.out_channels, positions)
    per_column = (geometry.rows + geometry.k) * x.dtype.itemsize
    if acc_dtype != x.dtype:
        per_column += (geometry.rows + geometry.k) * acc_dtype.itemsize
    tiles = plan_tiles(geometry.n, positions, per_column, ctx.workspace_bytes)
    widest = max(t.columns for t in tiles)
    scratch = xp.empty(geometry.rows * widest, dtype=x.dtype)
    for tile in tiles:
        col = scratch[: geometry.rows * tile.columns].reshape(geometry.rows, tile.columns)
        ctx.launcher.im2col(x, col, geometry, tile, wide=True)
        grad = dy_flat[tile.n0:tile.n0 + tile.count, :, tile.p0:tile.p0 + tile.width]
        grad_t = xp.ascontiguousarray(grad.transpose(1, 0, 2)).reshape(
            groups, geometry.out_per_group, tile.columns)
        col_g = col.reshape(groups, geometry.group_rows, tile.columns)
        if acc_dtype != x.dtype:
            grad_t = grad_t.astype(acc_dtype)
            col_g = col_g.astype(acc_dtype)
        total += ctx.matmul(grad_t, col_g.transpose(0, 2, 1))
    return total.reshape(problem.w_shape).astype(x.dtype)


# 1x1 kernels: the input is already the im2col matrix -----------------------------------------

def pointwise_in_place(problem: ConvProblem) -> bool:
    """A 1x1 problem needs no gather when unstrided, unpadded and its outputs cover the input."""
    return (all(k == 1 for k in problem.kernel_size) and not problem.is_strided()
            and not problem.is_padded() and problem.x_spatial == problem.y_spatial)


def fprop_pointwise(ctx: Context, x: Array, w: Array, b: Array | None,
                    problem: ConvProblem) -> Array:
    if not pointwise_in_place(problem):
        return fprop_im2col(ctx, x, w, b, problem)
    y = ctx.xp.empty(problem.y_shape, dtype=x.dtype)
    ctx.matmul(_weight_matrix(w, problem.groups), _groups_view(x, problem.groups),
               out=_groups_view(y, problem.groups))
    _epilogue(ctx, y, b, problem)
    return y


def dgrad_pointwise(ctx: Context, dy: Array, w: Array, b: Array | None,
                    problem: ConvProblem) -> Array:
    if not pointwise_in_place(problem):
        return dgrad_im2col(ctx, dy, w, b, problem)
    dx = ctx.xp.empty(problem.x_shape, dtype=dy.dtype)
    ctx.matmul(_weight_matrix_t(ctx, w, problem.groups), _groups_view(dy, problem.groups),
               out=_groups_view(dx, problem.groups))
    _epilogue(ctx, dx, b, problem)
    return dx


Pass = Callable[..., Array]


def run(ctx: Context, function: Pass, problem: ConvProblem, a: Array, b: Array,
        bias: Array | None) -> Array:
    """Compute one pass with one of the own algorithms' pass functions (its record's
    ``passes[problem.direction]``); operands as the pass takes them."""
    if problem.direction == Direction.BACKWARD_WEIGHT:
        return function(ctx, a, b, problem)
    return function(ctx, a, b, bias, problem)
