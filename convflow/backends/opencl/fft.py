"""The opencl backend's ``fft`` solver: reikna's transforms, convflow's own steps around them.

reikna (a maintained library of GPGPU algorithms for PyOpenCL and PyCUDA) computes the
transforms; it is an optional dependency (``pip install 'convflow[opencl-fft]'``), and
without it the solver's rule says so. pyvkfft, the other candidate, has no wheel and does not
build here without the OpenCL headers, so reikna it is. reikna transforms complex data only:
real tensors are gathered into complex buffers (twice the work of a real transform, which
the cost model counts), with power-of-two lengths (its radix-2 kernels; other lengths take
its slower Bluestein path). The gathers, the per-frequency channel sums and the write-back
through the epilogue are kernels/opencl/fft.cl. Tiling is planned by :mod:`convflow.fft_plan`,
as on the other backends.
"""

from __future__ import annotations

import atexit
import itertools
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from ...fft_plan import FFTPlan, Planner, Rates, power_of_two_length
from ...params import ConvProblem, Direction

if TYPE_CHECKING:
    from ...geometry import Geometry
    from .solvers import Call, Epilogue

GROUP = (64, 1)

# Measured on PoCL (2 CPU threads of a busy machine, float32): reikna's transforms with the
# steps around them sustain about 0.35 GFLOP/s of modelled work; the opencl solvers reach the
# rates below (depthwise and naive about 0.4-0.5, the vector GEMMs about 10).
RATES = Rates(fft=0.35e9, mac=0.35e9,
              direct=(("default", 2e9), ("depthwise", 0.4e9), ("naive", 0.5e9),
                      ("vec_im2col_gemm", 10e9), ("vec_gemm_1x1", 10e9),
                      ("vec_winograd", 15e9), ("tiled_direct", 1e9), ("im2col_gemm", 2e9),
                      ("gemm_1x1", 2e9), ("winograd", 3e9)),
              fast_length=power_of_two_length, real_transforms=False)

_compiled: dict[tuple[Any, ...], Any] = {}
_threads: dict[int, Any] = {}
_finite_checks: dict[tuple[int, str], Any] = {}
_lock = threading.Lock()


@atexit.register
def _forget() -> None:
    """Drop reikna's compiled transforms before the interpreter tears its modules down (their
    temporary buffers are freed through module globals that are gone by then)."""
    with _lock:
        _compiled.clear()
        _threads.clear()


def missing_reason() -> str:
    """Why the solver cannot run here, or ``""``."""
    try:
        import reikna.fft  # noqa: F401
    except ImportError as exc:
        return (f"needs reikna for its transforms, which is not installed ({exc}); pip install "
                f"'convflow[opencl-fft]'")
    return ""


PLANNER = Planner(RATES, missing_reason)
plan_for, can_run, rule = PLANNER.plan_for, PLANNER.can_run, PLANNER.rule


# reikna -------------------------------------------------------------------------------------
def _transform(call: Call, shape: tuple[int, ...]) -> Any:
    """reikna's compiled transform of complex arrays of *shape* (rows, then the axes to
    transform, all of length > 1), cached per queue, shape and dtype."""
    axes = tuple(range(1, len(shape)))
    complex_dtype = np.complex128 if call.dtype == np.float64 else np.complex64
    key = (call.queue.int_ptr, shape, complex_dtype, axes)
    with _lock:
        compiled = _compiled.get(key)
        if compiled is None:
            from reikna.cluda import ocl_api
            from reikna.core import Type
            from reikna.fft import FFT

            thread = _threads.get(call.queue.int_ptr)
            if thread is None:
                thread = _threads[call.queue.int_ptr] = ocl_api().Thread(call.queue)
            compiled = FFT(Type(complex_dtype, shape), axes=axes).compile(thread)
            _compiled[key] = compiled
    return compiled


def _fft(call: Call, buffer: Any, inverse: bool) -> None:
    # Axes of length 1 are dropped from the view reikna sees: a length-1 transform is the
    # identity, and reikna's templates fail on some shapes with trailing length-1 axes.
    shape = (buffer.shape[0], *(length for length in buffer.shape[1:] if length > 1))
    if len(shape) == 1:
        return
    view = buffer.reshape(shape)
    _transform(call, shape)(view, view, 1 if inverse else 0)


# Below this many rows a buffer gets a power-of-two number of them (the extra rows are
# transformed and ignored): every new buffer shape costs reikna a compile of seconds, and
# small problems come in many shapes.
ROUNDED_ROWS = 64


def _complex(call: Call, rows: int, lengths: tuple[int, ...]) -> Any:
    dtype = np.complex128 if call.dtype == np.float64 else np.complex64
    if rows <= ROUNDED_ROWS:
        rows = power_of_two_length(rows)
    return call.state.empty(call.queue, (rows, *lengths), dtype, scratch=True)


