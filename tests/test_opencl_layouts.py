"""The opencl backend's channels-last solvers, fused epilogue and bfloat16 path.

test_layouts.py checks results on every backend; this file checks how the opencl backend gets
them: each solver marked channels-last reads and writes channels-last tensors in place (no
transpose kernel runs) in every pass, the others convert (and explain() says which); bias and
activation are applied by the kernel writing the result (no separate pass, none on the host),
with IEEE semantics in every such kernel; bfloat16 is carried as its bits and computed in
float32.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from test_opencl_solvers import CASES, PAIRS, _reference, _runnable

import convflow
from convflow import config

import reference
from conftest import assert_close, require_backend

CONV = {1: convflow.conv1d, 2: convflow.conv2d, 3: convflow.conv3d}
LAYOUT = {1: "NWC", 2: "NHWC", 3: "NDHWC"}
MASKS = {convflow.Direction.BACKWARD_DATA: (True, False, False),
         convflow.Direction.BACKWARD_WEIGHT: (False, True, False)}
# Kernels that only move or convert data: none of them may run in a native pass.
LAYOUT_KERNELS = {"copy_strided_u16", "copy_strided_u32", "copy_strided_u64"}


@pytest.fixture(scope="module")
def opencl():
    require_backend("opencl")
    from convflow.backends import get_backend

    return get_backend("opencl")


@pytest.fixture
def launched(opencl, monkeypatch):
    """Names of the kernels launched while the test runs."""
    import pyopencl as cl

    names: list[str] = []
    original = cl.enqueue_nd_range_kernel

    def spy(queue, kernel, *args, **kwargs):
        names.append(kernel.function_name)
        return original(queue, kernel, *args, **kwargs)

    monkeypatch.setattr(cl, "enqueue_nd_range_kernel", spy)
    return names


def last(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def first(a: np.ndarray) -> np.ndarray:
    return np.moveaxis(np.asarray(a), -1, 1)


def _native(solver: str) -> bool:
    from convflow.backends.opencl.solvers import SOLVERS

    return SOLVERS[solver].channels_last


def test_channels_last_solvers_are_marked_in_the_rules(opencl):
    native = {rule.name for rule in opencl.algorithm_rules() if rule.channels_last}
    assert native == {"depthwise", "gemm_1x1", "vec_gemm_1x1", "im2col_gemm",
                      "vec_im2col_gemm", "direct_wrw"}


@pytest.mark.parametrize("solver, direction", PAIRS, ids=lambda v: getattr(v, "value", v))
def test_every_solver_and_pass_in_channels_last(opencl, launched, solver, direction):
    """Channels-last data with a bias and silu, device-resident: native solvers launch no
    layout kernel, converting ones do; both match the reference."""
    ran = 0
    for name, x_shape, w_shape, kwargs in CASES:
        rng = np.random.default_rng(len(name))
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        if not _runnable(solver, x, w, kwargs, direction):
            continue
        ran += 1
        nd = x.ndim - 2
        args, y = _reference(x, w, None, kwargs)
        xd = convflow.tensor(last(x), device="opencl")
        wd = convflow.tensor(w, device="opencl")
        options = dict(backend="opencl", algorithm=solver, layout=LAYOUT[nd], **kwargs)
        launched.clear()
        if direction == convflow.Direction.FORWARD:
            b = rng.standard_normal(w_shape[0]).astype(np.float32)
            got = first(CONV[nd](xd, wd, convflow.tensor(b, device="opencl"), activation="silu",
                                 **options).numpy())
            want = reference.activate(reference.conv(x, w, b, *args), "silu")
        else:
            dy = rng.standard_normal(y.shape).astype(np.float32)
            index = 0 if direction == convflow.Direction.BACKWARD_DATA else 1
            grads = convflow.conv_backward(convflow.tensor(last(dy), device="opencl"), xd, wd,
                                           output_mask=MASKS[direction], **options)
            got = grads[index].numpy()
            got = first(got) if index == 0 else got
            want = reference.conv_backward(dy, x, w, *args)[index]
        moved = LAYOUT_KERNELS & set(launched)
        assert bool(moved) != _native(solver), (solver, direction.value, name, launched)
        try:
            assert_close(got, want, "float32")
        except AssertionError as exc:
            raise AssertionError(f"{solver} {direction.value} on case {name}: {exc}") from None
    assert ran, f"no case exercises {solver} {direction.value}"


@pytest.mark.parametrize("solver", ["vec_gemm_1x1", "gemm_1x1", "vec_im2col_gemm",
                                    "im2col_gemm", "depthwise", "naive"])
def test_explain_says_whether_the_layout_is_converted(opencl, solver):
    x = np.broadcast_to(np.float32(0), (2, 9, 9, 8))
    w = np.broadcast_to(np.float32(0), (8, 1 if solver == "depthwise" else 8, 1, 1))
    groups = 8 if solver == "depthwise" else 1
    for direction in ("forward", "backward_data", "backward_weight"):
        if solver == "depthwise" and direction == "backward_weight":
            continue
        text = str(convflow.explain(x, w, groups=groups, layout="NHWC", backend="opencl",
                                    algorithm=solver, direction=direction))
        if _native(solver):
            assert f"read and written in place by {solver}" in text, text
        else:
            assert f"layout conversion: {solver} computes channels-first" in text, text


def test_channels_last_skips_winograd_for_the_in_place_gemm(opencl):
    x = np.broadcast_to(np.float32(0), (2, 28, 28, 64))
    w = np.broadcast_to(np.float32(0), (64, 64, 3, 3))
    first_layout = convflow.explain(np.moveaxis(x, -1, 1), w, padding=1, backend="opencl")
    channels_last = convflow.explain(x, w, padding=1, layout="NHWC", backend="opencl")
    assert first_layout.algorithm.endswith("winograd")
    assert channels_last.algorithm.endswith("im2col_gemm")
    assert "the data is channels-last" in str(channels_last)


@pytest.mark.parametrize("solver", ["vec_im2col_gemm", "im2col_gemm", "vec_gemm_1x1",
                                    "gemm_1x1"])
def test_channels_last_workspace_tiling(opencl, solver):
    """A 1 MiB workspace splits im2col inside images and the 1x1 weight gradient's packed
    rows into chunks; the data gradient's epilogue runs once an image is complete."""
    rng = np.random.default_rng(7)
    if solver.endswith("gemm_1x1"):
        x_shape, w_shape, kwargs = (2, 64, 48, 49), (40, 64, 1, 1), {}
    else:
        x_shape, w_shape, kwargs = (2, 32, 48, 47), (16, 32, 3, 3), dict(padding=1)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    args, y = _reference(x, w, b, kwargs)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    expected = reference.conv_backward(dy, x, w, *args)
    bias_in = rng.standard_normal(x_shape[1]).astype(np.float32)
    with config.override(CONVFLOW_WORKSPACE_MB=1):
        got = convflow.conv2d(last(x), w, b, backend="opencl", algorithm=solver, layout="NHWC",
                              activation="relu", **kwargs)
        grads = convflow.conv_backward(last(dy), last(x), w, backend="opencl",
                                       algorithm=solver, layout="NHWC", **kwargs)
        transposed = convflow.conv_transpose2d(last(dy), w, bias_in, backend="opencl",
                                               algorithm=solver, layout="NHWC",
                                               activation="gelu", **kwargs)
    assert_close(first(got), reference.activate(y, "relu"))
    assert_close(first(grads[0]), expected[0])
    assert_close(grads[1], expected[1])
    assert_close(grads[2], expected[2])
    assert_close(first(transposed), reference.activate(
        expected[0] + bias_in.reshape(1, -1, 1, 1), "gelu"))


