"""The cupy backend's ``fft`` algorithm: cuFFT through ``cupy.fft``, products by ``einsum``.

The passes are :mod:`convflow.backends.fft_arrays` (shared with the numba backend) run with
an array module: CuPy on a GPU (``cupy.fft`` keeps cuFFT plans cached per shape), numpy in
the host tests, which check the orchestration the same way as for the other own algorithms.
16-bit data is transformed in float32 and rounded back; the bias and activation are applied
in one pass after the result is written (as for the cuBLAS algorithms).
"""

from __future__ import annotations

from typing import Any

from ...fft_plan import Planner, Rates
from ...params import ConvProblem, Direction
from .. import fft_arrays

# Not measured yet (no GPU has run this backend): the orders of magnitude of a current data
# centre GPU, cuFFT's transforms against the own CUDA kernels and cuBLAS.
RATES = Rates(fft=300e9, mac=300e9,
              direct=(("default", 1e12), ("depthwise", 1e12), ("direct", 500e9),
                      ("im2col_gemm", 5e12), ("gemm_1x1", 10e12)))

NOT_DETERMINISTIC = ("not checked for bitwise reproducibility on a GPU (cuFFT and einsum's "
                     "cuBLAS/cuTENSOR contractions choose their own summation order)")


class ArrayModuleTransforms:
    """Transforms and products of an array module with numpy's FFT interface (CuPy, numpy)."""

    def __init__(self, xp: Any) -> None:
        self._xp = xp

    @property
    def xp(self) -> Any:
        return self._xp

    def rfftn(self, a: Any, lengths: tuple[int, ...]) -> Any:
        return self._xp.fft.rfftn(a, s=lengths, axes=tuple(range(-len(lengths), 0)))

    def irfftn(self, a: Any, lengths: tuple[int, ...]) -> Any:
        return self._xp.fft.irfftn(a, s=lengths, axes=tuple(range(-len(lengths), 0)))

    def contract(self, p: Any, q: Any, out: Any) -> None:
        out[...] = self._xp.einsum("ngrf,girf->ngif", p, q)

    def accumulate_weight(self, x: Any, d: Any, acc: Any) -> None:
        acc += self._xp.einsum("ngcf,ngkf->gkcf", x, self._xp.conj(d))


PLANNER = Planner(RATES)
plan_for, can_run, rule = PLANNER.plan_for, PLANNER.can_run, PLANNER.rule


def _compute(ctx: Any, problem: ConvProblem, a: Any, b: Any) -> Any:
    """The pass in the transform's real dtype (no epilogue); a new array."""
    found = PLANNER.require(problem, ctx.workspace_bytes)
    xp = ctx.xp
    real = xp.dtype(found.transform_dtype)
    shape = {Direction.FORWARD: problem.y_shape, Direction.BACKWARD_DATA: problem.x_shape,
             Direction.BACKWARD_WEIGHT: problem.w_shape}[problem.direction]
    out = xp.empty(shape, dtype=real)
    fft_arrays.run(problem, found, a.astype(real, copy=False), b.astype(real, copy=False), out,
                   ArrayModuleTransforms(xp))
    return out


def _finite(ctx: Any, *arrays: Any) -> bool:
    return all(bool(ctx.xp.isfinite(a).all()) for a in arrays)


def _data_pass(direction: Direction) -> Any:
    def run(ctx: Any, a: Any, w: Any, bias: Any, problem: ConvProblem) -> Any:
        from . import algorithms

        if not _finite(ctx, a, w):
            # An FFT spreads one NaN or Inf over every output: the direct kernels keep it local.
            direct = (algorithms.fprop_direct if direction == Direction.FORWARD
                      else algorithms.dgrad_direct)
            return direct(ctx, a, w, bias, problem)
        out = _compute(ctx, problem, a, w).astype(a.dtype, copy=False)
        algorithms._epilogue(ctx, out, bias, problem)
        return out

    return run


def wgrad_fft(ctx: Any, x: Any, dy: Any, problem: ConvProblem) -> Any:
    from . import algorithms

    if not _finite(ctx, x, dy):
        return algorithms.wgrad_direct(ctx, x, dy, problem)
    return _compute(ctx, problem, x, dy).astype(x.dtype, copy=False)


fprop_fft = _data_pass(Direction.FORWARD)
dgrad_fft = _data_pass(Direction.BACKWARD_DATA)
