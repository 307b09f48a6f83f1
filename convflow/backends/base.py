"""The small interface every backend implements.

A backend computes the three passes of a plain convolution (:class:`~convflow.params.ConvProblem`
in cuDNN's geometry), pads inputs for non-zero padding modes, reduces bias gradients, and
moves arrays between the host and its device. It trusts its inputs: the host-side checks
have already run. Its algorithms are listed as ordered :class:`Algorithm` records so
the selector (and ``explain()``) can show why one was chosen.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..params import ConvProblem, Direction
from ..tensor import Device, Tensor

ALL_DIRECTIONS = frozenset(Direction)


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run here and, if not, why."""

    name: str
    available: bool
    reason: str
    device_type: str
    devices: tuple[str, ...] = ()
    version: str = ""
    details: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        state = "available" if self.available else "unavailable"
        text = f"{self.name}: {state} ({self.reason})"
        if self.devices:
            text += f"; devices: {', '.join(self.devices)}"
        return text


def _no_workspace(problem: ConvProblem) -> int:
    return 0


def _single_variant(problem: ConvProblem) -> str:
    return ""


@dataclass(frozen=True)
class Algorithm:
    """One algorithm of a backend: its rule, what it implements, and what it runs.

    This one record is what dispatch, ``explain()``, find mode and the ``CONVFLOW_*``
    variables read; a backend lists its records in one ordered tuple. ``applies(problem)``
    returns ``(True, why)`` when the rule picks this algorithm for the problem and ``(False,
    why_not)`` otherwise; ``can_run(problem)`` says whether it can compute the problem at all
    on the backend's device (device limits included; used when it is forced or timed).

    Attributes
    ----------
    directions : frozenset of Direction
        The passes it implements; ``passes`` maps each to the backend's handle for its code
        (a function, or a name the backend resolves lazily so the record imports nothing).
    deterministic, why_not_deterministic
        Whether results are bitwise reproducible across runs and thread counts (what
        ``CONVFLOW_DETERMINISTIC=1`` requires), and why not.
    channels_last : bool
        Whether it reads and writes channels-last activations in place (no conversion).
    fused : frozenset of Direction
        The passes that apply the bias and activation in their own write-back; the others
        get one epilogue pass afterwards.
    workspace : callable
        Scratch bytes it allocates for a problem (orders the out-of-memory fallback).
    variant : callable
        The code path it runs for a problem, named (``explain()`` shows it; ``""`` when the
        algorithm has one path). The backend runs exactly the path this names.
    """

    name: str
    summary: str
    applies: Callable[[ConvProblem], tuple[bool, str]]
    can_run: Callable[[ConvProblem], tuple[bool, str]]
    directions: frozenset[Direction] = ALL_DIRECTIONS
    deterministic: bool = True
    why_not_deterministic: str = ""
    channels_last: bool = False
    fused: frozenset[Direction] = frozenset()
    workspace: Callable[[ConvProblem], int] = _no_workspace
    variant: Callable[[ConvProblem], str] = _single_variant
    passes: Mapping[Direction, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.passes and frozenset(self.passes) != self.directions:
            raise ValueError(f"algorithm {self.name!r}: passes {sorted(self.passes)} do not match "
                             f"its directions {sorted(self.directions)}")
        if not self.fused <= self.directions:
            raise ValueError(f"algorithm {self.name!r} fuses a pass it does not implement")


# The name the backends' tables used before the record carried everything.
AlgorithmRule = Algorithm


class Backend(abc.ABC):
    """Base class of the numba, opencl and cupy backends."""

    name: ClassVar[str]
    device_type: ClassVar[str]
    # Whether forward / backward_data apply ``problem.activation`` with the bias as they write
    # the output; if not, functional.py applies it in a separate pass on the host.
    fuses_activation: ClassVar[bool] = False

    @abc.abstractmethod
    def status(self) -> BackendStatus:
        """Availability, with the reason; must not raise."""

    @abc.abstractmethod
    def algorithm_rules(self, device: Device | None = None) -> Sequence[Algorithm]:
        """The backend's algorithm records, in the order the selector tries their rules, as
        they apply on *device* (the backend's default device when None): a record's
        ``can_run`` includes that device's limits."""

    def algorithm_names(self) -> frozenset[str]:
        """Every algorithm name this backend has on any device, known without opening the
        backend's runtime (validating CONVFLOW_DISABLE_ALGOS must not import its library)."""
        return frozenset(rule.name for rule in self.algorithm_rules())

    def unsupported_reason(self, problem: ConvProblem, device: Device) -> str | None:
        """Why this backend cannot compute *problem* on *device*, or None if it can."""
        return None

    def default_device(self) -> Device:
        return Device(self.device_type, 0)

    def in_host_memory(self, device: Device) -> bool:
        """Whether *device*'s memory is the host's RAM (the CPU itself, a CPU OpenCL device):
        its buffers and the host's copies of the same data then draw on one memory."""
        return device.type == "cpu"

    @abc.abstractmethod
    def available_memory(self, device: Device) -> int:
        """Bytes a call may allocate on *device* (used to fail fast on impossible requests)."""

    def algorithm(self, name: str) -> Algorithm:
        """The record of the algorithm called *name* (KeyError if the backend has none)."""
        for record in self.algorithm_rules():
            if record.name == name:
                return record
        raise KeyError(f"the {self.name} backend has no algorithm {name!r}")

    def workspace_bytes(self, problem: ConvProblem, algorithm: str) -> int:
        """Scratch memory *algorithm* needs for *problem*, roughly (orders the algorithms tried
        after running out of memory: smallest first)."""
        return self.algorithm(algorithm).workspace(problem)

    def full_status(self) -> BackendStatus:
        """:meth:`status`, with what is only known once the backend's runtime started (a
        backend that starts it lazily starts it here)."""
        return self.status()

    def first_use_substitute(self, decision: Any) -> tuple[str, str] | None:
        """``(algorithm, why)`` when *decision*'s algorithm is not ready to run without a
        wait (its code is still compiling) and another runs this call instead; None to run
        it. The backend starts whatever makes it ready."""
        return None

    def finish_warmup(self, timeout: float | None = None) -> bool:
        """Wait until the code :meth:`first_use_substitute` stood in for is ready; False if
        *timeout* seconds passed first. Nothing to wait for by default."""
        return True

    def device_identity(self, device: Device) -> str:
        """What identifies the hardware and software a timing was taken on (perf-db key)."""
        return f"{self.name}:{device}"

    def synchronize(self, device: Device) -> None:
        """Wait until work queued on *device* has finished (timing needs it on GPUs).
        Host backends compute synchronously: nothing to wait for."""
        return None

    def host_runner(self, problem: ConvProblem,
                    algorithm: str) -> Callable[[Any, Any, Any], Any] | None:
        """For backends that compute in host memory: a function ``run(a, b, bias)`` on plain,
        already-validated numpy arrays returning the forward (``a=x, b=w``) or backward-data
        (``a=dy, b=w``) result with the bias added, the same as :meth:`forward` /
        :meth:`backward_data` but without Tensor wrapping; None where not applicable."""
        return None

    # Run-time fallbacks --------------------------------------------------------------------
    # Rules include device limits, so an algorithm rarely fails once chosen; when one does
    # (a driver refuses a kernel, cuDNN refuses a problem), the backend records what ran
    # instead, and every later Decision for that problem says so (explain(), the debug log,
    # the perf-db) instead of naming the algorithm that did not run.
    _fallbacks_lock = threading.Lock()

    def record_fallback(self, problem: ConvProblem, device: Device, algorithm: str,
                        replacement: str, reason: str) -> None:
        """Note that *algorithm* could not run *problem* on *device* and *replacement* ran."""
        with self._fallbacks_lock:
            table: dict[tuple[ConvProblem, Device, str], tuple[str, str]] = (
                self.__dict__.setdefault("_fallbacks", {}))
            if table.get((problem, device, algorithm)) != (replacement, reason):
                table[(problem, device, algorithm)] = (replacement, reason)
                self.__dict__["_fallback_epoch"] = self.fallback_epoch + 1

    def run_time_fallback(self, problem: ConvProblem, device: Device,
                          algorithm: str) -> tuple[str, str] | None:
        """``(replacement, reason)`` once *algorithm* has failed at run time for *problem* on
        *device* in this process; None while it has not."""
        table = self.__dict__.get("_fallbacks")
        return None if table is None else table.get((problem, device, algorithm))

    def replan(self) -> None:
        """Make every plan made so far be made again (what a decision depends on changed)."""
        with self._fallbacks_lock:
            self.__dict__["_fallback_epoch"] = self.fallback_epoch + 1

    @property
    def fallback_epoch(self) -> int:
        """Counts recorded fallbacks: plans made before a change are made again."""
        return int(self.__dict__.get("_fallback_epoch", 0))

    # Storage -----------------------------------------------------------------------------
    def adopt(self, obj: Any) -> Tensor:
        """Wrap a backend-native array (no copy)."""
        raise TypeError(f"the {self.name} backend has no native array type")

    @abc.abstractmethod
    def upload(self, host: np.ndarray, device: Device) -> Tensor:
        """Copy a host array to *device*."""

    @abc.abstractmethod
    def download(self, t: Tensor) -> np.ndarray:
        """Copy a tensor of this backend to a new host array."""

    @abc.abstractmethod
    def copy(self, t: Tensor) -> Tensor:
        """A contiguous copy of *t* on the same device."""

    # Math --------------------------------------------------------------------------------
    @abc.abstractmethod
    def forward(self, x: Tensor, w: Tensor, b: Tensor | None, problem: ConvProblem,
                algorithm: str) -> Tensor:
        """``y = conv(x, w) + b``, shape ``problem.y_shape``."""

    @abc.abstractmethod
    def backward_data(self, dy: Tensor, w: Tensor, b: Tensor | None, problem: ConvProblem,
                      algorithm: str) -> Tensor:
        """``dx = conv_transpose(dy, w) + b`` (bias per input channel), shape ``problem.x_shape``."""

    @abc.abstractmethod
    def backward_weight(self, x: Tensor, dy: Tensor, problem: ConvProblem,
                        algorithm: str) -> Tensor:
        """``dw``, shape ``problem.w_shape``."""

    @abc.abstractmethod
    def bias_grad(self, dy: Tensor) -> Tensor:
        """Sum of *dy* over every axis but the channel axis (1)."""

    @abc.abstractmethod
    def pad(self, x: Tensor, padding: Sequence[tuple[int, int]], mode: str) -> Tensor:
        """*x* padded on its spatial axes with ``mode`` in reflect / replicate / circular."""


def run_pass(backend: Backend, problem: ConvProblem, algorithm: str, a: Tensor, b: Tensor,
             bias: Tensor | None = None) -> Tensor:
    """Run one pass of *problem*: forward (``a=x, b=w``), backward-data (``a=dy, b=w``; the
    bias adds per input channel) or backward-weight (``a=x, b=dy``; no bias)."""
    if problem.direction == Direction.FORWARD:
        return backend.forward(a, b, bias, problem, algorithm)
    if problem.direction == Direction.BACKWARD_DATA:
        return backend.backward_data(a, b, bias, problem, algorithm)
    return backend.backward_weight(a, b, problem, algorithm)


def excluded_reason(rule: Algorithm) -> str:
    """Why the configuration excludes *rule* (``CONVFLOW_DISABLE_ALGOS``,
    ``CONVFLOW_DETERMINISTIC``), or ``""``. The selector and any backend falling back at run
    time apply the same exclusions."""
    from .. import config

    if rule.name in config.get("CONVFLOW_DISABLE_ALGOS"):
        return "disabled by CONVFLOW_DISABLE_ALGOS"
    if config.get("CONVFLOW_DETERMINISTIC") and not rule.deterministic:
        return f"not deterministic ({rule.why_not_deterministic}; CONVFLOW_DETERMINISTIC=1)"
    return ""


# When a GEMM (BLAS, cuBLAS, an OpenCL GEMM) pays for an im2col copy: every output sums at
# least this many products, and every group has at least this many output channels.
GEMM_MIN_REDUCTION = 16
GEMM_MIN_OUT_CHANNELS = 4


def gemm_rule(problem: ConvProblem, engine: str, note: str = "") -> tuple[bool, str]:
    """The im2col + GEMM rule every backend shares; *engine* names its GEMM in the reason."""
    enough = (problem.reduction_size >= GEMM_MIN_REDUCTION
              and problem.out_channels_per_group >= GEMM_MIN_OUT_CHANNELS)
    detail = (f"C_in/groups x taps = {problem.reduction_size} products per output and "
              f"{problem.out_channels_per_group} output channels per group")
    if enough:
        return True, (f"{detail} feed {engine} well (>= {GEMM_MIN_REDUCTION} and >= "
                      f"{GEMM_MIN_OUT_CHANNELS}); im2col scratch tiled to "
                      f"CONVFLOW_WORKSPACE_MB{note}")
    return False, (f"{detail} are too few for {engine} to pay (needs >= {GEMM_MIN_REDUCTION} "
                   f"and >= {GEMM_MIN_OUT_CHANNELS})")


def winograd_fits(problem: ConvProblem) -> tuple[bool, str]:
    """Whether a Winograd 3x3 algorithm can compute *problem* at all (every backend's): a
    2-D 3x3 kernel, stride 1, dilation 1, forward or data-gradient pass (the data gradient
    runs as the forward pass of the flipped problem)."""
    if problem.direction == Direction.BACKWARD_WEIGHT:
        return False, "Winograd computes forward and data-gradient passes only"
    if (problem.ndim == 2 and problem.kernel_size == (3, 3) and problem.stride == (1, 1)
            and problem.dilation == (1, 1)):
        return True, "2-D 3x3 kernel, stride 1, dilation 1"
    return False, (f"needs a 2-D 3x3 kernel with stride 1 and dilation 1, got kernel "
                   f"{problem.kernel_size}, stride {problem.stride}, dilation {problem.dilation}")


def data_gradient_flippable(problem: ConvProblem) -> bool:
    """Whether the data gradient is a forward pass of dy without cropping: stride 1 and
    no padding beyond ``dilation * (kernel - 1)``."""
    return not problem.is_strided() and all(
        max(lo, hi) <= d * (k - 1)
        for (lo, hi), d, k in zip(problem.padding, problem.dilation, problem.kernel_size))


def pass_channels(problem: ConvProblem) -> tuple[int, int]:
    """(channels reduced over, channels produced) per group by this pass's kernels."""
    if problem.direction == Direction.BACKWARD_DATA:
        return problem.out_channels_per_group, problem.in_channels_per_group
    return problem.in_channels_per_group, problem.out_channels_per_group


def pass_output_shape(problem: ConvProblem) -> tuple[int, ...]:
    """The shape this pass's kernels write as activations: ``dx`` for the data gradient
    (the forward pass of the flipped problem), else ``y``."""
    return problem.x_shape if problem.direction == Direction.BACKWARD_DATA else problem.y_shape


def winograd_channels_too_few(problem: ConvProblem, why: str, minimum: int) -> str | None:
    """The reason a Winograd rule refuses *problem* for its channel counts, or None: below
    *minimum* channels on either side of the pass the transforms do not pay."""
    reduced, produced = pass_channels(problem)
    if min(reduced, produced) < minimum:
        return (f"{why}, but {reduced} -> {produced} channels per group are too few for the "
                f"transforms to pay (needs >= {minimum} each)")
    return None


def depthwise_rule(problem: ConvProblem, how: str) -> tuple[bool, str]:
    """The depthwise rule every backend shares; *how* says how its kernel computes a channel."""
    if problem.is_depthwise():
        multiplier = problem.out_channels // problem.in_channels
        return True, (f"groups == C_in == {problem.groups} (channel multiplier {multiplier}): "
                      f"{how}")
    return False, (f"not depthwise: groups={problem.groups}, C_in={problem.in_channels} "
                   f"(needs groups == C_in > 1)")


def pointwise_rule(problem: ConvProblem, what: str, in_place: bool,
                   note: str = "") -> tuple[bool, str]:
    """The 1x1 rule every backend shares: *what* is its GEMM; *in_place* whether it reads the
    input itself (otherwise the needed pixels are gathered first)."""
    if problem.is_pointwise():
        how = ("no copy of the input" if in_place
               else "strided or cropped, so the needed pixels are gathered first")
        return True, f"1x1 kernel without padding: {what} ({how}){note}"
    return False, (f"needs a 1x1 kernel without padding, got kernel {problem.kernel_size} and "
                   f"padding {problem.padding}")
