"""The public convolution functions: normalize, check, select, run.

Every call goes through the same flow::

    as_tensor -> ConvParams.normalize -> checks -> selector.select -> backend pass

and :func:`explain` runs the same planning without computing anything.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
import numbers
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from . import checks, config, find, selector
from .backends import is_current
from .backends.base import Backend, run_pass
from .errors import (
    DeviceError,
    ParameterError,
    ShapeError,
    WorkspaceTooLargeError,
)
from .params import (
    LAYOUTS,
    ConvParams,
    ConvProblem,
    Direction,
)
from .selector import Decision
from .tensor import Device, ResultKind, Tensor, as_tensor, native_byte_order

logger = logging.getLogger("convflow")

_COMPUTE_ITEMSIZE = {"float16": 4, "bfloat16": 4, "float32": 4, "float64": 8}


@dataclass(frozen=True)
class _Pass:
    """One planned backend pass: its decision, the backend, and its operands' order."""

    decision: Decision
    backend: Backend


def _data_device(op: str, tensors: Sequence[tuple[str, Tensor | None]]) -> Device:
    """The device the call computes on by default: the input's. Host weights and biases go
    along with device inputs; two different devices are an error."""
    devices = {name: t.device for name, t in tensors if t is not None}
    on_device = {name: d for name, d in devices.items() if d.type != "cpu"}
    if len(set(on_device.values())) > 1:
        listing = ", ".join(f"{name} on {d}" for name, d in on_device.items())
        raise DeviceError(f"{op}: arrays live on different devices ({listing}); move them to one "
                          f"device with convflow.tensor(x, device=...)")
    return next(iter(on_device.values())) if on_device else Device("cpu")


def _to(t: Tensor | None, device: Device) -> Tensor | None:
    return None if t is None or t.device == device else t.to(device)


def _problem(direction: Direction, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
             y_shape: tuple[int, ...], dtype: np.dtype[Any], params: ConvParams,
             padding: tuple[tuple[int, int], ...] | None = None, channels_last: bool = False,
             activation: str = "") -> ConvProblem:
    return ConvProblem(direction, tuple(x_shape), tuple(w_shape), tuple(y_shape), dtype.name,
                       params.stride, params.padding if padding is None else padding,
                       params.dilation, params.groups, channels_last, activation)


def _check_memory(op: str, backend: Backend, device: Device, dtype: np.dtype[Any],
                  needs: list[tuple[str, int]], inputs: Sequence[tuple[str, Tensor | None]],
                  result_bytes: int) -> None:
    """Fail fast on outputs and copies that can never fit (e.g. huge broadcast views).

    *result_bytes* is the size of the results among *needs*: a device whose memory is the
    host's (a CPU OpenCL device) holds them once on the device and once more as the host
    copy handed back to a caller whose data lives on the host."""
    if (device.type != "cpu" and backend.in_host_memory(device)
            and all(t is None or t.device.type == "cpu" for _, t in inputs)):
        needs.append(("host copy of the result", result_bytes))
    for name, t in inputs:
        if t is None:
            continue
        if not t.is_contiguous or t.device != device:
            needs.append((f"contiguous copy of {name}", t.nbytes))
        elif not t.dtype.isnative:
            needs.append((f"native-byte-order copy of {name}", t.nbytes))
        if dtype.name == "float16":
            needs.append((f"float32 copy of {name}", t.size * 4))
    checks.check_memory(op, str(device), needs, backend.available_memory(device))


def _log(decision: Decision) -> None:
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s", decision)


@dataclass(frozen=True)
class _Operands:
    """The call's arrays as Tensors, and how to hand the result back."""

    x: Tensor
    w: Tensor
    b: Tensor | None
    kind: ResultKind
    # The top-level module of the input's type ("numpy", "torch", ...), for error advice.
    library: str = "numpy"

    @classmethod
    def adopt(cls, op: str, input: Any, weight: Any, bias: Any) -> _Operands:
        x, kind = as_tensor(input, op, "input")
        w, _ = as_tensor(weight, op, "weight")
        b = None if bias is None else as_tensor(bias, op, "bias")[0]
        return cls(x, w, b, kind, _library(input))


def _library(obj: Any) -> str:
    return type(obj).__module__.split(".")[0]


@dataclass(frozen=True)
class _ConvPlan:
    """Everything a validated forward or transposed call needs, without its data."""

    op: str
    params: ConvParams
    unbatched: bool
    out_shape: tuple[int, ...]
    step: _Pass
    # For numpy arrays computed in host memory: run(x, w, b) -> numpy result (the fast path).
    host: Callable[[Any, Any, Any], Any] | None = None
    channels_last: bool = False
    # The activation functional.py applies itself, for backends without a fused epilogue.
    separate_activation: str = ""
    # The backend's fallback_epoch when planned: a run-time fallback since makes it stale.
    fallback_epoch: int = 0

    def is_current(self) -> bool:
        """Whether the plan still holds: its backend was not replaced and had no run-time
        fallback since."""
        return (is_current(self.step.backend)
                and self.fallback_epoch == self.step.backend.fallback_epoch)


