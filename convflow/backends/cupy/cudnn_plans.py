"""cuDNN through NVIDIA's cuDNN frontend Python API (``import cudnn``), with a plan cache.

A problem is mapped onto cuDNN's geometry (:func:`.geometry.cudnn_mapping`), described as a
one-node graph (``conv_fprop``, ``conv_dgrad`` or ``conv_wgrad``), and built the way the
frontend's samples do: ``validate``, ``build_operation_graph``, ``create_execution_plans``
with heuristics mode A then the fallback list, numerical-note filters for the TF32 and
determinism policies, ``check_support`` and ``build_plans``. Built graphs are cached in
memory by :class:`.geometry.PlanKey` (device, dtype, shapes and strides, padding, stride,
dilation, groups, direction, determinism, TF32, workspace limit); a refusal is cached too,
with its reason, so the selector can show it and fall back to convflow's own kernels.

Padding: the pre/post padding mapping is tried first; where cuDNN refuses an asymmetric one,
the symmetric mapping (explicit zeros around the input) is tried before giving up.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...params import ConvProblem, Direction
from .geometry import CudnnMapping, PlanKey, cudnn_mapping, plan_key

MAX_CACHED_PLANS = 512

_DATA_TYPES = {"float16": "HALF", "float32": "FLOAT", "float64": "DOUBLE"}
_COMPUTE_TYPES = {"float16": "FLOAT", "float32": "FLOAT", "float64": "DOUBLE"}


@dataclass(frozen=True)
class Policy:
    """The configuration a plan is built for (read from CONVFLOW_* at each call)."""

    allow_tf32: bool
    deterministic: bool
    workspace_limit: int


@dataclass
class CudnnPlan:
    """A built graph, its tensors in the variant pack's roles, and its workspace size."""

    key: PlanKey
    graph: Any
    inputs: tuple[Any, Any]
    output: Any
    workspace_size: int


@dataclass(frozen=True)
class Resolution:
    """The outcome for one problem: a plan and its mapping, or why cuDNN cannot run it."""

    plan: CudnnPlan | None
    mapping: CudnnMapping | None
    reason: str

    @property
    def supported(self) -> bool:
        return self.plan is not None


def excluded_notes(dtype: str, policy: Policy) -> tuple[str, ...]:
    """Numerical notes whose engines the policy rules out (names of ``cudnn.numerical_note``).

    Always: engines that down-convert inputs, and reduced-precision reductions (float16
    accumulates in float32). float32 without TF32: tensor-core engines (which run float32 as
    TF32). Deterministic mode: non-deterministic engines (e.g. atomics in weight gradients).
    """
    notes = ["DOWN_CONVERT_INPUTS", "REDUCED_PRECISION_REDUCTION"]
    if dtype == "float32" and not policy.allow_tf32:
        notes.append("TENSOR_CORE")
    if policy.deterministic:
        notes.append("NONDETERMINISTIC")
    return tuple(notes)


def _spatial_index(slices: Any) -> tuple[slice, ...]:
    """An index selecting every batch and channel and *slices* of the spatial dims."""
    return (slice(None), slice(None), *slices)


def mapped_input(xp: Any, x: Any, mapping: CudnnMapping) -> Any:
    """The input cuDNN is given: *x* cropped to ``x_extent`` and padded with the explicit
    zeros; *x* itself when neither applies (no copy)."""
    if not mapping.needs_input_copy(tuple(x.shape[2:])):
        return x
    cropped = x[_spatial_index(slice(0, e) for e in mapping.x_extent)]
    if any(lo or hi for lo, hi in mapping.explicit_padding):
        return xp.pad(cropped, ((0, 0), (0, 0), *mapping.explicit_padding))
    return xp.ascontiguousarray(cropped)


def unmapped_gradient(xp: Any, grad: Any, mapping: CudnnMapping, x_shape: tuple[int, ...]) -> Any:
    """The input gradient of the problem from the one cuDNN computed for ``mapped_input``:
    the explicit padding removed, and zeros where the input was cropped."""
    out = xp.zeros(x_shape, dtype=grad.dtype)
    inner = _spatial_index(slice(lo, lo + e) for e, (lo, _)
                           in zip(mapping.x_extent, mapping.explicit_padding))
    out[_spatial_index(slice(0, e) for e in mapping.x_extent)] = grad[inner]
    return out


