"""The numba backend: CPU JIT kernels, the fallback on every machine.

Algorithms, in the order the selector tries them:

* ``fft`` -- large kernels: scipy.fft real transforms, overlap-save tiles, chosen when the
  cost model says it beats what the rules below pick (``convflow.backends.numba.fft``);
* ``depthwise`` -- groups == C_in: per-channel kernel over a zero-padded plane;
* ``gemm_1x1`` -- 1x1 kernels without padding: one BLAS matrix product per image and group;
* ``winograd`` -- 2-D 3x3, stride 1: F(4x4,3x3) transforms around 36 GEMMs
  (``convflow.backends.numba.winograd``);
* ``packed_gemm`` -- the same packed input, each kernel tap (or row of taps) a BLAS GEMM;
* ``packed_direct`` -- direct convolution over a packed, phase-split input;
* ``im2col_gemm`` -- everything with enough work per output for BLAS, scratch tiled;
* ``direct`` -- loops over the taps, the always-applicable baseline;
* ``numpy_taps`` -- one numpy product per tap, no compiled code: what a call runs while
  the kernels of the algorithm chosen for it compile in the background
  (``CONVFLOW_NUMBA_WARMUP``, ``convflow.backends.numba.warmup``), never picked by a rule.

numba itself is imported when the backend's status is first asked for, so ``import
convflow`` works (and says why) without it; its threading layer starts with the first
kernel launch (on the warm-up thread when calls do not wait for compiles).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from ... import config, hostinfo
from ...errors import BackendUnavailableError, ConfigError
from ...params import ConvProblem, Direction
from ...tensor import CPU, Device, Tensor
from ..base import (
    ALL_DIRECTIONS,
    Algorithm,
    Backend,
    BackendStatus,
    data_gradient_flippable,
    depthwise_rule,
    gemm_rule,
    pass_channels,
    pass_output_shape,
    pointwise_rule,
    winograd_channels_too_few,
    winograd_fits,
)

# The packed direct kernel computes 4 output channels per pass over vectorized position runs.
# Measured against im2col + BLAS on every 3x3, 5x5, 7x7 and 11x11 layer of convflow bench's
# networks (2 threads, AVX-512, batch 1 and 8): it wins up to about 2000 products per output
# (2x at 128 -> 32 channels on 14x14) on outputs of 27x27 and more, and with fewer than 96
# output channels on any map; from 2304 (256 channels x 3x3) BLAS wins (up to 1.7x at 512
# channels), and on maps of 8x8 or less already from 1440. Once im2col gathered whole rows
# without a division per row (1.5-3x faster copies), BLAS also wins the forward pass from 96
# output channels on maps of 16x16 or less (1.04-2.0x: Inception's 13x13 and 14x14 layers,
# its 5x5 layers on 6x6) and on strided layers with 576 products or more (1.2-1.8x: the
# phase planes cost packed_direct a pass each). Long reductions on many output positions go
# to packed_gemm.
PACKED_MIN_OUT_CHANNELS = 4
PACKED_LONG_REDUCTION = 2048
PACKED_SMALL_MAP = 64               # output positions per image
PACKED_SMALL_MAP_LONG_REDUCTION = 1400
PACKED_BLAS_OUT_CHANNELS = 96       # forward: from this many output channels per group ...
PACKED_BLAS_MAP = 256               # ... on maps of this many positions or fewer,
PACKED_BLAS_STRIDED_REDUCTION = 576  # ... or strided with this many products, BLAS wins
# Its data gradient (the flipped forward pass) against im2col_gemm's and Winograd's, same
# layers: it wins (up to 2.8x) while each input gradient sums at most 576 products (64 output
# channels x 3x3, 128 -> 32 channels); from 864 im2col + BLAS or Winograd win (1.05-3.5x).
PACKED_DGRAD_MAX_REDUCTION = 576
# packed_gemm: the same packed input, taps as BLAS GEMMs. It beats packed_direct (0.79-0.90)
# when each GEMM is deep (>= 48 channels per group), each output sums >= 576 products and
# the batch gives >= 10000 output positions without stride (64x224x224: 10.5 vs 12.3 ms);
# below, its discarded padding columns and short GEMMs lose (1.1-1.25x at 64x28x28, batch
# 8). On strided layers im2col + BLAS beats it (1.07-1.37x) since im2col's gather got faster.
PACKED_GEMM_MIN_CHANNELS = 48
PACKED_GEMM_MIN_REDUCTION = 576
PACKED_GEMM_MIN_POSITIONS = 10000
PACKED_GEMM_MIN_OUT_CHANNELS = 32
# Its weight gradient (a GEMM per tap of dy over the packed input, summed over the batch)
# was 1.5-2x faster than im2col_gemm's while im2col's scratch was fresh memory on every call
# and its gather divided per row. With both fixed, im2col_gemm's weight gradient is faster on
# every spatial layer of convflow bench's networks (1.1-2.3x, 3-7x on the 3-channel stems;
# 0.94-0.97 on three layers of 32 output channels, batch 1), so the rule leaves it to find
# mode and to a forced algorithm.

_PADDING_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}
_PASS_INDEX = {Direction.FORWARD: 0, Direction.BACKWARD_DATA: 1, Direction.BACKWARD_WEIGHT: 2}


def _omp_wait_policy() -> str:
    """The OpenMP wait policy in force, as the environment sets it. convflow never sets one:
    the variables are process-wide, and PyTorch or any OpenMP user in the process would
    inherit them. Its kernels run every parallel part on numba's one pool (BLAS included),
    so no second pool waits for the cores while numba's workers spin."""
    given = [f"{name}={os.environ[name]}" for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
             if name in os.environ]
    return ", ".join(given) or "the OpenMP runtime's default"


def _max_threads(numba: Any) -> int:
    """numba's thread pool size (``NUMBA_NUM_THREADS``)."""
    return int(numba.config.NUMBA_NUM_THREADS)


def _always(problem: ConvProblem) -> tuple[bool, str]:
    return True, "handles every problem"


def _depthwise_rule(problem: ConvProblem) -> tuple[bool, str]:
    return depthwise_rule(problem, "each channel is convolved on its own over a zero-padded plane")


