"""cuDNN through NVIDIA's cuDNN frontend Python API (``import cudnn``), with a plan cache.

A problem is mapped onto cuDNN's geometry (:func:`.geometry.cudnn_mapping`), described as a
graph (``conv_fprop``, ``conv_dgrad`` or ``conv_wgrad``, and for a fused epilogue a ``bias``
node and the activation's pointwise node after it, as in the frontend's conv-bias-relu
samples), and built the way the frontend's samples do: ``validate``,
``build_operation_graph``, ``create_execution_plans`` with heuristics mode A then the
fallback list, numerical-note filters for the TF32 and determinism policies,
``check_support`` and ``build_plans``. Built graphs are cached in memory by
:class:`.geometry.PlanKey` (device, dtype, shapes and strides, padding, stride, dilation,
groups, direction, determinism, TF32, workspace limit, layout, epilogue); a refusal is cached
too, with its reason, so the selector can show it and fall back to convflow's own kernels.

Padding: the pre/post padding mapping is tried first; where cuDNN refuses an asymmetric one,
the symmetric mapping (explicit zeros around the input) is tried before giving up.

Layouts: channels-last problems are described with channels-last strides (the dims stay in
cuDNN's NCHW order), so cuDNN reads and writes the data where it lies; the weight is handed
over as KRSC. Epilogue: a fused graph adds the bias (zeros when the call has none) and
applies the activation; where cuDNN refuses every fused graph, the plain one runs and the
caller applies the epilogue in one pass after it (:func:`run_cudnn`).

dtypes: float16 and bfloat16 (cuDNN ``HALF`` / ``BFLOAT16``) compute in float32, float32 in
float32 (TF32 only when allowed), float64 in double.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ...params import ConvProblem, Direction
from .geometry import CudnnMapping, PlanKey, cudnn_mapping, plan_key

MAX_CACHED_PLANS = 512

_DATA_TYPES = {"float16": "HALF", "bfloat16": "BFLOAT16", "float32": "FLOAT",
               "float64": "DOUBLE"}
_COMPUTE_TYPES = {"float16": "FLOAT", "bfloat16": "FLOAT", "float32": "FLOAT",
                  "float64": "DOUBLE"}


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
    bias: Any = None      # the bias tensor of a fused graph


@dataclass(frozen=True)
class Resolution:
    """The outcome for one problem: a plan and its mapping, or why cuDNN cannot run it.
    ``fused``: the plan applies the bias and activation itself; ``fusion``: why a fused
    graph was wanted but is not used (the caller then applies the epilogue after the plan)."""

    plan: CudnnPlan | None
    mapping: CudnnMapping | None
    reason: str
    fused: bool = False
    fusion: str = ""

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


def _last(ndim: int) -> tuple[int, ...]:
    return (0, *range(2, ndim), 1)


def _first(ndim: int) -> tuple[int, ...]:
    return (0, ndim - 1, *range(1, ndim - 1))


def empty(xp: Any, shape: tuple[int, ...], dtype: Any, channels_last: bool) -> Any:
    """A new ``(N, C, *spatial)`` array; with *channels_last* a view of channels-last memory."""
    if not channels_last:
        return xp.empty(shape, dtype=dtype)
    return xp.empty((shape[0], *shape[2:], shape[1]), dtype=dtype).transpose(_first(len(shape)))


def lies_channels_last(a: Any) -> bool:
    """Whether *a* (``(N, C, *spatial)`` axis order) views packed channels-last memory."""
    return bool(a.transpose(_last(a.ndim)).flags.c_contiguous)


def as_channels_last(xp: Any, a: Any) -> Any:
    """*a* itself when it views packed channels-last memory, else such a copy (same axes)."""
    if lies_channels_last(a):
        return a
    return xp.ascontiguousarray(a.transpose(_last(a.ndim))).transpose(_first(a.ndim))


def as_dims(a: Any, dims: tuple[int, ...], channels_last: bool = False) -> Any:
    """*a* (packed channels-first, or a channels-first view of packed channels-last memory)
    viewed with cuDNN's dims: a 1-D problem's arrays get their unit height, with the strides
    its descriptor gives them."""
    if a.ndim == len(dims):
        return a
    if channels_last:  # (N, W, C) memory -> (N, 1, W, C) -> (N, C, 1, W)
        memory = a.transpose(0, 2, 1)
        return memory.reshape(a.shape[0], 1, a.shape[2], a.shape[1]).transpose(0, 3, 1, 2)
    return a.reshape(dims)


def mapped_input(xp: Any, x: Any, mapping: CudnnMapping, channels_last: bool = False) -> Any:
    """The input cuDNN is given: *x* cropped to ``x_extent`` and padded with the explicit
    zeros; *x* itself when neither applies (no copy). Copies keep *x*'s layout."""
    if not mapping.needs_input_copy(tuple(x.shape[2:])):
        return x
    cropped = x[_spatial_index(slice(0, e) for e in mapping.x_extent)]
    padded = any(lo or hi for lo, hi in mapping.explicit_padding)
    if channels_last:
        data = cropped.transpose(_last(x.ndim))
        data = (xp.pad(data, ((0, 0), *mapping.explicit_padding, (0, 0))) if padded
                else xp.ascontiguousarray(data))
        return data.transpose(_first(x.ndim))
    if padded:
        return xp.pad(cropped, ((0, 0), (0, 0), *mapping.explicit_padding))
    return xp.ascontiguousarray(cropped)