def test_fused_epilogue_runs_no_separate_pass(opencl, launched, monkeypatch):
    """Bias and activation are written by the solver's own output kernel: no host pass, no
    extra kernel (a channels-last 1x1 forward is exactly: pack the weights, one GEMM)."""
    from convflow import functional

    def no_host_pass(*args):
        raise AssertionError("the activation must not be applied in a separate host pass")

    monkeypatch.setattr(functional, "_activate_on_host", no_host_pass)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 7, 9, 32)).astype(np.float32)
    w = rng.standard_normal((24, 32, 1, 1)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    xd, wd, bd = (convflow.tensor(a, device="opencl") for a in (x, w, b))
    decision = convflow.explain(xd, wd, bd, layout="NHWC", activation="relu6", backend="opencl")
    assert decision.algorithm == "vec_gemm_1x1"
    assert "the bias and relu6 are applied by the opencl backend as it writes the output" in (
        str(decision))
    launched.clear()
    y = convflow.conv2d(xd, wd, bd, layout="NHWC", activation="relu6", backend="opencl")
    assert launched == ["pack_panels", "vgemm_m"]
    assert isinstance(y, convflow.Tensor) and y.shape == (2, 7, 9, 24) and y.is_contiguous
    want = reference.activate(reference.conv(first(x), w, b, (1, 1), ((0, 0), (0, 0)), (1, 1),
                                             1), "relu6")
    assert_close(first(y.numpy()), want)


FORWARD_SOLVERS = sorted(s for s, d in PAIRS if d == convflow.Direction.FORWARD)


@pytest.mark.parametrize("activation", ["relu", "relu6", "silu", "gelu"])
def test_every_epilogue_keeps_ieee_semantics(opencl, activation):
    """Non-finite biases reach every output-writing kernel: NaN stays NaN, +inf stays +inf
    (relu6: 6), -inf gives 0 (relu, relu6) or NaN (silu, gelu), as in the reference."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 16, 8, 10)).astype(np.float32)
    b = np.array([np.nan, np.inf, -np.inf, -3, 3, 8, -30, 30] * 2, np.float32)
    covered = set()
    for k, groups in ((3, 1), (1, 1), (3, 16)):
        w = rng.standard_normal((16, 16 // groups, k, k)).astype(np.float32) / 4
        pads = ((k // 2, k // 2),) * 2
        with np.errstate(invalid="ignore"):  # inf - inf in the reference's sums: NaN
            want = reference.activate(reference.conv(x, w, b, (1, 1), pads, (1, 1), groups),
                                      activation)
        problem = convflow.explain(x, w, b, padding=k // 2, groups=groups,
                                   backend="opencl").problem
        for rule in opencl.algorithm_rules():
            if rule.name not in FORWARD_SOLVERS or not rule.can_run(problem)[0]:
                continue
            covered.add(rule.name)
            for layout, data in (("NCHW", x), ("NHWC", last(x))):
                got = convflow.conv2d(data, w, b, padding=k // 2, groups=groups, layout=layout,
                                      activation=activation, backend="opencl",
                                      algorithm=rule.name)
                got = first(got) if layout == "NHWC" else got
                where = f"{rule.name} {layout}"
                np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=where)
                infinite = np.isinf(want)
                np.testing.assert_array_equal(got[infinite], want[infinite], err_msg=where)
                finite = np.isfinite(want)
                assert_close(np.where(finite, got, 0), np.where(finite, want, 0))
    assert covered == set(FORWARD_SOLVERS)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("solver", ["vec_gemm_1x1", "gemm_1x1", "vec_im2col_gemm", "depthwise",
                                    "naive"])
def test_half_types_in_channels_last(opencl, solver, dtype):
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
    rng = np.random.default_rng(4)
    groups = 6 if solver == "depthwise" else 2
    k = 1 if solver.endswith("gemm_1x1") else 3
    x = rng.standard_normal((2, 6, 7, 9)).astype(np_dtype)
    w = (rng.standard_normal((12, 6 // groups, k, k)) / 2).astype(np_dtype)
    b = rng.standard_normal(12).astype(np_dtype)
    kwargs = dict(padding=k // 2, groups=groups)
    args, y = _reference(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                         kwargs)
    got = convflow.conv2d(last(x), w, b, layout="NHWC", activation="gelu", backend="opencl",
                          algorithm=solver, **kwargs)
    assert got.dtype == np_dtype and got.flags.c_contiguous
    assert_close(first(got), reference.activate(y, "gelu"), dtype)
    dy = rng.standard_normal(y.shape).astype(np_dtype)
    expected = reference.conv_backward(dy.astype(np.float64), x.astype(np.float64),
                                       w.astype(np.float64), *args)
    grads = convflow.conv_backward(last(dy), last(x), w, layout="NHWC", backend="opencl",
                                   algorithm=solver, **kwargs)
    assert_close(first(grads[0]), expected[0], dtype)
    assert_close(grads[1], expected[1], dtype)
    assert_close(grads[2], expected[2], dtype)


def test_bfloat16_device_arrays_and_conversions(opencl):
    """bfloat16 pyopencl arrays in and out (offset views included), the non-zero padding
    modes, the channels-last bias gradient, and the rounding back to bfloat16: to nearest
    even, NaN and infinities kept."""
    import pyopencl.array as cl_array

    from convflow.backends.opencl.solvers import Call

    state = opencl.state(convflow.Device("opencl", 0))
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 6, 8, 9)).astype(ml_dtypes.bfloat16)
    w = rng.standard_normal((5, 4, 3, 3)).astype(ml_dtypes.bfloat16)
    view = cl_array.to_device(state.queue, x)[:, 1:5]       # an offset, non-contiguous view
    y = convflow.conv2d(view, w, padding=1, padding_mode="reflect", backend="opencl")
    assert isinstance(y, cl_array.Array) and y.dtype == ml_dtypes.bfloat16
    padded = np.pad(x[:, 1:5].astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)),
                    mode="reflect")
    want = reference.conv(padded, w.astype(np.float64), None, (1, 1), ((0, 0), (0, 0)),
                          (1, 1), 1)
    assert_close(y.get(), want, "bfloat16")

    dy = last(rng.standard_normal((2, 5, 8, 9)).astype(ml_dtypes.bfloat16))
    grad_bias = convflow.conv_backward(cl_array.to_device(state.queue, dy),
                                       cl_array.to_device(state.queue, last(x[:, 1:5])), w,
                                       padding=1, layout="NHWC", backend="opencl",
                                       output_mask=(False, False, True))[2]
    assert grad_bias.dtype == ml_dtypes.bfloat16
    assert_close(grad_bias.get(), dy.astype(np.float64).sum(axis=(0, 1, 2)), "bfloat16")

    values = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-9, 3.4e38, -3.4e38, 1e-40,
                       np.inf, -np.inf, -0.0, np.nan], np.float32)
    call = Call(state, state.queue, np.dtype(np.float32), 1 << 20)
    rounded = opencl._result(call, cl_array.to_device(state.queue, values),
                             np.dtype(ml_dtypes.bfloat16), convflow.Device("opencl", 0)).data
    bits = rounded.get().view(np.uint16)
    np.testing.assert_array_equal(bits[:-1], values[:-1].astype(ml_dtypes.bfloat16).view(
        np.uint16))
    assert np.isnan(rounded.get()[-1])


def test_channels_last_bias_gradient_is_reduced_in_place(opencl, launched):
    rng = np.random.default_rng(11)
    dy = rng.standard_normal((3, 5, 6, 7, 20)).astype(np.float32)
    device = convflow.tensor(dy, device="opencl")
    x = convflow.tensor(np.zeros((3, 5, 6, 7, 20), np.float32), device="opencl")
    w = np.zeros((20, 20, 1, 1, 1), np.float32)
    launched.clear()
    runs = [convflow.conv_backward(device, x, w, layout="NDHWC", backend="opencl",
                                   output_mask=(False, False, True))[2].numpy()
            for _ in range(2)]
    assert "bias_grad_nhwc" in launched and not LAYOUT_KERNELS & set(launched)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert_close(runs[0], dy.astype(np.float64).sum(axis=(0, 1, 2, 3)))


def test_a_fallback_from_a_native_to_a_converting_solver(opencl, monkeypatch):
    """A channels-last solver that cannot run hands over to the next rule, which gets the
    operands in its own layout."""
    from convflow.backends.opencl import solvers
    from convflow.backends.opencl.runtime import SolverUnavailable

    def unavailable(*args):
        raise SolverUnavailable("pretend the device is too small")

    broken = solvers.SOLVERS["vec_im2col_gemm"]
    monkeypatch.setitem(solvers.SOLVERS, "vec_im2col_gemm", solvers.replace(
        broken, passes={**broken.passes, convflow.Direction.FORWARD: unavailable}))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 8, 8)).astype(np.float32)
    w = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    with pytest.warns(convflow.SolverFallbackWarning, match="pretend the device is too small"):
        y = convflow.conv2d(last(x), w, b, padding=1, layout="NHWC", activation="relu",
                            backend="opencl", algorithm="vec_im2col_gemm")
    assert y.flags.c_contiguous
    want = reference.activate(reference.conv(x, w, b, (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
                              "relu")
    assert_close(first(y), want)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_conversions_are_exact_and_round_to_nearest_even(opencl, dtype):
    """Every 16-bit pattern widens exactly; float32 values (halfway cases, subnormal halves,
    overflow, non-finite) round to nearest even as numpy / ml_dtypes round them."""
    import pyopencl.array as cl_array

    from convflow.backends.opencl.solvers import Call

    half = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16)
    state = opencl.state(convflow.Device("opencl", 0))
    every = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(half)
    call = Call(state, state.queue, np.dtype(np.float32), 1 << 20)
    widened = opencl._operand(call, convflow.Tensor(cl_array.to_device(state.queue, every),
                                                    convflow.Device("opencl", 0))).get()
    np.testing.assert_array_equal(widened, every.astype(np.float32))
    wide = every.astype(np.float32)
    finite = wide[np.isfinite(wide)]
    with np.errstate(over="ignore"):
        step = np.spacing(finite.astype(half)).astype(np.float64)
    ties = (finite.astype(np.float64) + step / 2).astype(np.float32)
    rng = np.random.default_rng(8)
    values = np.concatenate([finite, ties[np.isfinite(ties)],
                             rng.standard_normal(50000).astype(np.float32) * 1e3,
                             rng.standard_normal(50000).astype(np.float32) * 1e-6,
                             np.array([7e4, 3e38, -3.4e38, 1e-40, np.inf, -np.inf, -0.0],
                                      np.float32)])
    rounded = opencl._result(call, cl_array.to_device(state.queue, values), half,
                             convflow.Device("opencl", 0)).data.get()
    with np.errstate(over="ignore"):
        expected = values.astype(half)
    np.testing.assert_array_equal(rounded.view(np.uint16), expected.view(np.uint16))
    nan = opencl._result(call, cl_array.to_device(state.queue, np.float32([np.nan])), half,
                         convflow.Device("opencl", 0)).data.get()
    assert np.isnan(nan[0].astype(np.float32))
