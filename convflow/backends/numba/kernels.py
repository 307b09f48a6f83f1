"""The numba backend's JIT kernels: loops only, no validation.

Every kernel works on C-contiguous 5-D arrays ``(N, C, D, H, W)``: 1-D and 2-D problems are
lifted to 3-D with singleton leading spatial dims, so one kernel serves every rank.
Parallel loops (``prange``) run over independent outputs, so no two threads write the same
element and results do not depend on the thread count. ``fastmath`` allows contraction and
reassociation only: NaN and Inf still propagate as IEEE arithmetic says.
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from numba import get_num_threads, njit, prange, set_num_threads, uint64
from numba.extending import overload

from ... import config
from . import cache as kernel_cache
from .plans import (  # noqa: F401 - the kernels' shaping constants, from one place
    PACKED_CHUNK,
    PACKED_CO_BLOCK,
    PACKED_PAIRS_PER_STEP,
    PACKED_VECTOR,
    SERIAL_FLOPS,
)

# Compiled kernels go to convflow's cache directory (not next to the installed package,
# which may be read-only), unless the user chose numba's own location; cache.py checks what
# it loads and never writes anywhere else.
_CACHE = kernel_cache.configure(bool(config.get("CONVFLOW_NUMBA_CACHE")))
_FASTMATH = {"contract", "reassoc"}


def _jit(**options):  # type: ignore[no-untyped-def]
    """``njit(**options)``, cached on disk through convflow's checked cache when enabled."""
    def decorate(func):  # type: ignore[no-untyped-def]
        dispatcher = njit(**options)(func)
        if _CACHE:
            kernel_cache.enable(dispatcher)
        return dispatcher

    return decorate


def _kernel(parallel: bool = True, fastmath=_FASTMATH):  # type: ignore[no-untyped-def]
    return _jit(parallel=parallel, fastmath=fastmath, nogil=True)


# The packed direct kernels sum no reductions across positions, so they need no reassociation,
# and without it a step of six pairs rounds exactly as two steps of three (see _six_pairs):
# whole chunks and shorter runs then give bitwise the same sums, whatever the chunking.
_CONTRACT_ONLY = {"contract"}




def pool_threads() -> int:
    """The threads a parallel kernel launched from this Python thread runs on."""
    return int(get_num_threads())


@contextlib.contextmanager
def thread_limit(threads: int | None) -> Iterator[None]:
    """Launches from this Python thread on at most *threads* of the pool (None: unchanged)."""
    before = get_num_threads()
    if threads is None or threads >= before:
        yield
        return
    set_num_threads(threads)
    try:
        yield
    finally:
        set_num_threads(before)


def _serial(kernel):  # type: ignore[no-untyped-def]
    """A single-threaded twin of a parallel kernel (its own name, so its own cache file)."""
    py_func = kernel.py_func
    twin = types.FunctionType(py_func.__code__, py_func.__globals__, py_func.__name__ + "_serial",
                              py_func.__defaults__, py_func.__closure__)
    twin.__qualname__ = py_func.__qualname__ + "_serial"
    twin.__doc__ = py_func.__doc__
    return _kernel(parallel=False, fastmath=kernel.targetoptions.get("fastmath", _FASTMATH))(twin)


@_jit(inline="always")
def copy_run(dst, dst_start, src, src_start, count):  # type: ignore[no-untyped-def]
    """``dst[dst_start:dst_start + count] = src[src_start:src_start + count]`` as a loop: an
    array-to-slice assignment makes numba compile its shape-mismatch message (string
    formatting, seconds on a cold cache) into every kernel that has one."""
    for j in range(count):
        dst[dst_start + j] = src[src_start + j]


@_jit(inline="always")
def _outside_of_row(od, oh, out_w, od_lo, od_hi, oh_lo, oh_hi, ow_lo, ow_hi):  # type: ignore[no-untyped-def]
    """The border of output row ``(od, oh)`` outside the box ``[lo, hi)`` of each axis, as
    two column ranges ``[0, stop)`` and ``[start, out_w)`` (the whole row when the row
    itself lies outside)."""
    if od_lo <= od < od_hi and oh_lo <= oh < oh_hi:
        return min(ow_lo, out_w), max(ow_hi, 0)
    return out_w, out_w


@_jit(inline="always")
def _add_outside(out, value, od_lo, od_hi, oh_lo, oh_hi, ow_lo, ow_hi):  # type: ignore[no-untyped-def]
    """Add *value* to every output outside the box ``[lo, hi)`` of each axis: the outputs
    whose tap reads the zero padding (only the border is visited)."""
    out_d, out_h, out_w = out.shape
    for od in range(out_d):
        for oh in range(out_h):
            row = out[od, oh]
            stop, start = _outside_of_row(od, oh, out_w, od_lo, od_hi, oh_lo, oh_hi, ow_lo, ow_hi)
            for ow in range(stop):
                row[ow] += value
            for ow in range(start, out_w):
                row[ow] += value


@_jit(inline="always")
def _sum_outside(a, od_lo, od_hi, oh_lo, oh_hi, ow_lo, ow_hi):  # type: ignore[no-untyped-def]
    """``sum(0 * a)`` over the positions outside the box ``[lo, hi)`` of each axis (only the
    border is visited): zero unless one of them is not finite, then NaN, as multiplying the
    padding zeros gives."""
    total = 0.0
    out_d, out_h, out_w = a.shape
    for od in range(out_d):
        for oh in range(out_h):
            row = a[od, oh]
            stop, start = _outside_of_row(od, oh, out_w, od_lo, od_hi, oh_lo, oh_hi, ow_lo, ow_hi)
            for ow in range(stop):
                total += 0.0 * row[ow]
            for ow in range(start, out_w):
                total += 0.0 * row[ow]
    return total


@_jit(inline="always")
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


# Activation codes (convflow.activations.ACTIVATION_CODES): 0 none, 1 relu, 2 relu6,
# 3 silu, 4 gelu. Comparisons keep IEEE semantics: NaN stays NaN.
@_jit(inline="always")
def _activate(v, act, zero, six):  # type: ignore[no-untyped-def]
    if act == 0:
        return v
    if act == 1:
        return zero if v < zero else v
    if act == 2:
        return zero if v < zero else (six if v > six else v)
    if act == 3:
        return v * (1 / (1 + math.exp(-v)))
    return 0.5 * v * (1 + math.erf(v * 0.7071067811865476))


@_jit(inline="always")
def _epilogue(v, co, bias, has_bias, act, zero, six):  # type: ignore[no-untyped-def]
    """The bias of output channel *co*, then the activation (the fused write-back)."""
    if has_bias:
        v = v + bias[co]
    return _activate(v, act, zero, six)


@_kernel()
def apply_epilogue(y, bias, has_bias, act):  # type: ignore[no-untyped-def]
    """Bias and activation in one pass over ``y`` (for algorithms whose write-back is BLAS)."""
    n_batch, channels = y.shape[0], y.shape[1]
    zero = np.zeros(1, dtype=y.dtype)[0]
    six = zero + 6
    for job in prange(n_batch * channels):
        n = job // channels
        c = job - n * channels
        plane = y[n, c]
        for i in range(plane.shape[0]):
            for j in range(plane.shape[1]):
                row = plane[i, j]
                for k in range(row.shape[0]):
                    row[k] = _epilogue(row[k], c, bias, has_bias, act, zero, six)


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
                        if weight - weight != 0:
                            # An Inf or NaN weight times the padding zeros is NaN, as in
                            # the algorithms that multiply the padding (0 * w is 0 for
                            # every finite w, so only non-finite weights need it).
                            _add_outside(out, weight * 0, od_lo, od_hi, oh_lo, oh_hi,
                                         ow_lo, ow_hi)


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
                        # The padding zeros times the output gradient where this tap reads
                        # the padding: NaN for a non-finite gradient there, as im2col gives.
                        acc += _sum_outside(grad, od_lo, od_hi, oh_lo, oh_hi, ow_lo, ow_hi)
                    dw_out[co, ci, kd, kh, kw] = acc


@_jit(inline="always")
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


# Jobs of the depthwise kernels per pool thread: enough to balance planes of unequal cost.
DEPTHWISE_JOBS_PER_THREAD = 4


@_jit(inline="always")
def _job_span(job, jobs, count):  # type: ignore[no-untyped-def]
    """Items ``[first, last)`` of job ``job`` when ``count`` items are shared among ``jobs``
    jobs as evenly as whole items allow."""
    return job * count // jobs, (job + 1) * count // jobs
