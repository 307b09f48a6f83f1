"""The opencl backend's solvers: host code that sizes workspaces and launches kernels.

Every solver works on contiguous device arrays in the compute dtype (float32 or float64)
and 5-D geometry (1-D and 2-D problems lifted, :class:`Geom`). A solver that cannot run on
this device (local memory, work-group limits, buffer sizes) raises
:class:`~.runtime.SolverUnavailable`; one whose kernel fails to build raises
:class:`~convflow.errors.KernelBuildError`; the backend then falls back to the next solver.

GPU-style solvers (``tiled_direct``, ``gemm_1x1``, ``im2col_gemm``, ``winograd``,
``direct_wrw``) use local-memory tiles and barriers; CPU-style ones (``vec_gemm_1x1``,
``vec_im2col_gemm``, ``vec_winograd``) use explicit vectors and no local memory.

Layouts: with ``Geom.channels_last`` the activations (x, y, dx, dy) are channels-last
(N, D, H, W, C) arrays, read and written in place; only solvers with ``channels_last=True``
(the GEMM and 1x1 solvers of both styles, ``depthwise`` and ``direct_wrw``) accept that,
the backend converts for the others. Epilogue: forward and data-gradient passes take an
:class:`Epilogue` (bias and activation) that the kernel writing the result applies as it
stores each value, so no pass over the output follows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ...params import ConvProblem, Direction
from ..base import Algorithm
from . import rules
from .runtime import ContextState, SolverUnavailable, wait_interruptibly

Array = Any  # pyopencl.array.Array

COMMON = "opencl/common.h"
PROGRAMS: dict[str, tuple[str, ...]] = {
    "naive": (COMMON, "opencl/naive.cl"),
    "util": (COMMON, "opencl/util.cl"),
    "gemm": (COMMON, "opencl/gemm.cl"),
    "vgemm": (COMMON, "opencl/vgemm.cl"),
    "depthwise": (COMMON, "opencl/depthwise.cl"),
    "winograd": (COMMON, "opencl/winograd.cl"),
    "direct_tiled": (COMMON, "opencl/direct_tiled.cl"),
    "direct_wrw": (COMMON, "opencl/direct_wrw.cl"),
}

# Work-group sizes: fixed per kernel (each distinct size is a separate compile on PoCL).
FLAT_GROUP = 64          # 1-D element-wise kernels
VGEMM_GROUP = 8          # CPU-style GEMMs: 8 row panels share one B strip in cache
MR = 6                   # rows of a vgemm_n micro-tile
NRJ = 6                  # columns of a vgemm_m micro-tile
NT_RM, NT_RJ = 4, 3      # vgemm_nt micro-tile
RED_GROUP = 64           # reductions (bias gradient, direct_wrw)
PACK_RUN = 16            # k values one pack_panels work-item copies
NT_MAX_POSITIONS = 64    # forward passes with fewer positions per image use vgemm_nt
WINO_RUN = 8             # tiles (channels) one Winograd transform work-item handles
INT_LIMIT = 2**31 - 1    # index arithmetic of the fast kernels is 32-bit


@dataclass(frozen=True)
class Geom:
    """A pass's geometry lifted to 3 spatial dims: x (N, C, D, H, W), w (K, CG, KD, KH, KW),
    y (N, K, OD, OH, OW), stride, low padding (any sign) and dilation per dim, groups.
    Shapes are channels-first; ``channels_last`` says the x and y (and dx, dy) arrays hold
    them as (N, D, H, W, C) in memory. ``pad_products``: whether a tap that reads the zero
    padding stands for a product ``0 * w`` (NaN for an Inf or NaN weight), as in a forward
    pass; a data gradient computed as the forward pass of the flipped problem has none."""

    x: tuple[int, int, int, int, int]
    w: tuple[int, int, int, int, int]
    y: tuple[int, int, int, int, int]
    stride: tuple[int, int, int]
    pad: tuple[int, int, int]
    dilation: tuple[int, int, int]
    groups: int
    channels_last: bool = False
    pad_products: bool = True

    @classmethod
    def of(cls, problem: ConvProblem) -> Geom:
        missing = 3 - problem.ndim

        def lift(shape: tuple[int, ...]) -> Any:
            return shape[:2] + (1,) * missing + shape[2:]

        return cls(lift(problem.x_shape), lift(problem.w_shape), lift(problem.y_shape),
                   (1,) * missing + problem.stride,  # type: ignore[arg-type]
                   (0,) * missing + tuple(lo for lo, _ in problem.padding),  # type: ignore[arg-type]
                   (1,) * missing + problem.dilation,  # type: ignore[arg-type]
                   problem.groups)

    @property
    def args(self) -> tuple[int, ...]:
        return (*self.x, *self.w, *self.y[2:], *self.stride, *self.pad, *self.dilation,
                self.groups)

    @property
    def taps(self) -> int:
        return self.w[2] * self.w[3] * self.w[4]

    @property
    def positions(self) -> int:
        return self.y[2] * self.y[3] * self.y[4]

    @property
    def plane(self) -> int:
        return self.x[2] * self.x[3] * self.x[4]

    @property
    def out_per_group(self) -> int:
        return self.w[0] // self.groups

    def unit_stride(self) -> bool:
        return self.stride == (1, 1, 1)

    def flipped(self) -> Geom:
        """The data gradient of a stride-1 pass as a forward convolution of dy with the
        flipped, channel-swapped weights (util.cl flip_weights) and padding
        ``dilation * (k - 1) - pad`` (negative values crop), whose padding taps stand for
        no product: the scatter definition of the data gradient sums real entries only."""
        assert self.unit_stride()
        k, c = self.w[0], self.x[1]
        pad = tuple(d * (kk - 1) - p for d, kk, p in zip(self.dilation, self.w[2:], self.pad))
        return replace(self, x=self.y, y=self.x, w=(c, k // self.groups, *self.w[2:]),
                       pad=pad, pad_products=False)  # type: ignore[arg-type]


@dataclass
class Call:
    """What one backend call computes with: the context, queue, compute dtype, budget."""

    state: ContextState
    queue: Any
    dtype: np.dtype
    budget: int
    _placeholder: Any = None
    _steps: int = 0        # checkpoint(): loop steps of this call so far
    _marker: Any = None    # checkpoint(): the event that ends the step before the last

    def placeholder(self) -> Array:
        """A one-element buffer for pointer arguments a kernel does not read (no bias)."""
        if self._placeholder is None:
            self._placeholder = self.empty((1,))
        return self._placeholder

    @property
    def itemsize(self) -> int:
        return int(self.dtype.itemsize)

    def defines(self, **extra: Any) -> dict[str, Any]:
        defines: dict[str, Any] = {"USE_DOUBLE": True} if self.dtype == np.float64 else {}
        defines.update(extra)
        return defines

    def kernel(self, program: str, name: str, **extra: Any) -> Any:
        return self.state.kernel(PROGRAMS[program], name, self.defines(**extra))

    def empty(self, shape: Sequence[int]) -> Array:
        """Solver scratch in the compute dtype (too large: SolverUnavailable)."""
        return self.state.empty(self.queue, shape, self.dtype, scratch=True)

    def tensor(self, shape: Sequence[int]) -> Array:
        """A result tensor in the compute dtype (too large: WorkspaceTooLargeError)."""
        return self.state.empty(self.queue, shape, self.dtype)

    def launch(self, kernel: Any, global_size: Sequence[int], local_size: Sequence[int],
               *args: Any, fixed: bool = False, item_flops: float = 0) -> None:
        self.state.launch(self.queue, kernel, global_size, local_size, *args, fixed=fixed,
                          item_flops=item_flops)

    def flat(self, program: str, name: str, count: int, *args: Any, item_flops: float = 0,
             **extra: Any) -> None:
        """Launch a 1-D element-wise kernel over *count* items (*item_flops* each: a long
        launch runs in interruptible pieces, ContextState.launch)."""
        if count:
            self.launch(self.kernel(program, name, **extra), (count,), (FLAT_GROUP,), *args,
                        item_flops=item_flops)

    def zero(self, a: Array) -> None:
        self.flat("util", "fill_zero", a.size, a.data, np.int64(a.size))

    def checkpoint(self) -> None:
        """Called before each step of a solver's loop (a workspace tile, a block of images):
        keeps at most two steps' work queued, waiting for older ones in short sleeps, so a
        KeyboardInterrupt lands in this thread within about two steps instead of after the
        whole pass (the solvers enqueue without waiting, and pyopencl's final wait blocks
        signals). On an interrupt the queued steps are finished first, leaving the queue
        empty for the next call. The first step of a pass costs nothing: a one-step pass
        never waits here."""
        self._steps += 1
        if self._steps == 1:
            return
        marker = self.state.cl.enqueue_marker(self.queue)
        self.queue.flush()
        previous, self._marker = self._marker, marker
        if previous is not None:
            try:
                wait_interruptibly(self.state.cl, previous)
            except BaseException:
                self.queue.finish()
                raise


def L(value: int) -> np.int64:
    """A 64-bit (``long``) kernel argument: element offsets and strides."""
    return np.int64(value)


@dataclass(frozen=True)
class Epilogue:
    """What the kernel writing a pass's result applies to each value of channel ``ch`` as it
    stores it: ``activation(v + bias[base + b1 * batch + ch])`` (common.h EPILOGUE_PARAMS).
    ``activation`` is a code of :data:`convflow.activations.ACTIVATION_CODES`; ``b1`` is the
    channel step per batch of a batched GEMM; ``by_column`` says the channel is a GEMM's
    column index rather than its row."""

    bias: Array | None = None
    activation: int = 0
    base: int = 0
    b1: int = 0
    by_column: bool = False

    @property
    def active(self) -> bool:
        return self.bias is not None or self.activation != 0

    def at(self, base: int = 0, b1: int = 0, by_column: bool = False) -> Epilogue:
        """This epilogue for a kernel whose channel 0 is *base* (and so on)."""
        return replace(self, base=base, b1=b1, by_column=by_column)

    def args(self, call: Call) -> tuple[Any, ...]:
        mode = ((1 if self.bias is not None else 0) | (self.activation << 1)
                | (16 if self.by_column else 0))
        bias = self.bias if self.bias is not None else call.placeholder()
        return bias.data, L(self.base), L(self.b1), np.int32(mode)


NO_EPILOGUE = Epilogue()


# Shared steps ------------------------------------------------------------------------------
def pack_panels(call: Call, src: Array, m: int, k: int, r: int, *, s0: int, sm: int, sk: int,
                sb1: int = 0, sb2: int = 0, nb1: int = 1, nb2: int = 1,
                out: Array | None = None) -> tuple[Array, int]:
    """Pack ``A_b(m, k) = src[s0 + b1*sb1 + b2*sb2 + m*sm + k*sk]`` into panels of *r* rows
    for the vgemm kernels (``r = 1``: a plain strided copy, ``out[b][m][k]``); returns the
    buffer (*out* if given) and the elements per batch entry."""
    mpad = -(-m // r) * r
    per_batch = mpad * k
    if out is None:
        out = call.empty((nb1 * nb2 * per_batch,))
    call.launch(call.kernel("util", "pack_panels"), (-(-k // PACK_RUN), mpad, nb1 * nb2),
                (1, FLAT_GROUP // 8, 1), src.data, out.data, m, k, r, mpad, L(s0), sm, sk,
                L(sb1), L(sb2), nb2)
    return out, per_batch


def nonfinite_flag(call: Call, a: Array) -> Array:
    """A one-element buffer holding 1 if *a* has an Inf or NaN, else 0 (util.cl
    any_nonfinite): the kernels that skip the zero padding add its products ``0 * v`` only
    when it says they can change a sum (common.h), so finite problems keep their speed."""
    flag = call.empty((1,))
    group = call.state.reduction_group()
    call.launch(call.kernel("util", "any_nonfinite", RED_WG=group), (group,), (group,),
                a.data, L(a.size), flag.data, fixed=True)
    return flag


def flip_weights(call: Call, g: Geom, w: Array) -> Array:
    k, cg = g.w[0], g.w[1]
    out = call.empty((g.x[1], k // g.groups, *g.w[2:]))
    call.flat("util", "flip_weights", out.size, w.data, out.data, k, cg, g.groups, g.taps)
    return out


def _vgemm_rows(kind: str, call: Call) -> int:
    vw = 16 if call.dtype == np.float32 else 8
    return MR if kind == "vgemm_n" else vw


def vgemm_kind(call: Call, pcount: int) -> str:
    """vgemm_n (vectors along positions) unless an image has too few positions to fill the
    vectors, then vgemm_m (vectors along output channels)."""
    vw = 16 if call.dtype == np.float32 else 8
    if pcount % vw == 0 or pcount >= 8 * vw:
        return "vgemm_n"
    return "vgemm_m"


@dataclass(frozen=True)
class VOperand:
    """Addressing of a vgemm B or C operand: element (k or m, img, p) at
    ``base + b1*s_b1 + b2*s_b2 + img*s_img + row*ld + p*s_p`` (``s_p`` other than 1 only
    for vgemm_m: channels-last operands, whose positions are a row of channels apart)."""

    base: int
    s_img: int
    ld: int
    s_b1: int = 0
    s_b2: int = 0
    s_p: int = 1


def vgemm(call: Call, kind: str, packed: Array, ap0: int, ap_b1: int, ap_b2: int, m: int,
          k: int, nimg: int, pcount: int, b: Array, bo: VOperand, c: Array, co: VOperand,
          nb1: int = 1, nb2: int = 1, accumulate: bool = False,
          ep: Epilogue = NO_EPILOGUE) -> None:
    """C(m, (img, p)) (+)= sum_k A(m, k) B(k, (img, p)) with A packed for *kind*, written
    through *ep* (the channel is the row m)."""
    assert not (accumulate and ep.active), "the epilogue applies to complete results only"
    kernel = call.kernel("vgemm", kind, MR=MR, NRJ=NRJ)
    vw = 16 if call.dtype == np.float32 else 8
    if kind == "vgemm_n":
        assert bo.s_p == 1 and co.s_p == 1, "vgemm_n reads and writes positions as vectors"
        columns, rows = nimg * -(-pcount // vw), -(-m // MR)
        b_args: tuple[Any, ...] = (b.data, L(bo.base), L(bo.s_img), bo.ld)
        c_args: tuple[Any, ...] = (c.data, L(co.base), L(co.s_img), co.ld)
    else:
        columns, rows = -(-(nimg * pcount) // NRJ), -(-m // vw)
        b_args = (b.data, L(bo.base), L(bo.s_img), bo.ld, bo.s_p)
        c_args = (c.data, L(co.base), L(co.s_img), co.ld, co.s_p)
    call.launch(kernel, (rows, columns, nb1 * nb2), (VGEMM_GROUP, 1, 1),
                m, k, nimg, pcount, packed.data, L(ap0), L(ap_b1), L(ap_b2),
                *b_args, L(bo.s_b1), L(bo.s_b2), *c_args, L(co.s_b1), L(co.s_b2), nb2,
                accumulate, *ep.args(call))


def vgemm_nt(call: Call, m: int, nj: int, nimg: int, pcount: int, a: Array, ao: VOperand,
             b: Array, bo: VOperand, c: Array, c0: int, ldc: int, c_img: int = 0,
             cp: int = 0, c_b1: int = 0, c_b2: int = 0, nb1: int = 1, nb2: int = 1,
             accumulate: bool = False, ep: Epilogue = NO_EPILOGUE) -> None:
    """C(m, j) (+)= sum_{img, p} A(m, (img, p)) B(j, (img, p)): reductions along memory;
    column j of C at ``c0 + (j // cp) * c_img + m * ldc + j % cp``, written through *ep*
    (the channel is m, or ``j % cp`` with ``ep.by_column``)."""
    assert not (accumulate and ep.active), "the epilogue applies to complete results only"
    kernel = call.kernel("vgemm", "vgemm_nt", MR=MR, NRJ=NRJ)
    call.launch(kernel, (-(-nj // NT_RJ), -(-m // NT_RM), nb1 * nb2), (VGEMM_GROUP, 1, 1),
                m, nj, nimg, pcount, a.data, L(ao.base), L(ao.s_img), ao.ld, L(ao.s_b1),
                L(ao.s_b2), b.data, L(bo.base), L(bo.s_img), bo.ld, L(bo.s_b1), L(bo.s_b2),
                c.data, L(c0), L(c_img), cp or nj, ldc, L(c_b1), L(c_b2), nb2, accumulate,
                *ep.args(call))


@dataclass(frozen=True)
class GOperand:
    """gemm_tiled addressing (see gemm.cl): offsets and strides of one operand."""

    base: int = 0
    s_m: int = 0      # A: per row m; C: per row m
    s_kimg: int = 0   # A, B: per image of the reduction index
    s_k: int = 0      # A, B: per reduction position
    s_jimg: int = 0   # B, C: per image of the column index
    s_j: int = 0      # B, C: per column position
    s_b1: int = 0
    s_b2: int = 0


def gemm_tiled(call: Call, m: int, n: int, k: int, kp: int, np_: int, a: Array, ao: GOperand,
               b: Array, bo: GOperand, c: Array, co: GOperand, nb1: int = 1, nb2: int = 1,
               accumulate: bool = False, ep: Epilogue = NO_EPILOGUE) -> None:
    """The GPU-style local-memory tiled GEMM (gemm.cl) with its work-group size chosen
    from the device's limits: 16x16 items on 64x64 tiles, else 8x8 on 32x32. C is written
    through *ep* (the channel is the row m)."""
    assert not (accumulate and ep.active), "the epilogue applies to complete results only"
    kernel, why = None, ""
    for ts in (64, 32):
        threads = (ts // 4) ** 2
        if threads > call.state.info.max_work_group_size:
            why = (f"the tiled GEMM needs work-groups of at least 64 items; "
                   f"{call.state.info.name!r} allows {call.state.info.max_work_group_size}")
            continue
        candidate = call.kernel("gemm", "gemm_tiled", TS=ts)
        try:
            call.state.check_local(candidate, 0, f"the {ts}x{ts} tiled GEMM")
        except SolverUnavailable as exc:
            why = str(exc)
            continue
        if threads <= call.state.max_group(candidate):
            kernel = candidate
            break
        why = (f"the tiled GEMM needs work-groups of at least 64 items; {call.state.info.name!r} "
               f"allows {call.state.max_group(candidate)} for it")
    if kernel is None:
        raise SolverUnavailable(why)
    rt = ts // 4
    call.launch(kernel, (-(-n // ts) * rt, -(-m // ts) * rt, nb1 * nb2), (rt, rt, 1),
                m, n, k, max(kp, 1), max(np_, 1),
                a.data, L(ao.base), L(ao.s_m), L(ao.s_kimg), L(ao.s_k), L(ao.s_b1), L(ao.s_b2),
                b.data, L(bo.base), L(bo.s_kimg), L(bo.s_k), L(bo.s_jimg), L(bo.s_j),
                L(bo.s_b1), L(bo.s_b2),
                c.data, L(co.base), L(co.s_m), L(co.s_jimg), L(co.s_j), L(co.s_b1), L(co.s_b2),
                nb2, accumulate, *ep.args(call), fixed=True)


@dataclass(frozen=True)
class Tile:
    """Output positions ``p_start .. p_start + pcount`` of images ``n0 .. n0 + nimg``."""

    n0: int
    nimg: int
    p_start: int
    pcount: int

    @property
    def columns(self) -> int:
        return self.nimg * self.pcount


def plan_tiles(n_images: int, positions: int, bytes_per_column: int, budget: int,
               min_columns: int = 16) -> list[Tile]:
    """Split (image, position) columns into tiles whose scratch fits *budget*: whole
    images when one fits (several per tile), else ranges of one image's positions."""
    max_columns = max(min_columns, budget // max(1, bytes_per_column))
    if positions <= max_columns:
        per = max(1, max_columns // positions)
        return [Tile(n, min(per, n_images - n), 0, positions) for n in range(0, n_images, per)]
    return [Tile(n, 1, p, min(max_columns, positions - p))
            for n in range(n_images) for p in range(0, positions, max_columns)]


# Solvers -----------------------------------------------------------------------------------
# (call, geometry, a, b, out, epilogue): forward (x, w -> y) and data-gradient (dy, w -> dx)
# passes write through the epilogue; weight-gradient passes (x, dy -> dw) get NO_EPILOGUE.
Pass = Callable[[Call, Geom, Array, Array, Array, Epilogue], None]
Rule = Callable[[ConvProblem], tuple[bool, str]]


@dataclass(frozen=True)
class Solver(Algorithm):
    """An opencl algorithm record: the shared record plus the device style it suits
    (``"any"``, ``"gpu"`` or ``"cpu"``); ``passes`` holds the :data:`Pass` of each direction.
    Every forward and data-gradient pass applies the bias and activation as it writes."""

    style: str = "any"

    def pass_for(self, direction: Direction) -> Pass:
        return self.passes[direction]  # type: ignore[no-any-return]


def _solver(name: str, style: str, summary: str, applies: Rule, can_run: Rule,
            forward: Pass | None = None, backward_data: Pass | None = None,
            backward_weight: Pass | None = None, channels_last: bool = False) -> Solver:
    given = {Direction.FORWARD: forward, Direction.BACKWARD_DATA: backward_data,
             Direction.BACKWARD_WEIGHT: backward_weight}
    passes = {direction: run for direction, run in given.items() if run is not None}
    directions = frozenset(passes)
    return Solver(name, summary, applies, can_run, directions, channels_last=channels_last,
                  fused=directions - {Direction.BACKWARD_WEIGHT}, passes=passes, style=style)


def _channels_first(g: Geom, solver: str) -> None:
    assert not g.channels_last, f"{solver} computes channels-first tensors only"


# naive -------------------------------------------------------------------------------------
def _naive_item_flops(kernel_name: str, g: Geom) -> float:
    """The work of one naive work-item (its output's sum; the data gradient visits every
    tap of every output channel of its group), for splitting long launches."""
    if kernel_name == "naive_fwd":
        return 2.0 * g.w[1] * g.taps
    if kernel_name == "naive_bwd_data":
        return 2.0 * g.out_per_group * g.taps
    return 2.0 * g.x[0] * g.positions


def _naive(kernel_name: str, epilogue: bool, padding_meets_b: bool) -> Pass:
    """*padding_meets_b*: the kernel multiplies its second operand by the zero padding (the
    weights of the forward pass, dy of the weight gradient) and takes its nonfinite_flag."""

    def run(call: Call, g: Geom, a: Array, b: Array, out: Array, ep: Epilogue) -> None:
        _channels_first(g, "naive")
        extra = ep.args(call) if epilogue else ()
        flag = (nonfinite_flag(call, b).data,) if padding_meets_b else ()
        # The naive kernels index by get_global_id(0) alone: they may run in pieces.
        call.flat("naive", kernel_name, out.size, a.data, b.data, out.data, *g.args, *extra,
                  *flag, item_flops=_naive_item_flops(kernel_name, g))

    return run


# depthwise ---------------------------------------------------------------------------------
DW_OPI = 4
DW_NHWC_GROUP = (16, 4, 1)   # channels along dimension 0: neighbours read neighbours


def depthwise_forward(call: Call, g: Geom, x: Array, w: Array, y: Array, ep: Epilogue) -> None:
    n, k, od, oh, ow = g.y
    if g.channels_last:
        call.launch(call.kernel("depthwise", "depthwise_fwd_nhwc"),
                    (k, -(-ow // DW_OPI), n * od * oh), DW_NHWC_GROUP, x.data, w.data, y.data,
                    *g.args, *ep.args(call), nonfinite_flag(call, w).data)
        return
    call.launch(call.kernel("depthwise", "depthwise_fwd"), (-(-ow // DW_OPI), oh, n * k * od),
                (8, 8, 1), x.data, w.data, y.data, *g.args, *ep.args(call),
                nonfinite_flag(call, w).data)


def depthwise_backward_data(call: Call, g: Geom, dy: Array, w: Array, dx: Array,
                            ep: Epilogue) -> None:
    n, c, d, h, wd = g.x
    if g.channels_last:
        call.launch(call.kernel("depthwise", "depthwise_bwd_data_nhwc"),
                    (c, -(-wd // DW_OPI), n * d * h), DW_NHWC_GROUP, dy.data, w.data, dx.data,
                    *g.args, *ep.args(call))
        return
    call.launch(call.kernel("depthwise", "depthwise_bwd_data"),
                (-(-wd // DW_OPI), h, n * c * d), (8, 8, 1), dy.data, w.data, dx.data, *g.args,
                *ep.args(call))


def direct_wrw(call: Call, g: Geom, x: Array, dy: Array, dw: Array,
               ep: Epilogue = NO_EPILOGUE) -> None:
    group = call.state.reduction_group(RED_GROUP)
    kernel = call.kernel("direct_wrw", "direct_wrw", WRW_WG=group)
    call.state.check_local(kernel, 0, "direct_wrw")
    total = dw.size
    rows = -(-total // 65535)
    cols = min(total, 65535)
    call.launch(kernel, (cols * group, rows), (group, 1), x.data, dy.data, dw.data, *g.args,
                g.channels_last, nonfinite_flag(call, dy).data, fixed=True)


# tiled direct ------------------------------------------------------------------------------
OWPI, OCPI, CIC = 2, 4, 4


def tiled_direct_forward(call: Call, g: Geom, x: Array, w: Array, y: Array,
                         ep: Epilogue) -> None:
    _channels_first(g, "tiled_direct")
    info = call.state.info
    shape = next(((tw, th) for tw, th in rules.TILED_DIRECT_GROUPS
                  if tw * th <= info.max_work_group_size), None)
    if shape is None:
        raise SolverUnavailable(f"tiled_direct needs work-groups of 32 items; {info.name!r} "
                                f"allows {info.max_work_group_size}")
    tw, th = shape
    kernel = call.kernel("direct_tiled", "direct_tiled_fwd", TW=tw, TH=th)
    sh, sw = g.stride[1:]
    dh, dw = g.dilation[1:]
    kh, kw = g.w[3:]
    in_tw = (tw * OWPI - 1) * sw + (kw - 1) * dw + 1
    in_th = (th - 1) * sh + (kh - 1) * dh + 1
    x_bytes = CIC * in_th * in_tw * call.itemsize
    w_bytes = OCPI * CIC * kh * kw * call.itemsize
    call.state.check_local(kernel, x_bytes + w_bytes,
                           f"tiled_direct's input tile ({in_th}x{in_tw} per channel) and weights")
    import pyopencl as cl

    n, _, od, oh, ow = g.y
    co_blocks = -(-g.out_per_group // OCPI)
    call.launch(kernel, (-(-ow // (tw * OWPI)) * tw, -(-oh // th) * th,
                         n * g.groups * co_blocks * od), (tw, th, 1),
                x.data, w.data, y.data, *g.args, *ep.args(call), in_tw, in_th, co_blocks,
                int(g.pad_products), cl.LocalMemory(x_bytes), cl.LocalMemory(w_bytes),
                fixed=True)


def via_flipped_forward(forward: Pass) -> Pass:
    """The data gradient of a stride-1 problem as a forward pass with flipped weights (the
    bias and activation per input channel are the flipped pass's per output channel)."""

    def run(call: Call, g: Geom, dy: Array, w: Array, dx: Array, ep: Epilogue) -> None:
        forward(call, g.flipped(), dy, flip_weights(call, g, w), dx, ep)

    return run


# Channels-last GEMMs -----------------------------------------------------------------------
# Channels-last activations are row-major matrices (position, channel), so a convolution pass
# is Y(j, o) = sum_r X(j, r) Wm(o, r) with rows j (positions) of X and Y contiguous: X is
# the input itself (1x1) or im2col_nhwc's matrix, and Wm the weights read in any order.
@dataclass(frozen=True)
class NhwcWeights:
    """Wm(o, r) of each group prepared for nhwc_gemm: panels of VW rows for vgemm_m (vectors
    along the output channels o), or rows of r for vgemm_nt (when outputs are few)."""

    kind: str
    packed: Array
    per_group: int
    nout: int
    nred: int


def nhwc_weights(call: Call, wm: Array, nout: int, nred: int, *, w0: int, w_so: int,
                 w_sr: int, groups: int = 1, w_b1: int = 0) -> NhwcWeights:
    """Pack ``Wm_b(o, r) = wm[w0 + b*w_b1 + o*w_so + r*w_sr]`` for each group b."""
    vw = _vgemm_rows("vgemm_m", call)
    kind = "vgemm_m" if nout >= vw else "vgemm_nt"
    rows = vw if kind == "vgemm_m" else 1
    packed, per = pack_panels(call, wm, nout, nred, rows, s0=w0, sm=w_so, sk=w_sr, sb1=w_b1,
                              nb1=groups)
    return NhwcWeights(kind, packed, per, nout, nred)


def nhwc_gemm(call: Call, weights: NhwcWeights, ncols: int, x: Array, x0: int, ldx: int,
              y: Array, y0: int, ldy: int, *, group: int | None = None, groups: int = 1,
              x_b1: int = 0, y_b1: int = 0, ep: Epilogue = NO_EPILOGUE) -> None:
    """``Y(j, o) = sum_r X(j, r) Wm(o, r)`` for j < ncols, X(j, r) = x[x0 + j*ldx + r] and
    Y(j, o) at y[y0 + j*ldy + o], for one *group* of the packed weights or, batched, for
    every group b < *groups* (offsets x_b1, y_b1 per group). The epilogue's channel is o
    (``ep.base``, ``ep.b1`` set by the caller)."""
    nout, nred = weights.nout, weights.nred
    a0 = 0 if group is None else group * weights.per_group
    nb1 = groups if group is None else 1
    if weights.kind == "vgemm_m":
        vgemm(call, "vgemm_m", weights.packed, a0, weights.per_group, 0, nout, nred, 1, ncols,
              x, VOperand(x0, 0, 1, s_b1=x_b1, s_p=ldx),
              y, VOperand(y0, 0, 1, s_b1=y_b1, s_p=ldy), nb1=nb1, ep=ep)
        return
    vgemm_nt(call, ncols, nout, 1, nred, x, VOperand(x0, 0, ldx, s_b1=x_b1),
             weights.packed, VOperand(a0, 0, nred, s_b1=weights.per_group), y, y0, ldy,
             cp=nout, c_b1=y_b1, nb1=nb1, ep=replace(ep, by_column=True))


def nhwc_wgrad(call: Call, dy: Array, dy0: int, ldy: int, kg: int, x: Array, x0: int,
               ldx: int, nx: int, ncols: int, dw: Array, dw0: int, accumulate: bool) -> None:
    """``dW(o, r) (+)= sum_j dY(j, o) X(j, r)`` for j < ncols, o < kg, r < nx: dY's rows are
    packed (the reduction runs over them) and X is read as rows of contiguous vectors;
    dW(o, r) at dw[dw0 + o*nx + r]."""
    packed, _ = pack_panels(call, dy, kg, ncols, MR, s0=dy0, sm=1, sk=ldy)
    vgemm(call, "vgemm_n", packed, 0, 0, 0, kg, ncols, 1, nx, x, VOperand(x0, 0, ldx),
          dw, VOperand(dw0, 0, nx), accumulate=accumulate)


def _position_chunks(call: Call, total: int, per_position: int) -> list[tuple[int, int]]:
    """Ranges of positions whose packed scratch (*per_position* values each) fits the budget."""
    step = max(16, call.budget // max(1, per_position * call.itemsize))
    return [(j, min(step, total - j)) for j in range(0, total, step)]


# 1x1 and im2col GEMMs ----------------------------------------------------------------------
def _pointwise_in_place(g: Geom) -> bool:
    return g.unit_stride() and g.x[2:] == g.y[2:] and g.taps == 1 and g.pad == (0, 0, 0)


def _gemm_1x1_forward(style: str, fallback: Pass) -> Pass:
    def run(call: Call, g: Geom, x: Array, w: Array, y: Array, ep: Epilogue) -> None:
        if not _pointwise_in_place(g) or (style == "cpu" and g.positions < NT_MAX_POSITIONS
                                          and not g.channels_last):
            fallback(call, g, x, w, y, ep)
            return
        n, c = g.x[:2]
        k, cg = g.w[:2]
        kg, p, groups = g.out_per_group, g.positions, g.groups
        if g.channels_last:  # Y(j, ko) = sum_ci X(j, ci) W(ko, ci), j over every image
            if style == "gpu":
                gemm_tiled(call, kg, n * p, cg, cg, n * p,
                           w, GOperand(s_m=cg, s_k=1, s_b1=kg * cg),
                           x, GOperand(s_k=1, s_j=c, s_b1=cg),
                           y, GOperand(s_m=1, s_j=k, s_b1=kg), nb1=groups, ep=ep.at(b1=kg))
                return
            weights = nhwc_weights(call, w, kg, cg, w0=0, w_so=cg, w_sr=1, groups=groups,
                                   w_b1=kg * cg)
            nhwc_gemm(call, weights, n * p, x, 0, c, y, 0, k, groups=groups, x_b1=cg,
                      y_b1=kg, ep=ep.at(b1=kg))
            return
        if style == "gpu":
            gemm_tiled(call, kg, n * p, cg, cg, p,
                       w, GOperand(s_m=cg, s_k=1, s_b1=kg * cg),
                       x, GOperand(s_k=p, s_jimg=c * p, s_j=1, s_b1=cg * p),
                       y, GOperand(s_m=p, s_jimg=k * p, s_j=1, s_b1=kg * p), nb1=groups,
                       ep=ep.at(b1=kg))
            return
        kind = vgemm_kind(call, p)
        packed, per = pack_panels(call, w, kg, cg, _vgemm_rows(kind, call), s0=0, sm=cg, sk=1,
                                  sb1=kg * cg, nb1=groups)
        vgemm(call, kind, packed, 0, per, 0, kg, cg, n, p,
              x, VOperand(0, c * p, p, s_b1=cg * p), y, VOperand(0, k * p, p, s_b1=kg * p),
              nb1=groups, ep=ep.at(b1=kg))

    return run


def _gemm_1x1_backward_data(style: str, fallback: Pass) -> Pass:
    def run(call: Call, g: Geom, dy: Array, w: Array, dx: Array, ep: Epilogue) -> None:
        if not _pointwise_in_place(g):
            fallback(call, g, dy, w, dx, ep)
            return
        n, c = g.x[:2]
        k, cg = g.w[:2]
        kg, p, groups = g.out_per_group, g.positions, g.groups
        if g.channels_last:  # dX(j, ci) = sum_ko dY(j, ko) W(ko, ci)
            if style == "gpu":
                gemm_tiled(call, cg, n * p, kg, kg, n * p,
                           w, GOperand(s_m=1, s_k=cg, s_b1=kg * cg),
                           dy, GOperand(s_k=1, s_j=k, s_b1=kg),
                           dx, GOperand(s_m=1, s_j=c, s_b1=cg), nb1=groups, ep=ep.at(b1=cg))
                return
            weights = nhwc_weights(call, w, cg, kg, w0=0, w_so=1, w_sr=cg, groups=groups,
                                   w_b1=kg * cg)
            nhwc_gemm(call, weights, n * p, dy, 0, k, dx, 0, c, groups=groups, x_b1=kg,
                      y_b1=cg, ep=ep.at(b1=cg))
            return
        if style == "gpu":
            gemm_tiled(call, cg, n * p, kg, kg, p,
                       w, GOperand(s_m=1, s_k=cg, s_b1=kg * cg),
                       dy, GOperand(s_k=p, s_jimg=k * p, s_j=1, s_b1=kg * p),
                       dx, GOperand(s_m=p, s_jimg=c * p, s_j=1, s_b1=cg * p), nb1=groups,
                       ep=ep.at(b1=cg))
            return
        kind = vgemm_kind(call, p)
        packed, per = pack_panels(call, w, cg, kg, _vgemm_rows(kind, call), s0=0, sm=1, sk=cg,
                                  sb1=kg * cg, nb1=groups)
        vgemm(call, kind, packed, 0, per, 0, cg, kg, n, p,
              dy, VOperand(0, k * p, p, s_b1=kg * p), dx, VOperand(0, c * p, p, s_b1=cg * p),
              nb1=groups, ep=ep.at(b1=cg))

    return run


def _gemm_1x1_backward_weight(style: str, fallback: Pass) -> Pass:
    def run(call: Call, g: Geom, x: Array, dy: Array, dw: Array,
            ep: Epilogue = NO_EPILOGUE) -> None:
        if not _pointwise_in_place(g):
            fallback(call, g, x, dy, dw, ep)
            return
        n, c = g.x[:2]
        k, cg = g.w[:2]
        kg, p, groups = g.out_per_group, g.positions, g.groups
        if g.channels_last:  # dW(ko, ci) = sum_j dY(j, ko) X(j, ci), j over every image
            if style == "gpu":
                gemm_tiled(call, kg, cg, n * p, n * p, cg,
                           dy, GOperand(s_m=1, s_k=k, s_b1=kg),
                           x, GOperand(s_k=c, s_j=1, s_b1=cg),
                           dw, GOperand(s_m=cg, s_j=1, s_b1=kg * cg), nb1=groups)
                return
            for j0, count in _position_chunks(call, n * p, kg):
                for group in range(groups):
                    call.checkpoint()
                    nhwc_wgrad(call, dy, j0 * k + group * kg, k, kg, x, j0 * c + group * cg,
                               c, cg, count, dw, group * kg * cg, accumulate=j0 > 0)
            return
        if style == "gpu":
            gemm_tiled(call, kg, cg, n * p, p, cg,
                       dy, GOperand(s_m=p, s_kimg=k * p, s_k=1, s_b1=kg * p),
                       x, GOperand(s_kimg=c * p, s_k=1, s_j=p, s_b1=cg * p),
                       dw, GOperand(s_m=cg, s_j=1, s_b1=kg * cg), nb1=groups)
            return
        vgemm_nt(call, kg, cg, n, p, dy, VOperand(0, k * p, p, s_b1=kg * p),
                 x, VOperand(0, c * p, p, s_b1=cg * p), dw, 0, cg, c_b1=kg * cg, nb1=groups)

    return run


def _im2col(call: Call, g: Geom, x: Array, col: Array, group: int, tile: Tile,
            transposed: bool = False) -> None:
    if g.channels_last:  # col[j * rows + tap * CG + c]
        call.launch(call.kernel("util", "im2col_nhwc"), (tile.columns,), (FLAT_GROUP,),
                    x.data, col.data, *g.args, tile.n0, group, tile.p_start, tile.pcount,
                    tile.nimg)
        return
    rows = g.w[1] * g.taps
    ow = g.y[4]
    line0 = tile.p_start // ow
    lines = (tile.p_start + tile.pcount - 1) // ow - line0 + 1
    grid = (rows, tile.nimg * lines) if transposed else (tile.nimg * lines, rows)
    call.launch(call.kernel("util", "im2col"), grid, (8, 8), x.data, col.data, *g.args,
                tile.n0, group, tile.p_start, tile.pcount, tile.nimg, line0, lines, transposed)


def _col2im(call: Call, g: Geom, col: Array, dx: Array, group: int, tile: Tile,
            accumulate: bool, ep: Epilogue) -> None:
    if g.channels_last:
        call.launch(call.kernel("util", "col2im_nhwc"), (g.w[1], tile.nimg * g.plane),
                    (16, 4), col.data, dx.data, *g.args, *ep.args(call), tile.n0, group,
                    tile.p_start, tile.pcount, tile.nimg, accumulate)
        return
    count = tile.nimg * g.w[1] * g.plane
    call.flat("util", "col2im", count, col.data, dx.data, *g.args, *ep.args(call), tile.n0,
              group, tile.p_start, tile.pcount, tile.nimg, accumulate)


def _tiles(call: Call, g: Geom, rows: int) -> list[Tile]:
    return plan_tiles(g.x[0], g.positions, rows * call.itemsize, call.budget)


def _col_buffer(call: Call, rows: int, tiles: list[Tile]) -> Array:
    return call.empty((rows * max(t.columns for t in tiles),))


def _nhwc_order_weights(call: Call, g: Geom, w: Array) -> Array:
    """The weights (K, CG, taps) reordered to (K, taps, CG): the row order of im2col_nhwc."""
    k, cg, taps = g.w[0], g.w[1], g.taps
    out, _ = pack_panels(call, w, taps, cg, 1, s0=0, sm=1, sk=taps, sb1=cg * taps, nb1=k)
    return out


def _first_positions(g: Geom, tile: Tile) -> int:
    """Index of the tile's first column among all (image, position) pairs: channels-last
    tensors hold them in this order, a row of channels each."""
    return tile.n0 * g.positions + tile.p_start


def _im2col_forward_nhwc(style: str, call: Call, g: Geom, x: Array, w: Array, y: Array,
                         ep: Epilogue) -> None:
    k, cg = g.w[:2]
    kg = g.out_per_group
    rows = cg * g.taps
    tiles = _tiles(call, g, rows)
    col = _col_buffer(call, rows, tiles)
    wr = _nhwc_order_weights(call, g, w)
    weights = None
    if style == "cpu":
        weights = nhwc_weights(call, wr, kg, rows, w0=0, w_so=rows, w_sr=1, groups=g.groups,
                               w_b1=kg * rows)
    for group in range(g.groups):
        for tile in tiles:
            call.checkpoint()
            _im2col(call, g, x, col, group, tile)
            y0 = _first_positions(g, tile) * k + group * kg
            if weights is None:
                gemm_tiled(call, kg, tile.columns, rows, rows, tile.columns,
                           wr, GOperand(base=group * kg * rows, s_m=rows, s_k=1),
                           col, GOperand(s_k=1, s_j=rows),
                           y, GOperand(base=y0, s_m=1, s_j=k), ep=ep.at(base=group * kg))
            else:
                nhwc_gemm(call, weights, tile.columns, col, 0, rows, y, y0, k, group=group,
                          ep=ep.at(base=group * kg))


def _im2col_forward(style: str) -> Pass:
    def run(call: Call, g: Geom, x: Array, w: Array, y: Array, ep: Epilogue) -> None:
        if g.channels_last:
            _im2col_forward_nhwc(style, call, g, x, w, y, ep)
            return
        k, cg = g.w[:2]
        kg, p = g.out_per_group, g.positions
        rows = cg * g.taps
        tiles = _tiles(call, g, rows)
        col = _col_buffer(call, rows, tiles)
        kind = vgemm_kind(call, tiles[0].pcount)
        # Few positions per image: B is small, so transpose it (im2col's transposed layout)
        # and read the weights as they are instead of packing them.
        nt = style == "cpu" and p < NT_MAX_POSITIONS
        if style == "cpu" and not nt:
            packed, per = pack_panels(call, w, kg, rows, _vgemm_rows(kind, call), s0=0,
                                      sm=rows, sk=1, sb1=kg * rows, nb1=g.groups)
        for group in range(g.groups):
            group_ep = ep.at(base=group * kg)
            for tile in tiles:
                call.checkpoint()
                _im2col(call, g, x, col, group, tile, transposed=nt)
                y0 = tile.n0 * k * p + group * kg * p + tile.p_start
                if style == "gpu":
                    gemm_tiled(call, kg, tile.columns, rows, rows, tile.pcount,
                               w, GOperand(base=group * kg * rows, s_m=rows, s_k=1),
                               col, GOperand(s_k=tile.columns, s_jimg=tile.pcount, s_j=1),
                               y, GOperand(base=y0, s_m=p, s_jimg=k * p, s_j=1), ep=group_ep)
                    continue
                if nt:
                    vgemm_nt(call, kg, tile.columns, 1, rows, w,
                             VOperand(group * kg * rows, 0, rows), col, VOperand(0, 0, rows),
                             y, y0, p, c_img=k * p, cp=tile.pcount, ep=group_ep)
                    continue
                vgemm(call, kind, packed, group * per, 0, 0, kg, rows, tile.nimg, tile.pcount,
                      col, VOperand(0, tile.pcount, tile.columns), y, VOperand(y0, k * p, p),
                      ep=group_ep)

    return run


def _last_of_image(tiles: list[Tile], index: int) -> bool:
    """Whether tile *index* completes its images (the data gradient's epilogue runs then)."""
    return index + 1 == len(tiles) or tiles[index + 1].n0 != tiles[index].n0


def _im2col_backward_data_nhwc(style: str, call: Call, g: Geom, dy: Array, w: Array,
                               dx: Array, ep: Epilogue) -> None:
    k, cg = g.w[:2]
    kg = g.out_per_group
    rows = cg * g.taps
    tiles = _tiles(call, g, rows)
    col = _col_buffer(call, rows, tiles)
    wr = _nhwc_order_weights(call, g, w)
    weights = None
    if style == "cpu":  # col(j, row) = sum_ko dY(j, ko) W'(ko, row)
        weights = nhwc_weights(call, wr, rows, kg, w0=0, w_so=1, w_sr=rows, groups=g.groups,
                               w_b1=kg * rows)
    for group in range(g.groups):
        for index, tile in enumerate(tiles):
            call.checkpoint()
            dy0 = _first_positions(g, tile) * k + group * kg
            if weights is None:
                gemm_tiled(call, rows, tile.columns, kg, kg, tile.columns,
                           wr, GOperand(base=group * kg * rows, s_m=1, s_k=rows),
                           dy, GOperand(base=dy0, s_k=1, s_j=k),
                           col, GOperand(s_m=1, s_j=rows))
            else:
                nhwc_gemm(call, weights, tile.columns, dy, dy0, k, col, 0, rows, group=group)
            last = _last_of_image(tiles, index)
            _col2im(call, g, col, dx, group, tile, accumulate=tile.p_start > 0,
                    ep=ep if last else NO_EPILOGUE)


def _im2col_backward_data(style: str) -> Pass:
    def run(call: Call, g: Geom, dy: Array, w: Array, dx: Array, ep: Epilogue) -> None:
        if g.channels_last:
            _im2col_backward_data_nhwc(style, call, g, dy, w, dx, ep)
            return
        k, cg = g.w[:2]
        kg, p = g.out_per_group, g.positions
        rows = cg * g.taps
        tiles = _tiles(call, g, rows)
        col = _col_buffer(call, rows, tiles)
        kind = vgemm_kind(call, tiles[0].pcount)
        if style == "cpu":
            packed, per = pack_panels(call, w, rows, kg, _vgemm_rows(kind, call), s0=0, sm=1,
                                      sk=rows, sb1=kg * rows, nb1=g.groups)
        for group in range(g.groups):
            for index, tile in enumerate(tiles):
                call.checkpoint()
                dy0 = tile.n0 * k * p + group * kg * p + tile.p_start
                if style == "gpu":
                    gemm_tiled(call, rows, tile.columns, kg, kg, tile.pcount,
                               w, GOperand(base=group * kg * rows, s_m=1, s_k=rows),
                               dy, GOperand(base=dy0, s_k=p, s_jimg=k * p, s_j=1),
                               col, GOperand(s_m=tile.columns, s_jimg=tile.pcount, s_j=1))
                else:
                    vgemm(call, kind, packed, group * per, 0, 0, rows, kg, tile.nimg,
                          tile.pcount, dy, VOperand(dy0, k * p, p),
                          col, VOperand(0, tile.pcount, tile.columns))
                last = _last_of_image(tiles, index)
                _col2im(call, g, col, dx, group, tile, accumulate=tile.p_start > 0,
                        ep=ep if last else NO_EPILOGUE)

    return run


def _im2col_backward_weight_nhwc(style: str, call: Call, g: Geom, x: Array, dy: Array,
                                 dw: Array) -> None:
    k, cg = g.w[:2]
    kg, taps = g.out_per_group, g.taps
    rows = cg * taps
    tiles = _tiles(call, g, rows + kg)
    col = _col_buffer(call, rows, tiles)
    # dW'(ko, tap * CG + c) = sum_j dY(j, ko) col(j, tap * CG + c), in im2col_nhwc's row order
    reordered = dw if style == "gpu" else call.empty((k * rows,))
    for group in range(g.groups):
        for index, tile in enumerate(tiles):
            call.checkpoint()
            _im2col(call, g, x, col, group, tile)
            dy0 = _first_positions(g, tile) * k + group * kg
            dw0 = group * kg * rows
            if style == "gpu":  # written in dw's own order: column (tap, c) at c * taps + tap
                gemm_tiled(call, kg, rows, tile.columns, tile.columns, cg,
                           dy, GOperand(base=dy0, s_m=1, s_k=k),
                           col, GOperand(s_k=rows, s_jimg=cg, s_j=1),
                           dw, GOperand(base=dw0, s_m=rows, s_jimg=1, s_j=taps),
                           accumulate=index > 0)
            else:
                nhwc_wgrad(call, dy, dy0, k, kg, col, 0, rows, rows, tile.columns, reordered,
                           dw0, accumulate=index > 0)
    if style == "cpu":  # (K, taps, CG) -> (K, CG, taps)
        pack_panels(call, reordered, cg, taps, 1, s0=0, sm=1, sk=cg, sb1=rows, nb1=k, out=dw)


def _im2col_backward_weight(style: str) -> Pass:
    def run(call: Call, g: Geom, x: Array, dy: Array, dw: Array,
            ep: Epilogue = NO_EPILOGUE) -> None:
        if g.channels_last:
            _im2col_backward_weight_nhwc(style, call, g, x, dy, dw)
            return
        k, cg = g.w[:2]
        kg, p = g.out_per_group, g.positions
        rows = cg * g.taps
        tiles = _tiles(call, g, rows)
        col = _col_buffer(call, rows, tiles)
        for group in range(g.groups):
            for index, tile in enumerate(tiles):
                call.checkpoint()
                _im2col(call, g, x, col, group, tile)
                dy0 = tile.n0 * k * p + group * kg * p + tile.p_start
                dw0 = group * kg * rows
                if style == "gpu":
                    gemm_tiled(call, kg, rows, tile.columns, tile.pcount, rows,
                               dy, GOperand(base=dy0, s_m=p, s_kimg=k * p, s_k=1),
                               col, GOperand(s_kimg=tile.pcount, s_k=1, s_j=tile.columns),
                               dw, GOperand(base=dw0, s_m=rows, s_j=1), accumulate=index > 0)
                else:
                    vgemm_nt(call, kg, rows, tile.nimg, tile.pcount, dy, VOperand(dy0, k * p, p),
                             col, VOperand(0, tile.pcount, tile.columns), dw, dw0, rows,
                             accumulate=index > 0)

    return run


# Winograd F(2x2, 3x3) ----------------------------------------------------------------------
def _winograd_forward(style: str) -> Pass:
    def run(call: Call, g: Geom, x: Array, w: Array, y: Array, ep: Epilogue) -> None:
        _channels_first(g, "winograd")
        n, c = g.x[:2]
        k, cg = g.w[:2]
        kg, groups = g.out_per_group, g.groups
        oh, ow = g.y[3:]
        tiles_h, tiles_w = -(-oh // 2), -(-ow // 2)
        per_image = tiles_h * tiles_w
        per_entry = 16 * (c + k) * per_image
        images = max(1, min(n, call.budget // max(1, per_entry * call.itemsize),
                            INT_LIMIT // per_entry))
        if per_entry * images > INT_LIMIT:
            raise SolverUnavailable(f"one image's Winograd workspace ({per_entry} elements) "
                                    f"exceeds the kernels' 32-bit indexing")
        v = call.empty((16 * c * per_image * images,))
        m = call.empty((16 * k * per_image * images,))
        kind = vgemm_kind(call, min(n, images) * per_image)
        # The filter transform writes U plain for the tiled GEMM, in vgemm panels otherwise.
        r = 0 if style == "gpu" else _vgemm_rows(kind, call)
        mpad = kg if r == 0 else -(-kg // r) * r
        u = call.empty((16 * groups * mpad * cg,))
        blocks = k if r == 0 else groups * (mpad // r)
        call.launch(call.kernel("winograd", "wino_filter"), (-(-cg // WINO_RUN), blocks), (8, 8),
                    w.data, u.data, k, cg, groups, r, mpad)
        packed, per = u, mpad * cg
        for n0 in range(0, n, images):
            call.checkpoint()
            nimg = min(images, n - n0)
            t = nimg * per_image
            grid = (-(-tiles_w // WINO_RUN), nimg * tiles_h)
            call.launch(call.kernel("winograd", "wino_input"), (*grid, c), (1, 8, 1),
                        x.data, v.data, *g.args, n0, nimg, tiles_h, tiles_w)
            if style == "gpu":
                gemm_tiled(call, kg, t, cg, cg, t,
                           u, GOperand(s_m=cg, s_k=1, s_b1=k * cg, s_b2=kg * cg),
                           v, GOperand(s_k=t, s_j=1, s_b1=c * t, s_b2=cg * t),
                           m, GOperand(s_m=t, s_j=1, s_b1=k * t, s_b2=kg * t),
                           nb1=16, nb2=groups)
            else:
                vgemm(call, kind, packed, 0, groups * per, per, kg, cg, 1, t,
                      v, VOperand(0, 0, t, s_b1=c * t, s_b2=cg * t),
                      m, VOperand(0, 0, t, s_b1=k * t, s_b2=kg * t), nb1=16, nb2=groups)
            call.launch(call.kernel("winograd", "wino_output"), (*grid, k), (1, 8, 1),
                        m.data, y.data, x.data, w.data, *g.args, *ep.args(call), n0, nimg,
                        tiles_h, tiles_w, int(g.pad_products))

    return run


# The solver records ------------------------------------------------------------------------
def _build_algorithms() -> tuple[Solver, ...]:
    """Every solver, in the order of preference; :func:`~.rule_order` moves the other device
    style's solvers after this style's, and the last record is the catch-all baseline."""
    return (
        _solver("depthwise", "any", "depthwise kernel: several outputs of one channel per "
                "work-item (weight gradient by direct_wrw's reduction)",
                rules.depthwise_solver_rule, rules.depthwise_solver_rule,
                depthwise_forward, depthwise_backward_data, direct_wrw, channels_last=True),
        _solver("winograd", "gpu", "Winograd F(2x2,3x3) transforms around the local-memory "
                "tiled GEMM", rules.winograd_rule, rules.winograd_fits,
                _winograd_forward("gpu"), via_flipped_forward(_winograd_forward("gpu"))),
        _solver("vec_winograd", "cpu", "Winograd F(2x2,3x3) transforms around the CPU-style "
                "vector GEMM", rules.winograd_rule, rules.winograd_fits,
                _winograd_forward("cpu"), via_flipped_forward(_winograd_forward("cpu"))),
        _solver("gemm_1x1", "gpu", "1x1 convolution as a local-memory tiled, register-blocked "
                "GEMM", rules.gemm_1x1_rule, rules.gemm_1x1_rule,
                _gemm_1x1_forward("gpu", _im2col_forward("gpu")),
                _gemm_1x1_backward_data("gpu", _im2col_backward_data("gpu")),
                _gemm_1x1_backward_weight("gpu", _im2col_backward_weight("gpu")),
                channels_last=True),
        _solver("vec_gemm_1x1", "cpu", "1x1 convolution as a CPU-style vector GEMM (packed "
                "weights, float16 vectors, no local memory)", rules.gemm_1x1_rule,
                rules.gemm_1x1_rule, _gemm_1x1_forward("cpu", _im2col_forward("cpu")),
                _gemm_1x1_backward_data("cpu", _im2col_backward_data("cpu")),
                _gemm_1x1_backward_weight("cpu", _im2col_backward_weight("cpu")),
                channels_last=True),
        _solver("tiled_direct", "gpu", "input tile + halo and weights in __local memory, "
                "8 outputs per work-item (MIOpen ConvOclDirectFwd)", rules.tiled_direct_rule,
                rules.tiled_direct_can_run, tiled_direct_forward,
                via_flipped_forward(tiled_direct_forward)),
        _solver("im2col_gemm", "gpu", "im2col + the local-memory tiled GEMM (col2im gather for "
                "the data gradient)", rules.im2col_rule, rules.always, _im2col_forward("gpu"),
                _im2col_backward_data("gpu"), _im2col_backward_weight("gpu"),
                channels_last=True),
        _solver("vec_im2col_gemm", "cpu", "im2col + the CPU-style vector GEMM",
                rules.im2col_rule, rules.always, _im2col_forward("cpu"),
                _im2col_backward_data("cpu"), _im2col_backward_weight("cpu"),
                channels_last=True),
        _solver("direct_wrw", "gpu", "weight gradient: one work-group per weight, tree "
                "reduction in __local memory (deterministic, no atomics)",
                rules.weight_grad_only, rules.weight_grad_only, backward_weight=direct_wrw,
                channels_last=True),
        _solver("naive", "any", "one work-item per output element; handles every problem",
                rules.naive_rule, rules.always, _naive("naive_fwd", True, True),
                _naive("naive_bwd_data", True, False), _naive("naive_bwd_weight", False, True)),
    )


ALGORITHMS: tuple[Solver, ...] = _build_algorithms()
# By name: where a run finds a solver's code (tests replace entries to inject failures).
SOLVERS: dict[str, Solver] = {record.name: record for record in ALGORITHMS}