def run_pass(xp: Any, problem: ConvProblem, mapping: CudnnMapping, key: PlanKey,
             execute: Callable[[Any, Any, Any], None], a: Any, b: Any) -> Any:
    """One pass through cuDNN: map the operands, ``execute(a, b, out)`` with arrays shaped
    as the plan's descriptors, and map the result back. Returns a new array."""
    if problem.direction == Direction.FORWARD:
        y = xp.empty(problem.y_shape, dtype=a.dtype)
        x = mapped_input(xp, a, mapping)
        execute(x.reshape(key.x_dims), b.reshape(key.w_dims), y.reshape(key.y_dims))
        return y
    if problem.direction == Direction.BACKWARD_DATA:
        if not mapping.needs_input_copy(problem.x_spatial):
            dx = xp.empty(problem.x_shape, dtype=a.dtype)
            execute(a.reshape(key.y_dims), b.reshape(key.w_dims), dx.reshape(key.x_dims))
            return dx
        grad = xp.empty((*problem.x_shape[:2], *mapping.cudnn_x_spatial()), dtype=a.dtype)
        execute(a.reshape(key.y_dims), b.reshape(key.w_dims), grad.reshape(key.x_dims))
        return unmapped_gradient(xp, grad, mapping, problem.x_shape)
    dw = xp.empty(problem.w_shape, dtype=a.dtype)
    x = mapped_input(xp, a, mapping)
    execute(x.reshape(key.x_dims), b.reshape(key.y_dims), dw.reshape(key.w_dims))
    return dw


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    if len(message) > 300:
        message = message[:297] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def describe_graph(cudnn: Any, key: PlanKey, handle: Any) -> tuple[Any, Any, Any, Any]:
    """The one-node graph of *key* (not yet built): ``(graph, first input, second input,
    output)`` in the roles of the pass (x, w -> y; dy, w -> dx; x, dy -> dw)."""
    io_type = getattr(cudnn.data_type, _DATA_TYPES[key.dtype])
    compute = getattr(cudnn.data_type, _COMPUTE_TYPES[key.dtype])
    graph = cudnn.pygraph(io_data_type=io_type, intermediate_data_type=compute,
                          compute_data_type=compute, handle=handle)
    conv = dict(pre_padding=list(key.pre_padding), post_padding=list(key.post_padding),
                stride=list(key.stride), dilation=list(key.dilation), compute_data_type=compute)

    def tensor(name: str, dims: tuple[int, ...], strides: tuple[int, ...]) -> Any:
        return graph.tensor(name=name, dim=list(dims), stride=list(strides), data_type=io_type)

    if key.direction == Direction.FORWARD.value:
        a = tensor("x", key.x_dims, key.x_strides)
        b = tensor("w", key.w_dims, key.w_strides)
        out = graph.conv_fprop(image=a, weight=b, name="convflow_fprop", **conv)
        out_dims, out_strides = key.y_dims, key.y_strides
    elif key.direction == Direction.BACKWARD_DATA.value:
        a = tensor("dy", key.y_dims, key.y_strides)
        b = tensor("w", key.w_dims, key.w_strides)
        out = graph.conv_dgrad(loss=a, filter=b, name="convflow_dgrad", **conv)
        out_dims, out_strides = key.x_dims, key.x_strides
    else:
        a = tensor("x", key.x_dims, key.x_strides)
        b = tensor("dy", key.y_dims, key.y_strides)
        out = graph.conv_wgrad(image=a, loss=b, name="convflow_wgrad", **conv)
        out_dims, out_strides = key.w_dims, key.w_strides
    out.set_output(True).set_data_type(io_type).set_dim(list(out_dims)).set_stride(
        list(out_strides))
    return graph, a, b, out