@_kernel()
def dgrad_depthwise(dy, w, dx, sd, sh, sw, pd, ph, pw, dd, dh, dw, threads):  # type: ignore[no-untyped-def]
    """Depthwise data gradient by scattering ``w * dy`` into each padded input plane, which
    sums real products only (so non-finite weights propagate as a direct sum does). The
    plane's columns are kept split by stride phase (column ``q * sw + phase`` at
    ``(row, phase, q)``), so each tap's scatter of an output row is a unit-stride,
    vectorized run whatever the stride; the phases are interleaved once, when the plane is
    written out. Jobs take runs of planes and their buffer once (``threads``: the pool
    threads the call runs on); buffers are indexed with unsigned flat offsets (no views)."""
    n_batch, c_in = dx.shape[0], dx.shape[1]
    c_out, _, k_d, k_h, k_w = w.shape
    out_d, out_h, out_w = dy.shape[2], dy.shape[3], dy.shape[4]
    in_d, in_h, in_w = dx.shape[2], dx.shape[3], dx.shape[4]
    multiplier = c_out // c_in
    e_d = (out_d - 1) * sd + (k_d - 1) * dd + 1
    e_h = (out_h - 1) * sh + (k_h - 1) * dh + 1
    e_w = (out_w - 1) * sw + (k_w - 1) * dw + 1
    wq = (e_w + sw - 1) // sw
    row = sw * wq                       # one padded row, its phases side by side
    size = e_d * e_h * row
    planes = n_batch * c_in
    # Input column k is padded column k + pw: phase (k + pw) % sw, run (k + pw) // sw; the
    # columns [lo, hi) lie inside the padded plane.
    lo, hi = max(0, -pw), max(min(in_w, e_w - pw), max(0, -pw))
    jobs = min(planes, DEPTHWISE_JOBS_PER_THREAD * threads)
    for job in prange(jobs):
        buf = np.empty(size, dtype=dx.dtype)
        first, last = _job_span(job, jobs, planes)
        for index in range(first, last):
            n = index // c_in
            c = index - n * c_in
            for j in range(size):
                buf[j] = 0
            for m in range(multiplier):
                co = c * multiplier + m
                for od in range(out_d):
                    for oh in range(out_h):
                        for kd in range(k_d):
                            for kh in range(k_h):
                                r = ((od * sd + kd * dd) * e_h + oh * sh + kh * dh) * row
                                for kw in range(k_w):
                                    weight = w[co, 0, kd, kh, kw]
                                    at = uint64(r + ((kw * dw) % sw) * wq + (kw * dw) // sw)
                                    for j in range(out_w):
                                        buf[at + uint64(j)] += weight * dy[n, co, od, oh,
                                                                           uint64(j)]
            for i in range(in_d):
                for r in range(in_h):
                    pi, pr = i + pd, r + ph
                    if not (0 <= pi < e_d and 0 <= pr < e_h):
                        for k in range(in_w):
                            dx[n, c, i, r, uint64(k)] = 0
                        continue
                    for k in range(lo):
                        dx[n, c, i, r, uint64(k)] = 0
                    for k in range(hi, in_w):
                        dx[n, c, i, r, uint64(k)] = 0
                    base = (pi * e_h + pr) * row
                    for phase in range(sw):
                        # The first k >= lo with (k + pw) % sw == phase, then every sw-th.
                        first = lo + (phase - (lo + pw) % sw + sw) % sw
                        src = base + phase * wq + (first + pw) // sw
                        for q in range((hi - first + sw - 1) // sw):
                            dx[n, c, i, r, uint64(first + q * sw)] = buf[uint64(src + q)]


@_jit(inline="always")
def all_finite(values):  # type: ignore[no-untyped-def]
    """Whether every value of the 1-D ``values`` is finite, as one vectorizable sum: ``v - v``
    is 0 for a finite ``v`` and NaN for Inf or NaN (a loop that stops at the first non-finite
    value runs one element per iteration)."""
    if values.shape[0] == 0:
        return True
    total = values[0] - values[0]
    for v in range(values.shape[0]):
        total += values[v] - values[v]
    return total == total


@_jit(fastmath=_FASTMATH, nogil=True)
def _wgrad_depthwise_channel(x, dy, dw_out, co, c, sd, sh, sw, pd, ph, pw, dd, dh, dw, buf,  # type: ignore[no-untyped-def]
                             grad_rows):
    """``dw_out[co]``: every tap's sum over the batch and the outputs of ``dy[:, co]`` times
    the zero-padded input plane ``c`` it reads. Flat indexing with unsigned offsets: a row
    view per output row costs two atomic reference-count updates, and on small maps (7x7)
    the per-row loops are all overhead. Without stride, ``dy``'s rows are copied into rows
    as wide as the padded input (``grad_rows``, zeros past the output), so each tap's sum
    over a plane is one contiguous dot product; a plane holding Inf or NaN keeps the per-row
    sums (the extra products would be 0 * Inf)."""
    n_batch = x.shape[0]
    _, _, k_d, k_h, k_w = dw_out.shape
    out_d, out_h, out_w = dy.shape[2], dy.shape[3], dy.shape[4]
    e_h, e_w = buf.shape[1], buf.shape[2]
    flat = buf.reshape(-1)
    wide = grad_rows.reshape(-1)
    unit = sd == 1 and sh == 1 and sw == 1
    acc = np.zeros(k_d * k_h * k_w, dtype=np.float64)
    for n in range(n_batch):
        _pad_plane(x[n, c], buf, pd, ph, pw)
        grad = dy[n, co].reshape(-1)
        if unit and all_finite(flat):
            for r in range(out_d * out_h):
                src = uint64(r * out_w)
                dst = uint64(r * e_w)
                for j in range(out_w):
                    wide[dst + uint64(j)] = grad[src + uint64(j)]
            length = uint64(out_h * e_w)
            for kd in range(k_d):
                for kh in range(k_h):
                    for kw in range(k_w):
                        total = 0.0
                        for od in range(out_d):
                            src = uint64(((od + kd * dd) * e_h + kh * dh) * e_w + kw * dw)
                            row = uint64(od * out_h * e_w)
                            # The last row's columns past the input's end are never read:
                            # stop the dot where the padded plane ends.
                            stop = min(length, uint64(flat.shape[0]) - src)
                            for j in range(stop):
                                total += flat[src + uint64(j)] * wide[row + uint64(j)]
                        acc[(kd * k_h + kh) * k_w + kw] += total
            continue
        for kd in range(k_d):
            for kh in range(k_h):
                for kw in range(k_w):
                    total = 0.0
                    for od in range(out_d):
                        for oh in range(out_h):
                            src = uint64(((od * sd + kd * dd) * e_h + oh * sh + kh * dh) * e_w
                                         + kw * dw)
                            row = uint64((od * out_h + oh) * out_w)
                            for j in range(out_w):
                                total += flat[src + uint64(j * sw)] * grad[row + uint64(j)]
                    acc[(kd * k_h + kh) * k_w + kw] += total
    for t in range(k_d * k_h * k_w):
        kd = t // (k_h * k_w)
        kh = (t // k_w) % k_h
        dw_out[co, 0, kd, kh, t % k_w] = acc[t]


# Products of a weight-gradient dot summed in the data's precision before they are added in
# float64: float32 vectors stay full width, and each partial sum stays short.
DEPTHWISE_WGRAD_CHUNK = 1024


@_jit(fastmath=_FASTMATH, nogil=True)
def _wgrad_depthwise_batched(x, dy, xf, dyf, flat_rows, dw_out, co, c, tap_phase, tap_shift,  # type: ignore[no-untyped-def]
                             phases, dq, hq, wq, sd, sh, sw, pd, ph, pw, packed, wide):
    """``dw_out[co]`` with the whole batch in one run: the stride phases of input channel
    ``c``'s zero-padded planes (the layout of :func:`pack_input`, every image side by side
    in each phase) in ``packed``, and ``dy[:, co]`` at the packed output positions in
    ``wide`` (zeros where no output is), so each tap's gradient is one unit-stride dot
    product over the batch, whatever the stride. Per image and tap, the dots on small maps
    (7x7, 14x14) are too short to vectorize, and strided reads would gather. ``packed``'s
    tail past the phases and ``wide`` between the outputs must hold zeros: every call writes
    the same positions, so the caller zeroes them once. Returns False, writing nothing, when
    a sum is not finite (an input holding Inf or NaN may have met the zeros of ``wide``:
    0 * Inf is NaN). ``flat_rows``: the planes are 2-D at unit stride and ``xf``, ``dyf``
    are ``x`` and ``dy`` flat, so each plane is copied by rows of the flat arrays."""
    n_batch = x.shape[0]
    out_d, out_h, out_w = dy.shape[2], dy.shape[3], dy.shape[4]
    k_h, k_w = dw_out.shape[3], dw_out.shape[4]
    plane = dq * hq * wq
    length = n_batch * plane
    in_h, in_w = x.shape[3], x.shape[4]
    for n in range(n_batch):
        if flat_rows:
            _pack_plane_rows(xf, uint64((n * x.shape[1] + c) * in_h * in_w), in_h, in_w,
                             packed[n * plane:], hq, wq, phases[0, 1] - ph, phases[0, 2] - pw)
            for oh in range(out_h):
                at = uint64(n * plane + oh * wq)
                source = uint64(((n * dy.shape[1] + co) * out_h + oh) * out_w)
                for ow in range(out_w):
                    wide[at + uint64(ow)] = dyf[source + uint64(ow)]
            continue
        for f in range(phases.shape[0]):
            _pack_phase(x, n, c, f, packed, f * length + n * plane, phases, dq, hq, wq, sd, sh,
                        sw, pd, ph, pw)
        for od in range(out_d):
            for oh in range(out_h):
                at = uint64(n * plane + (od * hq + oh) * wq)
                for ow in range(out_w):
                    wide[at + uint64(ow)] = dy[n, co, od, oh, uint64(ow)]
    taps = tap_shift.shape[0]
    totals = np.zeros(taps, dtype=np.float64)
    if taps == 9:
        _nine_dots(packed, wide, length, tap_phase, tap_shift, totals)
    else:
        zero = packed[0] - packed[0]
        for t in range(taps):
            offset = uint64(tap_phase[t]) * uint64(length) + uint64(tap_shift[t])
            for start in range(0, length, DEPTHWISE_WGRAD_CHUNK):
                part = zero
                first = uint64(start)
                for j in range(min(DEPTHWISE_WGRAD_CHUNK, length - start)):
                    k = first + uint64(j)
                    part += packed[offset + k] * wide[k]
                totals[t] += part
    # A non-finite sum may come from an input holding Inf or NaN meeting the zeros of wide
    # (0 * Inf is NaN): the caller then sums real products only, image by image. Finite
    # sums met no such value.
    for t in range(taps):
        if not math.isfinite(totals[t]):
            return False
    for t in range(taps):
        kd = t // (k_h * k_w)
        kh = (t // k_w) % k_h
        dw_out[co, 0, kd, kh, t % k_w] = totals[t]
    return True


@_jit(inline="always")
def _nine_dots(packed, wide, length, tap_phase, tap_shift, totals):  # type: ignore[no-untyped-def]
    """The nine taps' dot products of a 3x3 kernel in one pass over ``wide`` (each of its
    vectors loaded once for nine products), chunk sums added in float64 as for any kernel."""
    o0 = uint64(tap_phase[0]) * uint64(length) + uint64(tap_shift[0])
    o1 = uint64(tap_phase[1]) * uint64(length) + uint64(tap_shift[1])
    o2 = uint64(tap_phase[2]) * uint64(length) + uint64(tap_shift[2])
    o3 = uint64(tap_phase[3]) * uint64(length) + uint64(tap_shift[3])
    o4 = uint64(tap_phase[4]) * uint64(length) + uint64(tap_shift[4])
    o5 = uint64(tap_phase[5]) * uint64(length) + uint64(tap_shift[5])
    o6 = uint64(tap_phase[6]) * uint64(length) + uint64(tap_shift[6])
    o7 = uint64(tap_phase[7]) * uint64(length) + uint64(tap_shift[7])
    o8 = uint64(tap_phase[8]) * uint64(length) + uint64(tap_shift[8])
    zero = packed[0] - packed[0]
    for start in range(0, length, DEPTHWISE_WGRAD_CHUNK):
        p0 = p1 = p2 = p3 = p4 = p5 = p6 = p7 = p8 = zero
        first = uint64(start)
        for j in range(min(DEPTHWISE_WGRAD_CHUNK, length - start)):
            k = first + uint64(j)
            g = wide[k]
            p0 += packed[o0 + k] * g
            p1 += packed[o1 + k] * g
            p2 += packed[o2 + k] * g
            p3 += packed[o3 + k] * g
            p4 += packed[o4 + k] * g
            p5 += packed[o5 + k] * g
            p6 += packed[o6 + k] * g
            p7 += packed[o7 + k] * g
            p8 += packed[o8 + k] * g
        totals[0] += p0
        totals[1] += p1
        totals[2] += p2
        totals[3] += p3
        totals[4] += p4
        totals[5] += p5
        totals[6] += p6
        totals[7] += p7
        totals[8] += p8


@_jit(fastmath=_FASTMATH, nogil=True)
def _wgrad_depthwise_same_size(xf, dyf, n_batch, c_in, c_out, in_h, in_w, co, c, dh, dw, ph,  # type: ignore[no-untyped-def]
                               pw, masked, dw_out):
    """``dw_out[co]`` of a 3x3 kernel whose (unit-stride, 2-D) output is as large as its
    input, with no copy of the input: tap ``(a, b)`` is one dot over the flat planes of
    ``x[n, c]``, shifted by the tap, and ``dy[n, co]``, whose columns the shift wraps into
    the neighbouring row are zeroed in a copy of ``dy`` (``masked``: one per kernel column
    whose shift is not 0; an unshifted column reads ``dy`` itself), and whose rows outside
    the plane are left out of the dot. Each image's nine sums are added in float64. Returns False, writing nothing,
    when ``dy[:, co]`` holds Inf or NaN (the padding's products would be NaN, and the
    caller's image-by-image sums include them) or a sum is not finite (the input held Inf
    or NaN; the wrapped columns met zeros). On 14x14 and 28x28 planes this is 1.3-2x faster
    than the packed run."""
    plane = in_h * in_w
    totals = np.zeros(9, dtype=np.float64)
    zero = xf[0] - xf[0]
    for n in range(n_batch):
        x_base = uint64((n * c_in + c) * plane)
        dy_base = uint64((n * c_out + co) * plane)
        if not all_finite(dyf[dy_base:dy_base + uint64(plane)]):
            return False
        for b in range(3):
            off_w = b * dw - pw
            if off_w == 0:
                continue   # read dy itself
            at = uint64(b * plane)
            for j in range(plane):
                masked[at + uint64(j)] = dyf[dy_base + uint64(j)]
            zl, zr = _wrap_margins(off_w, in_w)
            _zero_margins(masked, at, in_h, in_w, zl, zr)
        for a in range(3):
            off_h = a * dh - ph
            lo, hi = max(-off_h, 0), min(in_h - off_h, in_h)
            for b in range(3):
                off_w = b * dw - pw
                # Positions whose shifted read stays inside the plane (the others are
                # padding: zeros in the masked copy).
                start = lo * in_w + max(-off_w, 0)
                stop = hi * in_w - max(off_w, 0)
                if off_w == 0:
                    grad, at = dyf, dy_base
                else:
                    grad, at = masked, uint64(b * plane)
                source = x_base + uint64(off_h * in_w + off_w)
                part = zero
                for p in range(start, stop):
                    part += xf[source + uint64(p)] * grad[at + uint64(p)]
                totals[a * 3 + b] += part
    for t in range(9):
        if not math.isfinite(totals[t]):
            return False
    for t in range(9):
        dw_out[co, 0, 0, t // 3, t % 3] = totals[t]
    return True


@_kernel()
def wgrad_depthwise(x, dy, dw_out, sd, sh, sw, pd, ph, pw, dd, dh, dw, tap_phase, tap_shift,  # type: ignore[no-untyped-def]
                    phases, dq, hq, wq, threads):
    """Depthwise weight gradient, one output channel at a time: a 3x3 kernel whose output is
    as large as its 2-D input reads the planes as they lie
    (:func:`_wgrad_depthwise_same_size`), other problems the batch in one packed run
    (:func:`_wgrad_depthwise_batched`, layout ``tap_phase`` .. ``wq`` as for
    :func:`depthwise_packed`); channels holding Inf or NaN go image by image
    (:func:`_wgrad_depthwise_channel`). Jobs take runs of channels and their buffers once
    (``threads``: the pool threads the call runs on)."""
    n_batch, c_in = x.shape[0], x.shape[1]
    c_out, _, k_d, k_h, k_w = dw_out.shape
    out_d, out_h, out_w = dy.shape[2], dy.shape[3], dy.shape[4]
    multiplier = c_out // c_in
    e_d = (out_d - 1) * sd + (k_d - 1) * dd + 1
    e_h = (out_h - 1) * sh + (k_h - 1) * dh + 1
    e_w = (out_w - 1) * sw + (k_w - 1) * dw + 1
    length = n_batch * dq * hq * wq
    reach = 0
    for t in range(tap_shift.shape[0]):
        reach = max(reach, tap_shift[t])
    in_h, in_w = x.shape[3], x.shape[4]
    xf = _flat_view(x)
    dyf = _flat_view(dy)
    flat_rows = _packs_flat_rows(x, xf, phases.shape[0], dq, sh, sw) and dyf.size == dy.size
    same_size = (flat_rows and k_d == 1 and k_h == 3 and k_w == 3 and out_h == in_h
                 and out_w == in_w)
    jobs = min(c_out, DEPTHWISE_JOBS_PER_THREAD * threads)
    for job in prange(jobs):
        buf = np.empty((e_d, e_h, e_w), dtype=x.dtype)
        grad_rows = np.zeros((out_d, out_h, e_w), dtype=x.dtype)
        packed = np.zeros(phases.shape[0] * length + reach, dtype=x.dtype)
        wide = np.zeros(length, dtype=x.dtype)
        masked = np.empty(3 * in_h * in_w if same_size else 0, dtype=x.dtype)
        first, last = _job_span(job, jobs, c_out)
        for co in range(first, last):
            c = co // multiplier
            if same_size and _wgrad_depthwise_same_size(xf, dyf, n_batch, c_in, c_out, in_h,
                                                        in_w, co, c, dh, dw, ph, pw, masked,
                                                        dw_out):
                continue
            if _wgrad_depthwise_batched(x, dy, xf, dyf, flat_rows, dw_out, co, c, tap_phase,
                                        tap_shift, phases, dq, hq, wq, sd, sh, sw, pd, ph, pw,
                                        packed, wide):
                continue
            _wgrad_depthwise_channel(x, dy, dw_out, co, c, sd, sh, sw, pd, ph, pw, dd, dh, dw,
                                     buf, grad_rows)


@_jit(inline="always")
def _output_rows(row0, n_rows, out_d, out_h):  # type: ignore[no-untyped-def]
    """``(image, od, oh)`` of global output rows ``row0 .. row0 + n_rows`` (a row is one
    ``(n, od, oh)``), worked out once per call: on small maps a row is a handful of floats,
    and three divisions per row and column of a copy cost more than the copy."""
    where = np.empty((n_rows, 3), dtype=np.int64)
    for r in range(n_rows):
        global_row = row0 + r
        n = global_row // (out_d * out_h)
        rem = global_row - n * (out_d * out_h)
        od = rem // out_h
        where[r, 0] = n
        where[r, 1] = od
        where[r, 2] = rem - od * out_h
    return where


def _flat_view(a):  # type: ignore[no-untyped-def]
    """``a`` as a 1-D view when its type is C-contiguous, else an empty array (the caller
    then takes its strided path): decided when a kernel is compiled, for each layout of its
    arguments (a channels-last operand arrives as a transposed view)."""
    raise NotImplementedError("called from numba kernels only")


@overload(_flat_view)
def _flat_view_typed(a):  # type: ignore[no-untyped-def]
    if a.layout == "C":
        return lambda a: a.reshape(-1)
    return lambda a: np.empty(0, dtype=a.dtype)


@_jit()
def _row_runs(where):  # type: ignore[no-untyped-def]
    """``(first row, count)`` of each run of consecutive output rows of one ``(image, od)``
    among the rows of :func:`_output_rows`."""
    n_rows = where.shape[0]
    runs = np.empty((n_rows, 2), dtype=np.int64)
    k = 0
    r = 0
    while r < n_rows:
        e = r + 1
        while e < n_rows and where[e, 0] == where[r, 0] and where[e, 1] == where[r, 1]:
            e += 1
        runs[k, 0] = r
        runs[k, 1] = e - r
        k += 1
        r = e
    return runs[:k]


@_jit(inline="always")
def _wrap_margins(off_w, in_w):  # type: ignore[no-untyped-def]
    """How many leading and trailing columns of each row a read shifted by ``off_w`` along
    a flat plane of rows ``in_w`` wide takes from the neighbouring row (they are padding)."""
    return min(max(-off_w, 0), in_w), min(max(off_w, 0), in_w)


@_jit(inline="always")
def _zero_margins(buf, at, rows, in_w, zl, zr):  # type: ignore[no-untyped-def]
    """Zero the first ``zl`` and last ``zr`` entries of ``rows`` rows of ``in_w`` from ``at``."""
    if zl or zr:
        for r in range(rows):
            row = at + uint64(r * in_w)
            for j in range(zl):
                buf[row + uint64(j)] = 0
            for j in range(in_w - zr, in_w):
                buf[row + uint64(j)] = 0


@_jit(inline="always")
def _wide_run(where, runs, k, c, kd, n_ch, in_d, in_h, in_w, sd, pd, dd, off_h, off_w, zl):  # type: ignore[no-untyped-def]
    """Run ``k`` of output rows (one image, one ``od``) for one tap, as the wide paths of
    :func:`im2col` and :func:`col2im` see it: ``(first row, rows, lo, hi, plane)`` with
    ``[lo, hi)`` the rows whose input row lies inside the plane (none when the depth is
    outside) and ``plane`` the flat offset in the input of row ``lo``'s first inside entry."""
    r_first, count = runs[k, 0], runs[k, 1]
    i_d = where[r_first, 1] * sd - pd + kd * dd
    if i_d < 0 or i_d >= in_d:
        return r_first, count, 0, 0, uint64(0)
    oh_first = where[r_first, 2]
    lo = min(max(-off_h - oh_first, 0), count)
    hi = max(min(in_h - off_h - oh_first, count), lo)
    plane = uint64(((((where[r_first, 0] * n_ch + c) * in_d + i_d) * in_h + oh_first + lo
                     + off_h) * in_w) + off_w + zl)
    return r_first, count, lo, hi, plane


@_jit(inline="always")
def _im2col_wide_row(xf, dst, where, runs, c, kd, kh, kw, n_ch, in_d, in_h, in_w, sd, pd,  # type: ignore[no-untyped-def]
                     ph, pw, dd, dh, dw):
    """One row of :func:`im2col` when the tile's output rows are as wide as the input rows
    at unit stride: a run of output rows of one image then reads one contiguous run of the
    input, shifted by the tap, so it is one vectorized copy; the columns the shift wraps into
    the neighbouring row are the padding and are zeroed afterwards. On 7x7 to 14x14 maps
    this is 2-3x faster than a copy per output row of 7 to 14 floats."""
    off_w = kw * dw - pw
    off_h = kh * dh - ph
    zl, zr = _wrap_margins(off_w, in_w)
    for k in range(runs.shape[0]):
        r_first, count, lo, hi, source = _wide_run(where, runs, k, c, kd, n_ch, in_d, in_h,
                                                   in_w, sd, pd, dd, off_h, off_w, zl)
        start = uint64(r_first * in_w)
        for j in range(lo * in_w):
            dst[start + uint64(j)] = 0
        for j in range(hi * in_w, count * in_w):
            dst[start + uint64(j)] = 0
        if hi == lo:
            continue
        # The first zl and last zr entries would read outside the plane: they are copied
        # as zeros with the other wrapped columns.
        at = start + uint64(lo * in_w)
        inside = at + uint64(zl)
        for j in range((hi - lo) * in_w - zl - zr):
            dst[inside + uint64(j)] = xf[source + uint64(j)]
        _zero_margins(dst, at, hi - lo, in_w, zl, zr)


@_kernel()
def im2col(x, c_first, col, row0, n_rows, w0, w_count, out_d, out_h,  # type: ignore[no-untyped-def]
           k_d, k_h, k_w, sd, sh, sw, pd, ph, pw, dd, dh, dw):
    """Fill ``col[(ci, kd, kh, kw), (r, j)]`` for global output rows ``row0 + r`` (a row is
    one ``(n, od, oh)``) and output columns ``w0 + j``, from channels ``c_first + ci``.
    Columns are indexed unsigned (no negative-index check per element) and rows of ``x`` are
    not taken as views (two reference-count updates each). Tiles of whole rows as wide as
    the input at unit stride take :func:`_im2col_wide_row`."""
    _, _, in_d, in_h, in_w = x.shape
    taps = k_d * k_h * k_w
    where = _output_rows(row0, n_rows, out_d, out_h)
    xf = _flat_view(x)
    wide = sh == 1 and sw == 1 and w0 == 0 and w_count == in_w and xf.size == x.size
    runs = _row_runs(where)
    for row in prange(col.shape[0]):
        ci = row // taps
        t = row - ci * taps
        kd = t // (k_h * k_w)
        kh = (t // k_w) % k_h
        kw = t % k_w
        c = c_first + ci
        dst = col[row]
        if wide:
            _im2col_wide_row(xf, dst, where, runs, c, kd, kh, kw, x.shape[1], in_d, in_h, in_w,
                             sd, pd, ph, pw, dd, dh, dw)
            continue
        ow_lo, ow_hi = _valid_outputs(pw - kw * dw, sw, in_w, w0 + w_count)
        ow_lo = min(max(ow_lo, w0), w0 + w_count)
        ow_hi = max(ow_hi, ow_lo)
        head = ow_lo - w0
        body = ow_hi - ow_lo
        tail = w_count - (ow_hi - w0)
        column = ow_lo * sw - pw + kw * dw
        for r in range(n_rows):
            i_d = where[r, 1] * sd - pd + kd * dd
            i_h = where[r, 2] * sh - ph + kh * dh
            start = uint64(r * w_count)
            if i_d < 0 or i_d >= in_d or i_h < 0 or i_h >= in_h:
                for j in range(w_count):
                    dst[start + uint64(j)] = 0
                continue
            n = where[r, 0]
            for j in range(head):
                dst[start + uint64(j)] = 0
            at = start + uint64(head)
            if sw == 1:
                for j in range(body):
                    dst[at + uint64(j)] = x[n, c, i_d, i_h, uint64(column + j)]
            else:
                for j in range(body):
                    dst[at + uint64(j)] = x[n, c, i_d, i_h, uint64(column + j * sw)]
            at += uint64(body)
            for j in range(tail):
                dst[at + uint64(j)] = 0


@_jit(inline="always")
def _col2im_wide_row(src, dxf, where, runs, c, kd, kh, kw, n_ch, in_d, in_h, in_w, sd, pd,  # type: ignore[no-untyped-def]
                     ph, pw, dd, dh, dw):
    """One row of :func:`col2im` on the tiles :func:`_im2col_wide_row` copies: the entries of
    the columns a tap's shift wraps into the neighbouring row (padding) are zeroed in ``src``
    (the GEMM's scratch), then each run of output rows of one image is one vectorized add
    into a contiguous run of ``dx``."""
    off_w = kw * dw - pw
    off_h = kh * dh - ph
    zl, zr = _wrap_margins(off_w, in_w)
    for k in range(runs.shape[0]):
        r_first, _, lo, hi, target = _wide_run(where, runs, k, c, kd, n_ch, in_d, in_h, in_w,
                                               sd, pd, dd, off_h, off_w, zl)
        if hi == lo:
            continue
        at = uint64((r_first + lo) * in_w)
        _zero_margins(src, at, hi - lo, in_w, zl, zr)
        inside = at + uint64(zl)
        for j in range((hi - lo) * in_w - zl - zr):
            dxf[target + uint64(j)] += src[inside + uint64(j)]


@_kernel()
def col2im(col, dx, c_first, row0, n_rows, w0, w_count, out_d, out_h,  # type: ignore[no-untyped-def]
           k_d, k_h, k_w, sd, sh, sw, pd, ph, pw, dd, dh, dw):
    """Scatter-add ``col`` (laid out as :func:`im2col` writes it) into ``dx``. One thread
    owns each input channel, so the additions are race-free and in a fixed order. Tiles of
    whole rows as wide as the input at unit stride take :func:`_col2im_wide_row`, which
    zeroes the padding entries of ``col``."""
    _, _, in_d, in_h, in_w = dx.shape
    taps = k_d * k_h * k_w
    c_per_group = col.shape[0] // taps
    where = _output_rows(row0, n_rows, out_d, out_h)
    dxf = _flat_view(dx)
    wide = sh == 1 and sw == 1 and w0 == 0 and w_count == in_w and dxf.size == dx.size
    runs = _row_runs(where)
    for ci in prange(c_per_group):
        c = c_first + ci
        for t in range(taps):
            row = ci * taps + t
            kd = t // (k_h * k_w)
            kh = (t // k_w) % k_h
            kw = t % k_w
            if wide:
                _col2im_wide_row(col[row], dxf, where, runs, c, kd, kh, kw, dx.shape[1], in_d,
                                 in_h, in_w, sd, pd, ph, pw, dd, dh, dw)
                continue
            ow_lo, ow_hi = _valid_outputs(pw - kw * dw, sw, in_w, w0 + w_count)
            if ow_lo < w0:
                ow_lo = w0
            src = col[row]
            column = ow_lo * sw - pw + kw * dw
            for r in range(n_rows):
                i_d = where[r, 1] * sd - pd + kd * dd
                i_h = where[r, 2] * sh - ph + kh * dh
                if i_d < 0 or i_d >= in_d or i_h < 0 or i_h >= in_h:
                    continue
                n = where[r, 0]
                offset = uint64(r * w_count + ow_lo - w0)
                for j in range(ow_hi - ow_lo):
                    dx[n, c, i_d, i_h, uint64(column + j * sw)] += src[offset + uint64(j)]


@_kernel()
def copy_tile_rows(tile, y, c_first, row0, n_rows, w0, w_count, out_d, out_h, into_y):  # type: ignore[no-untyped-def]
    """Copy a GEMM tile ``(channels, n_rows * w_count)`` into ``y`` (``into_y``) or out of
    it: a run of whole rows of one image of a C-contiguous ``y`` is one contiguous copy,
    other tiles a copy per row."""
    where = _output_rows(row0, n_rows, out_d, out_h)
    yf = _flat_view(y)
    whole = w0 == 0 and w_count == y.shape[4] and yf.size == y.size
    runs = _row_runs(where) if whole else np.empty((0, 2), np.int64)
    for k in prange(tile.shape[0]):
        rows = tile[k]
        for q in range(runs.shape[0]):
            r, count = runs[q, 0], runs[q, 1]
            first = uint64(_output_offset(y, where, r, c_first + k))
            start = uint64(r * w_count)
            if into_y:
                for j in range(count * w_count):
                    yf[first + uint64(j)] = rows[start + uint64(j)]
            else:
                for j in range(count * w_count):
                    rows[start + uint64(j)] = yf[first + uint64(j)]
        if runs.shape[0]:
            continue
        for r in range(n_rows):
            n, od, oh = where[r, 0], where[r, 1], where[r, 2]
            start = uint64(r * w_count)
            if into_y:
                for j in range(w_count):
                    y[n, c_first + k, od, oh, uint64(w0 + j)] = rows[start + uint64(j)]
            else:
                for j in range(w_count):
                    rows[start + uint64(j)] = y[n, c_first + k, od, oh, uint64(w0 + j)]


def rows_to_output(tile, y, c_first, row0, n_rows, w0, w_count, out_d, out_h):  # type: ignore[no-untyped-def]
    """Copy a GEMM result tile ``(channels, n_rows * w_count)`` into ``y``."""
    copy_tile_rows(tile, y, c_first, row0, n_rows, w0, w_count, out_d, out_h, True)


def output_to_rows(y, tile, c_first, row0, n_rows, w0, w_count, out_d, out_h):  # type: ignore[no-untyped-def]
    """Gather the tile of ``y`` that :func:`rows_to_output` would write."""
    copy_tile_rows(tile, y, c_first, row0, n_rows, w0, w_count, out_d, out_h, False)


@_jit(inline="always")
def _output_offset(y, where, r, channel):  # type: ignore[no-untyped-def]
    """Flat offset in ``y`` of the first element of output row ``r`` of ``where``."""
    return (((where[r, 0] * y.shape[1] + channel) * y.shape[2] + where[r, 1]) * y.shape[3]
            + where[r, 2]) * y.shape[4]


# Packed direct convolution -------------------------------------------------------------
#
# The input is packed per channel into one flat run: zero padding is applied and each
# stride phase (a, b, e) = x_padded[a::sd, b::sh, e::sw] that some tap reads becomes a dense
# plane of (Dq, Hq, Wq) floats. The run holds phase 0 of every image of the tile, then
# phase 1 of every image, and so on. Output position (od, oh, ow) of image i is flat
# position p = i * plane + (od * Hq + oh) * Wq + ow, and the pair (input channel c, kernel
# tap t) reads the run at p + c * row_length + phase(t) * images * plane + shift(t). Every
# (channel, tap) pair is thus a unit-stride shifted read, whatever the stride and dilation,
# and the inner loop is a long vectorizable run over p. Pairs are applied three at a time to
# four output channels at once, the twelve weights in registers, the accumulators
# (4 x PACKED_CHUNK floats) in L1. Columns ow >= OW and rows between images are computed
# and discarded. A 1x1 kernel without stride or padding reads the input in place.



@_jit(inline="always")
def _pack_phase(x, n, c, f, dst, at, phases, dq, hq, wq, sd, sh, sw, pd, ph, pw):  # type: ignore[no-untyped-def]
    """Write stride phase ``phases[f]`` of the zero-padded plane ``x[n, c]``, zeros included,
    into the 1-D ``dst`` from offset ``at`` (``dq * hq * wq`` floats). Flat unsigned offsets:
    no view per row (two reference-count updates each) and no negative-index checks."""
    _, _, in_d, in_h, in_w = x.shape
    a, b, e = phases[f, 0], phases[f, 1], phases[f, 2]
    # Columns qw whose input column qw * sw + e - pw lies inside the image.
    lo = max(0, -((e - pw) // sw))
    hi = max(min(wq, (in_w - 1 - e + pw) // sw + 1), lo)
    start = lo * sw + e - pw
    for qd in range(dq):
        i_d = qd * sd + a - pd
        for qh in range(hq):
            i_h = qh * sh + b - ph
            row = uint64(at + (qd * hq + qh) * wq)
            if i_d < 0 or i_d >= in_d or i_h < 0 or i_h >= in_h:
                for qw in range(wq):
                    dst[row + uint64(qw)] = 0
                continue
            for qw in range(lo):
                dst[row + uint64(qw)] = 0
            first = row + uint64(lo)
            if sw == 1:   # a contiguous copy (vectorized), not a gather
                for j in range(hi - lo):
                    dst[first + uint64(j)] = x[n, c, i_d, i_h, uint64(start + j)]
            else:
                for j in range(hi - lo):
                    dst[first + uint64(j)] = x[n, c, i_d, i_h, uint64(start + j * sw)]
            for qw in range(hi, wq):
                dst[row + uint64(qw)] = 0


@_kernel()
def pack_output(dy, n0, n_images, dyq, plane, hq, wq):  # type: ignore[no-untyped-def]
    """``dyq[o]``: images ``n0 .. n0 + n_images`` of ``dy[:, o]`` at the packed output
    positions ``i * plane + (od * hq + oh) * wq + ow`` (see pack_input), zeros between them,
    so that a shifted run of the packed input lines up with it for every kernel tap."""
    out_d, out_h, out_w = dy.shape[2], dy.shape[3], dy.shape[4]
    for o in prange(dyq.shape[0]):
        row = dyq[o]
        row[:] = 0
        for i in range(n_images):
            for od in range(out_d):
                for oh in range(out_h):
                    base = i * plane + (od * hq + oh) * wq
                    src = dy[n0 + i, o, od, oh]
                    for ow in range(out_w):
                        row[base + ow] = src[ow]


@_kernel()
def pack_input(x, n0, n_images, xq, phases, dq, hq, wq, sd, sh, sw, pd, ph, pw):  # type: ignore[no-untyped-def]
    """Pack images ``n0 .. n0 + n_images`` of ``x`` into ``xq[c]`` (layout above); every
    other float of ``xq`` is zeroed."""
    channels, length = xq.shape
    plane = dq * hq * wq
    n_phases = phases.shape[0]
    for c in prange(channels):
        dst_run = xq[c]
        for f in range(n_phases):
            for i in range(n_images):
                base = (f * n_images + i) * plane
                _pack_phase(x, n0 + i, c, f, dst_run, base, phases, dq, hq, wq, sd, sh, sw, pd,
                            ph, pw)
        for t in range(n_phases * n_images * plane, length):
            dst_run[t] = 0


@_jit(inline="always")
def _six_pairs(acc, xq_flat, offsets, g, step, base, r0, r1, r2, r3, runs):  # type: ignore[no-untyped-def]
    """Pairs ``3 * step .. 3 * step + 6`` of group ``g`` into the four accumulator rows: each
    row is loaded and stored once, but rounded as two steps of three (_three_pairs), so a
    position gets the same sum whether its chunk runs this or two _three_pairs."""
    q = step * PACKED_PAIRS_PER_STEP
    oa = base + uint64(offsets[g, step, 0])
    ob = base + uint64(offsets[g, step, 1])
    oc = base + uint64(offsets[g, step, 2])
    od = base + uint64(offsets[g, step + 1, 0])
    oe = base + uint64(offsets[g, step + 1, 1])
    of = base + uint64(offsets[g, step + 1, 2])
    a0, a1, a2, a3 = r0[q], r1[q], r2[q], r3[q]
    b0, b1, b2, b3 = r0[q + 1], r1[q + 1], r2[q + 1], r3[q + 1]
    c0, c1, c2, c3 = r0[q + 2], r1[q + 2], r2[q + 2], r3[q + 2]
    d0, d1, d2, d3 = r0[q + 3], r1[q + 3], r2[q + 3], r3[q + 3]
    e0, e1, e2, e3 = r0[q + 4], r1[q + 4], r2[q + 4], r3[q + 4]
    f0, f1, f2, f3 = r0[q + 5], r1[q + 5], r2[q + 5], r3[q + 5]
    for j in range(runs):
        uj = uint64(j)
        xa = xq_flat[oa + uj]
        xb = xq_flat[ob + uj]
        xc = xq_flat[oc + uj]
        xd = xq_flat[od + uj]
        xe = xq_flat[oe + uj]
        xf = xq_flat[of + uj]
        v0 = acc[0, j] + (a0 * xa + b0 * xb + c0 * xc)
        acc[0, j] = v0 + (d0 * xd + e0 * xe + f0 * xf)
        v1 = acc[1, j] + (a1 * xa + b1 * xb + c1 * xc)
        acc[1, j] = v1 + (d1 * xd + e1 * xe + f1 * xf)
        v2 = acc[2, j] + (a2 * xa + b2 * xb + c2 * xc)
        acc[2, j] = v2 + (d2 * xd + e2 * xe + f2 * xf)
        v3 = acc[3, j] + (a3 * xa + b3 * xb + c3 * xc)
        acc[3, j] = v3 + (d3 * xd + e3 * xe + f3 * xf)


@_jit(inline="always")
def _three_pairs(acc, xq_flat, offsets, g, step, base, r0, r1, r2, r3, runs):  # type: ignore[no-untyped-def]
    """Pairs ``3 * step .. 3 * step + 3`` of group ``g`` into the four accumulator rows."""
    q = step * PACKED_PAIRS_PER_STEP
    ou = base + uint64(offsets[g, step, 0])
    ov = base + uint64(offsets[g, step, 1])
    os_ = base + uint64(offsets[g, step, 2])
    a0, a1, a2, a3 = r0[q], r1[q], r2[q], r3[q]
    b0, b1, b2, b3 = r0[q + 1], r1[q + 1], r2[q + 1], r3[q + 1]
    c0, c1, c2, c3 = r0[q + 2], r1[q + 2], r2[q + 2], r3[q + 2]
    for j in range(runs):
        uj = uint64(j)
        xu = xq_flat[ou + uj]
        xv = xq_flat[ov + uj]
        xs = xq_flat[os_ + uj]
        acc[0, j] += a0 * xu + b0 * xv + c0 * xs
        acc[1, j] += a1 * xu + b1 * xv + c1 * xs
        acc[2, j] += a2 * xu + b2 * xv + c2 * xs
        acc[3, j] += a3 * xu + b3 * xv + c3 * xs


@_jit(inline="always")
def _packed_block(xq_flat, w2, offsets, y, n0, n_images, plane, hq, wq, vector_tail, g, ob, p0,
                  total, per_image, bias, has_bias, act):  # type: ignore[no-untyped-def]
    """One job of :func:`packed_direct`: output channels ``ob * 4 ..`` of group ``g`` at
    packed positions ``p0 .. p0 + PACKED_CHUNK``."""
    pairs = w2.shape[1]
    c_out_per_group = y.shape[1] // offsets.shape[0]
    chunk = PACKED_CHUNK
    count = min(chunk, total - p0)
    runs = count
    if vector_tail:
        runs = (count + PACKED_VECTOR - 1) // PACKED_VECTOR * PACKED_VECTOR
    # Rows of w2 for the block's four output channels (repeated past the group's end;
    # those results are never written back).
    k0 = g * c_out_per_group + ob * PACKED_CO_BLOCK
    last = g * c_out_per_group + c_out_per_group - 1
    r0 = w2[k0]
    r1 = w2[min(k0 + 1, last)]
    r2 = w2[min(k0 + 2, last)]
    r3 = w2[min(k0 + 3, last)]
    acc = np.zeros((PACKED_CO_BLOCK, chunk), dtype=y.dtype)
    zero = acc[0, 0]
    six = zero + 6
    # Unsigned read positions: numba then skips its negative-index wraparound test, so
    # the loop vectorizes without making an array view per step.
    base = uint64(p0)
    full_steps = pairs // PACKED_PAIRS_PER_STEP
    # A whole chunk runs two steps (six pairs) per pass, with a trip count LLVM knows when it
    # compiles: each accumulator is loaded and stored once per six pairs, not three.
    # Measured on one core: six pairs over a known count run at 222 GFLOP/s, three at 151;
    # over a count known only at run time (a chunk's last, shorter run) three pairs run at
    # 116 and six at 75, so such a run keeps steps of three.
    first = 0
    if count == PACKED_CHUNK:
        for double in range(full_steps // 2):
            _six_pairs(acc, xq_flat, offsets, g, 2 * double, base, r0, r1, r2, r3,
                       PACKED_CHUNK)
        first = full_steps // 2 * 2
    for step in range(first, full_steps):
        _three_pairs(acc, xq_flat, offsets, g, step, base, r0, r1, r2, r3, runs)
    # The last one or two pairs, on their own: a zero weight times real data could turn
    # an Inf into a NaN.
    for q in range(full_steps * PACKED_PAIRS_PER_STEP, pairs):
        step = q // PACKED_PAIRS_PER_STEP
        ou = base + uint64(offsets[g, step, q - step * PACKED_PAIRS_PER_STEP])
        w00 = r0[q]
        w01 = r1[q]
        w02 = r2[q]
        w03 = r3[q]
        for j in range(runs):
            xu = xq_flat[ou + uint64(j)]
            acc[0, j] += w00 * xu
            acc[1, j] += w01 * xu
            acc[2, j] += w02 * xu
            acc[3, j] += w03 * xu
    co_first = g * c_out_per_group + ob * PACKED_CO_BLOCK
    store_packed(acc, y, n0, n_images, plane, hq, wq, per_image, p0, count, co_first,
                 min(PACKED_CO_BLOCK, c_out_per_group - ob * PACKED_CO_BLOCK), bias, has_bias,
                 act, zero, six)


@_jit(inline="always")
def store_packed(acc, y, n0, n_images, plane, hq, wq, per_image, p0, count, co_first, co_count,  # type: ignore[no-untyped-def]
                 bias, has_bias, act, zero, six):
    """Write ``acc[j, p - p0]``, the results of output channel ``co_first + j`` at packed
    positions ``p0 .. p0 + count``, into ``y[n0:]`` through the epilogue: only the columns
    and rows that are outputs (the others were computed from padding and are dropped)."""
    out_h = y.shape[3]
    out_w = y.shape[4]
    first_image = p0 // plane
    last_image = min((p0 + count - 1) // plane, n_images - 1)
    for i in range(first_image, last_image + 1):
        base = i * plane
        first_row = max(p0 - base, 0) // wq
        last_row = min(p0 + count - 1 - base, per_image - 1) // wq
        for row in range(first_row, last_row + 1):
            od = row // hq
            oh = row - od * hq
            if oh >= out_h:
                continue
            lo = max(base + row * wq, p0)
            hi = min(base + row * wq + out_w, p0 + count)
            for j in range(co_count):
                _store_run(acc, j, lo - p0, hi - lo, y, n0 + i, co_first + j, od, oh,
                           lo - base - row * wq, bias, has_bias, act, zero, six)


@_jit(inline="always")
def _store_run(acc, j, src0, count, y, n, co, od, oh, dst0, bias, has_bias, act, zero, six):  # type: ignore[no-untyped-def]
    """``y[n, co, od, oh, dst0 + q] = epilogue(acc[j, src0 + q])`` for ``q < count``. The
    plain copy, the bias and ReLU get loops of their own, which vectorize (unsigned
    indices: no wraparound tests); the other activations go through the general one."""
    uj, un, uc, ud, uh = uint64(j), uint64(n), uint64(co), uint64(od), uint64(oh)
    us, ut = uint64(src0), uint64(dst0)
    b = bias[co] if has_bias else zero
    if act == 0 and not has_bias:
        for q in range(count):
            y[un, uc, ud, uh, ut + uint64(q)] = acc[uj, us + uint64(q)]
    elif act == 0:
        for q in range(count):
            y[un, uc, ud, uh, ut + uint64(q)] = acc[uj, us + uint64(q)] + b
    elif act == 1:
        for q in range(count):
            v = acc[uj, us + uint64(q)]
            if has_bias:
                v = v + b
            y[un, uc, ud, uh, ut + uint64(q)] = zero if v < zero else v
    else:
        for q in range(count):
            y[un, uc, ud, uh, ut + uint64(q)] = _epilogue(acc[uj, us + uint64(q)], co, bias,
                                                          has_bias, act, zero, six)


@_jit(inline="always")
def _packed_extent(offsets, y, n_images, plane, hq, wq):  # type: ignore[no-untyped-def]
    """How packed_direct and packed_small split their work: the groups, the blocks of
    PACKED_CO_BLOCK output channels per group, the packed run of one image's outputs
    (``per_image``) and of all ``n_images`` (``total``)."""
    n_groups = offsets.shape[0]
    n_blocks = (y.shape[1] // n_groups + PACKED_CO_BLOCK - 1) // PACKED_CO_BLOCK
    per_image = ((y.shape[2] - 1) * hq + y.shape[3] - 1) * wq + y.shape[4]
    return n_groups, n_blocks, per_image, (n_images - 1) * plane + per_image


@_kernel(fastmath=_CONTRACT_ONLY)
def packed_direct(xq_flat, w2, offsets, y, n0, n_images, plane, hq, wq, vector_tail, bias,  # type: ignore[no-untyped-def]
                  has_bias, act):
    """``y[n0:n0 + n_images]`` from a packed tile (see above). ``w2`` is the weight as
    ``(C_out, C_in / groups * taps)``; ``offsets[g, s, i]`` is the flat read offset of the
    (channel, tap) pair ``3 * s + i`` of group g. With ``vector_tail``, runs are rounded up
    to whole vectors (the buffer must have a tail to read)."""
    n_groups, n_blocks, per_image, total = _packed_extent(offsets, y, n_images, plane, hq, wq)
    n_chunks = (total + PACKED_CHUNK - 1) // PACKED_CHUNK
    for job in prange(n_groups * n_blocks * n_chunks):
        g = job // (n_blocks * n_chunks)
        rest = job - g * (n_blocks * n_chunks)
        ob = rest // n_chunks
        p0 = (rest - ob * n_chunks) * PACKED_CHUNK
        _packed_block(xq_flat, w2, offsets, y, n0, n_images, plane, hq, wq, vector_tail, g, ob,
                      p0, total, per_image, bias, has_bias, act)


@_kernel(parallel=False, fastmath=_CONTRACT_ONLY)
def packed_small(x, w2, offsets, y, length, phases, dq, hq, wq, sd, sh, sw, pd, ph, pw, bias,  # type: ignore[no-untyped-def]
                 has_bias, act):
    """Pack every image and compute, in one single-threaded call (for tiny problems, where
    a second dispatch and a thread-pool wake-up would cost more than the arithmetic)."""
    n_images, channels = x.shape[0], x.shape[1]
    plane = dq * hq * wq
    n_phases = phases.shape[0]
    xq = np.zeros((channels, length), dtype=x.dtype)
    for c in range(channels):
        run = xq[c]
        for f in range(n_phases):
            for i in range(n_images):
                base = (f * n_images + i) * plane
                _pack_phase(x, i, c, f, run, base, phases, dq, hq, wq, sd, sh, sw, pd, ph, pw)
    n_groups, n_blocks, per_image, total = _packed_extent(offsets, y, n_images, plane, hq, wq)
    flat = xq.reshape(-1)
    for g in range(n_groups):
        for ob in range(n_blocks):
            for p0 in range(0, total, PACKED_CHUNK):
                _packed_block(flat, w2, offsets, y, 0, n_images, plane, hq, wq, True, g, ob, p0,
                              total, per_image, bias, has_bias, act)


@_jit(inline="always")
def _packs_flat_rows(x, xf, n_phases, dq, sh, sw):  # type: ignore[no-untyped-def]
    """Whether the planes of ``x`` pack by :func:`_pack_plane_rows`: one phase of a 2-D
    plane at unit stride, and ``xf`` is ``x`` flat (:func:`_flat_view`)."""
    return (n_phases == 1 and dq == 1 and x.shape[2] == 1 and sh == 1 and sw == 1
            and xf.size == x.size)


@_jit(inline="always")
def _pack_plane_rows(xf, base, in_h, in_w, dst, hq, wq, top, left):  # type: ignore[no-untyped-def]
    """:func:`_pack_phase` for the one phase of a 2-D plane at unit stride, from
    the flat input: packed row ``qh`` holds input row ``qh + top`` from column ``left``
    (zeros outside the plane). Half the time of the general copy on 14x14 planes."""
    lo = min(max(-left, 0), wq)
    hi = max(min(wq, in_w - left), lo)
    for qh in range(hq):
        row = uint64(qh * wq)
        i_h = qh + top
        if i_h < 0 or i_h >= in_h:
            for qw in range(wq):
                dst[row + uint64(qw)] = 0
            continue
        for qw in range(lo):
            dst[row + uint64(qw)] = 0
        source = base + uint64(i_h * in_w + lo + left)
        first = row + uint64(lo)
        for j in range(hi - lo):
            dst[first + uint64(j)] = xf[source + uint64(j)]
        for qw in range(hi, wq):
            dst[row + uint64(qw)] = 0


@_jit(inline="always")
def _nine_taps(src, flat, runs, w2, co, tap_phase, tap_shift, plane):  # type: ignore[no-untyped-def]
    """``flat = sum of the 9 taps`` of a 3x3 depthwise plane in one pass: each output vector
    is stored once, with no zeroing pass and no reloads (1.7-2.3x faster than three passes
    of three taps on MobileNetV2's batch-8 layers)."""
    a0 = uint64(tap_phase[0] * plane + tap_shift[0])
    a1 = uint64(tap_phase[1] * plane + tap_shift[1])
    a2 = uint64(tap_phase[2] * plane + tap_shift[2])
    a3 = uint64(tap_phase[3] * plane + tap_shift[3])
    a4 = uint64(tap_phase[4] * plane + tap_shift[4])
    a5 = uint64(tap_phase[5] * plane + tap_shift[5])
    a6 = uint64(tap_phase[6] * plane + tap_shift[6])
    a7 = uint64(tap_phase[7] * plane + tap_shift[7])
    a8 = uint64(tap_phase[8] * plane + tap_shift[8])
    w0, w1, w2_, w3, w4 = w2[co, 0], w2[co, 1], w2[co, 2], w2[co, 3], w2[co, 4]
    w5, w6, w7, w8 = w2[co, 5], w2[co, 6], w2[co, 7], w2[co, 8]
    for j in range(runs):
        k = uint64(j)
        flat[k] = ((w0 * src[a0 + k] + w1 * src[a1 + k] + w2_ * src[a2 + k])
                   + (w3 * src[a3 + k] + w4 * src[a4 + k] + w5 * src[a5 + k])
                   + (w6 * src[a6 + k] + w7 * src[a7 + k] + w8 * src[a8 + k]))


@_jit(inline="always")
def _taps_three_at_a_time(src, flat, runs, w2, co, tap_phase, tap_shift, plane, full, taps):  # type: ignore[no-untyped-def]
    """``flat = sum of the taps`` of a depthwise plane, three taps per pass (any kernel)."""
    for j in range(runs):
        flat[j] = 0
    for t in range(0, full, 3):
        u = uint64(tap_phase[t] * plane + tap_shift[t])
        v = uint64(tap_phase[t + 1] * plane + tap_shift[t + 1])
        q = uint64(tap_phase[t + 2] * plane + tap_shift[t + 2])
        w0, w1, w2_ = w2[co, t], w2[co, t + 1], w2[co, t + 2]
        for j in range(runs):
            k = uint64(j)
            flat[k] += w0 * src[u + k] + w1 * src[v + k] + w2_ * src[q + k]
    for t in range(full, taps):
        u = uint64(tap_phase[t] * plane + tap_shift[t])
        w0 = w2[co, t]
        for j in range(runs):
            flat[uint64(j)] += w0 * src[u + uint64(j)]


@_kernel()
def depthwise_packed(x, w2, tap_phase, tap_shift, y, phases, dq, hq, wq, sd, sh, sw, pd, ph, pw,  # type: ignore[no-untyped-def]
                     bias, has_bias, act, threads):
    """Depthwise forward (``groups == C_in``): each (image, channel) plane is packed on its
    own (layout as :func:`pack_input`, one image) and every output vector sums its taps in
    registers, all nine of a 3x3 kernel at once (others three at a time), so it is stored
    once per nine (three) taps, not once per tap. The
    buffers are indexed with unsigned flat offsets: no array views (two reference-count
    updates each) and no negative-index checks in the loops. ``threads``: the pool threads
    the call runs on (numba's ``get_num_threads`` inside a kernel would keep it out of the
    on-disk cache)."""
    n_batch, c_in = x.shape[0], x.shape[1]
    c_out = y.shape[1]
    out_d, out_h, out_w = y.shape[2], y.shape[3], y.shape[4]
    multiplier = c_out // c_in
    taps = tap_shift.shape[0]
    full = taps // 3 * 3
    plane = dq * hq * wq
    n_phases = phases.shape[0]
    # Spare rows: whole-vector runs may read up to PACKED_VECTOR - 1 floats past the end.
    rows = n_phases * dq * hq + PACKED_VECTOR // wq + 1
    per_image = ((out_d - 1) * hq + out_h - 1) * wq + out_w
    runs = (per_image + PACKED_VECTOR - 1) // PACKED_VECTOR * PACKED_VECTOR
    planes = n_batch * c_in
    in_h, in_w = x.shape[3], x.shape[4]
    xf = _flat_view(x)
    flat_rows = _packs_flat_rows(x, xf, n_phases, dq, sh, sw)
    # A job takes a run of planes and its buffers once: on 7x7 and 14x14 maps a plane is a
    # few hundred multiply-adds, less than three allocations and their reference counts.
    jobs = min(planes, DEPTHWISE_JOBS_PER_THREAD * threads)
    for job in prange(jobs):
        first, last = _job_span(job, jobs, planes)
        src = np.zeros(rows * wq, dtype=x.dtype)   # its spare rows stay zero
        flat = np.empty((runs // wq + 2) * wq, dtype=y.dtype)
        zero = np.zeros(1, dtype=y.dtype)[0]
        six = zero + 6
        for index in range(first, last):
            n = index // c_in
            c = index - n * c_in
            if flat_rows:
                _pack_plane_rows(xf, uint64(index * in_h * in_w), in_h, in_w, src, hq, wq,
                                 phases[0, 1] - ph, phases[0, 2] - pw)
            else:
                for f in range(n_phases):
                    _pack_phase(x, n, c, f, src, f * plane, phases, dq, hq, wq, sd, sh, sw, pd,
                                ph, pw)
            for m in range(multiplier):
                co = c * multiplier + m
                if taps == 9:
                    _nine_taps(src, flat, runs, w2, co, tap_phase, tap_shift, plane)
                else:
                    _taps_three_at_a_time(src, flat, runs, w2, co, tap_phase, tap_shift, plane,
                                          full, taps)
                for od in range(out_d):
                    for oh in range(out_h):
                        r = uint64((od * hq + oh) * wq)
                        if has_bias or act:
                            for ow in range(out_w):
                                y[n, co, od, oh, uint64(ow)] = _epilogue(
                                    flat[r + uint64(ow)], co, bias, has_bias, act, zero, six)
                        else:   # a plain copy: the epilogue's branches keep it scalar
                            for ow in range(out_w):
                                y[n, co, od, oh, uint64(ow)] = flat[r + uint64(ow)]

DEPTHWISE_CHANNEL_BLOCK = 128


@_jit(inline="always")
def _gather_pixels(src, n, c0, cb, h0, h1, w0, w1, dst, cols, dr, dq):  # type: ignore[no-untyped-def]
    """``dst[(r + dr) * cols + q + dq, c] = src[n, 0, r, q, c0 + c]`` for rows ``[h0, h1)``,
    columns ``[w0, w1)`` and ``c < cb``: pixels of ``src`` (``(N, 1, H, W, C)`` axis order)
    into the rows of a channels-innermost buffer."""
    source = src[n, 0]
    for r in range(h0, h1):
        for q in range(w0, w1):
            row = dst[(r + dr) * cols + q + dq]
            pixel = source[r, q, c0:c0 + cb]
            for c in range(cb):
                row[c] = pixel[c]


@_jit(inline="always")
def _scatter_pixels(src, cols, dr, dq, dst, n, c0, cb, h0, h1, w0, w1):  # type: ignore[no-untyped-def]
    """``dst[n, 0, r, q, c0 + c] = src[(r + dr) * cols + q + dq, c]``: the way back of
    :func:`_gather_pixels`."""
    target = dst[n, 0]
    for r in range(h0, h1):
        for q in range(w0, w1):
            row = src[(r + dr) * cols + q + dq]
            pixel = target[r, q, c0:c0 + cb]
            for c in range(cb):
                pixel[c] = row[c]


@_jit(inline="always")
def _channels_last_block(xl, n, c0, cb, rows, cols, ph, pw, image):  # type: ignore[no-untyped-def]
    """Channels ``c0 .. c0 + cb`` of image ``n`` of ``xl`` (``(N, 1, H, W, C)`` axis order)
    into ``image`` (``rows * cols`` pixels of ``cb`` channels), zero-padded by ``ph``, ``pw``
    above and left and with zeros past the input below and right."""
    in_h, in_w = xl.shape[2], xl.shape[3]
    for j in range(rows * cols):
        pixel = image[j]
        for c in range(cb):
            pixel[c] = 0
    _gather_pixels(xl, n, c0, cb, max(0, -ph), min(in_h, rows - ph), max(0, -pw),
                   min(in_w, cols - pw), image, cols, ph, pw)


@_kernel()
def depthwise_channels_last(xl, w_t, yl, kh_, kw_, sh, sw, ph, pw, dh, dw, bias, has_bias, act):  # type: ignore[no-untyped-def]
    """Depthwise forward of a 2-D problem (D == 1, no channel multiplier) vectorized over
    channels. ``xl`` and ``yl`` are the input and output in ``(N, D, H, W, C)`` axis order:
    channels-last data is passed as it lies (unit-stride channels), channels-first data as a
    transposed view. For each image and block of channels the zero-padded image is copied
    once, channels innermost, then every output position sums its taps three at a time over
    contiguous channel vectors. ``w_t`` is the weight as ``(taps, C)``; the copy is ``padded
    plane x DEPTHWISE_CHANNEL_BLOCK`` floats."""
    n_batch, channels = xl.shape[0], xl.shape[4]
    out_h, out_w = yl.shape[2], yl.shape[3]
    taps = kh_ * kw_
    full = taps // 3 * 3
    rows = (out_h - 1) * sh + (kh_ - 1) * dh + 1
    cols = (out_w - 1) * sw + (kw_ - 1) * dw + 1
    n_blocks = (channels + DEPTHWISE_CHANNEL_BLOCK - 1) // DEPTHWISE_CHANNEL_BLOCK
    # Rows of 2-D arrays are indexed with loop-invariant positions and the channel as the
    # induction variable: no array views are created inside the loops.
    for job in prange(n_batch * n_blocks):
        n = job // n_blocks
        c0 = (job - n * n_blocks) * DEPTHWISE_CHANNEL_BLOCK
        cb = min(DEPTHWISE_CHANNEL_BLOCK, channels - c0)
        image = np.empty((rows * cols, cb), dtype=xl.dtype)
        _channels_last_block(xl, n, c0, cb, rows, cols, ph, pw, image)
        weights = np.empty((taps, cb), dtype=w_t.dtype)
        for t in range(taps):
            for c in range(cb):
                weights[t, c] = w_t[t, c0 + c]
        result = np.zeros((out_h * out_w, cb), dtype=yl.dtype)
        for oh in range(out_h):
            for ow in range(out_w):
                p = oh * out_w + ow
                for t in range(0, full, 3):
                    i0 = (oh * sh + (t // kw_) * dh) * cols + ow * sw + (t % kw_) * dw
                    i1 = (oh * sh + ((t + 1) // kw_) * dh) * cols + ow * sw + ((t + 1) % kw_) * dw
                    i2 = (oh * sh + ((t + 2) // kw_) * dh) * cols + ow * sw + ((t + 2) % kw_) * dw
                    for c in range(cb):
                        result[p, c] += (weights[t, c] * image[i0, c]
                                         + weights[t + 1, c] * image[i1, c]
                                         + weights[t + 2, c] * image[i2, c])
                for t in range(full, taps):
                    i0 = (oh * sh + (t // kw_) * dh) * cols + ow * sw + (t % kw_) * dw
                    for c in range(cb):
                        result[p, c] += weights[t, c] * image[i0, c]
        zero = np.zeros(1, dtype=yl.dtype)[0]
        six = zero + 6
        target = yl[n, 0]
        for oh in range(out_h):
            for ow in range(out_w):
                row = result[oh * out_w + ow]
                pixel = target[oh, ow, c0:c0 + cb]
                for c in range(cb):
                    pixel[c] = _epilogue(row[c], c0 + c, bias, has_bias, act, zero, six)



@_kernel()
def wgrad_depthwise_channels_last(xl, dyl, dw_t, kh_, kw_, sh, sw, ph, pw, dh, dw):  # type: ignore[no-untyped-def]
    """Depthwise weight gradient of a 2-D problem (no channel multiplier) vectorized over
    channels, the layout of :func:`depthwise_channels_last`: per block of channels, each
    image's zero-padded input and its ``dy`` are copied channels innermost, then every
    output position adds ``x * dy`` to each tap's vector of channel sums. ``dw_t`` is the
    result as ``(taps, C)``. The products of an image (at most DEPTHWISE_WGRAD_CHUNK output
    positions at a time) are summed in the data's precision and added in float64, as the
    per-plane kernel does. Only the padding's zeros meet ``dy`` (as in a direct sum), so Inf
    and NaN propagate without a fallback. On 7x7 and 14x14 maps the per-plane kernel's dots
    are a few dozen products per tap, while here each product is a full vector."""
    n_batch, channels = xl.shape[0], xl.shape[4]
    out_h, out_w = dyl.shape[2], dyl.shape[3]
    taps = kh_ * kw_
    rows = (out_h - 1) * sh + (kh_ - 1) * dh + 1
    cols = (out_w - 1) * sw + (kw_ - 1) * dw + 1
    n_blocks = (channels + DEPTHWISE_CHANNEL_BLOCK - 1) // DEPTHWISE_CHANNEL_BLOCK
    positions = out_h * out_w
    for block in prange(n_blocks):
        c0 = block * DEPTHWISE_CHANNEL_BLOCK
        cb = min(DEPTHWISE_CHANNEL_BLOCK, channels - c0)
        image = np.empty((rows * cols, cb), dtype=xl.dtype)
        grad = np.empty((positions, cb), dtype=xl.dtype)
        part = np.empty((taps, cb), dtype=xl.dtype)
        total = np.zeros((taps, cb), dtype=np.float64)
        for n in range(n_batch):
            _channels_last_block(xl, n, c0, cb, rows, cols, ph, pw, image)
            _gather_pixels(dyl, n, c0, cb, 0, out_h, 0, out_w, grad, out_w, 0, 0)
            for p0 in range(0, positions, DEPTHWISE_WGRAD_CHUNK):
                for t in range(taps):
                    for c in range(cb):
                        part[t, c] = 0
                for p in range(p0, min(positions, p0 + DEPTHWISE_WGRAD_CHUNK)):
                    oh = p // out_w
                    ow = p - oh * out_w
                    for t in range(taps):
                        i = (oh * sh + (t // kw_) * dh) * cols + ow * sw + (t % kw_) * dw
                        for c in range(cb):
                            part[t, c] += image[i, c] * grad[p, c]
                for t in range(taps):
                    for c in range(cb):
                        total[t, c] += part[t, c]
        for t in range(taps):
            for c in range(cb):
                dw_t[t, c0 + c] = total[t, c]


@_kernel()
def dgrad_depthwise_channels_last(dyl, w_t, dxl, kh_, kw_, sh, sw, ph, pw, dh, dw):  # type: ignore[no-untyped-def]
    """Depthwise data gradient of a 2-D problem (no channel multiplier) vectorized over
    channels, the layout of :func:`depthwise_channels_last`: per image and block of
    channels, every ``dy`` vector is scattered times each tap's weights into a zero-padded
    input buffer, whose inside is then written to ``dx``. It sums real products only (as the
    scatter kernel does) at any stride; on small strided maps the per-plane scatter's rows
    are a few floats per tap."""
    n_batch, channels = dyl.shape[0], dyl.shape[4]
    in_h, in_w = dxl.shape[2], dxl.shape[3]
    out_h, out_w = dyl.shape[2], dyl.shape[3]
    taps = kh_ * kw_
    rows = max((out_h - 1) * sh + (kh_ - 1) * dh + 1, in_h + ph)
    cols = max((out_w - 1) * sw + (kw_ - 1) * dw + 1, in_w + pw)
    n_blocks = (channels + DEPTHWISE_CHANNEL_BLOCK - 1) // DEPTHWISE_CHANNEL_BLOCK
    for job in prange(n_batch * n_blocks):
        n = job // n_blocks
        c0 = (job - n * n_blocks) * DEPTHWISE_CHANNEL_BLOCK
        cb = min(DEPTHWISE_CHANNEL_BLOCK, channels - c0)
        image = np.zeros((rows * cols, cb), dtype=dxl.dtype)
        weights = np.empty((taps, cb), dtype=w_t.dtype)
        for t in range(taps):
            for c in range(cb):
                weights[t, c] = w_t[t, c0 + c]
        grad = np.empty(cb, dtype=dxl.dtype)
        source = dyl[n, 0]
        for oh in range(out_h):
            for ow in range(out_w):
                pixel = source[oh, ow, c0:c0 + cb]
                for c in range(cb):
                    grad[c] = pixel[c]
                for t in range(taps):
                    i = (oh * sh + (t // kw_) * dh) * cols + ow * sw + (t % kw_) * dw
                    for c in range(cb):
                        image[i, c] += weights[t, c] * grad[c]
        _scatter_pixels(image, cols, ph, pw, dxl, n, c0, cb, 0, in_h, 0, in_w)




# GNU OpenMP is not fork-safe: numba terminates a forked child on its first parallel launch
# once the parent has used the OpenMP pool. In such a child every parallel kernel is replaced
# by its single-threaded twin (compiled, or loaded from numba's cache, on first use).
PARALLEL_KERNELS = ("fprop_direct", "dgrad_direct", "wgrad_direct", "dgrad_depthwise",
                    "wgrad_depthwise", "im2col", "col2im", "copy_tile_rows",
                    "pack_input", "pack_output", "packed_direct", "depthwise_packed", "depthwise_channels_last",
                    "wgrad_depthwise_channels_last", "dgrad_depthwise_channels_last",
                    "apply_epilogue")


def make_serial(namespace: dict[str, Any], names: Sequence[str]) -> None:
    """Replace each named parallel kernel of a module's *namespace* by its single-threaded
    twin (after a fork; every numba module of the backend calls this for its kernels)."""
    for name in names:
        if namespace[name].targetoptions.get("parallel"):
            namespace[name] = _serial(namespace[name])


def use_serial_kernels() -> None:
    """Make every parallel kernel of this module its single-threaded twin (after a fork)."""
    make_serial(globals(), PARALLEL_KERNELS)
