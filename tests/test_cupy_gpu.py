"""The cupy backend on a GPU: CuPy and torch arrays in and out, streams, devices, the plan
cache and cuDNN fallbacks. Every test here is marked ``gpu`` and skipped with the backend's
reason where no GPU is present (conftest); the parametrized suites (test_forward.py, ...)
run the numerics on this backend like on every other.
"""

from __future__ import annotations

import numpy as np
import pytest

import convflow
from convflow import config

import reference
from conftest import assert_close

pytestmark = pytest.mark.gpu


@pytest.fixture
def cupy():
    import cupy

    return cupy


@pytest.fixture
def backend():
    from convflow.backends import get_backend

    return get_backend("cupy")


def _operands(cupy, dtype="float32", shape=(2, 4, 9, 8), weight=(6, 2, 3, 3), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(weight).astype(dtype)
    b = rng.standard_normal(weight[0]).astype(dtype)
    return (x, w, b), (cupy.asarray(x), cupy.asarray(w), cupy.asarray(b))


KWARGS = dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2), groups=2)


def _expected(x, w, b):
    return reference.conv(x, w, b, KWARGS["stride"], KWARGS["padding"], KWARGS["dilation"],
                          KWARGS["groups"])


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_cupy_in_cupy_out(cupy, backend, dtype):
    (x, w, b), (xg, wg, bg) = _operands(cupy, dtype)
    problem = convflow.explain(xg, wg, bg, **KWARGS).problem
    runnable = [r.name for r in backend.algorithm_rules() if r.can_run(problem)[0]]
    assert "direct" in runnable and "im2col_gemm" in runnable
    for algorithm in [None, *runnable]:
        y = convflow.conv2d(xg, wg, bg, algorithm=algorithm, **KWARGS)
        assert isinstance(y, cupy.ndarray) and y.device.id == xg.device.id
        assert y.dtype == xg.dtype
        assert not any(cupy.shares_memory(y, a) for a in (xg, wg, bg))
        assert_close(cupy.asnumpy(y), _expected(x, w, b), dtype)
    np.testing.assert_array_equal(cupy.asnumpy(xg), x)  # inputs untouched


def test_the_decision_prefers_cudnn_and_shows_the_tf32_policy(cupy, backend):
    _, (xg, wg, bg) = _operands(cupy)
    decision = convflow.explain(xg, wg, bg, **KWARGS)
    assert decision.backend == "cupy" and decision.device == convflow.Device("cuda", 0)
    if backend.plans is None:
        assert decision.algorithm != "cudnn"
        return
    trace = str(decision)
    assert "cudnn" in trace and "CONVFLOW_ALLOW_TF32=0" in trace
    with config.override(CONVFLOW_ALLOW_TF32=True):
        assert "CONVFLOW_ALLOW_TF32=1" in str(convflow.explain(xg, wg, bg, **KWARGS))


def test_results_are_on_the_current_stream(cupy):
    (x, w, b), (xg, wg, bg) = _operands(cupy, shape=(8, 4, 64, 64))
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        y = convflow.conv2d(xg, wg, bg, **KWARGS)
        grads = convflow.conv_backward(cupy.ones_like(y), xg, wg, **KWARGS)
    stream.synchronize()
    assert_close(cupy.asnumpy(y), _expected(x, w, b), "float32")
    assert all(isinstance(g, cupy.ndarray) for g in grads)


def test_a_second_device_keeps_the_data_there(cupy):
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two CUDA devices")
    (x, w, b), _ = _operands(cupy)
    with cupy.cuda.Device(1):
        xg, wg, bg = cupy.asarray(x), cupy.asarray(w), cupy.asarray(b)
    y = convflow.conv2d(xg, wg, bg, **KWARGS)
    assert y.device.id == 1
    assert_close(cupy.asnumpy(y), _expected(x, w, b), "float32")


def test_numpy_input_stays_on_the_cpu_unless_forced(cupy):
    (x, w, b), _ = _operands(cupy)
    assert convflow.explain(x, w, b, **KWARGS).backend == "numba"
    decision = convflow.explain(x, w, b, backend="cupy", **KWARGS)
    assert decision.backend == "cupy" and any("copied" in note for note in decision.notes)
    y = convflow.conv2d(x, w, b, backend="cupy", **KWARGS)
    assert isinstance(y, np.ndarray)
    assert_close(y, _expected(x, w, b), "float32")


def test_tensors_on_a_cuda_device(cupy):
    (x, w, b), _ = _operands(cupy)
    xt = convflow.tensor(x, device="cuda:0")
    assert xt.device == convflow.Device("cuda", 0) and isinstance(xt.data, cupy.ndarray)
    y = convflow.conv2d(xt, convflow.tensor(w, device="cuda"), convflow.tensor(b, "cuda:0"),
                        **KWARGS)
    assert isinstance(y, convflow.Tensor) and y.device == xt.device
    assert_close(np.asarray(y), _expected(x, w, b), "float32")
    assert_close(y.to("cpu").numpy(), _expected(x, w, b), "float32")


def test_torch_cuda_tensors_through_dlpack(cupy):
    torch = pytest.importorskip("torch", reason="torch is optional for the tests")
    if not torch.cuda.is_available():
        pytest.skip("this torch has no CUDA")
    (x, w, b), _ = _operands(cupy)
    xt, wt, bt = (torch.from_numpy(a).cuda() for a in (x, w, b))
    y = convflow.conv2d(xt, wt, bt, **KWARGS)
    assert isinstance(y, torch.Tensor) and y.is_cuda
    assert_close(y.cpu().numpy(), _expected(x, w, b), "float32")
    gi, gw, _ = convflow.conv_backward(torch.ones_like(y), xt, wt, **KWARGS)
    assert isinstance(gi, torch.Tensor) and gi.shape == xt.shape and gw.shape == wt.shape