def _all_finite(call: Call, *arrays: Any) -> bool:
    """Whether every value is finite (pyopencl's reduction kernel, one per dtype)."""
    from pyopencl.reduction import ReductionKernel

    ctype = "double" if call.dtype == np.float64 else "float"
    key = (call.state.context.int_ptr, ctype)
    with _lock:
        kernel = _finite_checks.get(key)
        if kernel is None:
            preamble = "#pragma OPENCL EXTENSION cl_khr_fp64 : enable" if ctype == "double" \
                else ""
            kernel = ReductionKernel(call.state.context, np.int32, neutral="0",
                                     reduce_expr="a + b", map_expr="isfinite(x[i]) ? 0 : 1",
                                     arguments=f"__global const {ctype} *x", preamble=preamble)
            _finite_checks[key] = kernel
    return all(int(kernel(a, queue=call.queue).get()) == 0  # type: ignore[call-overload]
               for a in arrays if a.size)


# Steps --------------------------------------------------------------------------------------
def _i(values: Any) -> list[np.int32]:
    return [np.int32(v) for v in values]


def _gather(call: Call, src: Any, src0: int, block: int, outer: int, inner: int, rows: int,
            sizes: tuple[int, ...], lengths: tuple[int, ...], starts: list[int],
            up: tuple[int, ...], limits: tuple[int, ...], out: Any) -> None:
    points = int(np.prod(lengths))
    kernel = call.kernel("fft", "fft_gather")
    call.launch(kernel, (points, rows), GROUP, src.data, np.int64(src0), np.int32(block),
                np.int64(outer), np.int64(inner), np.int32(rows), *_i(sizes), *_i(lengths),
                *_i(starts), *_i(up), *_i(limits), out.data)


def _scatter(call: Call, res: Any, rows: int, block: int, n0: int, c0: int, total: int,
             out: Any, sizes: tuple[int, ...], lengths: tuple[int, ...], win0: list[int],
             win_step: tuple[int, ...], out0: list[int], counts: list[int],
             ep_args: tuple[Any, ...]) -> None:
    kernel = call.kernel("fft", "fft_scatter")
    call.launch(kernel, (int(np.prod(counts)), rows), GROUP, res.data, np.int32(rows),
                np.int32(block), np.int32(n0), np.int32(c0), np.int32(total), *_i(sizes),
                *_i(lengths), *_i(win0), *_i(win_step), *_i(out0), *_i(counts), out.data,
                *ep_args)


def _problem_of(direction: Direction, g: Geometry, dtype: np.dtype) -> ConvProblem:
    return ConvProblem(direction, g.x, g.w, g.y, dtype.name, g.stride,
                       tuple((p, 0) for p in g.pad_low), g.dilation, g.groups)


def _planned(call: Call, problem: ConvProblem) -> FFTPlan:
    return PLANNER.require(problem, call.budget, " (or the device's largest allocation)")


def _tiles(found: FFTPlan, totals: tuple[int, ...]) -> list[tuple[int, ...]]:
    return list(itertools.product(*(range(0, total, axis.tile)
                                    for axis, total in zip(found.axes, totals))))


def _naive(direction: Direction) -> Any:
    """An FFT spreads one NaN or Inf over every output: such calls take the naive solver."""
    from .solvers import SOLVERS

    return SOLVERS["naive"].pass_for(direction)


