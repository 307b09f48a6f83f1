"""scipy.signal-style correlation and convolution of n-d arrays, through convflow's engine.

``correlate(in1, in2, mode)`` and ``convolve(in1, in2, mode)`` give what
``scipy.signal.correlate`` / ``convolve`` give for real floating-point arrays; with ``axes``
they give what ``scipy.signal.fftconvolve(..., axes=axes)`` gives: the other axes pair
elements up (their sizes must be equal or 1, as broadcasting has it). They are computed as
one convolution call on whichever backend holds the data (numpy arrays on the CPU, cupy and
pyopencl arrays where they live), so large kernels get the ``fft`` algorithm where the rules
choose it, and ``convflow.explain`` is available through :func:`plan`.

How the arrays map onto a convolution: the correlated axes (at most 3 of size > 1) are the
spatial axes; the other axes where ``in2`` has size 1 are the batch; those where both have
the same size pair input and kernel one to one (a depthwise convolution, ``groups`` = their
product); those where only ``in2`` has size > 1 give one output per kernel (the channel
multiplier). ``correlate`` is ``conv`` with zero padding (``full``: ``n2 - 1`` on each side;
``same``: centred as scipy centres it), ``convolve`` is ``conv_transpose`` cropping the
full result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import functional
from .errors import ArgumentTypeError, ParameterError, ShapeError, did_you_mean
from .tensor import Tensor, as_tensor

MODES = ("full", "same", "valid")
MAX_AXES = 3
_CONV = {1: functional.conv1d, 2: functional.conv2d, 3: functional.conv3d}
_CONV_TRANSPOSE = {1: functional.conv_transpose1d, 2: functional.conv_transpose2d,
                   3: functional.conv_transpose3d}


@dataclass(frozen=True)
class _Layout:
    """How the two arrays' axes map onto a convolution's (N, C, *spatial)."""

    spatial: tuple[int, ...]    # correlated axes of size > 1, in order
    trivial: tuple[int, ...]    # correlated axes of size 1 in both: no part of the call
    batch: tuple[int, ...]      # in2 has size 1
    paired: tuple[int, ...]     # equal sizes > 1: groups
    multiplier: tuple[int, ...]  # in1 has size 1, in2 > 1: outputs per group
    swapped: bool               # 'valid' with in2 the larger: in1 and in2 trade places


def _check_mode(op: str, mode: Any) -> str:
    if not isinstance(mode, str) or mode not in MODES:
        hint = did_you_mean(str(mode), MODES) if isinstance(mode, str) else ""
        raise ParameterError(f"{op}: mode must be one of {', '.join(map(repr, MODES))}, but got "
                             f"{mode!r}{hint}")
    return mode


def _check_dtype(op: str, name: str, t: Tensor) -> None:
    kind = t.dtype.kind
    if t.dtype.name == "bfloat16" or kind == "f":
        return
    what = "complex" if kind == "c" else str(t.dtype)
    raise ArgumentTypeError(f"{op}: {name} must hold real floating-point values (float16, "
                            f"bfloat16, float32, float64), but got {what}; convert it, e.g. "
                            f"{name}.astype(numpy.float64)"
                            + ("; for complex data correlate the real and imaginary parts "
                               "separately" if kind == "c" else ""))


def _check_axes(op: str, axes: Any, ndim: int) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(ndim))
    values = [axes] if isinstance(axes, (int, np.integer)) else axes
    try:
        normalized = [int(a) for a in values]
    except (TypeError, ValueError):
        raise ArgumentTypeError(f"{op}: axes must be None, an int or a sequence of ints, but "
                                f"got {axes!r}") from None
    if any(not -ndim <= a < ndim for a in normalized):
        raise ParameterError(f"{op}: axes {axes!r} are out of range for arrays of {ndim} "
                             f"dimension{'s' if ndim != 1 else ''}")
    positive = tuple(sorted(a % ndim for a in normalized))
    if len(set(positive)) != len(positive):
        raise ParameterError(f"{op}: axes must not repeat an axis, but got {axes!r}")
    return positive


def _layout(op: str, shape1: tuple[int, ...], shape2: tuple[int, ...], axes: tuple[int, ...],
            mode: str) -> _Layout:
    spatial = tuple(a for a in axes if shape1[a] > 1 or shape2[a] > 1)
    if len(spatial) > MAX_AXES:
        raise ParameterError(
            f"{op}: at most {MAX_AXES} axes of size > 1 can be correlated (convflow convolves "
            f"1-, 2- and 3-D), but axes {spatial} of in1 {shape1} and in2 {shape2} are; pass "
            f"axes= to name at most {MAX_AXES} and pair the others up")
    batch, paired, multiplier = [], [], []
    for axis in range(len(shape1)):
        if axis in axes:
            continue
        n1, n2 = shape1[axis], shape2[axis]
        if n2 == 1:
            batch.append(axis)
        elif n1 == n2:
            paired.append(axis)
        elif n1 == 1:
            multiplier.append(axis)
        else:
            raise ShapeError(
                f"{op}: axis {axis} is not correlated, so in1 and in2 must have the same size "
                f"there or one of them 1, but in1 {shape1} has {n1} and in2 {shape2} has {n2}")
    swapped = False
    if mode == "valid":
        larger1 = all(shape1[a] >= shape2[a] for a in axes)
        larger2 = all(shape2[a] >= shape1[a] for a in axes)
        if not (larger1 or larger2):
            raise ShapeError(
                f"{op}: for mode='valid' one input must be at least as large as the other on "
                f"every correlated axis, but in1 is {shape1} and in2 is {shape2} (axes {axes})")
        swapped = not larger1
        if swapped and any(shape1[a] != shape2[a] for a in range(len(shape1)) if a not in axes):
            raise ShapeError(
                f"{op}: mode='valid' with in2 larger than in1 trades the two, which needs "
                f"equal sizes on the other axes, but in1 is {shape1} and in2 is {shape2}")
    trivial = tuple(a for a in axes if a not in spatial)
    return _Layout(spatial, trivial, tuple(batch), tuple(paired), tuple(multiplier), swapped)


def _backend_of(t: Tensor) -> Any:
    from .backends import backend_for_device

    return backend_for_device(t.device)


def _contiguous(t: Tensor) -> Tensor:
    if t.is_contiguous:
        return t
    if t.device.type == "cpu":
        return Tensor(np.ascontiguousarray(t.data), t.device)
    return _backend_of(t).copy(t)  # type: ignore[no-any-return]


def _arrange(t: Tensor, order: Sequence[int], shape: tuple[int, ...]) -> Tensor:
    """*t* with its axes in *order*, contiguous, reshaped to *shape*."""
    moved = t.permute(tuple(order)) if list(order) != list(range(t.ndim)) else t
    return _contiguous(moved).reshape(shape)


def _flip(t: Tensor, axes: Sequence[int]) -> Tensor:
    """*t* reversed along *axes* (a pyopencl array has no negative strides: via the host)."""
    index = tuple(slice(None, None, -1) if a in axes else slice(None) for a in range(t.ndim))
    if t.device.type == "opencl":
        backend = _backend_of(t)
        host = np.ascontiguousarray(backend.download(t)[index])
        return backend.upload(host, t.device)  # type: ignore[no-any-return]
    return _contiguous(Tensor(t.data[index], t.device))


def _compute(op: str, in1: Any, in2: Any, mode: Any, axes: Any, flip: bool,
             options: dict[str, Any]) -> Any:
    mode = _check_mode(op, mode)
    a, kind = as_tensor(in1, op, "in1")
    b, _ = as_tensor(in2, op, "in2")
    _check_dtype(op, "in1", a)
    _check_dtype(op, "in2", b)
    if a.ndim != b.ndim:
        raise ShapeError(f"{op}: in1 and in2 must have the same number of dimensions, but in1 "
                         f"has shape {a.shape} and in2 {b.shape}")
    if a.ndim == 0 or a.size == 0 or b.size == 0:
        raise ShapeError(f"{op}: in1 and in2 must be non-empty arrays of at least one "
                         f"dimension, but got shapes {a.shape} and {b.shape}")
    if a.dtype != b.dtype:
        common = np.promote_types(a.dtype, b.dtype)
        a = Tensor(a.data.astype(common), a.device) if a.dtype != common else a
        b = Tensor(b.data.astype(common), b.device) if b.dtype != common else b
    axes_t = _check_axes(op, axes, a.ndim)
    if mode == "same":
        b = _same_broadcast(a, b, axes_t)
    layout = _layout(op, a.shape, b.shape, axes_t, mode)
    out_shape = _output_shape(a.shape, b.shape, axes_t, mode)
    if layout.swapped:
        a, b = b, a
    y = _run(a, b, layout, mode, flip, options)
    if layout.swapped and not flip:
        # correlate(in1, in2) with in2 larger is correlate(in2, in1) reversed.
        y = _flip(y, range(2, y.ndim))
    return kind(_restore(y, layout, out_shape))


def _same_broadcast(a: Tensor, b: Tensor, axes: tuple[int, ...]) -> Tensor:
    """'same' keeps in1's size on every axis: where in1 has size 1 and in2 more on an axis
    that is not correlated, scipy keeps the centre element of in2's, and so do we."""
    index: list[slice] = []
    for axis, (n1, n2) in enumerate(zip(a.shape, b.shape)):
        start = (n2 - 1) // 2
        index.append(slice(start, start + 1) if axis not in axes and n1 == 1 < n2
                     else slice(None))
    if all(i == slice(None) for i in index):
        return b
    return _contiguous(Tensor(b.data[tuple(index)], b.device))


