"""FFT convolution passes over any numpy-like array module (numpy with scipy.fft, cupy).

The numba and cupy backends run these with their own array module, real transforms and
frequency-domain products (:class:`Transforms`); :mod:`convflow.fft_plan` decides the tiles.
Arrays are channels-first ``(N, C, *spatial)`` in the transform's real dtype; weights
``(C_out, C_in / groups, *kernel)``. Per tile, for every image and group in the step:

1. gather the tile's input segment (zeros outside the data; a strided data gradient's dy is
   spread over every stride-th sample) into a real buffer of the transform length;
2. transform it; multiply with the kernel's spectrum and sum over the reduced channels;
3. transform back and copy the tile's window of outputs out (every stride-th sample for a
   strided forward pass), applying the epilogue to it while it is in cache.

The weight gradient sums its products over the images and tiles in the frequency domain and
transforms back once per group step.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..fft_plan import FFTPlan
from ..params import ConvProblem, Direction

Array = Any
# epilogue(view, first_channel): applies bias and activation to an output region whose
# channel 0 is output channel *first_channel* (None: nothing to apply).
EpilogueFn = Callable[[Array, int], None]


class Transforms(Protocol):
    """What a backend provides: its array module and real transforms over the trailing
    axes, and the two frequency-domain products."""

    @property
    def xp(self) -> Any: ...

    def rfftn(self, a: Array, lengths: tuple[int, ...]) -> Array: ...

    def irfftn(self, a: Array, lengths: tuple[int, ...]) -> Array: ...

    def contract(self, p: Array, q: Array, out: Array) -> None:
        """``out[n, g, i, f] = sum_r p[n, g, r, f] * q[g, i, r, f]``."""

    def accumulate_weight(self, x: Array, d: Array, acc: Array) -> None:
        """``acc[g, k, c, f] += sum_n x[n, g, c, f] * conj(d[n, g, k, f])``."""


@dataclass(frozen=True)
class _Axis:
    """Where a tile of one axis reads and writes."""

    start: int        # first sample of the segment, in A's (upsampled) coordinates
    out0: int         # first output (dy position for the weight gradient) of the tile
    count: int        # outputs of the tile


def _tiles(plan: FFTPlan, totals: Sequence[int], step: Sequence[int],
           base: Sequence[int]) -> list[tuple[_Axis, ...]]:
    per_axis = []
    for axis, total, s, b in zip(plan.axes, totals, step, base):
        per_axis.append([_Axis(b + m0 * s, m0, min(axis.tile, total - m0))
                         for m0 in range(0, total, axis.tile)])
    return list(itertools.product(*per_axis))


def _index(spatial: Iterable[slice]) -> tuple[Any, ...]:
    """An index of the trailing (spatial) axes."""
    return (Ellipsis, *spatial)


def gather(xp: Any, source: Array, starts: Sequence[int], up: Sequence[int],
           limits: Sequence[int], buffer: Array) -> Array:
    """Fill *buffer* (``(..., *L)``) with ``source`` upsampled by *up* (zeros between
    samples), read from sample ``start`` on, ``limit`` samples per axis; zeros elsewhere."""
    buffer[...] = 0
    src, dst = [], []
    for size, start, u, limit, length in zip(source.shape[-len(starts):], starts, up, limits,
                                             buffer.shape[-len(starts):]):
        up_len = (size - 1) * u + 1
        first = max(start, 0)
        first += (-first) % u
        last = min(start + min(limit, length), up_len) - 1
        if last < first:
            return buffer
        src.append(slice(first // u, last // u + 1))
        dst.append(slice(first - start, last - start + 1, u))
    buffer[_index(dst)] = source[_index(src)]
    return buffer


def dilated(xp: Any, w: Array, dilation: Sequence[int], dtype: Any) -> Array:
    """*w* ``(..., *k)`` with ``d - 1`` zeros between taps."""
    nd = len(dilation)
    k = w.shape[-nd:]
    out = xp.zeros((*w.shape[:-nd], *(d * (kk - 1) + 1 for kk, d in zip(k, dilation))), dtype)
    out[_index(slice(None, None, d) for d in dilation)] = w
    return out


def _flat_spectrum(a: Array, nd: int) -> Array:
    return a.reshape(*a.shape[:-nd], -1)


def run(problem: ConvProblem, plan: FFTPlan, a: Array, b: Array, out: Array, ops: Transforms,
        epilogue: EpilogueFn | None = None) -> None:
    """Compute one pass of *problem* by *plan*: forward (``a=x, b=w, out=y``), data gradient
    (``a=dy, b=w, out=dx``) or weight gradient (``a=x, b=dy, out=dw``)."""
    if problem.direction == Direction.BACKWARD_WEIGHT:
        _weight_gradient(problem, plan, a, b, out, ops)
    else:
        _tiled_pass(problem, plan, a, b, out, ops, epilogue)


def _tiled_pass(problem: ConvProblem, plan: FFTPlan, a: Array, w: Array, out: Array,
                ops: Transforms, epilogue: EpilogueFn | None) -> None:
    xp, nd = ops.xp, problem.ndim
    forward = problem.direction == Direction.FORWARD
    real = xp.dtype(plan.transform_dtype)
    groups, c_out, c_per_group = problem.groups, problem.out_channels, problem.in_channels_per_group
    k_per_group = c_out // groups
    # Channels of A (reduced) and of the result, per group.
    r_per, o_per = (c_per_group, k_per_group) if forward else (k_per_group, c_per_group)
    lengths = plan.lengths
    keff = [d * (k - 1) + 1 for k, d in zip(problem.kernel_size, problem.dilation)]
    lows = [lo for lo, _ in problem.padding]
    steps: Sequence[int]
    if forward:
        # Correlation: segment from m0 * stride - pad; outputs at (m - m0) * stride.
        steps, base, up = problem.stride, [-lo for lo in lows], (1,) * nd
        win0, win_step = [0] * nd, problem.stride
        totals = problem.y_spatial
    else:
        # Convolution of the upsampled dy with the dilated kernel, window at pad + i.
        steps, base, up = (1,) * nd, [lo - (ke - 1) for lo, ke in zip(lows, keff)], problem.stride
        win0, win_step = [ke - 1 for ke in keff], (1,) * nd
        totals = problem.x_spatial
    tiles = _tiles(plan, totals, steps, base)
    images, group_step = plan.images_per_step, plan.groups_per_step
    n_total = problem.batch
    for g0 in range(0, groups, group_step):
        gg = min(group_step, groups - g0)
        wk = w[g0 * k_per_group:(g0 + gg) * k_per_group].reshape(
            gg, k_per_group, c_per_group, *problem.kernel_size).astype(real, copy=False)
        spectrum = ops.rfftn(dilated(xp, wk, problem.dilation, real), lengths)
        if forward:
            q = xp.conj(_flat_spectrum(spectrum, nd))           # (gg, K, C, F)
        else:
            q = _flat_spectrum(spectrum, nd).transpose(0, 2, 1, 3)  # (gg, C, K, F)
            q = xp.ascontiguousarray(q)
        segment = xp.empty((images, gg, r_per, *lengths), real)
        product = None
        for n0 in range(0, n_total, images):
            nn = min(images, n_total - n0)
            source = a[n0:n0 + nn, g0 * r_per:(g0 + gg) * r_per].reshape(
                nn, gg, r_per, *a.shape[2:])
            for tile in tiles:
                buffer = gather(xp, source, [t.start for t in tile], up, lengths,
                                segment[:nn])
                spec = _flat_spectrum(ops.rfftn(buffer, lengths), nd)
                if product is None or product.shape[0] != nn:
                    product = xp.empty((nn, gg, o_per, spec.shape[-1]), spec.dtype)
                ops.contract(spec, q, product)
                result = ops.irfftn(product.reshape(nn, gg, o_per, *spectrum.shape[-nd:]),
                                    lengths)
                window = result[_index(slice(s0, s0 + t.count * st, st)
                                       for s0, t, st in zip(win0, tile, win_step))]
                spatial = [slice(t.out0, t.out0 + t.count) for t in tile]
                index = (slice(n0, n0 + nn), slice(g0 * o_per, (g0 + gg) * o_per), *spatial)
                region = out[index]
                region[...] = window.reshape(nn, gg * o_per, *window.shape[3:])
                if epilogue is not None:
                    epilogue(region, g0 * o_per)


def _weight_gradient(problem: ConvProblem, plan: FFTPlan, x: Array, dy: Array, dw: Array,
                     ops: Transforms) -> None:
    xp, nd = ops.xp, problem.ndim
    real = xp.dtype(plan.transform_dtype)
    groups = problem.groups
    c_per, k_per = problem.in_channels_per_group, problem.out_channels_per_group
    lengths = plan.lengths
    lows = [lo for lo, _ in problem.padding]
    s = problem.stride
    # Tiles of dy positions: x from o0 * stride - pad, dy spread over every stride-th sample.
    tiles = _tiles(plan, problem.y_spatial, s, [-lo for lo in lows])
    chunk = [(ax.tile - 1) * st + 1 for ax, st in zip(plan.axes, s)]
    images, group_step = plan.images_per_step, plan.groups_per_step
    for g0 in range(0, groups, group_step):
        gg = min(group_step, groups - g0)
        acc = None
        x_buffer = xp.empty((images, gg, c_per, *lengths), real)
        d_buffer = xp.empty((images, gg, k_per, *lengths), real)
        for n0 in range(0, problem.batch, images):
            nn = min(images, problem.batch - n0)
            xs = x[n0:n0 + nn, g0 * c_per:(g0 + gg) * c_per].reshape(nn, gg, c_per, *x.shape[2:])
            ds = dy[n0:n0 + nn, g0 * k_per:(g0 + gg) * k_per].reshape(
                nn, gg, k_per, *dy.shape[2:])
            for tile in tiles:
                xseg = gather(xp, xs, [t.start for t in tile], [1] * nd, lengths, x_buffer[:nn])
                dseg = gather(xp, ds, [t.out0 * st for t, st in zip(tile, s)], s, chunk,
                              d_buffer[:nn])
                xf = _flat_spectrum(ops.rfftn(xseg, lengths), nd)
                df = _flat_spectrum(ops.rfftn(dseg, lengths), nd)
                if acc is None:
                    acc = xp.zeros((gg, k_per, c_per, xf.shape[-1]), xf.dtype)
                ops.accumulate_weight(xf, df, acc)
        assert acc is not None
        half = (*lengths[:-1], lengths[-1] // 2 + 1)
        result = ops.irfftn(acc.reshape(gg, k_per, c_per, *half), lengths)
        taps = result[_index(slice(0, d * (k - 1) + 1, d)
                             for k, d in zip(problem.kernel_size, problem.dilation))]
        dw[g0 * k_per:(g0 + gg) * k_per] = taps.reshape(gg * k_per, c_per, *taps.shape[3:])

