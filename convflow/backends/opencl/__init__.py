"""The opencl backend: PyOpenCL and kernels of our own in the style of MIOpen's solvers.

Solvers (``convflow.explain()`` lists them with the reason each was or was not chosen):

* ``naive`` -- one work-item per output; every problem, every pass (the baseline);
* ``depthwise`` -- groups == C_in: several outputs of one channel per work-item;
* GPU-style, for GPUs and other non-CPU devices (local memory, barriers, work-groups of
  64-256): ``winograd`` (F(2x2,3x3)), ``gemm_1x1`` and ``im2col_gemm`` (a local-memory
  tiled, register-blocked GEMM), ``tiled_direct`` (input tile + halo and weights in
  ``__local`` memory, several outputs per work-item), ``direct_wrw`` (weight gradient by
  work-group tree reductions);
* CPU-style, for CPU devices such as PoCL (explicit float16 vectors, packed weights, no local
  memory): ``vec_winograd``, ``vec_gemm_1x1``, ``vec_im2col_gemm``.

The rules pick by the device type of ``opencl:0`` (CPU-style solvers on CPU devices,
GPU-style ones elsewhere); every solver can be forced with ``algorithm=`` on any device and
disabled with ``CONVFLOW_DISABLE_ALGOS``.

dtypes: float32, float64 (with ``cl_khr_fp64``), and float16 and bfloat16 stored as such and
computed in float32 (converted on the device by ``convert.cl``; bfloat16 travels as its
16 bits, so no bfloat16 array ever reaches pyopencl's kernel-argument handling). Layouts:
the GEMM and 1x1 solvers of both styles, ``depthwise`` and ``direct_wrw`` read and write
channels-last tensors in place (their rules say ``channels_last``); the others get
channels-first copies and their results are converted back. Bias and activation are fused:
the kernel that writes a forward or data-gradient result applies them as it stores it. A solver whose kernel fails to build or whose
work-group or local memory needs exceed the device's limits falls back to the next rule with
a :class:`~convflow.errors.SolverFallbackWarning`; no weight gradient uses atomics.

pyopencl is imported when the backend's status is first asked for, so ``import convflow``
works (and says why) without it.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ... import config, hostinfo
from ...activations import ACTIVATION_CODES
from ...errors import (
    ArgumentTypeError,
    BackendUnavailableError,
    ConfigError,
    DeviceError,
    KernelBuildError,
    SolverFallbackWarning,
)
from ...geometry import Geometry
from ...params import ConvProblem, Direction
from ...tensor import Device, Tensor
from ..base import Algorithm, Backend, BackendStatus, excluded_reason
from . import fft
from .rules import device_limits
from .runtime import (
    ContextState,
    DeviceEntry,
    DeviceInfo,
    SolverUnavailable,
    enumerate_devices,
    import_pyopencl,
    match_devices,
    pocl_cache_scope,
    query_info,
)
from .solvers import ALGORITHMS, NO_EPILOGUE, SOLVERS, Call, Epilogue, Solver

_PAD_MODES = {"reflect": 1, "replicate": 2, "circular": 3}
_ELEMENT_KERNELS = {2: "u16", 4: "u32", 8: "u64"}
# Storage dtypes computed in float32: the name their convert.cl kernels use.
_HALF_KERNELS = {"float16": "half", "bfloat16": "bf16"}
_DTYPES = ("float16", "bfloat16", "float32", "float64")
BIAS_GRAD_CHUNKS = 64     # row chunks of the channels-last bias gradient's first step


def _to_channels_last(ndim: int) -> tuple[int, ...]:
    """Axes taking a channels-first (N, C, *spatial) array to (N, *spatial, C)."""
    return (0, *range(2, ndim), 1)


def _to_channels_first(ndim: int) -> tuple[int, ...]:
    """Axes taking a channels-last (N, *spatial, C) array to (N, C, *spatial)."""
    return (0, ndim - 1, *range(1, ndim - 1))

def _styled(record: Solver, style: str) -> Solver:
    """*record* as the rules of a *style* device see it: a solver of the other style is
    listed (explain() shows it, algorithm= forces it) but never chosen by rule."""
    if record.style in ("any", style):
        return record
    kind = "CPU" if style == "cpu" else "non-CPU"
    reason = (f"{record.style.upper()}-style solver, not chosen on a {kind} device (force it "
              f"with algorithm={record.name!r})")
    return replace(record, applies=lambda problem: (False, reason))


def rule_order(style: str) -> tuple[Solver, ...]:
    """The solvers in the order the rules of a *style* device try them: ALGORITHMS' order,
    the other style's solvers moved after this style's, before the catch-all baseline."""
    *ranked, baseline = ALGORITHMS
    own = [r for r in ranked if r.style in ("any", style)]
    other = [r for r in ranked if r.style not in ("any", style)]
    return tuple(_styled(r, style) for r in (*own, *other, baseline))


RULES: dict[str, tuple[Solver, ...]] = {style: rule_order(style) for style in ("cpu", "gpu")}


def _within_limits(record: Solver, info: DeviceInfo) -> Solver:
    """*record* whose rule also asks *info*'s limits: the rules never choose a solver the
    device cannot run. Forcing one (``algorithm=``) still tries it, and its run-time
    fallback warns and is recorded, as for any other failure."""
    applies = record.applies

    def rule(problem: ConvProblem) -> tuple[bool, str]:
        fits, why = device_limits(record.name, problem, info)
        return applies(problem) if fits else (False, why)

    return replace(record, applies=rule)


def _versus_rivals(records: tuple[Solver, ...]) -> tuple[Solver, ...]:
    """*records* with each rule that is decided against the others' choice (a solver's
    ``versus``: fft weighs its cost against what the rest would pick) given the rivals of
    this very rule order (its style, its device's limits)."""
    def rival(problem: ConvProblem, name: str) -> str:
        return next(r.name for r in records if r.name != name and r.versus is None
                    and problem.direction in r.directions and r.applies(problem)[0])

    def decided(record: Solver) -> Solver:
        versus = record.versus
        if versus is None:
            return record
        return replace(record, applies=lambda problem: versus(problem, rival(problem,
                                                                            record.name)))

    return tuple(decided(record) for record in records)


class OpenCLBackend(Backend):
    """Any OpenCL device through PyOpenCL; kernels from ``kernels/opencl/*.cl``."""

    name = "opencl"
    device_type = "opencl"
    fuses_activation = True

    def __init__(self) -> None:
        self._status: BackendStatus | None = None
        self._opened_in: int | None = None
        self._lock = threading.RLock()
        self._cl: Any = None
        self._devices: list[tuple[DeviceEntry, Any, DeviceInfo]] = []
        self._default_states: dict[int, ContextState] = {}
        self._states: dict[int, ContextState] = {}
        self._device_rules: dict[tuple[str, DeviceInfo], tuple[Solver, ...]] = {}

    # Status ------------------------------------------------------------------------------
    def status(self) -> BackendStatus:
        with self._lock:
            if self._status is None:
                self._status = self._probe()
            if self._opened_in is not None and self._opened_in != os.getpid():
                # A forked child inherits the driver's state but not its threads: any
                # OpenCL call would hang, so the backend refuses instead.
                return BackendStatus(
                    self.name, False, f"OpenCL was opened in process {self._opened_in}, "
                    f"which forked this one, and OpenCL drivers do not survive fork(); start "
                    f"worker processes with multiprocessing's 'spawn' or 'forkserver' method",
                    self.device_type)
            return self._status

    def _probe(self) -> BackendStatus:
        # Whatever goes wrong while OpenCL starts (a driver error, a damaged or unusable
        # cache, a library raising something unexpected) makes this backend unavailable
        # with the reason; it never reaches calls that use another backend.
        try:
            return self._start()
        except Exception as exc:
            return BackendStatus(self.name, False, f"OpenCL could not start: "
                                 f"{type(exc).__name__}: {exc}", self.device_type)

    def _start(self) -> BackendStatus:
        try:
            cl = import_pyopencl()
        except ImportError as exc:
            return BackendStatus(self.name, False, f"pyopencl is not installed ({exc}); "
                                 f"pip install 'convflow[opencl]'", self.device_type)
        self._opened_in = os.getpid()
        try:
            found = enumerate_devices(cl)
        except cl.Error as exc:
            found, error = [], str(exc).strip()
        else:
            error = "no platform lists a device"
        if not found:
            return BackendStatus(
                self.name, False, f"pyopencl {cl.VERSION_TEXT} finds no OpenCL device ({error}); "
                f"install an OpenCL driver, e.g. apt-get install pocl-opencl-icd",
                self.device_type, version=cl.VERSION_TEXT)
        try:
            chosen = match_devices([entry for entry, _ in found],
                                   config.get("CONVFLOW_OPENCL_DEVICE"))
        except ConfigError as exc:
            return BackendStatus(self.name, False, str(exc), self.device_type,
                                 version=cl.VERSION_TEXT)
        devices = dict(found)
        self._cl = cl
        with pocl_cache_scope():
            self._devices = [(entry, devices[entry], query_info(cl, devices[entry]))
                             for entry in chosen]
        first = self._devices[0][2]
        labels = tuple(f"opencl:{i} {info.describe()}" for i, (_, _, info) in
                       enumerate(self._devices))
        details = {"device selection": config.get("CONVFLOW_OPENCL_DEVICE")
                   or "every device, GPUs first (CONVFLOW_OPENCL_DEVICE unset)",
                   "solver style": f"{first.style} (chosen by the device type of opencl:0)"}
        return BackendStatus(
            self.name, True, f"pyopencl {cl.VERSION_TEXT}, {len(self._devices)} device(s), "
            f"opencl:0 is {first.name} ({first.type})", self.device_type, labels,
            cl.VERSION_TEXT, details)

    def device_infos(self) -> list[DeviceInfo]:
        """The limits of each visible device, ``opencl:i`` at index i."""
        self.status()
        return [info for _, _, info in self._devices]

    def algorithm_names(self) -> frozenset[str]:
        return frozenset(SOLVERS)

    def algorithm_rules(self, device: Device | None = None) -> Sequence[Algorithm]:
        """The records in the rule order of opencl:0's style, whose rules refuse what
        *device*'s work-group and local-memory limits cannot run."""
        infos = self.device_infos()
        if not infos:
            return _versus_rivals(RULES["gpu"])
        index = device.index if device is not None and device.type == "opencl" else 0
        info = infos[index if index < len(infos) else 0]
        key = (infos[0].style, info)
        with self._lock:
            records = self._device_rules.get(key)
            if records is None:
                records = _versus_rivals(tuple(_within_limits(r, info)
                                               for r in RULES[infos[0].style]))
                self._device_rules[key] = records
        return records

    def unsupported_reason(self, problem: ConvProblem, device: Device) -> str | None:
        if device.type != "opencl":
            return f"the opencl backend computes on OpenCL devices, not on {device}"
        infos = self.device_infos()
        if device.index >= len(infos):
            return (f"device {device} does not exist: {len(infos)} OpenCL device(s) are visible "
                    f"(CONVFLOW_OPENCL_DEVICE selects them)")
        info = infos[device.index]
        if problem.dtype not in _DTYPES:
            return (f"the opencl backend does not compute {problem.dtype}; convert the operands "
                    f"to float32 or use the numba backend")
        if problem.dtype == "float64" and not info.fp64:
            return (f"{info.name!r} does not support float64 (no cl_khr_fp64); convert the "
                    f"operands to float32 or use another backend")
        return None

    def in_host_memory(self, device: Device) -> bool:
        return self._info(device).type == "cpu"

    def available_memory(self, device: Device) -> int:
        size = self._info(device).global_mem_size
        # A CPU device's "global memory" is the host's RAM: what is left of it bounds it.
        return min(size, hostinfo.memory_available()) if self.in_host_memory(device) else size

    def fft_plan(self, problem: ConvProblem) -> Any:
        """How the ``fft`` solver would run *problem* (tiles, lengths), or None."""
        return fft.plan_for(problem)

    def device_identity(self, device: Device) -> str:
        info = self._info(device)
        return (f"{info.name} ({info.type}), {info.platform} {info.version}, driver {info.driver}, "
                f"{info.compute_units} compute units")

    def synchronize(self, device: Device) -> None:
        self._default_state(device.index).queue.finish()

    def _info(self, device: Device) -> DeviceInfo:
        infos = self.device_infos()
        if device.type != "opencl" or not 0 <= device.index < len(infos):
            raise DeviceError(f"device {device} does not exist: {len(infos)} OpenCL device(s) "
                              f"are visible; choose one of "
                              f"{', '.join(f'opencl:{i}' for i in range(len(infos)))}")
        return infos[device.index]

    # Contexts ----------------------------------------------------------------------------
    def _default_state(self, index: int) -> ContextState:
        self._info(Device("opencl", index))
        with self._lock:
            state = self._default_states.get(index)
            if state is None:
                cl = self._cl
                _, device, info = self._devices[index]
                with pocl_cache_scope():
                    context = cl.Context([device])
                state = ContextState(cl, context, device, info)
                self._default_states[index] = state
                self._states[context.int_ptr] = state
            return state

    def _state_for(self, array: Any) -> ContextState:
        context = array.context
        with self._lock:
            state = self._states.get(context.int_ptr)
            if state is not None:
                return state
            device = self._device_of(array)
            index = self._index_of(device)
            info = self._devices[index][2]
            state = ContextState(self._cl, context, device, info)
            self._states[context.int_ptr] = state
            return state

    def _index_of(self, device: Any) -> int:
        for index, (_, known, _) in enumerate(self._devices):
            if known.int_ptr == device.int_ptr:
                return index
        raise DeviceError(f"the pyopencl array lives on {device.name.strip()!r}, which is not "
                          f"among convflow's OpenCL devices "
                          f"({', '.join(info.name for info in self.device_infos())}); check "
                          f"CONVFLOW_OPENCL_DEVICE")

    def state(self, device: Device) -> ContextState:
        """The context convflow uses for tensors it creates on *device*."""
        return self._default_state(device.index)

    # Storage -----------------------------------------------------------------------------
    def adopt(self, obj: Any) -> Tensor:
        import pyopencl.array as cl_array

        if not isinstance(obj, cl_array.Array):
            raise ArgumentTypeError(f"expected a pyopencl.array.Array, got {type(obj).__name__}")
        self.status()
        return Tensor(obj, Device("opencl", self._index_of(self._device_of(obj))))

    @staticmethod
    def _device_of(array: Any) -> Any:
        if array.queue is not None:
            return array.queue.device
        return array.context.devices[0]

    def upload(self, host: np.ndarray, device: Device) -> Tensor:
        state = self._default_state(device.index)
        return Tensor(state.to_device(state.queue, host), device)

    def download(self, t: Tensor) -> np.ndarray:
        array = self._contiguous(t.data)
        return array.get(queue=array.queue or self._state_for(array).queue)  # type: ignore[no-any-return]

    def copy(self, t: Tensor) -> Tensor:
        array = t.data
        if array.flags.c_contiguous:
            copied = array.copy(queue=array.queue or self._state_for(array).queue)
        else:
            copied = self._contiguous(array)
        return Tensor(copied, t.device)

    def _contiguous(self, array: Any, queue: Any = None) -> Any:
        """*array* itself if C-contiguous with no offset, else a contiguous device copy."""
        if array.flags.c_contiguous and array.offset == 0:
            return array
        state = self._state_for(array)
        queue = queue or array.queue or state.queue
        out = state.empty(queue, array.shape, array.dtype)
        if out.size:
            itemsize = array.dtype.itemsize
            shape, strides = self._five_dims(array)
            kernel = state.kernel(("opencl/layout.cl",),
                                  f"copy_strided_{_ELEMENT_KERNELS[itemsize]}", {})
            state.launch(queue, kernel, (out.size,), (64,), array.base_data,
                         np.int64(array.offset // itemsize), *shape,
                         *(np.int64(s) for s in strides), out.data)
        return out

    @staticmethod
    def _five_dims(array: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if array.ndim > 5:
            raise ArgumentTypeError(f"non-contiguous pyopencl arrays of more than 5 dims are not "
                                    f"supported (got shape {array.shape}); make it contiguous")
        itemsize = array.dtype.itemsize
        missing = 5 - array.ndim
        shape = (1,) * missing + tuple(int(s) for s in array.shape)
        strides = (0,) * missing + tuple(int(s) // itemsize for s in array.strides)
        return shape, strides

    # Math --------------------------------------------------------------------------------
    def _on_device(self, t: Tensor) -> Tensor:
        """Host tensors (e.g. the bias gradient's dy when no other pass ran) go to opencl:0."""
        return t if t.device.type == "opencl" else self.upload(np.asarray(t.data), Device("opencl"))

    def _call(self, tensors: Sequence[Tensor | None], dtype: np.dtype) -> Call:
        first = next(t for t in tensors if t is not None)
        state = self._state_for(first.data)
        queue = first.data.queue or state.queue
        compute = np.dtype(np.float32) if dtype.name in _HALF_KERNELS else np.dtype(dtype)
        budget = min(config.get("CONVFLOW_WORKSPACE_MB") << 20, state.info.max_mem_alloc_size)
        return Call(state, queue, compute, budget)

    def _operand(self, call: Call, t: Tensor, channels_last: bool = False) -> Any:
        """*t* as a contiguous array in the compute dtype, in the call's context; with
        *channels_last*, *t* (channels-first axis order) is made contiguous in channels-last
        memory order (N, *spatial, C): no copy when it already lies so."""
        array = t.data
        state = call.state
        if array.context.int_ptr != state.context.int_ptr:
            array = state.to_device(call.queue, self.download(t))
        elif array.queue is not None and array.queue is not call.queue:
            array.queue.finish()
        if channels_last:
            array = array.transpose(_to_channels_last(array.ndim))
        half = _HALF_KERNELS.get(array.dtype.name)
        if half is not None:
            # Only the buffer reaches the kernel (never a float16 / bfloat16 pyopencl array).
            out = call.tensor(array.shape)
            if out.size and array.flags.c_contiguous:
                kernel = state.kernel(("opencl/convert.cl",), f"{half}_to_float_flat", {})
                call.launch(kernel, (out.size,), (64,), array.base_data,
                            np.int64(array.offset // 2), out.data, np.int64(out.size))
            elif out.size:
                shape, strides = self._five_dims(array)
                kernel = state.kernel(("opencl/convert.cl",), f"{half}_to_float", {})
                call.launch(kernel, (out.size,), (64,), array.base_data,
                            np.int64(array.offset // 2), *shape,
                            *(np.int64(s) for s in strides), out.data)
            return out
        return self._contiguous(array, call.queue)

    def _result(self, call: Call, out: Any, dtype: np.dtype, device: Device,
                channels_last: bool = False) -> Tensor:
        """*out* (compute dtype) rounded to *dtype*; a channels-last *out* is returned as its
        channels-first view (functional.py turns it back without a copy)."""
        half = _HALF_KERNELS.get(dtype.name)
        if half is not None:
            rounded = call.state.empty(call.queue, out.shape, dtype)
            if out.size:
                kernel = call.state.kernel(("opencl/convert.cl",), f"float_to_{half}", {})
                call.launch(kernel, (out.size,), (64,), out.data, rounded.data,
                            np.int64(out.size))
            out = rounded
        if channels_last:
            out = out.transpose(_to_channels_first(out.ndim))
        return Tensor(out, device)

    def _solve(self, problem: ConvProblem, algorithm: str, call: Call,
               operands: Callable[[bool], tuple[Any, Any]], ep: Epilogue,
               out_shape: tuple[int, ...], device: Device) -> tuple[Any, bool]:
        """Run *algorithm*; on a build failure or a device limit, warn and try the next
        solver whose rule applies (``naive`` last), so a call never crashes on one kernel,
        and record the fallback so later Decisions name the solver that runs.
        ``operands(channels_last)`` gives the inputs in the layout the solver computes in;
        returns the result and whether it is channels-last."""
        geometry = Geometry.from_problem(problem)
        rules = [r for r in self.algorithm_rules(device) if problem.direction in r.directions]
        tried: list[str] = []
        name = algorithm
        while True:
            solver = SOLVERS[name]
            native = problem.channels_last and solver.channels_last
            a, b = operands(native)
            shape = out_shape
            if native and problem.direction != Direction.BACKWARD_WEIGHT:
                shape = (out_shape[0], *out_shape[2:], out_shape[1])
            out = call.tensor(shape)
            try:
                solver.pass_for(problem.direction)(
                    call, replace(geometry, channels_last=native), a, b, out, ep)
                return out, native
            except (KernelBuildError, SolverUnavailable) as exc:
                tried.append(name)
                following = [r.name for r in rules if r.name not in tried and r.applies(problem)[0]
                             and not excluded_reason(r)]
                if not following:
                    if isinstance(exc, KernelBuildError):
                        raise
                    raise BackendUnavailableError(
                        f"no opencl solver can run {problem.describe()} on "
                        f"{call.state.info.name!r}: {exc}; use another backend") from exc
                what = "failed to build" if isinstance(exc, KernelBuildError) else "cannot run here"
                self.record_fallback(problem, device, algorithm, following[0],
                                     f"opencl solver {name!r} {what}: {exc}")
                warnings.warn(SolverFallbackWarning(
                    f"opencl solver {name!r} {what} ({exc}); falling back to {following[0]!r} "
                    f"for {problem.describe()}"), stacklevel=4)
                name = following[0]

    def _pass(self, problem: ConvProblem, algorithm: str, a: Tensor, b: Tensor,
              bias: Tensor | None, out_shape: tuple[int, ...]) -> Tensor:
        a, b = self._on_device(a), self._on_device(b)
        bias = None if bias is None else self._on_device(bias)
        dtype = a.dtype
        call = self._call((a, b, bias), dtype)
        weight_pass = problem.direction == Direction.BACKWARD_WEIGHT
        prepared: dict[bool, tuple[Any, Any]] = {}

        def operands(channels_last: bool) -> tuple[Any, Any]:
            # a is x or dy (an activation tensor); b is the weight, or dy for the weight pass.
            if channels_last not in prepared:
                prepared[channels_last] = (self._operand(call, a, channels_last),
                                           self._operand(call, b, channels_last and weight_pass))
            return prepared[channels_last]

        ep = NO_EPILOGUE
        if not weight_pass:
            ep = Epilogue(None if bias is None else self._operand(call, bias),
                          ACTIVATION_CODES[problem.activation])
        out, channels_last = self._solve(problem, algorithm, call, operands, ep, out_shape,
                                         a.device)
        return self._result(call, out, dtype, a.device, channels_last and not weight_pass)

    def forward(self, x: Tensor, w: Tensor, b: Tensor | None, problem: ConvProblem,
                algorithm: str) -> Tensor:
        return self._pass(problem, algorithm, x, w, b, problem.y_shape)

    def backward_data(self, dy: Tensor, w: Tensor, b: Tensor | None, problem: ConvProblem,
                      algorithm: str) -> Tensor:
        return self._pass(problem, algorithm, dy, w, b, problem.x_shape)

    def backward_weight(self, x: Tensor, dy: Tensor, problem: ConvProblem,
                        algorithm: str) -> Tensor:
        return self._pass(problem, algorithm, x, dy, None, problem.w_shape)

    def bias_grad(self, dy: Tensor) -> Tensor:
        """Channels-last dy (a channels-first view of (N, *spatial, C) memory) is reduced
        where it lies: per channel over row chunks, then over the chunks, in a fixed order."""
        dy = self._on_device(dy)
        call = self._call((dy,), dy.dtype)
        channels = dy.shape[1]
        channels_last = dy.ndim > 2 and dy.data.transpose(
            _to_channels_last(dy.ndim)).flags.c_contiguous
        grad = self._operand(call, dy, channels_last)
        out = call.tensor((channels,))
        inner = int(np.prod(dy.shape[2:], dtype=np.int64))
        if dy.shape[0] == 0 or inner == 0:
            call.zero(out)
        elif channels and channels_last:
            rows = dy.shape[0] * inner
            chunks = min(BIAS_GRAD_CHUNKS, rows)
            part = call.empty((chunks, channels))
            call.launch(call.kernel("util", "bias_grad_nhwc"), (channels, chunks), (16, 4),
                        grad.data, part.data, channels, np.int64(rows), chunks)
            call.flat("util", "bias_grad_chunks", channels, part.data, out.data, channels,
                      chunks)
        elif channels:
            group = call.state.reduction_group()
            kernel = call.kernel("util", "bias_grad", RED_WG=group)
            call.launch(kernel, (channels * group,), (group,), grad.data, out.data, dy.shape[0],
                        channels, np.int64(inner), fixed=True)
        return self._result(call, out, dy.dtype, dy.device)

    def pad(self, x: Tensor, padding: Sequence[tuple[int, int]], mode: str) -> Tensor:
        x = self._on_device(x)
        call = self._call((x,), x.dtype)
        array = self._contiguous(x.data, call.queue)
        lifted = (1,) * (3 - len(padding)) + tuple(int(s) for s in x.shape[2:])
        lows = (0,) * (3 - len(padding)) + tuple(lo for lo, _ in padding)
        highs = (0,) * (3 - len(padding)) + tuple(hi for _, hi in padding)
        padded = tuple(s + lo + hi for s, lo, hi in zip(lifted, lows, highs))
        out_shape = (*x.shape[:2], *(s + lo + hi for s, (lo, hi) in zip(x.shape[2:], padding)))
        out = call.state.empty(call.queue, out_shape, x.dtype)
        if out.size:
            kernel = call.state.kernel(("opencl/layout.cl",),
                                       f"pad_{_ELEMENT_KERNELS[x.dtype.itemsize]}", {})
            call.launch(kernel, (out.size,), (64,), array.data, out.data,
                        x.shape[0] * x.shape[1], *lifted, *padded, *lows, _PAD_MODES[mode])
        return Tensor(out, x.device)