def _pointwise_rule(problem: ConvProblem) -> tuple[bool, str]:
    return pointwise_rule(problem, "one BLAS matrix product per group", not problem.is_strided())


def _packed_can_run(problem: ConvProblem) -> tuple[bool, str]:
    if problem.direction == Direction.BACKWARD_WEIGHT:
        return False, "forward and data-gradient passes only"
    if problem.direction == Direction.BACKWARD_DATA and not data_gradient_flippable(problem):
        return False, (f"the data gradient runs as the forward pass of the flipped problem, "
                       f"which needs stride 1 and padding <= dilation * (kernel - 1), got "
                       f"stride {problem.stride}, padding {problem.padding}")
    return _packed_image_fits(_packed_per_image(problem))


def _packed_image_fits(needed: int, how: str = "") -> tuple[bool, str]:
    """Whether one packed image of *needed* bytes fits the workspace (the packed records'
    can-run check); *how* names the variant in the reason."""
    budget = _workspace_budget()
    if needed > budget:
        return False, (f"one packed image needs {needed / 2**20:.1f} MiB, more than "
                       f"CONVFLOW_WORKSPACE_MB={budget >> 20}")
    size = f"one packed image needs {needed / 2**20:.1f} MiB"
    return True, f"{how} ({size})" if how else size


def _small_map_long_reduction(positions: int, reduction: int) -> bool:
    """Maps of PACKED_SMALL_MAP positions or fewer with long reductions: BLAS's side."""
    return positions <= PACKED_SMALL_MAP and reduction >= PACKED_SMALL_MAP_LONG_REDUCTION


def _packed_rule(problem: ConvProblem) -> tuple[bool, str]:
    ok, why = _packed_can_run(problem)
    if not ok:
        return False, why
    reduced, produced = pass_channels(problem)
    positions = math.prod(pass_output_shape(problem)[2:])
    reduction = reduced * problem.taps
    if produced < PACKED_MIN_OUT_CHANNELS:
        return False, (f"{produced} output channels per group waste the blocks of 4 (needs "
                       f">= {PACKED_MIN_OUT_CHANNELS})")
    if reduction >= PACKED_LONG_REDUCTION:
        return False, (f"{reduction} products per output: BLAS is faster on long reductions "
                       f"(packed needs < {PACKED_LONG_REDUCTION})")
    if _small_map_long_reduction(positions, reduction):
        return False, (f"{positions} output positions per image with {reduction} products "
                       f"each: BLAS is faster on small maps with long reductions (packed needs "
                       f"< {PACKED_SMALL_MAP_LONG_REDUCTION} products up to "
                       f"{PACKED_SMALL_MAP} positions)")
    if problem.direction == Direction.BACKWARD_DATA and reduction > PACKED_DGRAD_MAX_REDUCTION:
        return False, (f"{reduction} products per input gradient: BLAS or Winograd is faster "
                       f"(packed needs <= {PACKED_DGRAD_MAX_REDUCTION} for the data gradient)")
    if problem.direction == Direction.FORWARD and produced >= PACKED_BLAS_OUT_CHANNELS:
        if positions <= PACKED_BLAS_MAP:
            return False, (f"{produced} output channels per group on {positions} output "
                           f"positions per image: BLAS is faster on small maps (packed needs "
                           f"< {PACKED_BLAS_OUT_CHANNELS} output channels up to "
                           f"{PACKED_BLAS_MAP} positions)")
        if problem.is_strided() and reduction >= PACKED_BLAS_STRIDED_REDUCTION:
            return False, (f"{produced} output channels per group and {reduction} products "
                           f"per output with stride: BLAS is faster (packed needs < "
                           f"{PACKED_BLAS_OUT_CHANNELS} output channels or < "
                           f"{PACKED_BLAS_STRIDED_REDUCTION} products on strided layers)")
    return True, (f"{positions} output positions per image, {reduction} products each: "
                  f"shifted-tap loops over the packed input, accumulators in L1 ({why})")


# Winograd pays when both channel counts feed the 36 GEMMs, enough tiles share each transformed
# filter, and the output fills its 4x4 tiles (a 13x13 map computes 16x16, a third discarded).
# Forward, measured against packed_direct, packed_gemm and im2col_gemm on the 3x3 stride-1
# layers of convflow bench's networks (in-process sweep, 2 threads, AVX-512, batch 1 and 8,
# best of 3 medians) once the filter transform became one GEMM: from 96 channels on each side
# it wins (0.62-0.96) with 128 tiles (14x14 at batch 8) and 65% fill (13x13 maps: 0.81-0.95),
# whatever the channel sum; with 64-95 channels on one side it wins (0.72-0.96) on full maps
# of 128-392 tiles (64 -> 96 on 28x28 at batch 8: 0.72) and ties or loses (1.0-1.2x) from 784
# tiles, where the packed kernels stream 64 channels well; 64 -> 64 ties at best (0.87-1.01
# in one sweep, 1.0-1.25x in a second one on a loaded machine); below 64 channels, below 128
# tiles (1.2-6x on 7x7-14x14 maps at batch 1) or with 66% fill and 64 channels it loses.
# The data gradient (the forward pass of the flipped problem) has other rivals: im2col's data
# gradient scatters its columns back, and packed_direct's takes only short reductions. Measured
# the same way, Winograd wins it (0.50-0.95) from 64 channels on each side, with 128 tiles
# and 75% fill. (Before the filter transform was one GEMM, BLAS won it from 256 channels on a
# side below 392 tiles; now Winograd takes 0.56-0.86 of im2col's time there, e.g. 256 -> 256
# on 14x14 at batch 8: 0.78, 256 -> 256 on 56x56 at batch 1: 0.82.)
# Since im2col copies runs of whole rows and its tiles stay in cache, it beats Winograd on
# every 13x13 map (66% fill; inception_v1's 96-160 -> 208-320 layers at batch 8: im2col
# takes 0.81-0.87 of Winograd's time, same sweep), so the forward pass needs 70% fill, which
# keeps 14x14 (77%) and 7x7 maps.
WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_NARROW_CHANNELS = 96   # below, on one side: full maps of at most ..._MAX_TILES;
                                # on both sides: never