def _channels_first_view(t: Tensor, channels_last: bool) -> Tensor:
    """The batched tensor in channels-first axis order (a view: no data moves)."""
    if not channels_last:
        return t
    return t.permute((0, t.ndim - 1, *range(1, t.ndim - 1)))


def _moved(t: Tensor, device: Device, channels_last: bool) -> Tensor:
    """*t* on *device*; a channels-first view of channels-last data moves as the data it
    views (so no transpose happens on the way) and is viewed channels-first again."""
    if not channels_last or t.device == device:
        return _to(t, device) or t
    data = t.permute((0, *range(2, t.ndim), 1))
    return _channels_first_view(_to(data, device) or data, True)


def _to_user_layout(y: Tensor, plan: _ConvPlan, backend: Backend) -> Tensor:
    """A pass result (channels-first axis order) back in the caller's layout and rank."""
    if plan.channels_last:
        y = y.permute((0, *range(2, y.ndim), 1))
        if not y.is_contiguous:  # the algorithm computed channels-first: convert back
            y = backend.copy(y)
    if plan.unbatched:
        y = y.reshape(y.shape[1:])
    return y


def _plan_conv(op: str, ndim: int, operands: _Operands, stride: Any, padding: Any,
               dilation: Any, groups: Any, padding_mode: Any, transposed: bool,
               output_padding: Any, backend: Any, algorithm: Any, layout: Any = None,
               activation: Any = None) -> _ConvPlan:
    x, w, b = operands.x, operands.w, operands.b
    checked = checks.check_call(
        op, ndim, x.shape, w.shape, None if b is None else b.shape,
        [("input", x.dtype), ("weight", w.dtype), ("bias", None if b is None else b.dtype)],
        stride=stride, padding=padding, dilation=dilation, groups=groups, transposed=transposed,
        output_padding=output_padding, padding_mode=padding_mode, layout=layout,
        activation=activation, library=operands.library)
    params, dtype, x_shape, out_shape = (checked.params, checked.dtype, checked.x_shape,
                                         checked.out_shape)
    unbatched, channels_last = checked.unbatched, checked.channels_last
    activation_name = checked.activation
    notes = []
    extra: dict[str, Any] = {"channels_last": channels_last, "activation": activation_name}
    if transposed:
        problem = _problem(Direction.BACKWARD_DATA, out_shape, w.shape, x_shape, dtype, params,
                           **extra)
        notes.append("a transposed convolution is computed as the backward-data pass of the "
                     "convolution it transposes")
    elif params.needs_explicit_padding():
        padded = (*x_shape[:2], *(s + lo + hi for s, (lo, hi) in zip(x_shape[2:], params.padding)))
        problem = _problem(Direction.FORWARD, padded, w.shape, out_shape, dtype, params,
                           padding=((0, 0),) * ndim, **extra)
        notes.append(f"the input is padded with padding_mode={params.padding_mode!r} "
                     f"before a convolution without padding")
    else:
        problem = _problem(Direction.FORWARD, x_shape, w.shape, out_shape, dtype, params,
                           **extra)
    device = _data_device(op, [("input", x), ("weight", w), ("bias", b)])
    decision, chosen = selector.select(op, problem, device, params=params, backend=backend,
                                       algorithm=algorithm)
    if decision.device != device:
        notes.append(f"operands are copied from {device} to {decision.device} and the result back")
    if unbatched:
        notes.append("the unbatched input is treated as a batch of one")
    if dtype.name in ("float16", "bfloat16"):
        notes.append(f"{dtype.name} is computed with float32 accumulation and rounded back to "
                     f"{dtype.name}")
    decision = decision.with_notes(*notes)
    itemsize = _COMPUTE_ITEMSIZE[dtype.name]
    needs = [("output", math.prod(out_shape) * itemsize)]
    if params.needs_explicit_padding():
        needs.append(("padded input", math.prod(problem.x_shape) * itemsize))
    _check_memory(op, chosen, decision.device, dtype, needs, [("input", x), ("weight", w)],
                  needs[0][1])
    decision = selector.with_run_time_fallback(find.refine(decision, chosen), chosen)
    decision = decision.with_notes(*_layout_and_epilogue_notes(decision, chosen, params))
    separate = "" if chosen.fuses_activation else activation_name
    host = None
    if (decision.device.type == "cpu" and not params.needs_explicit_padding()
            and not problem.is_empty() and not separate):
        host = chosen.host_runner(problem, decision.algorithm)
    return _ConvPlan(op, params, unbatched, out_shape, _Pass(decision, chosen), host,
                     channels_last, separate, chosen.fallback_epoch)


