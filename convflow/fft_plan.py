"""FFT convolution planning shared by every backend: pure arithmetic, no arrays.

Every pass of a convolution is computed as windows of one linear convolution ``A * B`` per
(image, channel pair), summed over the reduced channels in the frequency domain:

* forward: ``A = x``, ``B`` = the dilated kernel flipped; output ``m`` reads
  ``(A * B)[k_eff - 1 - pad_low + m * stride]``;
* data gradient (and transposed convolutions): ``A = dy`` upsampled by the stride (zeros
  between samples), ``B`` = the dilated kernel; output ``i`` reads ``(A * B)[pad_low + i]``;
* weight gradient: ``A = x``, ``B`` = ``dy`` upsampled and flipped; tap ``t`` reads
  ``(A * B)[t * dilation + len(B) - 1]`` (shifted by the padding), summed over images.

Large problems are split into overlap-save tiles: the output positions of the forward and
data-gradient passes, the ``dy`` positions (the reduction) of the weight gradient. Each tile
takes one transform of size ``L`` per axis, ``L`` a fast length of at least the tile's
segment; tile sizes, images and groups per step are chosen here so the scratch fits
``CONVFLOW_WORKSPACE_MB`` at the least modelled cost. The same model compares the FFT with
direct computation in the rule (``explain()`` shows both numbers).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

from .params import ConvProblem, Direction

# Forward transform costs ``REAL_FFT_FLOPS * L log2 L`` for a real signal of L points
# (half the classic 5 L log2 L of a complex one); a complex multiply-add costs 8.
REAL_FFT_FLOPS = 2.5
COMPLEX_MAC_FLOPS = 8
# Each tile copies its segment in and its window out: modelled as this many flops per point.
GATHER_FLOPS_PER_POINT = 4
# Each step (tile x image block x group block) costs a few launches and Python calls:
# modelled as this many flops (about 0.1 ms at the numba backend's rate).
STEP_OVERHEAD_FLOPS = 1e6
# float32 transforms: relative error about eps * log2(L) per output (Cooley-Tukey's bound);
# this factor covers the spread seen in the tests.
ERROR_FACTOR = 4.0
FLOAT32_EPS = 2.0 ** -24
FLOAT64_EPS = 2.0 ** -53


def smooth_length(n: int, primes: tuple[int, ...] = (2, 3, 5, 7)) -> int:
    """The smallest integer >= *n* whose prime factors are all in *primes* (the lengths
    pocketfft and cuFFT transform fastest)."""
    n = max(1, n)
    best = 1 << (n - 1).bit_length()
    for candidate in range(n, best):
        m = candidate
        for p in primes:
            while m % p == 0:
                m //= p
        if m == 1:
            return candidate
    return best


def power_of_two_length(n: int) -> int:
    """The smallest power of two >= *n* (reikna's radix-2 transforms; other lengths need
    its slower Bluestein path)."""
    return 1 << (max(1, n) - 1).bit_length()


@dataclass(frozen=True)
class Rates:
    """What a backend sustains, in flops per second: its FFTs, its frequency-domain products,
    and its direct algorithms by name (the cost model's only machine facts)."""

    fft: float
    mac: float
    direct: tuple[tuple[str, float], ...]
    fast_length: Callable[[int], int] = smooth_length
    # False where the FFT library has complex transforms only (reikna): real data then
    # takes a full complex transform, twice the work and the memory of a real one.
    real_transforms: bool = True

    def direct_rate(self, algorithm: str) -> float:
        rates = dict(self.direct)
        return rates.get(algorithm, rates["default"])


@dataclass(frozen=True)
class AxisPlan:
    """One spatial axis of an FFT pass: ``total`` positions are tiled (outputs of the forward
    and data-gradient passes, dy positions of the weight gradient), ``tile`` per tile; a
    tile's segment spans ``(tile - 1) * step + span`` samples (``span`` the dilated
    kernel); ``length`` is the transform length (at least the segment)."""

    total: int
    step: int
    span: int
    tile: int
    length: int

    @property
    def tiles(self) -> int:
        return -(-self.total // self.tile)

    def segment(self, tile: int) -> int:
        return (tile - 1) * self.step + self.span


@dataclass(frozen=True)
class FFTPlan:
    """How one pass runs by FFT: per-axis plans, images and groups per step, the transform
    dtype, the scratch it needs and the modelled cost."""

    direction: Direction
    axes: tuple[AxisPlan, ...]
    images_per_step: int
    groups_per_step: int
    transform_dtype: str
    workspace_bytes: int
    flops: float
    seconds: float

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(a.length for a in self.axes)

    @property
    def tiles(self) -> int:
        return math.prod(a.tiles for a in self.axes)

    @property
    def points(self) -> int:
        return math.prod(self.lengths)

    def describe(self) -> str:
        lengths = "x".join(map(str, self.lengths))
        text = f"transforms of {lengths} ({self.transform_dtype})"
        if self.tiles > 1:
            text += f", {self.tiles} overlap-save tiles"
        return text


def _axes_template(problem: ConvProblem) -> list[AxisPlan]:
    """Per-axis geometry before tiling (one tile of everything, ``length`` = 0)."""
    axes = []
    for x, y, k, s, d in zip(problem.x_spatial, problem.y_spatial, problem.kernel_size,
                             problem.stride, problem.dilation):
        span = d * (k - 1) + 1
        if problem.direction == Direction.BACKWARD_DATA:
            axes.append(AxisPlan(x, 1, span, max(1, x), 0))
        else:
            axes.append(AxisPlan(y, s, span, max(1, y), 0))
    return axes


def _tile_candidates(axis: AxisPlan, fast_length: Callable[[int], int]) -> list[AxisPlan]:
    """Tilings worth trying on one axis: the whole axis in one tile, and tiles whose
    segment is about 2, 4, 8, ... times the kernel's span."""
    full = fast_length(axis.segment(axis.total))
    found = {(axis.total, full)}
    length = fast_length(2 * axis.span)
    while length < full:
        tile = min(axis.total, (length - axis.span) // axis.step + 1)
        if tile >= 1:
            found.add((tile, fast_length(axis.segment(tile))))
        length = fast_length(length * 2)
    return [AxisPlan(axis.total, axis.step, axis.span, tile, length)
            for tile, length in sorted(found)]


def _complex_points(lengths: tuple[int, ...]) -> int:
    """Points of a real-to-complex transform's output (the last axis halved)."""
    return math.prod(lengths[:-1]) * (lengths[-1] // 2 + 1)


def transform_dtype(problem: ConvProblem, lengths: tuple[int, ...],
                    float32_tolerance: float) -> str:
    """float64 for float64 data; float32 otherwise, unless float32 transforms of *lengths*
    could miss *float32_tolerance* (then float64)."""
    if problem.dtype == "float64":
        return "float64"
    bound = relative_error_bound("float32", lengths)
    return "float32" if bound <= float32_tolerance else "float64"


def relative_error_bound(dtype: str, lengths: tuple[int, ...]) -> float:
    """The error of a transform round trip relative to the largest output, as the tests and
    the README state it: ``ERROR_FACTOR * eps * log2(L)``, ``L`` the points per transform."""
    eps = FLOAT64_EPS if dtype == "float64" else FLOAT32_EPS
    return ERROR_FACTOR * eps * max(1.0, math.log2(max(2, math.prod(lengths))))


def _channels(problem: ConvProblem) -> tuple[int, int]:
    """(channels of A, channels of the result) per image, over all groups."""
    if problem.direction == Direction.FORWARD:
        return problem.in_channels, problem.out_channels
    if problem.direction == Direction.BACKWARD_DATA:
        return problem.out_channels, problem.in_channels
    return problem.in_channels, problem.out_channels


def _evaluate(problem: ConvProblem, axes: tuple[AxisPlan, ...], images: int, groups: int,
              itemsize: int, real_transforms: bool = True) -> tuple[int, float]:
    """(scratch bytes, modelled flops) of a plan with *images* and *groups* per step."""
    lengths = tuple(a.length for a in axes)
    points, cpoints = math.prod(lengths), _complex_points(lengths)
    if not real_transforms:
        # Complex buffers hold the data themselves: no real buffers, full spectra.
        cpoints, itemsize_real = points, 0
    else:
        itemsize_real = itemsize
    g_total = problem.groups
    c_a, c_r = _channels(problem)
    per_group_a, per_group_r = c_a // g_total, c_r // g_total
    pairs = problem.out_channels_per_group * problem.in_channels_per_group
    complex_bytes = 2 * itemsize
    tiles = math.prod(a.tiles for a in axes)
    fft = REAL_FFT_FLOPS * points * math.log2(max(2, points)) * (1 if real_transforms else 2)
    n = problem.batch
    if problem.direction == Direction.BACKWARD_WEIGHT:
        # per step: x and dy transforms; the dw accumulator for the groups in flight.
        scratch = (images * groups * (per_group_a + per_group_r) * (cpoints * complex_bytes
                                                                     + points * itemsize_real)
                   + groups * pairs * cpoints * complex_bytes
                   + groups * pairs * points * itemsize_real)
        transforms = tiles * n * (c_a + c_r) + g_total * pairs
    else:
        scratch = (groups * pairs * cpoints * complex_bytes
                   + images * groups * (per_group_a + per_group_r) * (cpoints * complex_bytes
                                                                       + points * itemsize_real))
        transforms = tiles * n * (c_a + c_r) + g_total * pairs
    macs = tiles * n * g_total * pairs * cpoints
    gathers = tiles * n * (c_a + c_r) * points
    steps = tiles * -(-n // images) * -(-g_total // groups)
    flops = (transforms * fft + macs * COMPLEX_MAC_FLOPS + gathers * GATHER_FLOPS_PER_POINT
             + steps * STEP_OVERHEAD_FLOPS)
    return int(scratch), float(flops)


@functools.lru_cache(maxsize=512)
def plan(problem: ConvProblem, budget: int, rates: Rates,
         float32_tolerance: float) -> FFTPlan | None:
    """The cheapest FFT plan for *problem* whose scratch fits *budget* bytes, or None."""
    per_axis = [_tile_candidates(axis, rates.fast_length) for axis in _axes_template(problem)]
    best: FFTPlan | None = None
    for combo in itertools.product(*per_axis):
        axes = tuple(combo)
        lengths = tuple(a.length for a in axes)
        dtype = transform_dtype(problem, lengths, float32_tolerance)
        itemsize = 8 if dtype == "float64" else 4
        images, groups = max(1, problem.batch), problem.groups
        scratch, flops = _evaluate(problem, axes, images, groups, itemsize,
                                   rates.real_transforms)
        # Fewer groups, then fewer images, per step until the scratch fits.
        while scratch > budget and groups > 1:
            groups = -(-groups // 2)
            scratch, flops = _evaluate(problem, axes, images, groups, itemsize,
                                       rates.real_transforms)
        while scratch > budget and images > 1:
            images = -(-images // 2)
            scratch, flops = _evaluate(problem, axes, images, groups, itemsize,
                                       rates.real_transforms)
        if scratch > budget:
            continue
        seconds = flops / rates.fft
        if best is None or seconds < best.seconds:
            best = FFTPlan(problem.direction, axes, images, groups, dtype, scratch, flops, seconds)
    return best


def smallest_workspace(problem: ConvProblem, rates: Rates) -> int:
    """Bytes the smallest tile of one image and one group needs (for the error message)."""
    axes = [_tile_candidates(axis, rates.fast_length)[0] for axis in _axes_template(problem)]
    itemsize = 8 if problem.dtype == "float64" else 4
    return _evaluate(problem, tuple(axes), 1, 1, itemsize, rates.real_transforms)[0]


# Direct algorithms slow down once one input plane outgrows the caches: a backend may give a
# rate for ``"<algorithm>@large"``, used above this plane size.
LARGE_PLANE_BYTES = 1 << 20


def rival_rate_name(problem: ConvProblem, rates: Rates, algorithm: str) -> str:
    """The entry of ``rates.direct`` that models *algorithm* on *problem*."""
    plane = math.prod(problem.x_spatial) * (8 if problem.dtype == "float64" else 4)
    large = f"{algorithm}@large"
    if plane > LARGE_PLANE_BYTES and large in dict(rates.direct):
        return large
    return algorithm


def direct_seconds(problem: ConvProblem, rates: Rates, algorithm: str) -> float:
    """Modelled time of the direct algorithm *algorithm* (the pass's multiply-adds at the
    rate the backend sustains for it)."""
    return problem.flops / rates.direct_rate(rival_rate_name(problem, rates, algorithm))


# The FFT must win by this factor before the rule picks it: the model is rough near the
# break-even point, and the direct algorithms are exact and deterministic.
FFT_MARGIN = 1.5


def fft_rule(problem: ConvProblem, fft_plan: FFTPlan | None, rates: Rates, rival: str,
             budget_mb: int, missing: str = "") -> tuple[bool, str]:
    """The FFT rule every backend shares: its modelled time against *rival*'s (the algorithm
    the backend's other rules pick), both given in the reason."""
    if missing:
        return False, missing
    if fft_plan is None:
        return False, (f"even one tile of one image needs more scratch than "
                       f"CONVFLOW_WORKSPACE_MB={budget_mb}")
    direct = direct_seconds(problem, rates, rival)
    stride_note = ""
    if problem.is_strided():
        stride_note = (f"; stride {problem.stride} computed at stride 1 and subsampled" if
                       problem.direction == Direction.FORWARD else
                       f"; stride {problem.stride} as a zero-upsampled dy")
    planes = " on planes beyond the caches" if rival_rate_name(problem, rates, rival) != rival \
        else ""
    detail = (f"FFT {fft_plan.flops / 1e9:.3g} GFLOP-equivalent ~{fft_plan.seconds * 1e3:.3g} ms "
              f"({fft_plan.describe()}{stride_note}) vs {rival} {problem.flops / 1e9:.3g} GFLOP "
              f"~{direct * 1e3:.3g} ms{planes}")
    if fft_plan.seconds * FFT_MARGIN < direct:
        return True, f"{detail}: FFT is cheaper by more than {FFT_MARGIN}x"
    return False, f"{detail}: FFT is not cheaper by {FFT_MARGIN}x"


# The float32 accuracy the test suite holds every algorithm to (tests/conftest.py TOLERANCE).
FLOAT32_TOLERANCE = 3e-5


@dataclass(frozen=True)
class Planner:
    """One backend's FFT planning: its rates, and why it cannot run at all (``missing()``
    returns ``""`` when it can), with the workspace limit read from the configuration."""

    rates: Rates
    missing: Callable[[], str] = lambda: ""

    @staticmethod
    def budget_bytes() -> int:
        from . import config

        return int(config.get("CONVFLOW_WORKSPACE_MB")) << 20

    def plan_for(self, problem: ConvProblem, budget: int | None = None) -> FFTPlan | None:
        """The plan *problem* runs with under *budget* (default: CONVFLOW_WORKSPACE_MB)."""
        return plan(problem, self.budget_bytes() if budget is None else budget, self.rates,
                    FLOAT32_TOLERANCE)

    def require(self, problem: ConvProblem, budget: int, limit: str = "") -> FFTPlan:
        """The plan *problem* runs with under *budget*, or WorkspaceTooLargeError (the pass's
        own check, as it starts); *limit* names a further bound the budget reflects."""
        found = self.plan_for(problem, budget)
        if found is None:
            from .errors import WorkspaceTooLargeError

            raise WorkspaceTooLargeError(
                f"fft: even one tile of {problem.describe()} needs more scratch than "
                f"CONVFLOW_WORKSPACE_MB={budget >> 20}{limit}; raise it or choose "
                f"another algorithm")
        return found

    def can_run(self, problem: ConvProblem) -> tuple[bool, str]:
        missing = self.missing()
        if missing:
            return False, missing
        found = self.plan_for(problem)
        if found is None:
            return False, (f"even one tile of one image and one group needs more scratch than "
                           f"CONVFLOW_WORKSPACE_MB={self.budget_bytes() >> 20}")
        return True, found.describe()

    def rule(self, problem: ConvProblem, rival: str) -> tuple[bool, str]:
        """Whether the FFT beats *rival* (what the backend's other rules pick)."""
        ok, why = self.can_run(problem)
        return fft_rule(problem, self.plan_for(problem) if ok else None, self.rates, rival,
                        self.budget_bytes() >> 20, "" if ok else why)

    def workspace_bytes(self, problem: ConvProblem) -> int:
        found = self.plan_for(problem)
        return found.workspace_bytes if found is not None else self.budget_bytes()