WINOGRAD_NARROW_MAX_TILES = 392
WINOGRAD_MIN_TILES = 128
WINOGRAD_MIN_FILL = 0.70
WINOGRAD_FULL_FILL = 0.75   # narrow forward layers and data gradients
WINOGRAD_DGRAD_MIN_CHANNELS = 64


def blas_status() -> tuple[bool, str]:
    """Whether the private OpenBLAS (blas_library.py) opened, and its description or why not
    (without numba: the rules ask before numba starts; blas.py registers it for the kernels)."""
    from . import blas_library

    try:
        return True, blas_library.open_library()[1]
    except ImportError as exc:
        return False, str(exc)


def _with_blas(check: Callable[[ConvProblem], tuple[bool, str]]
               ) -> Callable[[ConvProblem], tuple[bool, str]]:
    """*check*, and then whether the private BLAS its GEMMs run on is there."""
    def checked(problem: ConvProblem) -> tuple[bool, str]:
        ok, why = check(problem)
        if not ok:
            return False, why
        loaded, description = blas_status()
        if not loaded:
            return False, f"{why}, but its GEMMs need the private BLAS: {description}"
        return True, why

    return checked


def _winograd_fits_budget(problem: ConvProblem) -> tuple[bool, str]:
    fits, why = winograd_fits(problem)
    if not fits:
        return False, why
    needed, budget = _winograd_workspace(problem), _workspace_budget()
    if needed > budget:
        return False, (f"{why}, but the transformed filters and blocks need "
                       f"{needed / 2**20:.1f} MiB, more than CONVFLOW_WORKSPACE_MB={budget >> 20}")
    return True, why


_winograd_can_run = _with_blas(_winograd_fits_budget)
_pointwise_with_blas = _with_blas(_pointwise_rule)


def _packed_gemm_fits(problem: ConvProblem) -> tuple[bool, str]:
    from .algorithms import packed_gemm_variant

    if problem.direction == Direction.BACKWARD_DATA:
        return False, "forward and weight-gradient passes only"
    how = (packed_gemm_variant(problem) if problem.direction == Direction.FORWARD
           else "a GEMM per tap of dy over the packed input")
    return _packed_image_fits(_packed_gemm_per_image(problem), how)


_packed_gemm_can_run = _with_blas(_packed_gemm_fits)


def _packed_gemm_rule(problem: ConvProblem) -> tuple[bool, str]:
    ok, why = _packed_gemm_can_run(problem)
    if not ok:
        return False, why
    if problem.direction == Direction.BACKWARD_WEIGHT:
        return False, (f"{why}, but im2col_gemm's weight gradient is faster (1.1-2.3x on the "
                       f"bench networks' layers); find mode or a forced algorithm runs it")
    channels, produced = problem.in_channels_per_group, problem.out_channels_per_group
    positions = problem.batch * problem.output_positions
    reduction = problem.reduction_size
    if channels < PACKED_GEMM_MIN_CHANNELS or produced < PACKED_GEMM_MIN_OUT_CHANNELS:
        return False, (f"{channels} -> {produced} channels per group make shallow or narrow "
                       f"GEMMs (needs >= {PACKED_GEMM_MIN_CHANNELS} -> "
                       f"{PACKED_GEMM_MIN_OUT_CHANNELS})")
    if problem.is_strided():
        return False, ("the layer is strided: its phase planes make short GEMMs, and im2col + "
                       "BLAS is faster")
    if reduction < PACKED_GEMM_MIN_REDUCTION or positions < PACKED_GEMM_MIN_POSITIONS:
        return False, (f"{reduction} products per output at {positions} output positions are "
                       f"too little work per GEMM (needs >= {PACKED_GEMM_MIN_REDUCTION} products "
                       f"and >= {PACKED_GEMM_MIN_POSITIONS} positions in the batch)")
    return True, f"{reduction} products per output at {positions} output positions: {why}"


def _winograd_rule(problem: ConvProblem) -> tuple[bool, str]:
    fits, why = _winograd_can_run(problem)
    if not fits:
        return False, why
    if problem.channels_last:
        return False, (f"{why}, but the data is channels-last: packed_direct and the GEMMs "
                       f"work on it in place, while Winograd would copy the input and the "
                       f"result to channels-first and back")
    reduced, produced = pass_channels(problem)
    out = pass_output_shape(problem)
    from .plans import OUTPUT_TILE, tiles_of

    tiles = tiles_of(out[0], out[2], out[3])
    if tiles == 0:
        return False, f"{why}, but the output is empty"
    fill = out[0] * out[2] * out[3] / (tiles * OUTPUT_TILE * OUTPUT_TILE)
    dgrad = problem.direction == Direction.BACKWARD_DATA
    narrow = not dgrad and min(reduced, produced) < WINOGRAD_NARROW_CHANNELS
    min_fill = WINOGRAD_FULL_FILL if dgrad or narrow else WINOGRAD_MIN_FILL
    if tiles < WINOGRAD_MIN_TILES or fill < min_fill:
        return False, (f"{why}, but {tiles} output tiles of 4x4 ({fill:.0%} of them inside the "
                       f"output) are too few to amortize the transforms (needs >= "
                       f"{WINOGRAD_MIN_TILES} tiles and >= {min_fill:.0%})")
    too_few = winograd_channels_too_few(
        problem, why, WINOGRAD_DGRAD_MIN_CHANNELS if dgrad else WINOGRAD_MIN_CHANNELS)
    if too_few:
        return False, too_few
    if narrow and max(reduced, produced) < WINOGRAD_NARROW_CHANNELS:
        return False, (f"{why}, but {reduced} -> {produced} channels per group: the packed "
                       f"kernels are as fast (needs >= {WINOGRAD_NARROW_CHANNELS} channels on "
                       f"at least one side)")
    if narrow and tiles > WINOGRAD_NARROW_MAX_TILES:
        return False, (f"{why}, but {reduced} -> {produced} channels per group over {tiles} "
                       f"tiles: the packed kernels stream so few channels faster (below "
                       f"{WINOGRAD_NARROW_CHANNELS} channels on a side, needs <= "
                       f"{WINOGRAD_NARROW_MAX_TILES} tiles)")
    return True, (f"{why}, {reduced} -> {produced} channels per group, {tiles} output tiles: "
                  f"F(4x4,3x3) does 36 instead of 144 multiplications per 4x4 tile")