def _layout_and_epilogue_notes(decision: Decision, backend: Backend,
                               params: ConvParams) -> list[str]:
    problem, notes = decision.problem, []
    rule = backend.algorithm(decision.algorithm)
    if problem.channels_last:
        if rule.channels_last and not params.needs_explicit_padding():
            notes.append(f"channels-last data is read and written in place by {rule.name} "
                         f"(no layout conversion)")
        else:
            notes.append(f"layout conversion: {rule.name} computes channels-first, so the input "
                         f"is copied to channels-first and the result back to channels-last")
    if problem.activation:
        if backend.fuses_activation:
            notes.append(f"the bias and {problem.activation} are applied by the {backend.name} "
                         f"backend as it writes the output")
        else:
            notes.append(f"{problem.activation} is applied in a separate pass: the "
                         f"{backend.name} backend has no fused epilogue")
    return notes


def _with_memory_fallback(op: str, decision: Decision, backend: Backend,
                          run: Callable[[str], Tensor]) -> Tensor:
    """Run the decision's algorithm; if the device runs out of memory, try the other
    candidates in order of the scratch they need, smallest first, before giving up with a
    clear error. A forced algorithm is not replaced."""
    try:
        return run(decision.algorithm)
    except MemoryError as exc:
        if decision.source == "forced":
            raise WorkspaceTooLargeError(
                f"{op}: the forced algorithm {decision.algorithm!r} ran out of memory on "
                f"{decision.device} ({exc}); choose another algorithm or split the batch") from exc
        failure: BaseException = exc
    problem = decision.problem
    tried = [decision.algorithm]
    rest = sorted((name for name in decision.candidates if name != decision.algorithm),
                  key=lambda name: backend.workspace_bytes(problem, name))
    for name in rest:
        logger.warning("%s: %s ran out of memory on %s (%s); trying %s (scratch about %.1f MiB)",
                       op, tried[-1], decision.device, failure, name,
                       backend.workspace_bytes(problem, name) / 2**20)
        try:
            return run(name)
        except MemoryError as exc:
            failure = exc
            tried.append(name)
    raise WorkspaceTooLargeError(
        f"{op}: out of memory on {decision.device} with every algorithm that can run this "
        f"problem ({', '.join(tried)}); the last error: {failure}; split the batch into smaller "
        f"calls or lower CONVFLOW_WORKSPACE_MB") from failure


def _run_conv(plan: _ConvPlan, operands: _Operands) -> Any:
    decision, backend = plan.step.decision, plan.step.backend
    _log(decision)
    device = decision.device
    problem = decision.problem
    x = operands.x.reshape((1, *operands.x.shape)) if plan.unbatched else operands.x
    x, w = native_byte_order(x), native_byte_order(operands.w)
    b = None if operands.b is None else native_byte_order(operands.b)
    # Moved in the caller's layout, then viewed channels-first: channels-last data reaches
    # the device still channels-last (no transpose on the way).
    x = _channels_first_view(_to(x, device) or x, plan.channels_last)
    w, b = _to(w, device) or w, _to(b, device) or b
    if problem.is_empty():
        y = backend.upload(np.zeros(plan.out_shape, dtype=decision.problem.dtype), device)
    else:
        if plan.params.needs_explicit_padding():
            x = backend.pad(x, plan.params.padding, plan.params.padding_mode)
        y = _with_memory_fallback(plan.op, decision, backend,
                                  functools.partial(run_pass, backend, problem, a=x, b=w, bias=b))
        if plan.separate_activation:
            y = _activate_on_host(y, plan.separate_activation, backend)
    y = _to_user_layout(y, plan, backend)
    if y.device != operands.x.device:
        y = y.to(operands.x.device)
    return operands.kind(y)


def _activate_on_host(y: Tensor, activation: str, backend: Backend) -> Tensor:
    """For backends without a fused epilogue: one pass over the result in host memory."""
    from .activations import apply_activation

    host = y.numpy() if y.device.type == "cpu" else backend.download(y)
    result = apply_activation(np.array(host, copy=True), activation)
    return Tensor(result, y.device) if y.device.type == "cpu" else backend.upload(result, y.device)


class _Plan(Protocol):
    def is_current(self) -> bool: ...


_PlanType = TypeVar("_PlanType", bound=_Plan)


class _PlanCache(Generic[_PlanType]):
    """Validated plans of recent calls, keyed by everything that decides validity and choice
    (shapes, dtypes, devices, contiguity, the typed arguments, the configuration), so a
    repeated call skips normalization, checks and selection. A plan whose backends changed
    since (``is_current``) is not returned. Thread-safe, bounded."""

    def __init__(self, size: int = 512) -> None:
        self._plans: collections.OrderedDict[Any, _PlanType] = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: Any) -> _PlanType | None:
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
        return plan if plan is not None and plan.is_current() else None

    def put(self, key: Any, plan: _PlanType) -> None:
        with self._lock:
            self._plans[key] = plan
            if len(self._plans) > self._size:
                self._plans.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()


