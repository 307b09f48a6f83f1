"""The numba backend's ``fft`` algorithm: scipy.fft real transforms, numba products.

Transforms are scipy.fft's (pocketfft: a well-kept, vectorized FFT that threads over the
transforms of a batch with ``workers=``, the backend's thread count, and computes each
transform the same way on any thread, so results are bitwise reproducible); lengths come
from ``scipy.fft.next_fast_len``. The per-frequency channel sums are numba kernels that
parallelize over (image, group, output channel, frequency block) and sum in a fixed order.
Tiling, cost and accuracy are planned by :mod:`convflow.fft_plan`; the passes themselves are
:mod:`convflow.backends.fft_arrays`, shared with the cupy backend.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import TYPE_CHECKING, Any

import numpy as np
from numba import prange

from ...fft_plan import Planner, Rates, smooth_length
from ...params import ConvProblem, Direction
from .. import fft_arrays
from . import kernels

if TYPE_CHECKING:
    from ...geometry import Geometry
    from .algorithms import Epilogue

# Frequencies one job of the product kernels handles (a few KiB of each operand).
FREQUENCY_BLOCK = 1024

# Measured on the development machine (2 threads, AVX-512, float32, a busy machine): scipy.fft
# sustains about 8 GFLOP/s of modelled transform work; the numba direct algorithms reach the
# rates below (depthwise on large planes, packed_direct and BLAS on many channels, direct on
# few; depthwise drops to about 8 on planes of megabytes).
RATES_NAMED = (("default", 20e9), ("depthwise", 60e9), ("depthwise@large", 8e9),
               ("packed_direct", 150e9), ("packed_gemm", 250e9), ("winograd", 300e9),
               ("im2col_gemm", 80e9), ("gemm_1x1", 100e9), ("direct", 7e9))

_serial = False


# scipy.fft.next_fast_len(n, real=True): the smallest 5-smooth length >= n (pocketfft's fast
# real transforms), computed here so that planning does not import scipy.fft (see
# _scipy_missing); tests/test_fft.py checks the two agree.
fast_length = functools.partial(smooth_length, primes=(2, 3, 5))

RATES = Rates(fft=8e9, mac=8e9, direct=RATES_NAMED, fast_length=fast_length)


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
    """After a fork with the OpenMP pool started: single-threaded products and transforms."""
    global _serial
    kernels.make_serial(globals(), PARALLEL_KERNELS)
    _serial = True


class ScipyTransforms:
    """:class:`~convflow.backends.fft_arrays.Transforms` on the host: scipy.fft and the
    product kernels above."""

    xp = np

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def rfftn(self, a: Any, lengths: tuple[int, ...]) -> Any:
        import scipy.fft

        axes = tuple(range(-len(lengths), 0))
        return scipy.fft.rfftn(a, s=lengths, axes=axes, workers=self.workers)

    def irfftn(self, a: Any, lengths: tuple[int, ...]) -> Any:
        import scipy.fft

        axes = tuple(range(-len(lengths), 0))
        return scipy.fft.irfftn(a, s=lengths, axes=axes, workers=self.workers)

    def contract(self, p: Any, q: Any, out: Any) -> None:
        globals()["contract"](p, q, out)

    def accumulate_weight(self, x: Any, d: Any, acc: Any) -> None:
        globals()["accumulate_weight"](x, d, acc)


def _workers() -> int:
    if _serial:
        return 1
    import numba

    return int(numba.get_num_threads())


def _scipy_missing() -> str:
    """Why scipy.fft cannot be imported ("" when it can), found without importing it: the
    rules ask on every call's first selection, and importing scipy.fft costs ~0.1 s of a
    process's first call, which FFT rarely wins. A scipy that is present but broken fails
    when the FFT runs, with its own ImportError."""
    try:
        found = importlib.util.find_spec("scipy") is not None
    except (ImportError, ValueError) as exc:
        return f"scipy cannot be found ({exc}); pip install scipy"
    if not found:
        return "scipy is not installed; pip install scipy"
    return ""


PLANNER = Planner(RATES, _scipy_missing)
plan_for, can_run, rule = PLANNER.plan_for, PLANNER.can_run, PLANNER.rule


@functools.lru_cache(maxsize=256)
def _unlifted_problem(direction: Direction, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                      y_shape: tuple[int, ...], dtype: str, geometry: Geometry) -> ConvProblem:
    """The pass without the singleton axes the backend lifted it with (a transform over a
    length-1 axis costs a copy and buys nothing)."""
    keep = [i for i in range(3) if not (x_shape[2 + i] == w_shape[2 + i] == y_shape[2 + i] == 1
                                        and geometry.pad_low[i] == 0)] or [2]

    def pick(values: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(values[i] for i in keep)

    return ConvProblem(direction, (*x_shape[:2], *pick(x_shape[2:])),
                       (*w_shape[:2], *pick(w_shape[2:])), (*y_shape[:2], *pick(y_shape[2:])),
                       dtype, pick(geometry.stride), tuple((lo, 0) for lo in pick(geometry.pad_low)),
                       pick(geometry.dilation), geometry.groups)


def _direct_fallback(direction: Direction, a: np.ndarray, b: np.ndarray, out: np.ndarray,
                     geometry: Geometry, budget: int, epilogue: Epilogue | None) -> None:
    """An FFT spreads every input over every output, so one NaN or Inf would turn the whole
    result into NaN: such operands are computed by the direct loops instead, where
    non-finite values stay where direct convolution puts them."""
    from . import algorithms

    names = {Direction.FORWARD: "fprop_direct", Direction.BACKWARD_DATA: "dgrad_direct",
             Direction.BACKWARD_WEIGHT: "wgrad_direct"}
    getattr(algorithms, names[direction])(a, b, out, geometry, budget)
    if epilogue is not None and (epilogue.has_bias or epilogue.activation):
        kernels.apply_epilogue(out, *epilogue)


def _pass(direction: Direction):  # type: ignore[no-untyped-def]
    def run(a: np.ndarray, b: np.ndarray, out: np.ndarray, geometry: Geometry, budget: int,
            epilogue: Epilogue | None = None, variant: str = "") -> None:
        if direction == Direction.FORWARD:
            shapes = (a.shape, b.shape, out.shape)
        elif direction == Direction.BACKWARD_DATA:
            shapes = (out.shape, b.shape, a.shape)
        else:
            shapes = (a.shape, out.shape, b.shape)
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            _direct_fallback(direction, a, b, out, geometry, budget, epilogue)
            return
        problem = _unlifted_problem(direction, *shapes, out.dtype.name, geometry)
        found = PLANNER.require(problem, budget)
        nd = problem.ndim
        a, b, out = (t.reshape(*t.shape[:2], *t.shape[5 - nd:]) for t in (a, b, out))
        finish = None
        if epilogue is not None and (epilogue.has_bias or epilogue.activation):
            from .algorithms import lift

            def finish(region: np.ndarray, first: int) -> None:
                bias = epilogue.bias[first:first + region.shape[1]] if epilogue.has_bias \
                    else epilogue.bias
                kernels.apply_epilogue(lift(region), bias, epilogue.has_bias,
                                       epilogue.activation)
        fft_arrays.run(problem, found, a, b, out, ScipyTransforms(_workers()), finish)

    return run


PASSES = (_pass(Direction.FORWARD), _pass(Direction.BACKWARD_DATA),
          _pass(Direction.BACKWARD_WEIGHT))