def _winograd_workspace(problem: ConvProblem) -> int:
    from .plans import workspace_bytes

    out = pass_output_shape(problem)
    reduced, produced = pass_channels(problem)
    return workspace_bytes(out[0], out[2], out[3], produced * problem.groups, reduced,
                           problem.groups, hostinfo.cpu_count(), _itemsize(problem))


def _im2col_rule(problem: ConvProblem) -> tuple[bool, str]:
    return gemm_rule(problem, "BLAS")


def _direct_rule(problem: ConvProblem) -> tuple[bool, str]:
    return True, "the always-applicable baseline: direct loops over the kernel taps"


def _fft_can_run(problem: ConvProblem) -> tuple[bool, str]:
    from . import fft

    return fft.can_run(problem)


def _fft_rule(problem: ConvProblem) -> tuple[bool, str]:
    """The FFT against the algorithm the other rules would pick."""
    from . import fft

    rival = next(r.name for r in RULES if r.name != "fft" and problem.direction in r.directions
                 and r.applies(problem)[0])
    return fft.rule(problem, rival)


# BLAS libraries may split a product's sums differently with another thread count or CPU.
_BLAS_ORDER = "BLAS may sum in another order with another thread count"
_FORWARD = frozenset({Direction.FORWARD})
_PACKED_DIRECTIONS = frozenset({Direction.FORWARD, Direction.BACKWARD_DATA})
_PACKED_GEMM_DIRECTIONS = frozenset({Direction.FORWARD, Direction.BACKWARD_WEIGHT})


def _workspace_budget() -> int:
    return int(config.get("CONVFLOW_WORKSPACE_MB")) << 20


def _itemsize(problem: ConvProblem) -> int:
    return 8 if problem.dtype == "float64" else 4  # half types are computed in float32


def _im2col_workspace(problem: ConvProblem) -> int:
    """The im2col scratch: columns of the whole batch, tiled to the workspace budget and to
    IM2COL_TILE_BYTES (a tile stays in cache between the steps that write and read it)."""
    from .plans import im2col_tile_bytes

    columns = problem.batch * problem.output_positions
    return min(im2col_tile_bytes(_workspace_budget()),
               columns * (problem.reduction_size + problem.out_channels_per_group)
               * _itemsize(problem))


def _pointwise_workspace(problem: ConvProblem) -> int:
    from . import algorithms

    gathered = algorithms.pointwise_variant(problem) == algorithms.GATHERED_GEMM
    return _im2col_workspace(problem) if gathered else 0


def _packed_per_image(problem: ConvProblem) -> int:
    from .algorithms import packed_bytes_per_image, packed_shapes

    return packed_bytes_per_image(*packed_shapes(problem), problem.stride, problem.dilation,
                                  _itemsize(problem))


def _image_tiles_workspace(problem: ConvProblem, per_image: int) -> int:
    """Scratch of an algorithm that works on as many images at once as the budget holds."""
    return max(per_image, min(_workspace_budget(), per_image * problem.batch))


def _packed_workspace(problem: ConvProblem) -> int:
    return _image_tiles_workspace(problem, _packed_per_image(problem))


def _packed_gemm_per_image(problem: ConvProblem) -> int:
    from .algorithms import packed_gemm_bytes_per_image, packed_wgrad_bytes_per_image

    per_image = (packed_wgrad_bytes_per_image if problem.direction == Direction.BACKWARD_WEIGHT
                 else packed_gemm_bytes_per_image)
    return per_image(problem.x_shape, problem.w_shape, problem.y_shape, problem.stride,
                     problem.dilation, _itemsize(problem))


def _packed_gemm_workspace(problem: ConvProblem) -> int:
    return _image_tiles_workspace(problem, _packed_gemm_per_image(problem))


def _depthwise_workspace(problem: ConvProblem) -> int:
    return 2 * int(np.prod(problem.x_spatial)) * _itemsize(problem)


def _variant(function: str, directions: frozenset[Direction] = ALL_DIRECTIONS,
             **kwargs: Callable[[], Any]) -> Callable[[ConvProblem], str]:
    """A record's ``variant``: ``algorithms.<function>(problem)`` for the passes in
    *directions* (the others have one path, ``""``); imported when first asked."""
    def variant(problem: ConvProblem) -> str:
        if problem.direction not in directions:
            return ""
        from . import algorithms

        extra = {name: make() for name, make in kwargs.items()}
        return str(getattr(algorithms, function)(problem, **extra))

    return variant


# The passes of each algorithm, by the name of their function in .algorithms (resolved when
# first run, so listing the records imports no numba code).
_ALL_PASSES = ("fprop", "dgrad", "wgrad")


def _passes(suffix: str, directions: frozenset[Direction] = ALL_DIRECTIONS
            ) -> dict[Direction, str]:
    return {direction: f"{prefix}_{suffix}"
            for direction, prefix in zip(Direction, _ALL_PASSES) if direction in directions}


def _fft_workspace(problem: ConvProblem) -> int:
    from . import fft

    return fft.PLANNER.workspace_bytes(problem)


def _fft_variant(problem: ConvProblem) -> str:
    """The tiles and transform lengths the plan uses (operands holding NaN or Inf run the
    direct loops instead: an FFT would spread them over every output)."""
    from . import fft

    plan = fft.plan_for(problem)
    return plan.describe() if plan is not None else ""


NUMPY_TAPS = "numpy_taps"
# numpy_taps' speed on the bench networks' layers (2 threads, AVX-512, float32): 10-150
# GFLOP/s on dense and grouped layers (the 3-channel 7x7 stem the slowest, 1x1 layers as fast
# as gemm_1x1), 1-3 on depthwise ones; the compiled algorithms are 1-2.6x faster on 1x1 and
# 3x3 layers, 14-17x on the stem and 5-40x on depthwise layers. A call that numpy_taps would
# take longer than WARMUP_MAX_SECONDS to run waits for its kernels instead (2-5 s to compile
# the larger ones, a few milliseconds to load them from the disk cache).
NUMPY_TAPS_FLOPS = 10e9
NUMPY_TAPS_DEPTHWISE_FLOPS = 1e9
WARMUP_MAX_SECONDS = 0.5