_PLANS: _PlanCache[_ConvPlan] = _PlanCache()


def _freeze(value: Any) -> Any:
    """A hashable, type-exact stand-in for an argument (True and 1 differ); TypeError for
    arguments that are not worth caching (arrays, floats, anything unusual)."""
    kind = type(value)
    if kind is int or kind is str or value is None:
        return value
    if kind is tuple and all(type(v) is int for v in value):
        return ("seq", value)
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return ("bool", bool(value))
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, (tuple, list)):
        return ("seq", tuple(_freeze(v) for v in value))
    raise TypeError(type(value).__name__)


def _tensor_key(t: Tensor | None) -> Any:
    return None if t is None else (t.shape, t.dtype.str, t.device, t.is_contiguous)


def _numpy_key(op: str, x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
               args: tuple[Any, ...]) -> Any:
    """The plan-cache key of a call whose arrays are all plain numpy arrays (TypeError for
    non-native byte order: such calls take the general path, which converts them)."""
    if not (x.dtype.isnative and w.dtype.isnative and (b is None or b.dtype.isnative)):
        raise TypeError("non-native byte order")
    return ("numpy", op, x.shape, x.dtype.char, x.flags.c_contiguous, w.shape, w.dtype.char,
            w.flags.c_contiguous, None if b is None else (b.shape, b.dtype.char),
            *(_freeze(a) for a in args), config.fingerprint())


def _conv(op: str, ndim: int, input: Any, weight: Any, bias: Any, stride: Any, padding: Any,
          dilation: Any, groups: Any, padding_mode: Any, backend: Any, algorithm: Any,
          transposed: bool = False, output_padding: Any = 0, layout: Any = None,
          activation: Any = None) -> Any:
    args = (stride, padding, dilation, groups, padding_mode, output_padding, backend, algorithm,
            layout, activation)
    key: Any = None
    if (type(input) is np.ndarray and type(weight) is np.ndarray
            and (bias is None or type(bias) is np.ndarray)):
        # The fast path: numpy in, numpy out, a plan validated before for these exact shapes,
        # dtypes, memory layouts and arguments.
        try:
            key = _numpy_key(op, input, weight, bias, args)
        except TypeError:
            key = None
        plan = _PLANS.get(key) if key is not None else None
        if plan is not None and plan.host is not None:
            _log(plan.step.decision)
            try:
                x = input[None] if plan.unbatched else input
                if not plan.channels_last:
                    y = plan.host(x, weight, bias)
                    return y[0] if plan.unbatched else y
                y = plan.host(np.moveaxis(x, -1, 1), weight, bias)
                y = np.moveaxis(y, 1, -1)
                y = y if y.flags.c_contiguous else np.ascontiguousarray(y)
                return y[0] if plan.unbatched else y
            except MemoryError:
                pass  # the general path below retries with smaller-scratch algorithms
    operands = _Operands.adopt(op, input, weight, bias)
    if key is None:
        try:
            key = (op, _tensor_key(operands.x), _tensor_key(operands.w), _tensor_key(operands.b),
                   *(_freeze(a) for a in args), config.fingerprint())
        except TypeError:
            key = None
    plan = _PLANS.get(key) if key is not None else None
    if plan is None:
        plan = _plan_conv(op, ndim, operands, stride, padding, dilation, groups, padding_mode,
                          transposed, output_padding, backend, algorithm, layout, activation)
        if key is not None:
            _PLANS.put(key, plan)
    return _run_conv(plan, operands)


