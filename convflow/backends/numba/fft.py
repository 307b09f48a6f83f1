"""The numba backend's ``fft`` algorithm: scipy.fft real transforms, numba products
(:mod:`.fft_kernels`; this module imports no numba, so the FFT rule can run before it).

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
from typing import TYPE_CHECKING, Any

import numpy as np

from ...fft_plan import Planner, Rates, smooth_length
from ...params import ConvProblem, Direction
from .. import fft_arrays
from .plans import module_missing

if TYPE_CHECKING:
    from ...geometry import Geometry
    from .algorithms import Epilogue

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


def use_serial_kernels() -> None:
    """After a fork with the OpenMP pool started: single-threaded products and transforms."""
    global _serial
    from . import fft_kernels

    fft_kernels.use_serial_kernels()
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
        from . import fft_kernels

        fft_kernels.contract(p, q, out)

    def accumulate_weight(self, x: Any, d: Any, acc: Any) -> None:
        from . import fft_kernels

        fft_kernels.accumulate_weight(x, d, acc)


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
    return module_missing("scipy")


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
    from . import algorithms, kernels

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
            from . import kernels
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