def _numpy_taps_rule(problem: ConvProblem) -> tuple[bool, str]:
    return False, ("runs a call only while the kernels of the algorithm chosen for it compile "
                   "in the background (CONVFLOW_NUMBA_WARMUP=background), or when forced")


def _numpy_taps_workspace(problem: ConvProblem) -> int:
    from . import numpy_taps

    # Every pass works in blocks of the forward output (dy for the gradients).
    copied = 2 * problem.in_channels + 2 * problem.out_channels
    return numpy_taps.workspace_bytes(problem.y_shape, copied, _workspace_budget(),
                                      _itemsize(problem))


RULES: tuple[Algorithm, ...] = (
    Algorithm("fft", "FFT convolution (scipy.fft), overlap-save tiles; operands holding NaN "
              "or Inf run the direct loops", _fft_rule, _fft_can_run,
              fused=frozenset({Direction.FORWARD, Direction.BACKWARD_DATA}),
              workspace=_fft_workspace, variant=_fft_variant, passes=_passes("fft")),
    Algorithm("depthwise", "per-channel kernel over a zero-padded plane", _depthwise_rule,
              _depthwise_rule, channels_last=True, fused=_FORWARD,
              workspace=_depthwise_workspace,
              variant=_variant("depthwise_variant"),
              passes=_passes("depthwise")),
    Algorithm("gemm_1x1", "1x1 convolution as a BLAS matrix product", _pointwise_with_blas,
              _pointwise_with_blas, deterministic=False, why_not_deterministic=_BLAS_ORDER,
              channels_last=True, workspace=_pointwise_workspace,
              variant=_variant("pointwise_variant"), passes=_passes("pointwise")),
    Algorithm("winograd", "Winograd F(4x4,3x3): input and output transforms around 36 GEMMs "
              "(private BLAS, one thread per block); tiles with Inf or NaN rerun as direct loops",
              _winograd_rule, _winograd_can_run,
              frozenset({Direction.FORWARD, Direction.BACKWARD_DATA}), deterministic=False,
              why_not_deterministic="Winograd rounds differently from direct summation, and its "
              "blocks of tiles follow the thread count",
              fused=frozenset({Direction.FORWARD, Direction.BACKWARD_DATA}),
              workspace=_winograd_workspace,
              variant=_variant("winograd_variant"),
              passes=_passes("winograd", frozenset({Direction.FORWARD, Direction.BACKWARD_DATA}))),
    Algorithm("packed_gemm", "direct convolution as GEMMs over a packed, phase-split input "
              "(private BLAS, one thread per block of positions)",
              _packed_gemm_rule, _packed_gemm_can_run, _PACKED_GEMM_DIRECTIONS, deterministic=False,
              why_not_deterministic=_BLAS_ORDER, channels_last=True, fused=_FORWARD,
              workspace=_packed_gemm_workspace, variant=_variant("packed_gemm_variant", _FORWARD),
              passes=_passes("packed_gemm", _PACKED_GEMM_DIRECTIONS)),
    Algorithm("packed_direct", "direct convolution over a packed, phase-split input (the "
              "data gradient of a stride-1 pass as the forward pass of the flipped problem; "
              "weights holding Inf or NaN take im2col's)",
              _packed_rule, _packed_can_run, _PACKED_DIRECTIONS, channels_last=True,
              fused=_PACKED_DIRECTIONS, workspace=_packed_workspace,
              variant=_variant("packed_variant", _PACKED_DIRECTIONS, budget=_workspace_budget),
              passes=_passes("packed", _PACKED_DIRECTIONS)),
    Algorithm("im2col_gemm", "tiled im2col + BLAS matrix product", _with_blas(_im2col_rule),
              _with_blas(_always),
              deterministic=False, why_not_deterministic=_BLAS_ORDER,
              workspace=_im2col_workspace, passes=_passes("im2col")),
    Algorithm("direct", "direct loops over the kernel taps", _direct_rule, _always,
              passes=_passes("direct")),
    Algorithm(NUMPY_TAPS, "one numpy product per kernel tap, no compiled code (runs calls "
              "while the chosen algorithm's kernels compile in the background)",
              _numpy_taps_rule, _always, deterministic=False,
              why_not_deterministic="numpy's BLAS may sum in another order with another thread "
              "count", fused=_PACKED_DIRECTIONS, workspace=_numpy_taps_workspace,
              passes=_passes(NUMPY_TAPS)),
)


class _Prepared(NamedTuple):
    """What a pass needs that depends only on its problem and algorithm (cached)."""

    run: Callable[..., None]
    geometry: Any
    dtype: np.dtype
    out_shape: tuple[int, ...]
    fused: bool            # the algorithm applies bias and activation in its write-back
    activation: int
    channels_last: bool
    in_place_layout: bool  # the algorithm reads and writes the problem's layout as it lies
    variant: str           # the code path the algorithm runs (its record names it)
    pass_index: int        # 0 forward, 1 data gradient, 2 weight gradient
    chunks: tuple[Any, ...]  # algorithms.Chunk: a long pass runs as these calls (else empty)
    compiled: bool         # runs numba kernels (every algorithm but numpy_taps)
    warm_key: tuple[Any, ...]  # the kernels it runs, as the warm-up tracks them (see below)


def _warm_key(algorithm: str, variant: str, dtype: np.dtype, pass_index: int,
              in_place_layout: bool, chunked: bool) -> tuple[Any, ...]:
    """What decides which kernels a pass compiles, for the argument types it passes: every
    kernel takes C-contiguous 5-D arrays and int64 scalars, so these fields, not the shapes
    (an FFT's variant names its tile lengths, which compile nothing of their own)."""
    return (algorithm, "" if algorithm == "fft" else variant, dtype.str, pass_index,
            in_place_layout, chunked)