_FORWARD_DOC = """{n}-D convolution (cross-correlation, as in PyTorch and ONNX).

Parameters
----------
input : array, shape ``(N, C_in, {dims})`` or unbatched ``(C_in, {dims})``
    numpy array (any memory order), :class:`convflow.Tensor`, a backend's device array, or
    any object with ``__dlpack__``. dtype float16, float32 or float64.
weight : array, shape ``(C_out, C_in / groups, {kdims})``
bias : array, shape ``(C_out,)``, optional
stride, dilation : int or tuple of {n} ints
padding : int, tuple of {n} ints, tuple of {n} ``(low, high)`` pairs, or str
    ``"valid"`` (none), ``"same"`` (output size ``ceil(in / stride)``, the odd unit of
    padding on the high side, as ONNX ``SAME_UPPER``), or ``"same_lower"`` (odd unit low).
groups : int
    ``C_in`` and ``C_out`` must both be divisible by it; ``groups == C_in`` is depthwise.
padding_mode : {{"zeros", "reflect", "replicate", "circular"}}
layout : {{"{first}", "{last}"}}, optional
    Memory layout of ``input`` and the result (the weight keeps its layout); default
    channels-first. With ``"{last}"`` the shapes read ``(N, {dims}, C)``.
activation : {{"relu", "relu6", "silu", "gelu"}}, optional
    Applied to the result, after the bias, as the backend writes it out (``conv_backward``
    takes the gradient before the activation).
backend : str, optional
    Force a backend (``"numba"``, ...); an unavailable one raises BackendUnavailableError.
algorithm : str, optional
    Force one of the backend's algorithms (see :func:`explain` for the names).

Returns
-------
array, shape ``(N, C_out, {odims})``
    The same kind of array as ``input``, newly allocated. Along each spatial dim,
    ``out = floor((in + pad_low + pad_high - dilation * (k - 1) - 1) / stride) + 1``.

Raises
------
ConvflowError
    Before any computation, for any invalid argument, shape or dtype (also a ValueError or
    TypeError), an unavailable forced backend (RuntimeError), or a request that can never
    fit in memory (MemoryError).
"""

_TRANSPOSED_DOC = """{n}-D transposed convolution (the adjoint of :func:`conv{n}d`).

Parameters
----------
input : array, shape ``(N, C_in, {dims})`` or unbatched ``(C_in, {dims})``
weight : array, shape ``(C_in, C_out / groups, {kdims})``
bias : array, shape ``(C_out,)``, optional
stride, dilation : int or tuple of {n} ints
padding : int, tuple of {n} ints, or tuple of {n} ``(low, high)`` pairs
    How much is cropped from each end of the full output (``dilation * (k - 1) - padding``
    zero padding of the equivalent direct convolution).
output_padding : int or tuple of {n} ints
    Extra size added on the high end; must be smaller than stride or dilation.
groups : int
layout, activation : str, optional
    As for :func:`conv{n}d`.
backend, algorithm : str, optional
    As for :func:`conv{n}d`.

Returns
-------
array, shape ``(N, C_out, {odims})``
    Along each spatial dim,
    ``out = (in - 1) * stride - pad_low - pad_high + dilation * (k - 1) + output_padding + 1``.
"""

_DIMS = {1: ("W", "kW", "W_out"), 2: ("H, W", "kH, kW", "H_out, W_out"),
         3: ("D, H, W", "kD, kH, kW", "D_out, H_out, W_out")}


def conv1d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: Any = 1, *, padding_mode: str = "zeros",
           layout: str | None = None, activation: str | None = None,
           backend: str | None = None, algorithm: str | None = None) -> Any:
    return _conv("conv1d", 1, input, weight, bias, stride, padding, dilation, groups,
                 padding_mode, backend, algorithm, layout=layout, activation=activation)


def conv2d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: Any = 1, *, padding_mode: str = "zeros",
           layout: str | None = None, activation: str | None = None,
           backend: str | None = None, algorithm: str | None = None) -> Any:
    return _conv("conv2d", 2, input, weight, bias, stride, padding, dilation, groups,
                 padding_mode, backend, algorithm, layout=layout, activation=activation)


def conv3d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: Any = 1, *, padding_mode: str = "zeros",
           layout: str | None = None, activation: str | None = None,
           backend: str | None = None, algorithm: str | None = None) -> Any:
    return _conv("conv3d", 3, input, weight, bias, stride, padding, dilation, groups,
                 padding_mode, backend, algorithm, layout=layout, activation=activation)


def conv_transpose1d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                     output_padding: Any = 0, groups: Any = 1, dilation: Any = 1, *,
                     layout: str | None = None, activation: str | None = None,
                     backend: str | None = None, algorithm: str | None = None) -> Any:
    return _conv("conv_transpose1d", 1, input, weight, bias, stride, padding, dilation, groups,
                 "zeros", backend, algorithm, transposed=True, output_padding=output_padding,
                 layout=layout, activation=activation)


def conv_transpose2d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                     output_padding: Any = 0, groups: Any = 1, dilation: Any = 1, *,
                     layout: str | None = None, activation: str | None = None,
                     backend: str | None = None, algorithm: str | None = None) -> Any:
    return _conv("conv_transpose2d", 2, input, weight, bias, stride, padding, dilation, groups,
                 "zeros", backend, algorithm, transposed=True, output_padding=output_padding,
                 layout=layout, activation=activation)


def conv_transpose3d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                     output_padding: Any = 0, groups: Any = 1, dilation: Any = 1, *,
                     layout: str | None = None, activation: str | None = None,
                     backend: str | None = None, algorithm: str | None = None) -> Any:
    return _conv("conv_transpose3d", 3, input, weight, bias, stride, padding, dilation, groups,
                 "zeros", backend, algorithm, transposed=True, output_padding=output_padding,
                 layout=layout, activation=activation)


