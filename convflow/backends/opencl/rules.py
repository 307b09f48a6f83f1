"""The opencl backend's algorithm rules: when each solver is the right choice, and whether it
can run a problem at all. Pure functions of the problem; the solver records
(:mod:`.solvers`) carry them with the code they choose."""

from __future__ import annotations

from ...params import ConvProblem, Direction
from ..base import (
    depthwise_rule,
    gemm_rule,
    pass_channels,
    pass_output_shape,
    pointwise_rule,
    winograd_channels_too_few,
    winograd_fits,
)
from .runtime import DeviceInfo

WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_TILES = 32
TILED_DIRECT_MAX_OUT_CHANNELS = 32


def winograd_rule(problem: ConvProblem) -> tuple[bool, str]:
    fits, why = winograd_fits(problem)
    if not fits:
        return False, why
    if problem.channels_last:
        return False, (f"{why}, but the data is channels-last: the im2col GEMM computes it in "
                       f"place, while Winograd would convert the input and the result, which "
                       f"costs more than its saved multiplications (measured on PoCL)")
    too_few = winograd_channels_too_few(problem, why, WINOGRAD_MIN_CHANNELS)
    if too_few:
        return False, too_few
    reduced, produced = pass_channels(problem)
    out = pass_output_shape(problem)
    tiles = out[0] * -(-out[2] // 2) * -(-out[3] // 2)
    if tiles < WINOGRAD_MIN_TILES:
        return False, (f"{why}, but only {tiles} output tiles of 2x2 share each transformed "
                       f"filter (needs >= {WINOGRAD_MIN_TILES} to amortize the filter transform)")
    return True, (f"{why}, {reduced} -> {produced} channels per group, {tiles} output tiles: "
                  f"F(2x2,3x3) does 16 instead of 36 multiplications per 2x2 tile")


def gemm_1x1_rule(problem: ConvProblem) -> tuple[bool, str]:
    return pointwise_rule(problem, "one GEMM per group", not problem.is_strided())


def im2col_rule(problem: ConvProblem) -> tuple[bool, str]:
    return gemm_rule(problem, "a GEMM")


def tiled_direct_can_run(problem: ConvProblem) -> tuple[bool, str]:
    if problem.direction == Direction.BACKWARD_WEIGHT:
        return False, "tiled_direct computes forward and stride-1 data-gradient passes only"
    if problem.direction == Direction.BACKWARD_DATA and problem.is_strided():
        return False, (f"the data gradient is a forward convolution only for stride 1, got "
                       f"stride {problem.stride}")
    return True, "any kernel, padding, dilation and groups (stride 1 for the data gradient)"


def tiled_direct_rule(problem: ConvProblem) -> tuple[bool, str]:
    ok, why = tiled_direct_can_run(problem)
    if not ok:
        return False, why
    produced = pass_channels(problem)[1]
    if produced < TILED_DIRECT_MAX_OUT_CHANNELS:
        return True, (f"{produced} output channels per group would leave most of a 64-row GEMM "
                      f"tile empty; direct tiles in local memory compute them without im2col")
    return False, (f"{produced} output channels per group fill GEMM tiles (tiled_direct is "
                   f"chosen below {TILED_DIRECT_MAX_OUT_CHANNELS})")


def depthwise_solver_rule(problem: ConvProblem) -> tuple[bool, str]:
    return depthwise_rule(problem, "each channel is convolved on its own")


def weight_grad_only(problem: ConvProblem) -> tuple[bool, str]:
    if problem.direction == Direction.BACKWARD_WEIGHT:
        return True, ("weight gradient by work-group tree reductions in local memory "
                      "(deterministic, no atomics)")
    return False, "computes the weight gradient only"


def always(problem: ConvProblem) -> tuple[bool, str]:
    return True, "handles every problem"


def decided_by_versus(problem: ConvProblem) -> tuple[bool, str]:
    """The stand-in rule of a solver decided against its rivals (its record's ``versus``),
    used only where no rival order is known."""
    return False, "decided against the other rules' choice"


def naive_rule(problem: ConvProblem) -> tuple[bool, str]:
    return True, "the always-applicable baseline: one work-item per output"


# Device limits -------------------------------------------------------------------------------
# What a solver needs of the device, known before any kernel is built (MIOpen's IsApplicable
# checks the same kind of thing): the rules refuse a solver the device cannot run, so the
# run-time fallback is left for what only a build reveals (a kernel's own static local
# memory, a driver's refusal). The numbers mirror the solvers' launches in solvers.py.
TILED_GEMM_MIN_GROUP = 64          # the 32x32 tiled GEMM: (32 / 4) ** 2 work-items
TILED_DIRECT_GROUPS = ((16, 8), (8, 8), (8, 4))   # work-group shapes tiled_direct tries
_NEEDS_TILED_GEMM = ("winograd", "gemm_1x1", "im2col_gemm")


def device_limits(name: str, problem: ConvProblem, info: DeviceInfo) -> tuple[bool, str]:
    """Whether device *info* can run solver *name* on *problem*, and why not."""
    if name in _NEEDS_TILED_GEMM and info.max_work_group_size < TILED_GEMM_MIN_GROUP:
        return False, (f"its tiled GEMM needs work-groups of at least {TILED_GEMM_MIN_GROUP} "
                       f"items; {info.name!r} allows {info.max_work_group_size}")
    if name == "tiled_direct" and problem.direction != Direction.BACKWARD_WEIGHT:
        from .solvers import CIC, OCPI, OWPI

        shape = next(((tw, th) for tw, th in TILED_DIRECT_GROUPS
                      if tw * th <= info.max_work_group_size), None)
        if shape is None:
            smallest = TILED_DIRECT_GROUPS[-1][0] * TILED_DIRECT_GROUPS[-1][1]
            return False, (f"tiled_direct needs work-groups of {smallest} items; "
                           f"{info.name!r} allows {info.max_work_group_size}")
        tw, th = shape
        kh, kw = (1, *problem.kernel_size)[-2:]
        sh, sw = (1, *problem.stride)[-2:]
        dh, dw = (1, *problem.dilation)[-2:]
        if problem.direction == Direction.BACKWARD_DATA:
            sh = sw = 1  # computed as the stride-1 forward convolution of the flipped weights
        in_tw = (tw * OWPI - 1) * sw + (kw - 1) * dw + 1
        in_th = (th - 1) * sh + (kh - 1) * dh + 1
        itemsize = 8 if problem.dtype == "float64" else 4
        needed = (CIC * in_th * in_tw + OCPI * CIC * kh * kw) * itemsize
        if needed > info.local_mem_size:
            return False, (f"its input tile ({in_th}x{in_tw} per channel) and weights need "
                           f"{needed} bytes of local memory, but {info.name!r} has "
                           f"{info.local_mem_size}")
    return True, "fits the device's work-group and local-memory limits"
