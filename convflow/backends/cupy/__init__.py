"""The cupy backend: NVIDIA GPUs through CuPy, cuDNN, and convflow's own CUDA kernels.

Algorithms, in the order the selector tries them:

* ``cudnn`` -- cuDNN through the cuDNN frontend's graph API, when the frontend is installed
  and cuDNN builds a plan for the problem (a refusal is shown in ``explain()`` and the next
  rule decides);
* ``depthwise`` -- groups == C_in: a kernel per pass without channel loops;
* ``gemm_1x1`` -- 1x1 kernels without padding: cuBLAS on the input itself;
* ``im2col_gemm`` -- im2col / col2im kernels and cuBLAS GEMMs (``cupy.matmul``), scratch
  tiled to ``CONVFLOW_WORKSPACE_MB``;
* ``direct`` -- direct kernels, the always-applicable baseline.

CuPy and the frontend are imported when the backend's status is first asked for, never by
``import convflow``. Results are CuPy arrays on the input's device, computed on the current
CuPy stream; weight gradients of the own kernels are deterministic (no atomics).

dtypes: float16, bfloat16 (cuDNN BFLOAT16; needs a CuPy that holds ``ml_dtypes.bfloat16``
arrays), float32, float64; the 16-bit types compute in float32. Layouts: ``cudnn`` reads and
writes channels-last data in place (descriptors with channels-last strides); the own
kernels compute channels-first, so channels-last data is converted for them. Epilogue: the
bias and activation are fused into the cuDNN graph (conv -> bias -> activation) where cuDNN
accepts it, else applied in one pass after the plan; the direct and depthwise kernels apply
them as they write, and results written by cuBLAS get them in one pass.

This backend has not been run on a GPU yet: CI compiles its kernels with nvcc and checks
their arithmetic and the algorithms' orchestration on the host (tests/test_cupy_*.py).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ... import config
from ...errors import DeviceError
from ...params import ConvProblem, Direction
from ...tensor import Device, Tensor
from ..base import Algorithm, Backend, BackendStatus, depthwise_rule, gemm_rule, pointwise_rule
from . import algorithms
from .cudnn_plans import CudnnPlans, Policy, Resolution, as_channels_last, run_cudnn
from .status import Probe, probe

logger = logging.getLogger("convflow")


_PADDING_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}
_gemm_mode_lock = threading.Lock()


def policy_from_config() -> Policy:
    """The TF32, determinism and workspace settings in force now."""
    return Policy(allow_tf32=bool(config.get("CONVFLOW_ALLOW_TF32")),
                  deterministic=bool(config.get("CONVFLOW_DETERMINISTIC")),
                  workspace_limit=int(config.get("CONVFLOW_WORKSPACE_MB")) << 20)


def describe_policy(problem: ConvProblem, policy: Policy) -> str:
    parts = []
    if problem.dtype == "float32":
        parts.append("TF32 allowed (CONVFLOW_ALLOW_TF32=1)" if policy.allow_tf32
                     else "no TF32 (CONVFLOW_ALLOW_TF32=0)")
    elif problem.dtype in ("float16", "bfloat16"):
        parts.append("float32 accumulation")
    parts.append("deterministic engines only (CONVFLOW_DETERMINISTIC=1)" if policy.deterministic
                 else "any engine (CONVFLOW_DETERMINISTIC=0)")
    return ", ".join(parts)


def _gemm_note(problem: ConvProblem) -> str:
    if problem.dtype != "float32":
        return ""
    allowed = bool(config.get("CONVFLOW_ALLOW_TF32"))
    return f"; cuBLAS {'may use' if allowed else 'without'} TF32 (CONVFLOW_ALLOW_TF32)"


def _depthwise_rule(problem: ConvProblem) -> tuple[bool, str]:
    return depthwise_rule(problem, "one thread per output over the taps of its single channel")


def _pointwise_rule(problem: ConvProblem) -> tuple[bool, str]:
    return pointwise_rule(problem, "one batched cuBLAS GEMM per pass",
                          algorithms.pointwise_in_place(problem), _gemm_note(problem))


def _im2col_rule(problem: ConvProblem) -> tuple[bool, str]:
    return gemm_rule(problem, "cuBLAS", _gemm_note(problem))


def _always(problem: ConvProblem) -> tuple[bool, str]:
    return True, "handles every problem"


def _direct_rule(problem: ConvProblem) -> tuple[bool, str]:
    return True, "the always-applicable baseline: one thread per output element"


# Every pass of the own kernels ends with the bias and activation (fused into the direct
# and depthwise kernels' write-back, one bias_activation pass after a cuBLAS GEMM).
_FUSED = frozenset({Direction.FORWARD, Direction.BACKWARD_DATA})


def _own(name: str, summary: str, applies: Any, can_run: Any, forward: algorithms.Pass,
         backward_data: algorithms.Pass, backward_weight: algorithms.Pass) -> Algorithm:
    return Algorithm(name, summary, applies, can_run, fused=_FUSED,
                     passes={Direction.FORWARD: forward, Direction.BACKWARD_DATA: backward_data,
                             Direction.BACKWARD_WEIGHT: backward_weight})


OWN_RULES: tuple[Algorithm, ...] = (
    _own("depthwise", "per-channel CUDA kernels", _depthwise_rule, _depthwise_rule,
         algorithms.fprop_depthwise, algorithms.dgrad_depthwise, algorithms.wgrad_depthwise),
    _own("gemm_1x1", "1x1 convolution as cuBLAS GEMMs", _pointwise_rule, _pointwise_rule,
         algorithms.fprop_pointwise, algorithms.dgrad_pointwise, algorithms.wgrad_im2col),
    _own("im2col_gemm", "im2col / col2im kernels + cuBLAS GEMMs", _im2col_rule, _always,
         algorithms.fprop_im2col, algorithms.dgrad_im2col, algorithms.wgrad_im2col),
    _own("direct", "direct CUDA kernels", _direct_rule, _always, algorithms.fprop_direct,
         algorithms.dgrad_direct, algorithms.wgrad_direct),
)


class CupyBackend(Backend):
    """NVIDIA GPUs through CuPy: cuDNN first, convflow's own CUDA kernels otherwise."""

    name = "cupy"
    device_type = "cuda"
    fuses_activation = True

    def __init__(self) -> None:
        self._probe: Probe | None = None
        self._probe_lock = threading.Lock()
        self._kernels: Any = None
        self._plans: CudnnPlans | None = None
        self._rules: tuple[Algorithm, ...] | None = None

    # Status ------------------------------------------------------------------------------
    def _probed(self) -> Probe:
        with self._probe_lock:
            if self._probe is None:
                self._probe = probe()
                if self._probe.available:
                    from .kernels import CudaKernels

                    self._kernels = CudaKernels(self._probe.cupy)
                    if self._probe.cudnn is not None:
                        self._plans = CudnnPlans(self._probe.cupy, self._probe.cudnn)
            return self._probe

    def status(self) -> BackendStatus:
        result = self._probed()
        return BackendStatus(self.name, result.available, result.reason, self.device_type,
                             result.devices, result.version, dict(result.details))

    @property
    def _cupy(self) -> Any:
        cupy = self._probed().cupy
        if cupy is None:
            raise DeviceError(f"the cupy backend is unavailable: {self._probed().reason}")
        return cupy

    @property
    def plans(self) -> CudnnPlans | None:
        """The cuDNN plan cache, or None without the cuDNN frontend."""
        self._probed()
        return self._plans

    def algorithm_names(self) -> frozenset[str]:
        return frozenset(("cudnn", *(rule.name for rule in OWN_RULES)))

    def algorithm_rules(self, device: Device | None = None) -> Sequence[Algorithm]:
        if self._rules is None:
            rules = OWN_RULES
            if self.plans is not None:
                # cuDNN's passes are the frontend graphs _run_cudnn builds (no own code).
                cudnn_rule = Algorithm("cudnn", "cuDNN through the cuDNN frontend graph API",
                                       self._cudnn_rule, self._cudnn_can_run,
                                       channels_last=True, fused=_FUSED)
                rules = (cudnn_rule, *OWN_RULES)
            self._rules = rules
        return self._rules

    def _resolve(self, problem: ConvProblem, device: int | None = None,
                 fused: bool = False) -> Resolution:
        assert self._plans is not None
        if device is None:
            device = int(self._cupy.cuda.runtime.getDevice())
        return self._plans.resolve(problem, device, policy_from_config(), fused)

    def _cudnn_rule(self, problem: ConvProblem) -> tuple[bool, str]:
        if problem.is_empty():
            return False, "an empty batch: nothing for cuDNN to compute"
        fused = bool(problem.activation) and problem.direction != Direction.BACKWARD_WEIGHT
        resolution = self._resolve(problem, fused=fused)
        if not resolution.supported:
            return False, f"{resolution.reason}; convflow's own kernels run it instead"
        assert resolution.plan is not None and resolution.mapping is not None
        details = self._probed().details
        workspace = resolution.plan.workspace_size / 2**20
        text = (f"cuDNN {details.get('cudnn', '?')} built a plan (heuristics A, then fallback; "
                f"{describe_policy(problem, policy_from_config())}; workspace "
                f"{workspace:.1f} MiB; {resolution.mapping.describe()}")
        if problem.channels_last:
            text += "; channels-last descriptors: the data is read and written where it lies"
        if resolution.fused:
            text += f"; bias and {problem.activation} fused into the graph"
        elif fused:
            text += (f"; {resolution.fusion}: bias and {problem.activation} in one pass after "
                     f"the plan")
        return True, text + ")"

    def _cudnn_can_run(self, problem: ConvProblem) -> tuple[bool, str]:
        if problem.is_empty():
            return True, "an empty batch: nothing to compute"
        return self._cudnn_rule(problem)

    def unsupported_reason(self, problem: ConvProblem, device: Device) -> str | None:
        if device.type != "cuda":
            return f"cupy runs on CUDA devices, not on {device}"
        if problem.dtype == "bfloat16" and not self._holds_bfloat16():
            return (f"CuPy {self._probed().version} cannot hold bfloat16 arrays (it needs a "
                    f"CuPy with ml_dtypes support); convert the operands to float16 or float32, "
                    f"or use the numba or opencl backend")
        count = int(self._cupy.cuda.runtime.getDeviceCount())
        if device.index >= count:
            return (f"{device} does not exist: this machine has {count} CUDA device"
                    f"{'s' if count != 1 else ''}")
        return None

    def _holds_bfloat16(self) -> bool:
        """Whether this CuPy makes arrays of ``ml_dtypes.bfloat16`` (CuPy with ml_dtypes)."""
        import ml_dtypes

        try:
            self._cupy.empty(1, dtype=ml_dtypes.bfloat16)
        except Exception:
            return False
        return True

    def default_device(self) -> Device:
        return Device("cuda", int(self._cupy.cuda.runtime.getDevice()))

    def available_memory(self, device: Device) -> int:
        cupy = self._cupy
        with cupy.cuda.Device(device.index):
            free, _ = cupy.cuda.runtime.memGetInfo()
            pooled = cupy.get_default_memory_pool().free_bytes()
        return int(free) + int(pooled)

    def device_identity(self, device: Device) -> str:
        cupy = self._cupy
        properties = cupy.cuda.runtime.getDeviceProperties(device.index)
        name = properties["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        probe = self._probed()
        versions = ", ".join(f"{k} {v}" for k, v in sorted(probe.details.items()))
        return f"{name} (sm_{properties['major']}{properties['minor']}), CuPy {probe.version}, {versions}"

    def synchronize(self, device: Device) -> None:
        cupy = self._cupy
        with cupy.cuda.Device(device.index):
            cupy.cuda.get_current_stream().synchronize()

    # Storage -----------------------------------------------------------------------------
    def adopt(self, obj: Any) -> Tensor:
        cupy = self._cupy
        array = obj if isinstance(obj, cupy.ndarray) else cupy.from_dlpack(obj)
        return Tensor(array, Device("cuda", int(array.device.id)))

    def upload(self, host: np.ndarray, device: Device) -> Tensor:
        cupy = self._cupy
        with cupy.cuda.Device(device.index):
            return Tensor(cupy.array(host, copy=True, order="C"), device)

    def download(self, t: Tensor) -> np.ndarray:
        with self._cupy.cuda.Device(t.device.index):
            return np.ascontiguousarray(self._cupy.asnumpy(t.data))

    def copy(self, t: Tensor) -> Tensor:
        cupy = self._cupy
        with cupy.cuda.Device(t.device.index):
            return Tensor(cupy.array(t.data, copy=True, order="C"), t.device)

    # Math --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _gemm_mode(self, problem: ConvProblem) -> Iterator[None]:
        """cuBLAS float32 GEMMs with or without TF32, as CONVFLOW_ALLOW_TF32 says.

        CuPy keeps the float32 compute type globally (CUPY_TF32); it is switched for the
        duration of the call only when it disagrees with the policy, and restored after.
        """
        if problem.dtype != "float32":
            yield
            return
        from cupy._core import _routines_linalg as linalg

        allow = bool(config.get("CONVFLOW_ALLOW_TF32"))
        if (linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32) == allow:
            yield
            return
        with _gemm_mode_lock:
            current = linalg.get_compute_type(np.float32)
            wanted = linalg.COMPUTE_TYPE_TF32 if allow else linalg.COMPUTE_TYPE_DEFAULT
            linalg.set_compute_type(np.float32, wanted)
            try:
                yield
            finally:
                linalg.set_compute_type(np.float32, current)

    def _context(self) -> algorithms.Context:
        return algorithms.Context(self._cupy, self._kernels,
                                  algorithms.matmul_wide(self._cupy, self._cupy.matmul),
                                  int(config.get("CONVFLOW_WORKSPACE_MB")) << 20)

    def _own_algorithm(self, problem: ConvProblem) -> str:
        """The own algorithm the rules pick (used when cuDNN refuses at run time)."""
        return next(rule.name for rule in OWN_RULES if rule.applies(problem)[0])

    def _run(self, problem: ConvProblem, algorithm: str, a: Tensor, b: Tensor,
             bias: Tensor | None) -> Tensor:
        cupy = self._cupy
        device = a.device
        with cupy.cuda.Device(device.index):
            bias_data = None if bias is None else cupy.ascontiguousarray(bias.data)
            if algorithm == "cudnn":
                wanted = problem.direction != Direction.BACKWARD_WEIGHT and (
                    bias is not None or bool(problem.activation))
                resolution = self._resolve(problem, device.index, fused=wanted)
                if resolution.supported:
                    a_data, b_data = self._cudnn_operands(problem, a.data, b.data)
                    return Tensor(self._run_cudnn(problem, resolution, a_data, b_data,
                                                  bias_data), device)
                fallback = self._own_algorithm(problem)
                logger.warning("cuDNN cannot run %s on %s (%s); running convflow's %s kernels",
                               problem.describe(), device, resolution.reason, fallback)
                self.record_fallback(problem, device, "cudnn", fallback,
                                     f"cuDNN refused it: {resolution.reason}")
                algorithm = fallback
            # The own kernels compute packed channels-first arrays (channels-last data is
            # converted here; explain() says so for these rules).
            a_data = cupy.ascontiguousarray(a.data)
            b_data = cupy.ascontiguousarray(b.data)
            with self._gemm_mode(problem):
                function = self.algorithm(algorithm).passes[problem.direction]
                out = algorithms.run(self._context(), function, problem, a_data, b_data,
                                     bias_data)
            return Tensor(out, device)

    def _cudnn_operands(self, problem: ConvProblem, a: Any, b: Any) -> tuple[Any, Any]:
        """The activations as cuDNN's descriptors say they lie: packed channels-last
        (channels-first views of it; a copy only when the caller's data is not so) or
        packed channels-first."""
        cupy = self._cupy
        if not problem.channels_last:
            return cupy.ascontiguousarray(a), cupy.ascontiguousarray(b)
        if problem.direction == Direction.BACKWARD_WEIGHT:
            return as_channels_last(cupy, a), as_channels_last(cupy, b)
        return as_channels_last(cupy, a), cupy.ascontiguousarray(b)

    def _run_cudnn(self, problem: ConvProblem, resolution: Resolution, a: Any, b: Any,
                   bias: Any) -> Any:
        assert self._plans is not None

        def epilogue(out: Any, bias: Any, activation: str, channels_last: bool) -> None:
            self._kernels.bias_activation(out, bias, algorithms.ACTIVATION_CODES[activation],
                                          channels_last)

        return run_cudnn(self._cupy, self._plans, resolution, problem, a, b, bias, epilogue)

    def forward(self, x: Tensor, w: Tensor, b: Tensor | None, problem: ConvProblem,
                algorithm: str) -> Tensor:
        return self._run(problem, algorithm, x, w, b)

    def backward_data(self, dy: Tensor, w: Tensor, b: Tensor | None, problem: ConvProblem,
                      algorithm: str) -> Tensor:
        return self._run(problem, algorithm, dy, w, b)

    def backward_weight(self, x: Tensor, dy: Tensor, problem: ConvProblem,
                        algorithm: str) -> Tensor:
        return self._run(problem, algorithm, x, dy, None)

    def bias_grad(self, dy: Tensor) -> Tensor:
        cupy = self._cupy
        with cupy.cuda.Device(dy.device.index):
            axes = (0, *range(2, dy.ndim))
            total = cupy.sum(dy.data, axis=axes, dtype=cupy.float64)
            return Tensor(total.astype(dy.dtype), dy.device)

    def pad(self, x: Tensor, padding: Sequence[tuple[int, int]], mode: str) -> Tensor:
        cupy = self._cupy
        with cupy.cuda.Device(x.device.index):
            widths = ((0, 0), (0, 0), *padding)
            return Tensor(cupy.pad(x.data, widths, mode=_PADDING_MODES[mode]), x.device)
