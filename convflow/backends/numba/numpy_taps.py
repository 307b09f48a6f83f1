"""numpy_taps: every pass as one numpy product per kernel tap, with no compiled code.

The numba backend's compiled kernels take seconds to compile the first time a process needs
them (2-5 s each on the machines convflow is measured on). While they compile in the
background (see :mod:`.warmup`), a call runs this algorithm instead, so the first result of
a new process comes in milliseconds rather than seconds. It is also an algorithm of its own:
forced with ``algorithm="numpy_taps"`` and timed by find mode like any other.

Each pass is the definition written one kernel tap at a time, on 5-D arrays ``(N, C, D, H,
W)`` (1-D and 2-D problems lifted):

* forward: ``y[n, k, o] += w[k, c, t] @ x_pad[n, c, o * stride + t * dilation - pad]``, the
  zero padding read as zeros (a product ``0 * w`` at the border, as the forward pass has);
* data gradient: ``dx[n, c, o * stride + t * dilation - pad] += w[k, c, t]^T @ dy[n, k, o]``
  over the positions that land inside ``dx`` (real products only, as the scatter definition);
* weight gradient: ``dw[k, c, t] = sum_{n, o} dy[n, k, o] * x_pad[n, c, o * stride + ...]``.

The products are ``np.matmul`` (numpy's own BLAS, a stack of one GEMM per image and group),
or broadcast multiply-adds where a group has one channel on each side (depthwise). Outputs
are computed in blocks of images and output rows whose copies stay within the workspace
budget (``CONVFLOW_WORKSPACE_MB``), so a large image costs no more scratch than im2col's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ...activations import ACTIVATION_CODES, apply_activation

if TYPE_CHECKING:
    from ...geometry import Geometry
    from .algorithms import Epilogue

Array = np.ndarray
_ACTIVATION_NAMES = {code: name for name, code in ACTIVATION_CODES.items()}


class _Block(NamedTuple):
    """Images ``n0 .. n1`` and output rows ``d0 .. d1`` x ``h0 .. h1`` (whole rows of W)."""

    n0: int
    n1: int
    d0: int
    d1: int
    h0: int
    h1: int

    def sizes(self, width: int) -> tuple[int, int, int]:
        """The block's output extent on the three spatial axes (rows of *width*)."""
        return self.d1 - self.d0, self.h1 - self.h0, width

    @property
    def region(self) -> tuple[slice, ...]:
        """Its part of an ``(N, C, D, H, W)`` output-shaped array."""
        return (slice(self.n0, self.n1), slice(None), slice(self.d0, self.d1),
                slice(self.h0, self.h1))