def _chunks(problem: ConvProblem, algorithm: str, pass_index: int) -> tuple[Any, ...]:
    """The chunks a long pass runs as (empty for a pass short enough for one call). The
    forward and data-gradient passes of the deterministic algorithms split into images;
    ``direct``, whose sums per output are plain loops, also into groups and rows (weight
    gradient included). The BLAS algorithms are not split: they already return to Python
    between matrix products (one per group and workspace tile), and a product of another
    size may round differently."""
    from . import algorithms

    flops = problem.flops
    record = next(r for r in RULES if r.name == algorithm)
    if flops <= algorithms.LONG_PASS_FLOPS or not record.deterministic:
        return ()
    shape = (problem.y_shape, problem.x_shape, problem.w_shape)[pass_index]
    rows = (shape[:2] + (1,) * (5 - len(shape)) + shape[2:])[3]   # H, lifted to 3-D
    chunks = algorithms.plan_chunks(pass_index, problem.batch, problem.groups, rows, flops,
                                    algorithm == "direct", algorithms.CHUNK_FLOPS)
    return tuple(chunks) if len(chunks) > 1 else ()


class NumbaBackend(Backend):
    """CPU backend built on numba JIT kernels and numpy's BLAS."""

    name = "numba"
    device_type = "cpu"
    fuses_activation = True

    def __init__(self) -> None:
        self._status: BackendStatus | None = None
        self._status_lock = threading.Lock()
        # Set when only numba's workqueue layer could start: it is not safe for concurrent
        # parallel launches from several Python threads, so those are serialized.
        self._launch_lock: threading.Lock | None = None
        self._wait_policy = "n/a"
        self._prepared_passes: dict[tuple[ConvProblem, str], _Prepared] = {}
        self._forked_serial = False
        # The threading layer starts with the first kernel (_ensure_started), on whichever
        # thread launches it first; until then status() says so.
        self._started = False
        self._start_lock = threading.Lock()
        from .warmup import WarmUp

        self._warmup = WarmUp(lambda key: self.replan())
        self._substituted: dict[ConvProblem, str] = {}
        # Set once a warm-up found its kernels in the disk cache: loading the others there
        # in the caller's thread then costs less than running numpy_taps meanwhile.
        self._kernels_cached = False
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        """In a child forked after the OpenMP pool started, run single-threaded kernels."""
        status = self._status
        if status is None or status.details.get("threading_layer") != "omp":
            return
        from . import kernels

        kernels.use_serial_kernels()
        from . import fft, gemm_kernels, winograd

        fft.use_serial_kernels()
        winograd.use_serial_kernels()
        gemm_kernels.use_serial_kernels()
        self._prepared_passes.clear()
        self._forked_serial = True
        self._status = dataclasses.replace(
            status, reason=status.reason + "; forked child: single-threaded kernels (GNU OpenMP "
            "is not fork-safe)", details={**status.details, "forked_child": "single-threaded"})

    # Status ------------------------------------------------------------------------------
    def status(self) -> BackendStatus:
        with self._status_lock:
            if self._status is None:
                self._status = self._probe()
            return self._status

    def full_status(self) -> BackendStatus:
        if self.status().available:
            self._ensure_started(raise_unavailable=False)
        return self.status()

    def _probe(self) -> BackendStatus:
        if config.get("CONVFLOW_NUMBA_WARMUP") == "background":
            # Importing numba (about 0.25 s) and starting its threading layer (a kernel
            # loaded or compiled: about 0.3 s more from the disk cache) is left to the first
            # kernel launch, on the warm-up thread while the first calls run numpy_taps.
            from .plans import module_missing

            missing = module_missing("numba")
            if missing:
                return BackendStatus(self.name, False, missing, "cpu")
            return BackendStatus(
                self.name, True, "numba not started yet (it starts with the first kernel)",
                "cpu", (f"cpu ({hostinfo.cpu_name()}, {hostinfo.cpu_count()} cores)",),
                "", {"threading_layer": "not started"})
        with self._start_lock:
            status = self._start()
            self._started = True
        return status

    def _ensure_started(self, raise_unavailable: bool = True) -> None:
        """Start numba's threading layer before the first kernel launch (once)."""
        if self._started:
            return
        with self._start_lock:
            if self._started:
                return
            status = self._start()
            with self._status_lock:
                self._status = status
            self._started = True
        self.replan()
        if raise_unavailable and not status.available:
            raise BackendUnavailableError(f"the numba backend cannot run: {status.reason}")

    def _start(self) -> BackendStatus:
        """Import numba and every kernel module, and start the threading layer (the caller
        holds _start_lock); the backend's full status (unavailable on failure). The modules
        are imported here, by one thread, because two threads importing numba's submodules
        at once (the warm-up and a caller) can each meet the other's half-initialized
        modules: numba's submodules import one another."""
        try:
            import numba
        except ImportError as exc:
            return BackendStatus(self.name, False,
                                 f"numba could not be imported ({exc}); pip install numba",
                                 "cpu")
        try:
            from . import blas, cache, fft_kernels, gemm_kernels, kernels, winograd  # noqa: F401

            layer = self._start_threading(numba)
        except ConfigError:
            raise  # a bad CONVFLOW_* value is the user's to fix, not a missing backend
        except Exception as exc:
            return BackendStatus(self.name, False,
                                 f"numba {numba.__version__} could not start: {exc!r}", "cpu")
        threads = _max_threads(numba)
        details = {"threading_layer": layer, "threads": str(threads),
                   "omp_wait_policy": self._wait_policy, "blas": blas_status()[1],
                   "serialized_launches": str(self._launch_lock is not None)}
        return BackendStatus(
            self.name, True,
            f"numba {numba.__version__}, threading layer {layer}, {threads} threads",
            "cpu", (f"cpu ({hostinfo.cpu_name()}, {hostinfo.cpu_count()} cores)",),
            numba.__version__, details)

    def _start_threading(self, numba: Any) -> str:
        """Start a threading layer that is safe for calls from several Python threads."""
        from . import kernels

        probe = np.ones(4)
        if "NUMBA_THREADING_LAYER" not in os.environ:
            numba.config.THREADING_LAYER = "threadsafe"
            try:
                kernels.threading_probe(probe)
            except ValueError:
                numba.config.THREADING_LAYER = "workqueue"
                self._launch_lock = threading.Lock()
        kernels.threading_probe(probe)
        layer = str(numba.threading_layer())
        if layer == "workqueue" and self._launch_lock is None:
            self._launch_lock = threading.Lock()
        self._wait_policy = _omp_wait_policy() if layer == "omp" else "n/a"
        return layer

    def _set_threads(self, threads: int | None = None) -> None:
        """Apply *threads*, else CONVFLOW_NUM_THREADS, to this Python thread's numba launches."""
        import numba

        most = _max_threads(numba)
        wanted = min(threads or config.get("CONVFLOW_NUM_THREADS") or most, most)
        if numba.get_num_threads() != wanted:
            numba.set_num_threads(wanted)

    def algorithm_rules(self, device: Device | None = None) -> Sequence[Algorithm]:
        return RULES

    def unsupported_reason(self, problem: ConvProblem, device: Device) -> str | None:
        if device.type != "cpu":
            return f"numba runs on the CPU, not on {device}"
        return None

    def available_memory(self, device: Device) -> int:
        return hostinfo.memory_available()

    def fft_plan(self, problem: ConvProblem) -> Any:
        """How the ``fft`` algorithm would run *problem* (tiles, lengths), or None."""
        from . import fft

        return fft.plan_for(problem)

    def device_identity(self, device: Device) -> str:
        self._ensure_started()
        import numba

        return (f"numba {numba.__version__}, numpy {np.__version__}, {hostinfo.cpu_name()}, "
                f"{min(config.get('CONVFLOW_NUM_THREADS') or _max_threads(numba), _max_threads(numba))}"
                f" threads")

    # Storage -----------------------------------------------------------------------------
    def upload(self, host: np.ndarray, device: Device) -> Tensor:
        return Tensor(np.array(host, copy=True, order="C"), CPU)

    def download(self, t: Tensor) -> np.ndarray:
        return np.array(t.data, copy=True)

    def copy(self, t: Tensor) -> Tensor:
        return Tensor(np.array(t.data, copy=True, order="C"), CPU)

    # Math --------------------------------------------------------------------------------
    @staticmethod
    def _compute_dtype(dtype: np.dtype) -> np.dtype:
        """Half types (float16, bfloat16) are computed in float32."""
        return np.dtype(np.float32) if dtype.itemsize == 2 else dtype

    def _prepared(self, problem: ConvProblem, algorithm: str) -> _Prepared:
        prepared = self._prepared_passes.get((problem, algorithm))
        if prepared is None:
            from ...activations import ACTIVATION_CODES
            from ...geometry import Geometry
            from . import algorithms

            record = self.algorithm(algorithm)
            run = getattr(algorithms, record.passes[problem.direction])
            index = _PASS_INDEX[problem.direction]
            out_shape = (problem.y_shape, problem.x_shape, problem.w_shape)[index]
            variant = record.variant(problem)
            dtype = self._compute_dtype(np.dtype(problem.dtype))
            in_place = record.channels_last and index != 2 and problem.channels_last
            chunks = _chunks(problem, algorithm, index)
            prepared = _Prepared(
                run, Geometry.from_problem(problem), dtype, out_shape,
                problem.direction in record.fused, ACTIVATION_CODES[problem.activation],
                problem.channels_last, in_place, variant, index, chunks,
                algorithm != NUMPY_TAPS,
                _warm_key(algorithm, variant, dtype, index, in_place, bool(chunks)))
            with self._status_lock:
                if len(self._prepared_passes) > 1024:
                    self._prepared_passes.clear()
                self._prepared_passes[(problem, algorithm)] = prepared
        return prepared

    def _run_arrays(self, prepared: _Prepared, a_host: np.ndarray, b_host: np.ndarray,
                    bias: np.ndarray | None, threads: int | None = None) -> np.ndarray:
        """Run a prepared pass on host arrays; the result has the compute dtype, in the
        problem's memory layout when the algorithm works in it. *threads*: numba threads for
        this call (the warm-up runs on one), else CONVFLOW_NUM_THREADS."""
        from .algorithms import Epilogue, lift, no_epilogue

        dtype = prepared.dtype
        if prepared.in_place_layout:
            # Channels-last views are read where they lie; half types are widened in their
            # own memory order.
            if a_host.dtype != dtype:
                a_host = a_host.astype(dtype)
        elif a_host.dtype != dtype or not a_host.flags.c_contiguous:
            a_host = np.ascontiguousarray(a_host, dtype=dtype)
        if b_host.dtype != dtype or not (b_host.flags.c_contiguous or prepared.in_place_layout):
            b_host = np.ascontiguousarray(b_host, dtype=dtype)
        if prepared.in_place_layout and prepared.channels_last:
            shape = prepared.out_shape
            out = np.empty((shape[0], *shape[2:], shape[1]), dtype=dtype)
            out = out.transpose((0, out.ndim - 1, *range(1, out.ndim - 1)))
        else:
            out = np.empty(prepared.out_shape, dtype=dtype)
        epilogue = no_epilogue(dtype)
        if bias is not None or prepared.activation:
            epilogue = Epilogue(np.zeros(1, dtype) if bias is None
                                else np.ascontiguousarray(bias, dtype=dtype), bias is not None,
                                prepared.activation)
        budget = config.get("CONVFLOW_WORKSPACE_MB") << 20
        arrays = (lift(a_host), lift(b_host), lift(out))
        if not prepared.compiled:   # numpy only: no threading layer, no launch lock
            prepared.run(*arrays, prepared.geometry, budget, epilogue, prepared.variant)
            return out
        self._ensure_started()
        self._set_threads(threads)
        lock = self._launch_lock or contextlib.nullcontext()
        if prepared.chunks:
            self._run_chunks(prepared, arrays, budget, epilogue)
        else:
            with lock:
                prepared.run(*arrays, prepared.geometry, budget, epilogue, prepared.variant)
        if (epilogue.has_bias or epilogue.activation) and not prepared.fused:
            from . import kernels

            with lock:
                kernels.apply_epilogue(arrays[2], *epilogue)
        self._warmup.mark_ready(prepared.warm_key)
        return out

    def _run_chunks(self, prepared: _Prepared, arrays: tuple[np.ndarray, np.ndarray, np.ndarray],
                    budget: int, epilogue: Any) -> None:
        """Run a long pass as its chunks, one kernel call each, returning to Python between
        them so that a KeyboardInterrupt lands within one chunk (see algorithms.CHUNK_FLOPS).
        Chunks of channels or rows are copied to and from contiguous arrays, so each call runs
        the kernel compiled for the unsplit pass (the same code, so the same results)."""
        from .algorithms import chunk_operands

        lock = self._launch_lock or contextlib.nullcontext()
        for chunk in prepared.chunks:
            a, b, out, geometry = chunk_operands(prepared.pass_index, chunk, *arrays,
                                                 prepared.geometry)
            target = out
            if not prepared.in_place_layout:
                a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
                if not out.flags.c_contiguous:
                    target = np.empty(out.shape, out.dtype)
            with lock:
                prepared.run(a, b, target, geometry, budget, epilogue, prepared.variant)
            if target is not out:
                out[...] = target

    def _run(self, problem: ConvProblem, algorithm: str, a: Tensor, b: Tensor,
             bias: Tensor | None = None) -> Tensor:
        prepared = self._prepared(problem, algorithm)
        bias_host = None if bias is None else np.asarray(bias.data)
        if not prepared.compiled:
            self._start_warm_up(problem, a.data, b.data, bias_host)
        out = self._run_arrays(prepared, a.data, b.data, bias_host)
        result_dtype = np.dtype(problem.dtype)
        return Tensor(out if out.dtype == result_dtype else out.astype(result_dtype), CPU)

    def host_runner(self, problem: ConvProblem,
                    algorithm: str) -> Callable[[Any, Any, Any], Any] | None:
        if problem.direction == Direction.BACKWARD_WEIGHT:
            return None
        prepared = self._prepared(problem, algorithm)
        result_dtype = np.dtype(problem.dtype)

        def run(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
            if not prepared.compiled:
                self._start_warm_up(problem, a, b, bias)
            out = self._run_arrays(prepared, a, b, bias)
            return out if out.dtype == result_dtype else out.astype(result_dtype)

        return run

    # Warm-up ---------------------------------------------------------------------------
    def first_use_substitute(self, decision: Any) -> tuple[str, str] | None:
        """numpy_taps while the chosen algorithm's kernels are not compiled in this process
        (CONVFLOW_NUMBA_WARMUP=background): a rule's choice only, never a forced or timed
        one, nor under CONVFLOW_DETERMINISTIC (numpy_taps rounds otherwise)."""
        if decision.source != "heuristic" or decision.algorithm == NUMPY_TAPS:
            return None
        if (config.get("CONVFLOW_NUMBA_WARMUP") != "background"
                or config.get("CONVFLOW_DETERMINISTIC")):
            return None
        problem = decision.problem
        if problem.is_empty() or self._kernels_cached:
            return None
        rate = NUMPY_TAPS_DEPTHWISE_FLOPS if problem.groups > 1 and \
            problem.in_channels_per_group == 1 else NUMPY_TAPS_FLOPS
        if problem.flops > WARMUP_MAX_SECONDS * rate:
            return None   # long on numpy_taps: waiting for the kernels costs less
        if self._warmup.is_ready(self._prepared(problem, decision.algorithm).warm_key):
            return None
        with self._status_lock:
            self._substituted[problem] = decision.algorithm
        return NUMPY_TAPS, (f"{decision.runs} is not compiled in this process yet: its kernels "
                            f"compile on a background thread (CONVFLOW_NUMBA_WARMUP=background; "
                            f"convflow.finish_warmup() waits for them)")

    def _start_warm_up(self, problem: ConvProblem, a: np.ndarray, b: np.ndarray,
                       bias: np.ndarray | None) -> None:
        """Queue the compile of the algorithm numpy_taps stands in for: one run of it on
        these operands (read only; the result is dropped), on one thread, the first chunk
        of a long pass only (every chunk runs the same kernels)."""
        replaced = self._substituted.get(problem)
        if replaced is None:
            return   # numpy_taps forced or timed: nothing to compile
        prepared = self._prepared(problem, replaced)
        if self._warmup.is_ready(prepared.warm_key):
            return
        job = prepared._replace(chunks=prepared.chunks[:1])

        def compile_by_running() -> None:
            self._ensure_started()
            from . import cache as kernel_cache

            misses = kernel_cache.misses()
            self._run_arrays(job, a, b, bias, threads=1)
            if kernel_cache.enabled() and kernel_cache.misses() == misses:
                self._kernels_cached = True

        self._warmup.submit(prepared.warm_key, compile_by_running)

    def finish_warmup(self, timeout: float | None = None) -> bool:
        return self._warmup.wait(timeout)

    def forward(self, x: Tensor, w: Tensor, b: Tensor | None, problem: ConvProblem,
                algorithm: str) -> Tensor:
        return self._run(problem, algorithm, x, w, b)

    def backward_data(self, dy: Tensor, w: Tensor, b: Tensor | None, problem: ConvProblem,
                      algorithm: str) -> Tensor:
        return self._run(problem, algorithm, dy, w, b)

    def backward_weight(self, x: Tensor, dy: Tensor, problem: ConvProblem,
                        algorithm: str) -> Tensor:
        return self._run(problem, algorithm, x, dy)

    def bias_grad(self, dy: Tensor) -> Tensor:
        axes = (0, *range(2, dy.ndim))
        total = np.add.reduce(np.asarray(dy.data), axis=axes, dtype=np.float64)
        return Tensor(total.astype(dy.dtype), CPU)

    def pad(self, x: Tensor, padding: Sequence[tuple[int, int]], mode: str) -> Tensor:
        widths = ((0, 0), (0, 0), *padding)
        return Tensor(np.pad(np.asarray(x.data), widths, mode=_PADDING_MODES[mode]), CPU)  # type: ignore[call-overload]