def _document() -> None:
    for n, doc, functions in ((1, _FORWARD_DOC, (conv1d, conv_transpose1d)),
                              (2, _FORWARD_DOC, (conv2d, conv_transpose2d)),
                              (3, _FORWARD_DOC, (conv3d, conv_transpose3d))):
        dims, kdims, odims = _DIMS[n]
        first, last = LAYOUTS[n]
        functions[0].__doc__ = doc.format(n=n, dims=dims, kdims=kdims, odims=odims, first=first,
                                          last=last)
        functions[1].__doc__ = _TRANSPOSED_DOC.format(n=n, dims=dims, kdims=kdims, odims=odims)


_document()


def _ndim_from_weight(op: str, weight: Tensor) -> int:
    ndim = weight.ndim - 2
    if ndim not in (1, 2, 3):
        raise ShapeError(f"{op}: weight must be 3-D, 4-D or 5-D (out, in/groups, *kernel) for a "
                         f"1-, 2- or 3-D convolution, but got {weight.ndim}-D weight of size "
                         f"{list(weight.shape)}")
    return ndim


@dataclass(frozen=True)
class _BackwardPlan:
    params: ConvParams
    dy: Tensor
    x: Tensor
    w: Tensor
    kind: ResultKind
    grad_input: _Pass | None
    grad_weight: _Pass | None
    grad_bias: bool
    device: Device
    channels_last: bool = False
    # The passes' backends' fallback_epoch when planned: a run-time fallback since makes it
    # stale.
    fallback_epochs: tuple[int, ...] = ()

    def is_current(self) -> bool:
        """As :meth:`_ConvPlan.is_current`, for every pass."""
        passes = [p for p in (self.grad_input, self.grad_weight) if p is not None]
        return all(is_current(p.backend) for p in passes) and self.fallback_epochs == tuple(
            p.backend.fallback_epoch for p in passes)


def _plan_backward(op: str, grad_output: Any, input: Any, weight: Any, stride: Any,
                   padding: Any, dilation: Any, groups: Any, transposed: bool,
                   output_padding: Any, output_mask: Any, backend: Any,
                   algorithm: Any, layout: Any = None) -> _BackwardPlan:
    dy, x, w, kind = _backward_operands(op, grad_output, input, weight)
    mask = checks.check_output_mask(op, output_mask)
    ndim = _ndim_from_weight(op, w)
    checked = checks.check_call(
        op, ndim, x.shape, w.shape, None,
        [("grad_output", dy.dtype), ("input", x.dtype), ("weight", w.dtype)],
        stride=stride, padding=padding, dilation=dilation, groups=groups, transposed=transposed,
        output_padding=output_padding, layout=layout, grad_output_shape=dy.shape,
        library=_library(input))
    params, dtype, channels_last = checked.params, checked.dtype, checked.channels_last
    dy = _channels_first_view(dy, channels_last)
    x = _channels_first_view(x, channels_last)
    device = _data_device(op, [("grad_output", dy), ("input", x), ("weight", w)])

    # In cuDNN's geometry: for a plain convolution x is the input and y the output; for a
    # transposed one, the roles swap (its output is the convolution's input).
    conv_x, conv_y = (dy, x) if params.transposed else (x, dy)
    data_direction = Direction.FORWARD if params.transposed else Direction.BACKWARD_DATA
    passes: dict[str, _Pass | None] = {"grad_input": None, "grad_weight": None}
    needs = []
    for name, wanted, direction in (("grad_input", mask[0], data_direction),
                                    ("grad_weight", mask[1], Direction.BACKWARD_WEIGHT)):
        if not wanted:
            continue
        problem = _problem(direction, conv_x.shape, w.shape, conv_y.shape, dtype, params,
                           channels_last=channels_last)
        decision, chosen = selector.select(f"{op} ({name})", problem, device, params=params,
                                           backend=backend, algorithm=algorithm)
        decision = selector.with_run_time_fallback(find.refine(decision, chosen), chosen)
        passes[name] = _Pass(decision.with_notes(*_layout_and_epilogue_notes(decision, chosen,
                                                                             params)), chosen)
        shape = x.shape if name == "grad_input" else w.shape
        needs.append((name, math.prod(shape) * _COMPUTE_ITEMSIZE[dtype.name]))
    chosen_pass = passes["grad_input"] or passes["grad_weight"]
    run_device = chosen_pass.decision.device if chosen_pass else device
    if chosen_pass is not None:
        _check_memory(op, chosen_pass.backend, run_device, dtype, needs,
                      [("grad_output", dy), ("input", x), ("weight", w)],
                      sum(nbytes for _, nbytes in needs))
    epochs = tuple(p.backend.fallback_epoch for p in passes.values() if p is not None)
    return _BackwardPlan(params, dy, x, w, kind, passes["grad_input"], passes["grad_weight"],
                         mask[2], run_device, channels_last, epochs)


