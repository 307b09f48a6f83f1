"""The numba backend's JIT kernels: loops only, no validation.

Every kernel works on C-contiguous 5-D arrays ``(N, C, D, H, W)``: 1-D and 2-D problems are
lifted to 3-D with singleton leading spatial dims, so one kernel serves every rank.
Parallel loops (``prange``) run over independent outputs, so no two threads write the same
element and results do not depend on the thread count. ``fastmath`` allows contraction and
reassociation only: NaN and Inf still propagate as IEEE arithmetic says.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ... import config

_CACHE = bool(config.get("CONVFLOW_NUMBA_CACHE"))
_FASTMATH = {"contract", "reassoc"}


def _kernel(parallel: bool = True):  # type: ignore[no-untyped-def]
    return njit(parallel=parallel, cache=_CACHE, fastmath=_FASTMATH, nogil=True)


@njit(inline="always", cache=_CACHE)
def _valid_outputs(offset, stride, size, n_out):  # type: ignore[no-untyped-def]
    """Output indices ``o`` in ``[lo, hi)`` whose input ``o * stride - offset`` is in
    ``[0, size)``; ``offset = pad_low - tap * dilation``."""
    lo = -((-offset) // stride)
    if lo < 0:
        lo = 0
    hi = (size - 1 + offset) // stride + 1
    if hi > n_out:
        hi = n_out
    return lo, hi


@_kernel()
def threading_probe(a):  # type: ignore[no-untyped-def]
    """A trivial parallel loop: its first launch starts numba's threading layer."""
    total = 0.0
    for i in prange(a.shape[0]):
        total += a[i]
    return total