def test_the_plan_cache_is_reused_and_keyed_by_the_policy(cupy, backend):
    plans = backend.plans
    if plans is None:
        pytest.skip("the cuDNN frontend is not installed")
    _, (xg, wg, bg) = _operands(cupy, shape=(3, 4, 17, 11))
    convflow.conv2d(xg, wg, bg, algorithm="cudnn", **KWARGS)
    hits, misses = plans.hits, plans.misses
    convflow.conv2d(xg, wg, bg, algorithm="cudnn", **KWARGS)
    assert plans.misses == misses and plans.hits >= hits  # nothing rebuilt
    with config.override(CONVFLOW_DETERMINISTIC=True):
        convflow.conv2d(xg, wg, bg, algorithm="cudnn", **KWARGS)
    assert plans.misses > misses  # a different policy is a different plan


def test_a_cudnn_refusal_falls_back_to_own_kernels(cupy, backend, monkeypatch):
    plans = backend.plans
    if plans is None:
        pytest.skip("the cuDNN frontend is not installed")
    (x, w, b), (xg, wg, bg) = _operands(cupy, shape=(2, 4, 13, 9))
    monkeypatch.setattr(plans, "plan", lambda key, policy: "RuntimeError: refused for the test")
    monkeypatch.setattr(plans, "_resolutions", {})
    decision = convflow.explain(xg, wg, bg, **KWARGS)
    assert decision.algorithm != "cudnn" and "refused for the test" in str(decision)
    assert_close(cupy.asnumpy(convflow.conv2d(xg, wg, bg, **KWARGS)), _expected(x, w, b),
                 "float32")


def test_own_weight_gradients_are_deterministic(cupy):
    _, (xg, wg, _) = _operands(cupy, shape=(16, 4, 32, 32))
    dy = cupy.asarray(np.random.default_rng(1).standard_normal(
        convflow.conv2d(xg, wg, **KWARGS).shape).astype(np.float32))
    for algorithm in ("direct", "im2col_gemm"):
        first = convflow.conv_backward(dy, xg, wg, output_mask=(False, True, False),
                                       algorithm=algorithm, **KWARGS)[1]
        second = convflow.conv_backward(dy, xg, wg, output_mask=(False, True, False),
                                        algorithm=algorithm, **KWARGS)[1]
        assert cupy.array_equal(first, second), algorithm


def test_bias_gradient_and_padding_modes_on_the_gpu(cupy):
    (x, w, b), (xg, wg, bg) = _operands(cupy, weight=(6, 4, 3, 3))
    for mode in ("reflect", "replicate", "circular"):
        y = convflow.conv2d(xg, wg, bg, padding=2, padding_mode=mode)
        want = reference.conv(x, w, b, (1, 1), ((2, 2), (2, 2)), (1, 1), 1, mode)
        assert_close(cupy.asnumpy(y), want, "float32")
    dy = cupy.ones((2, 6, 7, 6), dtype=cupy.float32)
    gb = convflow.conv_backward(dy, xg, wg, output_mask=(False, False, True))[2]
    np.testing.assert_allclose(cupy.asnumpy(gb), np.full(6, 2 * 7 * 6, np.float32))


def test_available_memory_and_status(backend):
    status = convflow.available_backends()["cupy"]
    assert status.available and status.devices and status.details["cupy"]
    assert backend.available_memory(convflow.Device("cuda", 0)) > 0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
def test_channels_last_and_fused_epilogue_on_the_gpu(cupy, backend, dtype, activation):
    """Channels-last CuPy data through cuDNN (described, not transposed) with the bias and
    activation fused or in one pass after it, and through every own algorithm (converted):
    results lie channels-last and match the reference. Not yet run on a GPU."""
    import ml_dtypes

    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    problem_dtype = convflow.explain(np.zeros((1, 1, 3, 3), np_dtype),
                                     np.zeros((1, 1, 1, 1), np_dtype)).problem
    if backend.unsupported_reason(problem_dtype, convflow.Device("cuda", 0)):
        pytest.skip(backend.unsupported_reason(problem_dtype, convflow.Device("cuda", 0)))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 8, 9, 10)).astype(np_dtype)
    w = (rng.standard_normal((16, 8, 3, 3)) / 3).astype(np_dtype)
    b = rng.standard_normal(16).astype(np_dtype)
    want = reference.activate(reference.conv(x.astype(np.float64), w.astype(np.float64),
                                             b.astype(np.float64), (1, 1), ((1, 1), (1, 1)),
                                             (1, 1), 1), activation)
    xg = cupy.asarray(np.ascontiguousarray(np.moveaxis(x, 1, -1)))
    wg, bg = cupy.asarray(w), cupy.asarray(b)
    problem = convflow.explain(xg, wg, bg, padding=1, layout="NHWC",
                               activation=activation).problem
    for rule in backend.algorithm_rules():
        if not rule.can_run(problem)[0]:
            continue
        y = convflow.conv2d(xg, wg, bg, padding=1, layout="NHWC", activation=activation,
                            algorithm=rule.name)
        assert y.shape == (2, 9, 10, 16) and y.flags.c_contiguous and y.dtype == xg.dtype
        assert_close(np.moveaxis(cupy.asnumpy(y), -1, 1), want, dtype)