def unmapped_gradient(xp: Any, grad: Any, mapping: CudnnMapping, x_shape: tuple[int, ...],
                      channels_last: bool = False) -> Any:
    """The input gradient of the problem from the one cuDNN computed for ``mapped_input``:
    the explicit padding removed, and zeros where the input was cropped."""
    out = empty(xp, x_shape, grad.dtype, channels_last)
    out[...] = 0
    inner = _spatial_index(slice(lo, lo + e) for e, (lo, _)
                           in zip(mapping.x_extent, mapping.explicit_padding))
    out[_spatial_index(slice(0, e) for e in mapping.x_extent)] = grad[inner]
    return out


def fuses_into(problem: ConvProblem, mapping: CudnnMapping) -> str:
    """Why a fused epilogue cannot be part of this mapping's graph, or ``""``: a data
    gradient that is unpadded or zero-filled after cuDNN must get its epilogue afterwards."""
    if problem.direction == Direction.BACKWARD_WEIGHT:
        return "the weight gradient has no epilogue"
    if problem.direction == Direction.BACKWARD_DATA and mapping.needs_input_copy(
            problem.x_spatial):
        return ("the data gradient is cropped or zero-filled after cuDNN computes it, so its "
                "epilogue runs after")
    return ""


def run_pass(xp: Any, problem: ConvProblem, mapping: CudnnMapping, key: PlanKey,
             execute: Callable[..., None], a: Any, b: Any, bias: Any = None) -> Any:
    """One pass through cuDNN: map the operands, ``execute(a, b, out, bias)`` with arrays
    shaped as the plan's descriptors (*bias*, for a fused plan, as ``key.bias_dims``), and
    map the result back. Returns a new array. For a channels-last key the activations are
    read and written channels-last (the result is a channels-first view of channels-last
    memory) and the weight is handed over as KRSC; the weight gradient comes back packed."""
    last = key.channels_last
    if last and problem.direction != Direction.BACKWARD_WEIGHT:
        b = as_channels_last(xp, b)
    fused_bias = None if bias is None else bias.reshape(key.bias_dims)
    if problem.direction == Direction.FORWARD:
        y = empty(xp, problem.y_shape, a.dtype, last)
        x = mapped_input(xp, a, mapping, last)
        execute(as_dims(x, key.x_dims, last), as_dims(b, key.w_dims, last),
                as_dims(y, key.y_dims, last), fused_bias)
        return y
    if problem.direction == Direction.BACKWARD_DATA:
        if not mapping.needs_input_copy(problem.x_spatial):
            dx = empty(xp, problem.x_shape, a.dtype, last)
            execute(as_dims(a, key.y_dims, last), as_dims(b, key.w_dims, last),
                    as_dims(dx, key.x_dims, last), fused_bias)
            return dx
        assert fused_bias is None, fuses_into(problem, mapping)
        grad = empty(xp, (*problem.x_shape[:2], *mapping.cudnn_x_spatial()), a.dtype, last)
        execute(as_dims(a, key.y_dims, last), as_dims(b, key.w_dims, last),
                as_dims(grad, key.x_dims, last), None)
        return unmapped_gradient(xp, grad, mapping, problem.x_shape, last)
    dw = empty(xp, problem.w_shape, a.dtype, last)
    x = mapped_input(xp, a, mapping, last)
    execute(as_dims(x, key.x_dims, last), as_dims(b, key.y_dims, last),
            as_dims(dw, key.w_dims, last), None)
    return xp.ascontiguousarray(dw) if last else dw


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    if len(message) > 300:
        message = message[:297] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _activation_node(graph: Any, activation: str, value: Any, compute: Any) -> Any:
    """The pointwise node of *activation*: cuDNN's RELU_FWD with its clips, SWISH_FWD (beta
    1: x * sigmoid(x)) and GELU_FWD (the exact erf form, not gelu_approx_tanh)."""
    if activation == "relu":
        return graph.relu(input=value, lower_clip=0.0, compute_data_type=compute,
                          name="convflow_relu")
    if activation == "relu6":
        return graph.relu(input=value, lower_clip=0.0, upper_clip=6.0,
                          compute_data_type=compute, name="convflow_relu6")
    if activation == "silu":
        return graph.swish(input=value, compute_data_type=compute, name="convflow_silu")
    if activation == "gelu":
        return graph.gelu(input=value, compute_data_type=compute, name="convflow_gelu")
    raise ValueError(f"no cuDNN node for activation {activation!r}")