@_kernel()
def fprop_direct(x, w, y, sd, sh, sw, pd, ph, pw, dd, dh, dw, groups):  # type: ignore[no-untyped-def]
    n_batch, _, in_d, in_h, in_w = x.shape
    c_out, c_per_group, k_d, k_h, k_w = w.shape
    out_d, out_h, out_w = y.shape[2], y.shape[3], y.shape[4]
    c_out_per_group = c_out // groups
    for job in prange(n_batch * c_out):
        n = job // c_out
        co = job - n * c_out
        c_first = (co // c_out_per_group) * c_per_group
        out = y[n, co]
        out[:, :, :] = 0
        for ci in range(c_per_group):
            plane = x[n, c_first + ci]
            for kd in range(k_d):
                od_lo, od_hi = _valid_outputs(pd - kd * dd, sd, in_d, out_d)
                for kh in range(k_h):
                    oh_lo, oh_hi = _valid_outputs(ph - kh * dh, sh, in_h, out_h)
                    for kw in range(k_w):
                        ow_lo, ow_hi = _valid_outputs(pw - kw * dw, sw, in_w, out_w)
                        weight = w[co, ci, kd, kh, kw]
                        base = ow_lo * sw - pw + kw * dw
                        for od in range(od_lo, od_hi):
                            i_d = od * sd - pd + kd * dd
                            for oh in range(oh_lo, oh_hi):
                                out_row = out[od, oh]
                                in_row = plane[i_d, oh * sh - ph + kh * dh]
                                for j in range(ow_hi - ow_lo):
                                    out_row[ow_lo + j] += weight * in_row[base + j * sw]


@_kernel()
def dgrad_direct(dy, w, dx, sd, sh, sw, pd, ph, pw, dd, dh, dw, groups):  # type: ignore[no-untyped-def]
    n_batch, c_in, in_d, in_h, in_w = dx.shape
    c_out, c_per_group, k_d, k_h, k_w = w.shape
    out_d, out_h, out_w = dy.shape[2], dy.shape[3], dy.shape[4]
    c_out_per_group = c_out // groups
    for job in prange(n_batch * c_in):
        n = job // c_in
        c = job - n * c_in
        g = c // c_per_group
        ci = c - g * c_per_group
        acc = dx[n, c]
        acc[:, :, :] = 0
        for k in range(c_out_per_group):
            co = g * c_out_per_group + k
            grad = dy[n, co]
            for kd in range(k_d):
                od_lo, od_hi = _valid_outputs(pd - kd * dd, sd, in_d, out_d)
                for kh in range(k_h):
                    oh_lo, oh_hi = _valid_outputs(ph - kh * dh, sh, in_h, out_h)
                    for kw in range(k_w):
                        ow_lo, ow_hi = _valid_outputs(pw - kw * dw, sw, in_w, out_w)
                        weight = w[co, ci, kd, kh, kw]
                        base = ow_lo * sw - pw + kw * dw
                        for od in range(od_lo, od_hi):
                            i_d = od * sd - pd + kd * dd
                            for oh in range(oh_lo, oh_hi):
                                acc_row = acc[i_d, oh * sh - ph + kh * dh]
                                grad_row = grad[od, oh]
                                for j in range(ow_hi - ow_lo):
                                    acc_row[base + j * sw] += weight * grad_row[ow_lo + j]


@_kernel()
def wgrad_direct(x, dy, dw_out, sd, sh, sw, pd, ph, pw, dd, dh, dw, groups):  # type: ignore[no-untyped-def]
    n_batch, _, in_d, in_h, in_w = x.shape
    c_out, c_per_group, k_d, k_h, k_w = dw_out.shape
    out_d, out_h, out_w = dy.shape[2], dy.shape[3], dy.shape[4]
    c_out_per_group = c_out // groups
    for job in prange(c_out * c_per_group):
        co = job // c_per_group
        ci = job - co * c_per_group
        c = (co // c_out_per_group) * c_per_group + ci
        for kd in range(k_d):
            od_lo, od_hi = _valid_outputs(pd - kd * dd, sd, in_d, out_d)
            for kh in range(k_h):
                oh_lo, oh_hi = _valid_outputs(ph - kh * dh, sh, in_h, out_h)
                for kw in range(k_w):
                    ow_lo, ow_hi = _valid_outputs(pw - kw * dw, sw, in_w, out_w)
                    base = ow_lo * sw - pw + kw * dw
                    acc = 0.0
                    for n in range(n_batch):
                        plane = x[n, c]
                        grad = dy[n, co]
                        for od in range(od_lo, od_hi):
                            i_d = od * sd - pd + kd * dd
                            for oh in range(oh_lo, oh_hi):
                                in_row = plane[i_d, oh * sh - ph + kh * dh]
                                grad_row = grad[od, oh]
                                for j in range(ow_hi - ow_lo):
                                    acc += in_row[base + j * sw] * grad_row[ow_lo + j]
                    dw_out[co, ci, kd, kh, kw] = acc


@njit(inline="always", cache=_CACHE)
def _pad_plane(plane, buf, pd, ph, pw):  # type: ignore[no-untyped-def]
    """Copy ``plane`` into the zeroed buffer at offset ``(pd, ph, pw)``, clipped to it."""
    buf[:, :, :] = 0
    in_d, in_h, in_w = plane.shape
    e_d, e_h, e_w = buf.shape
    for i in range(max(0, -pd), min(in_d, e_d - pd)):
        for j in range(max(0, -ph), min(in_h, e_h - ph)):
            src = plane[i, j]
            dst = buf[i + pd, j + ph]
            lo = max(0, -pw)
            for k in range(min(in_w, e_w - pw) - lo):
                dst[lo + k + pw] = src[lo + k]


@_kernel()
def fprop_depthwise(x, w, y, sd, sh, sw, pd, ph, pw, dd, dh, dw):  # type: ignore[no-untyped-def]
    n_batch, c_in = x.shape[0], x.shape[1]
    c_out, _, k_d, k_h, k_w = w.shape
    out_d, out_h, out_w = y.shape[2], y.shape[3], y.shape[4]
    multiplier = c_out // c_in
    e_d = (out_d - 1) * sd + (k_d - 1) * dd + 1
    e_h = (out_h - 1) * sh + (k_h - 1) * dh + 1
    e_w = (out_w - 1) * sw + (k_w - 1) * dw + 1
    for job in prange(n_batch * c_in):
        n = job // c_in
        c = job - n * c_in
        buf = np.empty((e_d, e_h, e_w), dtype=x.dtype)
        _pad_plane(x[n, c], buf, pd, ph, pw)
        for m in range(multiplier):
            co = c * multiplier + m
            taps = w[co, 0]
            out = y[n, co]
            for od in range(out_d):
                for oh in range(out_h):
                    out_row = out[od, oh]
                    out_row[:] = 0
                    for kd in range(k_d):
                        for kh in range(k_h):
                            in_row = buf[od * sd + kd * dd, oh * sh + kh * dh]
                            for kw in range(k_w):
                                weight = taps[kd, kh, kw]
                                base = kw * dw
                                for j in range(out_w):
                                    out_row[j] += weight * in_row[base + j * sw]


@_kernel()
def dgrad_depthwise(dy, w, dx, sd, sh, sw, pd, ph, pw, dd, dh, dw):  # type: ignore[no-untyped-def]
    n_batch, c_in = dx.shape[0], dx.shape[1]
    c_out, _, k_d, k_h, k_w = w.shape
    out_d, out_h, out_w = dy.shape[2], dy.shape[3], dy.shape[4]
    in_d, in_h, in_w = dx.shape[2], dx.shape[3], dx.shape[4]
    multiplier = c_out // c_in
    e_d = (out_d - 1) * sd + (k_d - 1) * dd + 1
    e_h = (out_h - 1) * sh + (k_h - 1) * dh + 1
    e_w = (out_w - 1) * sw + (k_w - 1) * dw + 1
    for job in prange(n_batch * c_in):
        n = job // c_in
        c = job - n * c_in
        buf = np.zeros((e_d, e_h, e_w), dtype=dx.dtype)
        for m in range(multiplier):
            co = c * multiplier + m
            taps = w[co, 0]
            grad = dy[n, co]
            for od in range(out_d):
                for oh in range(out_h):
                    grad_row = grad[od, oh]
                    for kd in range(k_d):
                        for kh in range(k_h):
                            acc_row = buf[od * sd + kd * dd, oh * sh + kh * dh]
                            for kw in range(k_w):
                                weight = taps[kd, kh, kw]
                                base = kw * dw
                                for j in range(out_w):
                                    acc_row[base + j * sw] += weight * grad_row[j]
        out = dx[n, c]
        out[:, :, :] = 0
        for i in range(max(0, pd), min(e_d, in_d + pd)):
            for j in range(max(0, ph), min(e_h, in_h + ph)):
                src = buf[i, j]
                dst = out[i - pd, j - ph]
                lo = max(0, pw)
                for k in range(min(e_w, in_w + pw) - lo):
                    dst[lo + k - pw] = src[lo + k]


@_kernel()
def wgrad_depthwise(x, dy, dw_out, sd, sh, sw, pd, ph, pw, dd, dh, dw):  # type: ignore[no-untyped-def]
    n_batch, c_in = x.shape[0], x.shape[1]
    c_out, _, k_d, k_h, k_w = dw_out.shape
    out_d, out_h, out_w = dy.shape[2], dy.shape[3], dy.shape[4]
    multiplier = c_out // c_in
    e_d = (out_d - 1) * sd + (k_d - 1) * dd + 1
    e_h = (out_h - 1) * sh + (k_h - 1) * dh + 1
    e_w = (out_w - 1) * sw + (k_w - 1) * dw + 1
    for co in prange(c_out):
        c = co // multiplier
        buf = np.empty((e_d, e_h, e_w), dtype=x.dtype)
        acc = np.zeros((k_d, k_h, k_w), dtype=np.float64)
        for n in range(n_batch):
            _pad_plane(x[n, c], buf, pd, ph, pw)
            grad = dy[n, co]
            for od in range(out_d):
                for oh in range(out_h):
                    grad_row = grad[od, oh]
                    for kd in range(k_d):
                        for kh in range(k_h):
                            in_row = buf[od * sd + kd * dd, oh * sh + kh * dh]
                            for kw in range(k_w):
                                base = kw * dw
                                total = 0.0
                                for j in range(out_w):
                                    total += in_row[base + j * sw] * grad_row[j]
                                acc[kd, kh, kw] += total
        for kd in range(k_d):
            for kh in range(k_h):
                for kw in range(k_w):
                    dw_out[co, 0, kd, kh, kw] = acc[kd, kh, kw]


@_kernel()
def im2col(x, c_first, col, row0, n_rows, w0, w_count, out_d, out_h,  # type: ignore[no-untyped-def]
           k_d, k_h, k_w, sd, sh, sw, pd, ph, pw, dd, dh, dw):
    """Fill ``col[(ci, kd, kh, kw), (r, j)]`` for global output rows ``row0 + r`` (a row is
    one ``(n, od, oh)``) and output columns ``w0 + j``, from channels ``c_first + ci``."""
    _, _, in_d, in_h, in_w = x.shape
    taps = k_d * k_h * k_w
    for row in prange(col.shape[0]):
        ci = row // taps
        t = row - ci * taps
        kd = t // (k_h * k_w)
        kh = (t // k_w) % k_h
        kw = t % k_w
        ow_lo, ow_hi = _valid_outputs(pw - kw * dw, sw, in_w, w0 + w_count)
        ow_lo = min(max(ow_lo, w0), w0 + w_count)
        ow_hi = max(ow_hi, ow_lo)
        dst = col[row]
        for r in range(n_rows):
            global_row = row0 + r
            n = global_row // (out_d * out_h)
            rem = global_row - n * (out_d * out_h)
            od = rem // out_h
            oh = rem - od * out_h
            i_d = od * sd - pd + kd * dd
            i_h = oh * sh - ph + kh * dh
            start = r * w_count
            if i_d < 0 or i_d >= in_d or i_h < 0 or i_h >= in_h:
                for j in range(w_count):
                    dst[start + j] = 0
                continue
            in_row = x[n, c_first + ci, i_d, i_h]
            for j in range(ow_lo - w0):
                dst[start + j] = 0
            base = ow_lo * sw - pw + kw * dw
            offset = start + ow_lo - w0
            for j in range(ow_hi - ow_lo):
                dst[offset + j] = in_row[base + j * sw]
            for j in range(ow_hi - w0, w_count):
                dst[start + j] = 0


@_kernel()
def col2im(col, dx, c_first, row0, n_rows, w0, w_count, out_d, out_h,  # type: ignore[no-untyped-def]
           k_d, k_h, k_w, sd, sh, sw, pd, ph, pw, dd, dh, dw):
    """Scatter-add ``col`` (laid out as :func:`im2col` writes it) into ``dx``. One thread
    owns each input channel, so the additions are race-free and in a fixed order."""
    _, _, in_d, in_h, in_w = dx.shape
    taps = k_d * k_h * k_w
    c_per_group = col.shape[0] // taps
    for ci in prange(c_per_group):
        for t in range(taps):
            row = ci * taps + t
            kd = t // (k_h * k_w)
            kh = (t // k_w) % k_h
            kw = t % k_w
            ow_lo, ow_hi = _valid_outputs(pw - kw * dw, sw, in_w, w0 + w_count)
            if ow_lo < w0:
                ow_lo = w0
            src = col[row]
            for r in range(n_rows):
                global_row = row0 + r
                n = global_row // (out_d * out_h)
                rem = global_row - n * (out_d * out_h)
                od = rem // out_h
                oh = rem - od * out_h
                i_d = od * sd - pd + kd * dd
                i_h = oh * sh - ph + kh * dh
                if i_d < 0 or i_d >= in_d or i_h < 0 or i_h >= in_h:
                    continue
                acc_row = dx[n, c_first + ci, i_d, i_h]
                base = ow_lo * sw - pw + kw * dw
                offset = r * w_count + ow_lo - w0
                for j in range(ow_hi - ow_lo):
                    acc_row[base + j * sw] += src[offset + j]


@_kernel()
def rows_to_output(tile, y, c_first, row0, n_rows, w0, w_count, out_d, out_h):  # type: ignore[no-untyped-def]
    """Copy a GEMM result tile ``(channels, n_rows * w_count)`` into ``y``."""
    for k in prange(tile.shape[0]):
        src = tile[k]
        for r in range(n_rows):
            global_row = row0 + r
            n = global_row // (out_d * out_h)
            rem = global_row - n * (out_d * out_h)
            od = rem // out_h
            oh = rem - od * out_h
            dst = y[n, c_first + k, od, oh]
            for j in range(w_count):
                dst[w0 + j] = src[r * w_count + j]


@_kernel()
def output_to_rows(y, tile, c_first, row0, n_rows, w0, w_count, out_d, out_h):  # type: ignore[no-untyped-def]
    """Gather the tile of ``y`` that :func:`rows_to_output` would write."""
    for k in prange(tile.shape[0]):
        dst = tile[k]
        for r in range(n_rows):
            global_row = row0 + r
            n = global_row // (out_d * out_h)
            rem = global_row - n * (out_d * out_h)
            od = rem // out_h
            oh = rem - od * out_h
            src = y[n, c_first + k, od, oh]
            for j in range(w_count):
                dst[r * w_count + j] = src[w0 + j]