def _backward_operands(op: str, grad_output: Any, input: Any,
                       weight: Any) -> tuple[Tensor, Tensor, Tensor, ResultKind]:
    dy, _ = as_tensor(grad_output, op, "grad_output")
    x, kind = as_tensor(input, op, "input")
    w, _ = as_tensor(weight, op, "weight")
    return dy, x, w, kind


def _backward_key(arrays: tuple[Any, ...], args: tuple[Any, ...]) -> Any:
    """The plan-cache key of a backward call whose operands are native-order numpy arrays
    (shapes, dtypes and strides, and every argument), else None: a repeated training step
    then skips normalization, checks and selection (about half a millisecond)."""
    if not all(type(a) is np.ndarray and a.dtype.isnative for a in arrays):
        return None
    try:
        return ("backward", *((a.shape, a.dtype.str, a.strides) for a in arrays),
                *(_freeze(a) for a in args), config.fingerprint())
    except TypeError:
        return None


_BACKWARD_PLANS: _PlanCache[_BackwardPlan] = _PlanCache(256)


def conv_backward(grad_output: Any, input: Any, weight: Any, *, stride: Any = 1, padding: Any = 0,
                  dilation: Any = 1, groups: Any = 1, transposed: bool = False,
                  output_padding: Any = 0, output_mask: Sequence[bool] = (True, True, True),
                  layout: str | None = None, backend: str | None = None,
                  algorithm: str | None = None) -> tuple[Any, Any, Any]:
    """Gradients of a 1-, 2- or 3-D (transposed) convolution, like PyTorch's
    ``convolution_backward``.

    Parameters
    ----------
    grad_output : array, shape of the forward output ``(N, C_out, *out)``
    input : array, shape ``(N, C_in, *spatial)``
        The forward call's input (batched).
    weight : array
        ``(C_out, C_in / groups, *kernel)``, or ``(C_in, C_out / groups, *kernel)`` when
        ``transposed``.
    stride, padding, dilation, groups, output_padding
        As in the forward call (``padding_mode`` other than zeros is not differentiated here:
        pad the input yourself and pass ``padding=0``).
    transposed : bool
        Gradients of ``conv_transpose{n}d`` instead of ``conv{n}d``.
    output_mask : tuple of 3 bools
        Which of ``(grad_input, grad_weight, grad_bias)`` to compute.
    backend, algorithm : str, optional
        Force a backend / an algorithm for both the data and weight passes.

    Returns
    -------
    (grad_input, grad_weight, grad_bias)
        Shapes ``input.shape``, ``weight.shape`` and ``(C_out,)``; ``None`` where masked.
        Same kind of array as ``input``.
    """
    op = "conv_backward"
    key = _backward_key((grad_output, input, weight), (
        stride, padding, dilation, groups, transposed, output_padding, tuple(output_mask)
        if isinstance(output_mask, (tuple, list)) else output_mask, layout, backend, algorithm))
    plan = _BACKWARD_PLANS.get(key) if key is not None else None
    if plan is not None:
        # The same validated plan, with this call's arrays.
        dy_t, x_t, w_t, kind = _backward_operands(op, grad_output, input, weight)
        plan = dataclasses.replace(plan, dy=_channels_first_view(dy_t, plan.channels_last),
                                   x=_channels_first_view(x_t, plan.channels_last), w=w_t,
                                   kind=kind)
    else:
        plan = _plan_backward(op, grad_output, input, weight, stride, padding, dilation, groups,
                              transposed, output_padding, output_mask, backend, algorithm,
                              layout)
        if key is not None:
            _BACKWARD_PLANS.put(key, plan)
    device = plan.device
    dy, x = (_moved(native_byte_order(t), device, plan.channels_last) for t in (plan.dy, plan.x))
    w = native_byte_order(plan.w)
    w = _to(w, device) or w
    results: list[Any] = [None, None, None]
    for index, step in ((0, plan.grad_input), (1, plan.grad_weight)):
        if step is None:
            continue
        _log(step.decision)
        problem, runner = step.decision.problem, step.backend
        out_shape = problem.x_shape if problem.direction == Direction.BACKWARD_DATA else (
            problem.y_shape if problem.direction == Direction.FORWARD else problem.w_shape)
        if problem.batch == 0:
            result = runner.upload(np.zeros(out_shape, dtype=problem.dtype), device)
        else:
            # Forward and backward-data passes read (grad_output, weight); backward-weight
            # reads the convolution's (input, grad_output), which swap for a transposed one.
            a, g = (dy, w) if problem.direction != Direction.BACKWARD_WEIGHT else (
                (dy, x) if plan.params.transposed else (x, dy))
            result = _with_memory_fallback(op, step.decision, runner,
                                           functools.partial(run_pass, runner, problem, a=a, b=g))
        results[index] = result
    if plan.grad_bias:
        owner = (plan.grad_input or plan.grad_weight)
        if owner is not None:
            bias_backend = owner.backend
        else:
            bias_backend = selector.select_backend(op, _problem(
                Direction.BACKWARD_WEIGHT, x.shape, w.shape, dy.shape, plan.x.dtype, plan.params),
                device, backend)[0]
        results[2] = bias_backend.bias_grad(dy)
    if plan.channels_last and results[0] is not None and plan.grad_input is not None:
        grad_input = results[0].permute((0, *range(2, results[0].ndim), 1))
        if not grad_input.is_contiguous:  # computed channels-first: convert back
            grad_input = plan.grad_input.backend.copy(grad_input)
        results[0] = grad_input
    converted: list[Any] = []
    for r in results:
        if r is None:
            converted.append(None)
            continue
        if r.device != plan.x.device:
            r = r.to(plan.x.device)
        converted.append(plan.kind(r))
    return converted[0], converted[1], converted[2]


