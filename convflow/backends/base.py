"""The small interface every backend implements.

A backend computes the three passes of a plain convolution (:class:`~convflow.params.ConvProblem`
in cuDNN's geometry), pads inputs for non-zero padding modes, reduces bias gradients, and
moves arrays between the host and its device. It trusts its inputs: the host-side checks
have already run. Its algorithms are listed as ordered :class:`AlgorithmRule` objects so
the selector (and ``explain()``) can show why one was chosen.
"""

from __future__ import annotations

import abc
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


@dataclass(frozen=True)
class AlgorithmRule:
    """One algorithm of a backend and the rule deciding when it is the right choice.

    ``applies(problem)`` returns ``(True, why)`` when the rule picks this algorithm for the
    problem and ``(False, why_not)`` otherwise. ``can_run(problem)`` says whether the
    algorithm is able to compute the problem at all (used when it is forced).
    """

    name: str
    summary: str
    applies: Callable[[ConvProblem], tuple[bool, str]]
    can_run: Callable[[ConvProblem], tuple[bool, str]]
    directions: frozenset[Direction] = ALL_DIRECTIONS
    # Whether results are bitwise reproducible across runs and thread counts (what
    # CONVFLOW_DETERMINISTIC=1 requires); ``why_not_deterministic`` says why not.
    deterministic: bool = True
    why_not_deterministic: str = ""


class Backend(abc.ABC):
    """Base class of the numba, opencl and cupy backends."""

    name: ClassVar[str]
    device_type: ClassVar[str]

    @abc.abstractmethod
    def status(self) -> BackendStatus:
        """Availability, with the reason; must not raise."""

    @abc.abstractmethod
    def algorithm_rules(self) -> Sequence[AlgorithmRule]:
        """The backend's algorithms, in the order the selector tries their rules."""

    def unsupported_reason(self, problem: ConvProblem, device: Device) -> str | None:
        """Why this backend cannot compute *problem* on *device*, or None if it can."""
        return None

    def default_device(self) -> Device:
        return Device(self.device_type, 0)

    @abc.abstractmethod
    def available_memory(self, device: Device) -> int:
        """Bytes a call may allocate on *device* (used to fail fast on impossible requests)."""

    def workspace_bytes(self, problem: ConvProblem, algorithm: str) -> int:
        """Scratch memory *algorithm* needs for *problem*, roughly (orders the algorithms tried
        after running out of memory: smallest first)."""
        return 0

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


def excluded_reason(rule: AlgorithmRule) -> str:
    """Why the configuration excludes *rule* (``CONVFLOW_DISABLE_ALGOS``,
    ``CONVFLOW_DETERMINISTIC``), or ``""``. The selector and any backend falling back at run
    time apply the same exclusions."""
    from .. import config

    if rule.name in config.get("CONVFLOW_DISABLE_ALGOS"):
        return "disabled by CONVFLOW_DISABLE_ALGOS"
    if config.get("CONVFLOW_DETERMINISTIC") and not rule.deterministic:
        return f"not deterministic ({rule.why_not_deterministic}; CONVFLOW_DETERMINISTIC=1)"
    return ""