def _tiled(direction: Direction) -> Any:
    def run(call: Call, g: Geometry, a: Any, w: Any, out: Any, ep: Epilogue) -> None:
        assert not g.channels_last, "fft computes channels-first tensors only"
        if not _all_finite(call, a, w):
            _naive(direction)(call, g, a, w, out, ep)
            return
        problem = _problem_of(direction, g, call.dtype)
        found = _planned(call, problem)
        forward = direction == Direction.FORWARD
        groups, k_per = g.groups, g.w[0] // g.groups
        c_per = g.w[1]
        r_per, o_per = (c_per, k_per) if forward else (k_per, c_per)
        a_channels, a_sizes = (g.x[1], g.x[2:]) if forward else (g.y[1], g.y[2:])
        o_channels, o_sizes = (g.y[1], g.y[2:]) if forward else (g.x[1], g.x[2:])
        lengths = found.lengths
        keff = [d * (k - 1) + 1 for k, d in zip(g.w[2:], g.dilation)]
        if forward:
            steps, base, up = g.stride, [-p for p in g.pad_low], (1, 1, 1)
            win0, win_step = [0, 0, 0], g.stride
        else:
            steps, base, up = (1, 1, 1), [p - (ke - 1) for p, ke in zip(g.pad_low, keff)], g.stride
            win0, win_step = [ke - 1 for ke in keff], (1, 1, 1)
        a_plane, k_plane = int(np.prod(a_sizes)), int(np.prod(g.w[2:]))
        images, group_step = found.images_per_step, found.groups_per_step
        ep_args = ep.args(call)
        for g0 in range(0, groups, group_step):
            gg = min(group_step, groups - g0)
            w_rows = gg * k_per * c_per
            spectrum = _complex(call, w_rows, lengths)
            _gather(call, w, g0 * k_per * c_per * k_plane, w_rows, 0, k_plane, w_rows,
                    g.w[2:], lengths, [0, 0, 0], g.dilation, tuple(keff), spectrum)
            _fft(call, spectrum, False)
            # Weight rows are ((g * K + k) * C + c): the forward pass sums over c, the data
            # gradient over k.
            q_strides = (k_per * c_per, c_per, 1) if forward else (k_per * c_per, 1, c_per)
            segment = _complex(call, images * gg * r_per, lengths)
            product = _complex(call, images * gg * o_per, lengths)
            points = int(np.prod(lengths))
            for n0 in range(0, g.x[0], images):
                nn = min(images, g.x[0] - n0)
                for tile in _tiles(found, o_sizes):
                    counts = [min(ax.tile, total - m0)
                              for ax, total, m0 in zip(found.axes, o_sizes, tile)]
                    starts = [b + m0 * s for b, m0, s in zip(base, tile, steps)]
                    _gather(call, a, (n0 * a_channels + g0 * r_per) * a_plane, gg * r_per,
                            a_channels * a_plane, a_plane, nn * gg * r_per, a_sizes, lengths,
                            starts, up, lengths, segment)
                    _fft(call, segment, False)
                    rows = nn * gg * o_per
                    call.launch(call.kernel("fft", "fft_contract"), (points, rows), GROUP,
                                segment.data, spectrum.data, product.data, np.int32(gg),
                                np.int32(r_per), np.int32(o_per), np.int64(points),
                                *(np.int64(s) for s in q_strides), np.int32(forward),
                                np.int32(rows))
                    _fft(call, product, True)
                    _scatter(call, product, rows, gg * o_per, n0, g0 * o_per, o_channels, out,
                             o_sizes, lengths, win0, win_step, list(tile), counts, ep_args)

    return run


def backward_weight(call: Call, g: Geometry, x: Any, dy: Any, dw: Any, ep: Epilogue) -> None:
    from .solvers import NO_EPILOGUE

    if not _all_finite(call, x, dy):
        _naive(Direction.BACKWARD_WEIGHT)(call, g, x, dy, dw, ep)
        return
    found = _planned(call, _problem_of(Direction.BACKWARD_WEIGHT, g, call.dtype))
    groups, k_per, c_per = g.groups, g.w[0] // g.groups, g.w[1]
    lengths = found.lengths
    points = int(np.prod(lengths))
    x_plane, y_plane = int(np.prod(g.x[2:])), int(np.prod(g.y[2:]))
    chunk = tuple((ax.tile - 1) * s + 1 for ax, s in zip(found.axes, g.stride))
    images, group_step = found.images_per_step, found.groups_per_step
    for g0 in range(0, groups, group_step):
        gg = min(group_step, groups - g0)
        rows = gg * k_per * c_per
        acc = _complex(call, rows, lengths)
        acc.fill(0, queue=call.queue)
        x_seg = _complex(call, images * gg * c_per, lengths)
        d_seg = _complex(call, images * gg * k_per, lengths)
        for n0 in range(0, g.x[0], images):
            nn = min(images, g.x[0] - n0)
            for tile in _tiles(found, g.y[2:]):
                _gather(call, x, (n0 * g.x[1] + g0 * c_per) * x_plane, gg * c_per,
                        g.x[1] * x_plane, x_plane, nn * gg * c_per, g.x[2:], lengths,
                        [m0 * s - p for m0, s, p in zip(tile, g.stride, g.pad_low)], (1, 1, 1),
                        lengths, x_seg)
                _gather(call, dy, (n0 * g.y[1] + g0 * k_per) * y_plane, gg * k_per,
                        g.y[1] * y_plane, y_plane, nn * gg * k_per, g.y[2:], lengths,
                        [m0 * s for m0, s in zip(tile, g.stride)], g.stride, chunk, d_seg)
                _fft(call, x_seg, False)
                _fft(call, d_seg, False)
                call.launch(call.kernel("fft", "fft_accumulate_weight"), (points, rows),
                            GROUP, x_seg.data, d_seg.data, acc.data, np.int32(nn),
                            np.int32(gg), np.int32(k_per), np.int32(c_per), np.int64(points))
        _fft(call, acc, True)
        _scatter(call, acc, rows, c_per, g0 * k_per, 0, c_per, dw, g.w[2:], lengths, [0, 0, 0],
                 g.dilation, [0, 0, 0], list(g.w[2:]), NO_EPILOGUE.args(call))


forward = _tiled(Direction.FORWARD)
backward_data = _tiled(Direction.BACKWARD_DATA)