def finish_warmup(timeout: float | None = None) -> bool:
    """Wait until the numba kernels compiling in the background are ready.

    With ``CONVFLOW_NUMBA_WARMUP=background`` (the default), a call whose algorithm's
    kernels are not compiled in this process yet runs ``numpy_taps`` while they compile on
    a background thread. Call this before timing steady-state performance, or where the
    first calls must run the algorithm the rules chose (``explain()`` shows which ran).

    Parameters
    ----------
    timeout : float, optional
        Seconds to wait at most; by default, as long as the compiles take.

    Returns
    -------
    bool
        True when nothing is left compiling, False if *timeout* passed first.
    """
    from .backends import loaded_backend

    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, numbers.Real)
                                or not timeout >= 0):
        raise ParameterError(f"finish_warmup: timeout must be a number of seconds >= 0 or None, "
                             f"got {timeout!r}")
    backend = loaded_backend("numba")
    return backend is None or backend.finish_warmup(None if timeout is None else float(timeout))


_DIRECTIONS = {d.value: d for d in Direction}


def explain(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
            dilation: Any = 1, groups: Any = 1, *, padding_mode: str = "zeros",
            transposed: bool = False, output_padding: Any = 0, layout: str | None = None,
            activation: str | None = None, backend: str | None = None,
            algorithm: str | None = None, direction: str = "forward") -> Decision:
    """Plan a convolution exactly as the call would, without computing it.

    Takes the arguments of ``conv{n}d`` (or, with ``transposed=True``, of
    ``conv_transpose{n}d``); the dimensionality comes from the weight. ``direction`` picks
    the pass to explain: ``"forward"`` (the call itself), or ``"backward_data"`` /
    ``"backward_weight"`` (the passes :func:`conv_backward` runs for it).

    Returns
    -------
    Decision
        ``.backend``, ``.algorithm``, ``.reason``, ``.source`` and ``str(decision)``, the
        whole trace: every rule considered, every backend's status, and why the winner won.
        Only shapes, dtypes and devices are read, so ``numpy.broadcast_to`` views of any size
        cost nothing.
    """
    w, _ = as_tensor(weight, "explain", "weight")
    ndim = _ndim_from_weight("explain", w)
    kind = "conv_transpose" if transposed else "conv"
    op = f"{kind}{ndim}d"
    if direction not in _DIRECTIONS:
        raise ParameterError(f"explain: direction must be one of {', '.join(_DIRECTIONS)}, but got "
                             f"{direction!r}")
    operands = _Operands.adopt(op, input, weight, bias)
    plan = _plan_conv(op, ndim, operands, stride, padding, dilation, groups, padding_mode,
                      bool(transposed), output_padding, backend, algorithm, layout, activation)
    if direction == "forward":
        return plan.step.decision
    if plan.params.needs_explicit_padding():
        raise ParameterError(f"explain: conv_backward does not differentiate padding_mode="
                             f"{plan.params.padding_mode!r}; explain the backward passes with "
                             f"padding_mode='zeros'")
    x = operands.x.reshape((1, *operands.x.shape)) if plan.unbatched else operands.x
    out_shape = plan.out_shape
    if plan.channels_last:
        out_shape = (out_shape[0], *out_shape[2:], out_shape[1])
    grad_output = np.broadcast_to(np.zeros((), dtype=x.dtype), out_shape)
    back = _plan_backward("conv_backward", grad_output, x, operands.w, plan.params.stride,
                          plan.params.padding, plan.params.dilation, plan.params.groups,
                          plan.params.transposed, plan.params.output_padding,
                          (direction == "backward_data", direction == "backward_weight", False),
                          backend, algorithm, layout)
    step = back.grad_input if direction == "backward_data" else back.grad_weight
    assert step is not None
    return step.decision
