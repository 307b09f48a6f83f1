"""An obviously-correct float64 convolution in plain numpy, independent of convflow.

Everything is written from the definitions, one kernel tap at a time:

* forward: ``y[n, o, p] = sum_{c, t} x_pad[n, g*Cg + c, p * stride + t * dilation] * w[o, c, t]``;
* transposed: the scatter form, ``y_full[n, o, s * stride + t * dilation] += x[n, c, s] * w[c, o, t]``,
  then ``padding`` cropped from each end and ``output_padding`` zeros added at the high end;
* gradients: the adjoints of those sums, written out the same way.

Padding is given as ``(low, high)`` pairs per spatial dim; modes are implemented with index
maps (not ``numpy.pad``) so the backends' padding is checked against something else.
"""

from __future__ import annotations

import itertools

import numpy as np


def _index_map(size: int, low: int, high: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Source index of each padded position, and whether it holds data (else zero)."""
    positions = np.arange(-low, size + high)
    valid = np.ones(positions.shape, dtype=bool)
    if mode == "zeros":
        valid = (positions >= 0) & (positions < size)
        source = np.clip(positions, 0, size - 1)
    elif mode == "reflect":
        source = np.abs(positions)
        source = np.where(source > size - 1, 2 * (size - 1) - source, source)
    elif mode == "replicate":
        source = np.clip(positions, 0, size - 1)
    elif mode == "circular":
        source = np.mod(positions, size)
    else:
        raise ValueError(mode)
    return source, valid


def pad(x: np.ndarray, padding, mode: str = "zeros") -> np.ndarray:
    out = np.asarray(x, dtype=np.float64)
    for axis, (low, high) in enumerate(padding, start=2):
        source, valid = _index_map(out.shape[axis], low, high, mode)
        out = np.take(out, source, axis=axis)
        shape = [1] * out.ndim
        shape[axis] = -1
        # Padding holds zeros whatever the border holds (multiplying by the mask would turn
        # an Inf at the border into a NaN in the padding).
        out = np.where(valid.reshape(shape), out, 0.0)
    return out


def _tap_slices(taps, dilation, stride, count):
    return tuple(slice(t * d, t * d + (n - 1) * s + 1, s)
                 for t, d, s, n in zip(taps, dilation, stride, count))


def conv(x, w, b=None, stride=None, padding=None, dilation=None, groups=1, padding_mode="zeros"):
    """Forward convolution, float64. ``padding``: (low, high) pairs."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    nd = x.ndim - 2
    stride = stride or (1,) * nd
    dilation = dilation or (1,) * nd
    padding = padding or ((0, 0),) * nd
    xp = pad(x, padding, padding_mode)
    c_out, c_per_group = w.shape[:2]
    kernel = w.shape[2:]
    out = tuple((s - d * (k - 1) - 1) // st + 1
                for s, k, st, d in zip(xp.shape[2:], kernel, stride, dilation))
    y = np.zeros((x.shape[0], c_out, *out))
    per_group = c_out // groups
    for g in range(groups):
        xs = xp[:, g * c_per_group:(g + 1) * c_per_group]
        ws = w[g * per_group:(g + 1) * per_group]
        for taps in itertools.product(*(range(k) for k in kernel)):
            patch = xs[(Ellipsis, *_tap_slices(taps, dilation, stride, out))]
            y[:, g * per_group:(g + 1) * per_group] += np.einsum(
                "nc...,oc->no...", patch, ws[(slice(None), slice(None), *taps)])
    if b is not None:
        y += np.asarray(b, dtype=np.float64).reshape((1, -1) + (1,) * nd)
    return y


def conv_transpose(x, w, b=None, stride=None, padding=None, output_padding=None, groups=1,
                   dilation=None):
    """Transposed convolution by its scatter definition, float64."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    nd = x.ndim - 2
    stride = stride or (1,) * nd
    dilation = dilation or (1,) * nd
    padding = padding or ((0, 0),) * nd
    output_padding = output_padding or (0,) * nd
    c_in, out_per_group = w.shape[:2]
    kernel = w.shape[2:]
    spatial = x.shape[2:]
    full = tuple((s - 1) * st + d * (k - 1) + 1 + op
                 for s, st, d, k, op in zip(spatial, stride, dilation, kernel, output_padding))
    y_full = np.zeros((x.shape[0], out_per_group * groups, *full))
    in_per_group = c_in // groups
    for g in range(groups):
        xs = x[:, g * in_per_group:(g + 1) * in_per_group]
        ws = w[g * in_per_group:(g + 1) * in_per_group]
        for taps in itertools.product(*(range(k) for k in kernel)):
            target = (slice(None), slice(g * out_per_group, (g + 1) * out_per_group),
                      *_tap_slices(taps, dilation, stride, spatial))
            y_full[target] += np.einsum("nc...,co->no...", xs, ws[(slice(None), slice(None), *taps)])
    crop = tuple(slice(lo, f - hi) for (lo, hi), f in zip(padding, full))
    y = y_full[(slice(None), slice(None), *crop)]
    if b is not None:
        y = y + np.asarray(b, dtype=np.float64).reshape((1, -1) + (1,) * nd)
    return y


def _sum_over_positions(a, b):
    """``sum_{n, p} a[n, i, p] * b[n, j, p]`` for arrays ``(N, I, *spatial)``, ``(N, J, *spatial)``."""
    a = a.reshape(a.shape[0], a.shape[1], int(np.prod(a.shape[2:])))
    b = b.reshape(b.shape[0], b.shape[1], int(np.prod(b.shape[2:])))
    return np.einsum("nip,njp->ij", a, b)


def conv_backward(grad_output, x, w, stride=None, padding=None, dilation=None, groups=1,
                  transposed=False, output_padding=None):
    """(grad_input, grad_weight, grad_bias) of ``conv`` or ``conv_transpose``, float64."""
    dy = np.asarray(grad_output, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    nd = x.ndim - 2
    stride = stride or (1,) * nd
    dilation = dilation or (1,) * nd
    padding = padding or ((0, 0),) * nd
    kernel = w.shape[2:]
    grad_bias = dy.sum(axis=(0, *range(2, dy.ndim)))
    grad_input = np.zeros_like(x)
    grad_weight = np.zeros_like(w)
    if not transposed:
        c_out, c_per_group = w.shape[:2]
        per_group = c_out // groups
        xp = pad(x, padding)
        grad_xp = np.zeros_like(xp)
        out = dy.shape[2:]
        for g in range(groups):
            cin = slice(g * c_per_group, (g + 1) * c_per_group)
            cout = slice(g * per_group, (g + 1) * per_group)
            for taps in itertools.product(*(range(k) for k in kernel)):
                where = (slice(None), cin, *_tap_slices(taps, dilation, stride, out))
                tap_w = (cout, slice(None), *taps)
                grad_xp[where] += np.einsum("no...,oc->nc...", dy[:, cout], w[tap_w])
                grad_weight[tap_w] = _sum_over_positions(dy[:, cout], xp[where])
        crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(padding, x.shape[2:]))
        grad_input = grad_xp[(slice(None), slice(None), *crop)]
        return grad_input, grad_weight, grad_bias
    # Transposed: place grad_output back into the uncropped coordinates, then read it
    # where the scatter definition wrote.
    output_padding = output_padding or (0,) * nd
    c_in, out_per_group = w.shape[:2]
    in_per_group = c_in // groups
    spatial = x.shape[2:]
    full = tuple((s - 1) * st + d * (k - 1) + 1 + op
                 for s, st, d, k, op in zip(spatial, stride, dilation, kernel, output_padding))
    dy_full = np.zeros((dy.shape[0], dy.shape[1], *full))
    place = tuple(slice(lo, f - hi) for (lo, hi), f in zip(padding, full))
    dy_full[(slice(None), slice(None), *place)] = dy
    for g in range(groups):
        cin = slice(g * in_per_group, (g + 1) * in_per_group)
        cout = slice(g * out_per_group, (g + 1) * out_per_group)
        for taps in itertools.product(*(range(k) for k in kernel)):
            read = dy_full[(slice(None), cout, *_tap_slices(taps, dilation, stride, spatial))]
            tap_w = (cin, slice(None), *taps)
            grad_input[:, cin] += np.einsum("no...,co->nc...", read, w[tap_w])
            grad_weight[tap_w] = _sum_over_positions(x[:, cin], read)
    return grad_input, grad_weight, grad_bias


def activate(y, activation):
    """The activations, from their definitions, elementwise in float64 (NaN stays NaN)."""
    import math

    y = np.asarray(y, dtype=np.float64)
    if activation is None:
        return y
    functions = {
        "relu": lambda v: v if not v < 0 else 0.0,
        "relu6": lambda v: 0.0 if v < 0 else (6.0 if v > 6 else v),
        # x * sigmoid(x), in IEEE arithmetic: silu(-inf) = -inf * 0 = NaN, as in PyTorch.
        "silu": lambda v: v * (1.0 / (1.0 + math.exp(-v)) if -v < 700 else 0.0),
        # x * Phi(x), exact (erf) form; gelu(-inf) = -inf * 0 = NaN, as in PyTorch.
        "gelu": lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))),
    }
    return np.vectorize(functions[activation], otypes=[np.float64])(y)