def describe_graph(cudnn: Any, key: PlanKey,
                   handle: Any) -> tuple[Any, Any, Any, Any, Any]:
    """The graph of *key* (not yet built): ``(graph, first input, second input, output,
    bias)`` in the roles of the pass (x, w -> y; dy, w -> dx; x, dy -> dw). For a fused key
    the convolution's result is a virtual tensor (in the intermediate, compute type) feeding
    ``bias`` and then the activation, whose result is the output; bias is None otherwise."""
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
    bias = None
    if key.epilogue:
        bias_dims = key.bias_dims
        bias = tensor("bias", bias_dims, (bias_dims[1], 1, *(1 for _ in bias_dims[2:])))
        out = graph.bias(input=out, bias=bias, compute_data_type=compute, name="convflow_bias")
        if key.activation:
            out = _activation_node(graph, key.activation, out, compute)
    out.set_output(True).set_data_type(io_type).set_dim(list(out_dims)).set_stride(
        list(out_strides))
    return graph, a, b, out, bias


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
        graph, a, b, out, bias = describe_graph(cudnn, key, handle)
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
        return CudnnPlan(key, graph, (a, b), out, workspace, bias)

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

    def resolve(self, problem: ConvProblem, device: int, policy: Policy,
                fused: bool = False) -> Resolution:
        """Find a plan for *problem*: the pre/post mapping, then the symmetric one. With
        *fused*, graphs with the bias and activation first; where cuDNN refuses every fused
        graph, the plain plan, with ``fusion`` saying why."""
        memo = (problem, device, policy, fused)
        with self._lock:
            known = self._resolutions.get(memo)
        if known is not None and (known.plan is None or known.plan.key in self._plans):
            return known
        resolution = self._search(problem, device, policy, fused)
        if fused and not resolution.supported:
            plain = self.resolve(problem, device, policy)
            resolution = replace(plain, fusion=resolution.reason)
        with self._lock:
            if len(self._resolutions) > 4 * MAX_CACHED_PLANS:
                self._resolutions.clear()
            self._resolutions[memo] = resolution
        return resolution

    def _search(self, problem: ConvProblem, device: int, policy: Policy,
                fused: bool = False) -> Resolution:
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
            unfusable = fuses_into(problem, attempt) if fused else ""
            if unfusable:
                reasons.append(f"with {attempt.describe()}: {unfusable}")
                continue
            key = plan_key(problem, attempt, device, deterministic=policy.deterministic,
                           allow_tf32=policy.allow_tf32, workspace_limit=policy.workspace_limit,
                           fused=fused)
            built = self.plan(key, policy)
            if not isinstance(built, str):
                return Resolution(built, attempt, "", fused=fused)
            reasons.append(f"with {attempt.describe()}: {built}")
        what = "the fused graph" if fused else "it"
        return Resolution(None, None, f"cuDNN refused {what} (" + "; ".join(reasons) + ")")

    # Running ----------------------------------------------------------------------------
    def execute(self, plan: CudnnPlan, a: Any, b: Any, out: Any, bias: Any = None) -> None:
        """Run *plan* on the current stream: ``out = pass(a, b)``, then the fused epilogue
        with *bias* (CuPy arrays with the strides of the plan's descriptors)."""
        cupy = self._cupy
        handle, lock = self.handle(plan.key.device)
        workspace = cupy.empty(max(plan.workspace_size, 1), dtype=cupy.uint8)
        stream = cupy.cuda.get_current_stream()
        variant_pack = {plan.inputs[0]: a, plan.inputs[1]: b, plan.output: out}
        if plan.bias is not None:
            assert bias is not None, "a fused plan needs its bias (zeros for none)"
            variant_pack[plan.bias] = bias
        with lock:
            self._cudnn.set_stream(handle, stream.ptr)
            plan.graph.execute(variant_pack, workspace, handle=handle)


def run_cudnn(xp: Any, plans: CudnnPlans, resolution: Resolution, problem: ConvProblem, a: Any,
              b: Any, bias: Any, epilogue: Callable[[Any, Any, str, bool], None]) -> Any:
    """One pass through cuDNN with its epilogue: inside a fused plan (zero bias where the
    call has none), else ``epilogue(out, bias, activation, channels_last)`` in one pass
    after the plain plan (*out* packed channels-first, or packed channels-last memory in
    ``(N, *spatial, C)`` order when the key is channels-last)."""
    plan, mapping = resolution.plan, resolution.mapping
    assert plan is not None and mapping is not None
    channels = problem.x_shape[1] if plan.key.transposed else problem.y_shape[1]
    wanted = problem.direction != Direction.BACKWARD_WEIGHT and (
        bias is not None or bool(problem.activation))
    fused_bias = None
    if plan.bias is not None:
        fused_bias = bias if bias is not None else xp.zeros(channels, dtype=a.dtype)

    def execute(first: Any, second: Any, out: Any, with_bias: Any) -> None:
        plans.execute(plan, first, second, out, with_bias)

    out = run_pass(xp, problem, mapping, plan.key, execute, a, b, fused_bias)
    if wanted and plan.bias is None:
        last = plan.key.channels_last
        epilogue(out.transpose(_last(out.ndim)) if last else out, bias, problem.activation,
                 last)
    return out