class CudnnPlans:
    """Builds, caches and executes cuDNN graphs for the cupy backend."""

    def __init__(self, cupy: Any, cudnn: Any) -> None:
        self._cupy = cupy
        self._cudnn = cudnn
        self._lock = threading.RLock()
        self._plans: collections.OrderedDict[PlanKey, CudnnPlan | str] = collections.OrderedDict()
        self._resolutions: dict[tuple[Any, ...], Resolution] = {}
        self._handles: dict[int, tuple[Any, threading.Lock]] = {}
        self.hits = 0
        self.misses = 0

    # Handles ----------------------------------------------------------------------------
    def handle(self, device: int) -> tuple[Any, threading.Lock]:
        """The cuDNN handle of *device* (created on it) and the lock serializing its use."""
        with self._lock:
            entry = self._handles.get(device)
            if entry is None:
                with self._cupy.cuda.Device(device):
                    entry = (self._cudnn.create_handle(), threading.Lock())
                self._handles[device] = entry
            return entry

    # Building ---------------------------------------------------------------------------
    def _build(self, key: PlanKey, policy: Policy) -> CudnnPlan:
        cudnn = self._cudnn
        handle, _ = self.handle(key.device)
        graph, a, b, out = describe_graph(cudnn, key, handle)
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        notes = []
        for name in excluded_notes(key.dtype, policy):
            note = getattr(cudnn.numerical_note, name, None)
            if note is None:
                raise RuntimeError(f"this cuDNN frontend has no numerical note {name}, so the "
                                   f"policy that excludes it cannot be enforced")
            notes.append(note)
        graph.deselect_numeric_notes(notes)
        graph.deselect_workspace_greater_than(key.workspace_limit)
        graph.check_support()
        graph.build_plans()
        workspace = int(graph.get_workspace_size())
        return CudnnPlan(key, graph, (a, b), out, workspace)

    def plan(self, key: PlanKey, policy: Policy) -> CudnnPlan | str:
        """The cached plan for *key*, built on first use; a string says why cuDNN refused."""
        with self._lock:
            cached = self._plans.get(key)
            if cached is not None:
                self.hits += 1
                self._plans.move_to_end(key)
                return cached
            self.misses += 1
            result: CudnnPlan | str
            try:
                result = self._build(key, policy)
            except Exception as exc:  # a refusal of any kind (check_support, no plan, ...)
                result = _first_line(exc)
            self._plans[key] = result
            while len(self._plans) > MAX_CACHED_PLANS:
                self._plans.popitem(last=False)
            return result

    def resolve(self, problem: ConvProblem, device: int, policy: Policy) -> Resolution:
        """Find a plan for *problem*: the pre/post mapping, then the symmetric one."""
        memo = (problem, device, policy)
        with self._lock:
            known = self._resolutions.get(memo)
        if known is not None and (known.plan is None or known.plan.key in self._plans):
            return known
        resolution = self._search(problem, device, policy)
        with self._lock:
            if len(self._resolutions) > 4 * MAX_CACHED_PLANS:
                self._resolutions.clear()
            self._resolutions[memo] = resolution
        return resolution

    def _search(self, problem: ConvProblem, device: int, policy: Policy) -> Resolution:
        mapping = cudnn_mapping(problem, symmetric=False)
        if isinstance(mapping, str):
            return Resolution(None, None, f"cuDNN cannot express it: {mapping}")
        attempts = [mapping]
        if mapping.is_asymmetric():
            symmetric = cudnn_mapping(problem, symmetric=True)
            assert not isinstance(symmetric, str)
            attempts.append(symmetric)
        reasons = []
        for attempt in attempts:
            key = plan_key(problem, attempt, device, deterministic=policy.deterministic,
                           allow_tf32=policy.allow_tf32, workspace_limit=policy.workspace_limit)
            built = self.plan(key, policy)
            if not isinstance(built, str):
                return Resolution(built, attempt, "")
            reasons.append(f"with {attempt.describe()}: {built}")
        return Resolution(None, None, "cuDNN refused it (" + "; ".join(reasons) + ")")

    # Running ----------------------------------------------------------------------------
    def execute(self, plan: CudnnPlan, a: Any, b: Any, out: Any) -> None:
        """Run *plan* on the current stream: ``out = pass(a, b)`` (CuPy arrays, contiguous)."""
        cupy = self._cupy
        handle, lock = self.handle(plan.key.device)
        workspace = cupy.empty(max(plan.workspace_size, 1), dtype=cupy.uint8)
        stream = cupy.cuda.get_current_stream()
        variant_pack = {plan.inputs[0]: a, plan.inputs[1]: b, plan.output: out}
        with lock:
            self._cudnn.set_stream(handle, stream.ptr)
            plan.graph.execute(variant_pack, workspace, handle=handle)