def _blocks(out: tuple[int, ...], channels: int, budget: int, itemsize: int) -> Iterator[_Block]:
    """Blocks of the output ``(N, K, D, H, W)`` of about *budget* bytes of copies each: whole
    images while they fit, else planes of one image, else rows of one plane (at least one).
    *channels* counts the floats copied per output position (patch, product and result)."""
    n, _, d, h, w = out
    row = max(1, channels * w * itemsize)
    plane, image = row * h, row * h * d
    if image <= budget:
        step = max(1, budget // image)
        for n0 in range(0, n, step):
            yield _Block(n0, min(n, n0 + step), 0, d, 0, h)
        return
    for i in range(n):
        if plane <= budget:
            step = max(1, budget // plane)
            for d0 in range(0, d, step):
                yield _Block(i, i + 1, d0, min(d, d0 + step), 0, h)
            continue
        step = max(1, budget // row)
        for d0 in range(d):
            for h0 in range(0, h, step):
                yield _Block(i, i + 1, d0, d0 + 1, h0, min(h, h0 + step))


def _window(a: Array, n0: int, n1: int, starts: tuple[int, ...],
            lengths: tuple[int, ...]) -> Array:
    """``a[n0:n1, :, starts[i] : starts[i] + lengths[i]]`` on the three spatial axes, with
    zeros where the range leaves the array (the zero padding; a negative start pads low)."""
    window = np.zeros((n1 - n0, a.shape[1], *lengths), dtype=a.dtype)
    source, target = [slice(n0, n1), slice(None)], [slice(None), slice(None)]
    for size, start, length in zip(a.shape[2:], starts, lengths):
        lo, hi = max(start, 0), min(start + length, size)
        if lo >= hi:
            return window
        source.append(slice(lo, hi))
        target.append(slice(lo - start, hi - start))
    window[tuple(target)] = a[tuple(source)]
    return window


def _input_window(x: Array, block: _Block, geometry: Geometry, out_w: int) -> Array:
    """The zero-padded input that block's outputs read."""
    counts = block.sizes(out_w)
    starts = tuple(o0 * s - p for o0, s, p in zip((block.d0, block.h0, 0), geometry.stride,
                                                   geometry.pad_low))
    lengths = tuple((c - 1) * s + (k - 1) * dl + 1 for c, s, k, dl in
                    zip(counts, geometry.stride, geometry.kernel, geometry.dilation))
    return _window(x, block.n0, block.n1, starts, lengths)


def _taps(geometry: Geometry) -> Iterator[tuple[int, int, int]]:
    kd, kh, kw = geometry.kernel
    return itertools.product(range(kd), range(kh), range(kw))


def _tap_view(window: Array, tap: tuple[int, int, int], geometry: Geometry,
              counts: tuple[int, int, int]) -> Array:
    """The positions tap *tap* reads for outputs ``counts`` from a block's input window."""
    spans = tuple(slice(t * dl, t * dl + (c - 1) * s + 1, s) for t, dl, s, c in
                  zip(tap, geometry.dilation, geometry.stride, counts))
    index = (slice(None), slice(None), *spans)
    return window[index]


def _by_group(a: Array, groups: int) -> Array:
    """``(N, C, *spatial)`` as ``(N, groups, C / groups, positions)`` (a copy if strided)."""
    return a.reshape(a.shape[0], groups, a.shape[1] // groups, -1)


def _tap_weights(w: Array, tap: tuple[int, int, int], groups: int) -> Array:
    """``w[:, :, tap]`` as ``(groups, K / groups, C / groups)``."""
    index = (slice(None), slice(None), *tap)
    return w[index].reshape(groups, w.shape[0] // groups, w.shape[1])


def _products(weights: Array, values: Array) -> Array:
    """``weights @ values`` per image and group: ``(G, M, R) x (N, G, R, P) -> (N, G, M, P)``,
    a broadcast product where ``M == R == 1`` (depthwise: a GEMM of one would cost more)."""
    if weights.shape[1] == 1 and weights.shape[2] == 1:
        return weights[None] * values
    return np.matmul(weights, values)


def _finish(out: Array, epilogue: Epilogue | None) -> None:
    """The bias (per channel of *out*) and the activation, in place."""
    if epilogue is None:
        return
    if epilogue.has_bias:
        out += epilogue.bias.reshape(1, -1, 1, 1, 1)
    if epilogue.activation:
        apply_activation(out, _ACTIVATION_NAMES[epilogue.activation])


def fprop_numpy_taps(x: Array, w: Array, y: Array, geometry: Geometry, budget: int,
                     epilogue: Epilogue | None = None, variant: str = "") -> None:
    """Forward pass: per block of outputs, each tap's shifted input times its weights."""
    groups = geometry.groups
    out_w = y.shape[4]
    copied = 2 * x.shape[1] + 2 * y.shape[1]
    for block in _blocks(y.shape, copied, budget, y.itemsize):
        counts = block.sizes(out_w)
        window = _input_window(x, block, geometry, out_w)
        total = None
        for tap in _taps(geometry):
            part = _products(_tap_weights(w, tap, groups),
                             _by_group(_tap_view(window, tap, geometry, counts), groups))
            total = part if total is None else np.add(total, part, out=total)
        assert total is not None
        y[block.region] = total.reshape(block.n1 - block.n0, y.shape[1], *counts)
    _finish(y, epilogue)


def _landing(out_size: int, in_size: int, tap: int, stride: int, dilation: int,
             pad: int) -> tuple[int, int, int]:
    """``(o0, o1, i0)``: outputs ``o0 .. o1`` of a tap land inside the input, the first at
    input position ``i0`` (``o * stride + tap * dilation - pad``)."""
    offset = tap * dilation - pad
    o0 = -(offset // stride) if offset < 0 else 0   # ceil(-offset / stride)
    o1 = min(out_size, (in_size - 1 - offset) // stride + 1) if in_size - 1 - offset >= 0 else 0
    return o0, max(o0, o1), o0 * stride + offset


def dgrad_numpy_taps(dy: Array, w: Array, dx: Array, geometry: Geometry, budget: int,
                     epilogue: Epilogue | None = None, variant: str = "") -> None:
    """Data gradient: per block of ``dy``, each tap's weights (transposed) times ``dy``,
    added where the tap's positions land in ``dx``."""
    groups = geometry.groups
    dx[...] = 0
    transposed = w.reshape(groups, w.shape[0] // groups, w.shape[1], -1).transpose(0, 2, 1, 3)
    copied = 2 * dx.shape[1] + dy.shape[1]
    for block in _blocks(dy.shape, copied, budget, dx.itemsize):
        first = (block.d0, block.h0, 0)
        counts = block.sizes(dy.shape[4])
        for t_index, tap in enumerate(_taps(geometry)):
            spans = [_landing(c, size, t, s, dl, p - o * s) for c, size, t, s, dl, p, o in
                     zip(counts, dx.shape[2:], tap, geometry.stride, geometry.dilation,
                         geometry.pad_low, first)]
            if any(o0 >= o1 for o0, o1, _ in spans):
                continue
            read = (slice(block.n0, block.n1), slice(None),
                    *(slice(f + o0, f + o1) for f, (o0, o1, _) in zip(first, spans)))
            grad = dy[read]
            part = _products(np.ascontiguousarray(transposed[..., t_index]),
                             _by_group(grad, groups))
            write = (slice(block.n0, block.n1), slice(None),
                     *(slice(i0, i0 + (o1 - o0 - 1) * s + 1, s)
                       for (o0, o1, i0), s in zip(spans, geometry.stride)))
            target = dx[write]
            target += part.reshape(target.shape)
    _finish(dx, epilogue)


def wgrad_numpy_taps(x: Array, dy: Array, dw: Array, geometry: Geometry, budget: int,
                     epilogue: Epilogue | None = None, variant: str = "") -> None:
    """Weight gradient: per block of ``dy``, each tap's gradient is ``dy`` times that tap's
    shifted input, summed over the block's images and positions."""
    groups = geometry.groups
    out_w = dy.shape[4]
    k_per_group, c_per_group = dw.shape[0] // groups, dw.shape[1]
    taps = list(_taps(geometry))
    total = np.zeros((len(taps), groups, k_per_group, c_per_group), dtype=dw.dtype)
    copied = 2 * x.shape[1] + dy.shape[1]
    for block in _blocks(dy.shape, copied, budget, dw.itemsize):
        counts = block.sizes(out_w)
        window = _input_window(x, block, geometry, out_w)
        grad = _by_group(dy[block.region], groups)
        for t_index, tap in enumerate(taps):
            patch = _by_group(_tap_view(window, tap, geometry, counts), groups)
            if k_per_group == 1 and c_per_group == 1:
                part = np.einsum("ngp,ngp->g", grad[:, :, 0], patch[:, :, 0])[:, None, None]
            else:
                part = np.matmul(grad, patch.transpose(0, 1, 3, 2)).sum(axis=0)
            total[t_index] += part
    # (taps, G, K/G, C/G) -> (K, C/G, taps)
    dw[...] = total.transpose(1, 2, 3, 0).reshape(dw.shape[0], c_per_group,
                                                  *geometry.kernel)


def workspace_bytes(out_shape: tuple[int, ...], copied: int, budget: int, itemsize: int) -> int:
    """Scratch of the largest block (what the out-of-memory fallback orders by)."""
    per_image = copied * math.prod(out_shape[2:]) * itemsize
    return min(budget, per_image * out_shape[0]) if per_image else 0