def _output_shape(shape1: tuple[int, ...], shape2: tuple[int, ...], axes: tuple[int, ...],
                  mode: str) -> tuple[int, ...]:
    out = []
    for axis, (n1, n2) in enumerate(zip(shape1, shape2)):
        if axis not in axes:
            out.append(max(n1, n2))
        elif mode == "full":
            out.append(n1 + n2 - 1)
        elif mode == "same":
            out.append(n1)
        else:
            out.append(abs(n1 - n2) + 1)
    return tuple(out)


def _run(a: Tensor, b: Tensor, layout: _Layout, mode: str, flip: bool,
         options: dict[str, Any]) -> Tensor:
    """The convolution call: y of shape (N, G * M, *spatial)."""
    size1 = [a.shape[i] for i in layout.spatial] or [1]
    size2 = [b.shape[i] for i in layout.spatial] or [1]
    spatial = layout.spatial
    n = math.prod(a.shape[i] for i in layout.batch)
    g = math.prod(a.shape[i] for i in layout.paired)
    m = math.prod(b.shape[i] for i in layout.multiplier)
    nd = max(1, len(spatial))
    x = _arrange(a, (*layout.batch, *layout.paired, *layout.multiplier, *layout.trivial,
                     *spatial), (n, g, *size1))
    kernel_order = (*layout.paired, *layout.multiplier, *layout.batch, *layout.trivial, *spatial)
    if flip:
        # convolve: conv_transpose computes sum_t x[i - t] w[t]; crop its full output.
        w = _arrange(b, kernel_order, (g, m, *size2))
        pairs = []
        for n2 in size2:
            if mode == "full":
                pairs.append((0, 0))
            elif mode == "same":
                low = (n2 - 1) // 2
                pairs.append((low, n2 - 1 - low))
            else:
                pairs.append((n2 - 1, n2 - 1))
        return _tensor_of(_CONV_TRANSPOSE[nd](x, w, padding=tuple(pairs), groups=g, **options))
    w = _arrange(b, kernel_order, (g * m, 1, *size2))
    pairs = []
    for n2 in size2:
        if mode == "full":
            pairs.append((n2 - 1, n2 - 1))
        elif mode == "same":
            high = (n2 - 1) // 2
            pairs.append((n2 - 1 - high, high))
        else:
            pairs.append((0, 0))
    return _tensor_of(_CONV[nd](x, w, padding=tuple(pairs), groups=g, **options))


def _tensor_of(result: Any) -> Tensor:
    return as_tensor(result, "convflow.signal", "result")[0]


def _restore(y: Tensor, layout: _Layout, out_shape: tuple[int, ...]) -> Tensor:
    """(N, G * M, *spatial) back to the inputs' axis order."""
    grouped = (*layout.batch, *layout.paired, *layout.multiplier, *layout.spatial)
    sizes = [out_shape[axis] for axis in grouped]
    y = _contiguous(y).reshape(tuple(sizes))
    # Correlated axes of size 1 in both inputs are not in the convolution: put them back.
    y = y.reshape((*sizes, *[1] * len(layout.trivial)))
    order = [*grouped, *layout.trivial]
    inverse = tuple(order.index(axis) for axis in range(len(out_shape)))
    return _contiguous(y.permute(inverse))


def correlate(in1: Any, in2: Any, mode: str = "full", axes: Any = None, *,
              backend: Any = None, algorithm: Any = None) -> Any:
    """Cross-correlate two n-d arrays, as ``scipy.signal.correlate`` does for real data.

    Parameters
    ----------
    in1, in2 : array
        Real floating-point arrays with the same number of dimensions: numpy arrays, cupy or
        pyopencl arrays, convflow Tensors. The result is of the same kind as ``in1``.
    mode : {'full', 'same', 'valid'}
        ``full``: every overlap (``n1 + n2 - 1`` per axis); ``same``: the size of ``in1``,
        centred as scipy centres it; ``valid``: only full overlaps (``|n1 - n2| + 1``; one
        input must be at least as large as the other on every correlated axis).
    axes : int or sequence of int, optional
        The axes to correlate over (at most 3 of size > 1); default all. On the other axes
        the sizes must be equal (elements pair up) or 1 (broadcast), as in
        ``scipy.signal.fftconvolve(..., axes=...)``.
    backend, algorithm : optional
        As for :func:`convflow.conv2d` (e.g. ``algorithm='fft'``).

    Returns
    -------
    array
        ``z[k] = sum_l in1[l + k - (n2 - 1)] * in2[l]`` (full mode; the others crop it), in
        the inputs' common dtype.
    """
    return _compute("convflow.signal.correlate", in1, in2, mode, axes, False,
                    {"backend": backend, "algorithm": algorithm})


def convolve(in1: Any, in2: Any, mode: str = "full", axes: Any = None, *,
             backend: Any = None, algorithm: Any = None) -> Any:
    """Convolve two n-d arrays, as ``scipy.signal.convolve`` does for real data.

    Parameters are those of :func:`correlate`.

    Returns
    -------
    array
        ``z[k] = sum_l in1[l] * in2[k - l]`` (full mode; the others crop it, centred as scipy
        centres ``same``).
    """
    return _compute("convflow.signal.convolve", in1, in2, mode, axes, True,
                    {"backend": backend, "algorithm": algorithm})
