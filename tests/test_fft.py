"""The fft algorithm: planning (tiles, workspace, cost model, accuracy bound), large kernels
against the float64 reference on every backend that has it, the rule, find mode,
determinism, epilogues and layouts. (The shared grids of test_forward, test_transposed and
test_backward also run fft on every case it can run.)"""

from __future__ import annotations

import math

import ml_dtypes  # noqa: F401  (registers the dtype name "bfloat16")
import numpy as np
import pytest

import convflow
from convflow import config, fft_plan
from convflow.backends import get_backend
from convflow.errors import ParameterError, WorkspaceTooLargeError
from convflow.params import ConvProblem, Direction

import reference
from conftest import TOLERANCE, require_backend

FFT_BACKENDS = ["numba", "opencl"]


def _problem(direction=Direction.FORWARD, x=(1, 1, 64, 64), w=(1, 1, 9, 9), y=None,
             stride=(1, 1), padding=((4, 4), (4, 4)), dilation=(1, 1), groups=1,
             dtype="float32") -> ConvProblem:
    if y is None:
        y = (x[0], w[0], *(
            (size + lo + hi - d * (k - 1) - 1) // s + 1
            for size, k, s, d, (lo, hi) in zip(x[2:], w[2:], stride, dilation, padding)))
    return ConvProblem(direction, x, w, y, dtype, stride, padding, dilation, groups)


def fft_tolerance(dtype: str, lengths: tuple[int, ...]) -> float:
    """The accuracy the README states for FFT convolution: the suite's tolerance for the
    dtype, or the transform's error bound where that is larger."""
    computed = "float64" if dtype == "float64" else "float32"
    return max(TOLERANCE[dtype], fft_plan.relative_error_bound(computed, lengths))


def assert_fft_close(actual, expected, dtype, lengths):
    actual = np.asarray(actual, dtype=np.float64)
    scale = max(1.0, float(np.abs(expected).max()))
    error = float(np.abs(actual - expected).max())
    bound = fft_tolerance(dtype, lengths)
    assert error <= bound * scale, f"max abs error {error:.3g} exceeds {bound:.3g} x {scale:.3g}"


# Planning ----------------------------------------------------------------------------------
NUMBA_RATES = fft_plan.Rates(fft=8e9, mac=8e9, direct=(("default", 20e9),))


def test_smooth_and_power_of_two_lengths():
    assert [fft_plan.smooth_length(n) for n in (1, 11, 13, 86, 127)] == [1, 12, 14, 90, 128]
    assert fft_plan.smooth_length(11, (2, 3, 5, 7, 11)) == 11


def test_numba_fast_lengths_are_scipys():
    """The numba backend plans with scipy's real-transform lengths without importing
    scipy.fft (a tenth of a second of the first call)."""
    pytest.importorskip("numba")
    import scipy.fft

    from convflow.backends.numba import fft as numba_fft

    assert [numba_fft.fast_length(n) for n in range(1, 3000)] == \
        [scipy.fft.next_fast_len(n, real=True) for n in range(1, 3000)]
    assert [fft_plan.power_of_two_length(n) for n in (1, 5, 64, 65)] == [1, 8, 64, 128]


@pytest.mark.parametrize("direction", list(Direction))
def test_tiles_cover_the_positions_and_fit_the_budget(direction):
    problem = _problem(direction, x=(2, 3, 300, 280), w=(4, 3, 15, 13), stride=(2, 1),
                       padding=((7, 7), (6, 6)))
    budget = 1 << 20
    plan = fft_plan.plan(problem, budget, NUMBA_RATES, TOLERANCE["float32"])
    assert plan is not None and plan.workspace_bytes <= budget
    assert plan.tiles > 1, plan
    for axis in plan.axes:
        assert axis.tiles * axis.tile >= axis.total > (axis.tiles - 1) * axis.tile
        assert axis.length >= axis.segment(axis.tile)


def test_whole_image_in_one_tile_when_it_fits_and_pays():
    problem = _problem(x=(1, 8, 40, 40), w=(8, 8, 31, 31), padding=((15, 15), (15, 15)))
    plan = fft_plan.plan(problem, 64 << 20, NUMBA_RATES, TOLERANCE["float32"])
    assert plan is not None and plan.tiles == 1 and plan.lengths == (70, 70)


def test_no_plan_when_one_tile_cannot_fit():
    problem = _problem(x=(1, 64, 64, 64), w=(64, 64, 31, 31), padding=((15, 15), (15, 15)))
    assert fft_plan.plan(problem, 1 << 20, NUMBA_RATES, TOLERANCE["float32"]) is None
    assert fft_plan.smallest_workspace(problem, NUMBA_RATES) > 1 << 20


def test_error_bound_grows_with_the_transform_and_picks_float64_when_needed():
    small = fft_plan.relative_error_bound("float32", (16, 16))
    large = fft_plan.relative_error_bound("float32", (4096, 4096))
    assert small < large == pytest.approx(fft_plan.ERROR_FACTOR * 2.0 ** -24 * 24)
    problem = _problem()
    assert fft_plan.transform_dtype(problem, (4096, 4096), TOLERANCE["float32"]) == "float32"
    assert fft_plan.transform_dtype(problem, (4096, 4096), 1e-6) == "float64"
    assert fft_plan.transform_dtype(_problem(dtype="float64"), (16,), 1.0) == "float64"


def test_rule_reason_gives_both_costs_and_the_stride_note():
    problem = _problem(x=(1, 1, 1024, 1024), w=(1, 1, 63, 63), stride=(2, 2),
                       padding=((31, 31), (31, 31)))
    rates = fft_plan.Rates(fft=8e9, mac=8e9, direct=(("default", 7e9),))
    plan = fft_plan.plan(problem, 64 << 20, rates, TOLERANCE["float32"])
    chosen, why = fft_plan.fft_rule(problem, plan, rates, "direct", 64)
    assert chosen, why
    assert "GFLOP" in why and "vs direct" in why and "computed at stride 1 and subsampled" in why
    small = _problem(x=(1, 16, 32, 32), w=(16, 1, 3, 3), groups=16, padding=((1, 1), (1, 1)))
    plan = fft_plan.plan(small, 64 << 20, rates, TOLERANCE["float32"])
    chosen, why = fft_plan.fft_rule(small, plan, rates, "depthwise", 64)
    assert not chosen and "not cheaper" in why
    assert fft_plan.fft_rule(small, None, rates, "depthwise", 1) == (
        False, "even one tile of one image needs more scratch than CONVFLOW_WORKSPACE_MB=1")


# Against the reference, every backend with fft ----------------------------------------------
@pytest.fixture(params=FFT_BACKENDS)
def fft_backend(request: pytest.FixtureRequest) -> str:
    require_backend(request.param)
    return str(request.param)


def _plan_lengths(backend: str, decision) -> tuple[int, ...]:
    module = get_backend(backend)
    return module.fft_plan(decision.problem).lengths


LARGE = [
    # (input, weight, kwargs): large kernels, strides, dilation, groups, depthwise, 1-D, 3-D
    ((1, 1, 96, 90), (1, 1, 31, 31), {"padding": "same"}),
    ((2, 3, 40, 44), (3, 3, 15, 13), {"padding": (7, 5), "stride": 2}),
    ((1, 4, 37, 41), (8, 1, 9, 9), {"padding": "same", "groups": 4, "dilation": 2}),
    ((2, 6, 33, 30), (4, 3, 11, 7), {"padding": ((3, 6), (2, 4)), "groups": 2, "stride": (1, 3)}),
    ((2, 3, 300), (5, 3, 63), {"padding": 31, "stride": 3}),
    ((1, 2, 14, 15, 16), (3, 2, 7, 5, 9), {"padding": 3}),
]


def _conv(x, w, **kwargs):
    return {3: convflow.conv1d, 4: convflow.conv2d, 5: convflow.conv3d}[x.ndim](x, w, **kwargs)


def _reference_args(x, w, kwargs):
    nd = x.ndim - 2
    params = convflow.ConvParams.normalize("test", nd, stride=kwargs.get("stride", 1),
                                           padding=kwargs.get("padding", 0),
                                           dilation=kwargs.get("dilation", 1),
                                           groups=kwargs.get("groups", 1),
                                           input_spatial=x.shape[2:], kernel_spatial=w.shape[2:])
    return params.stride, params.padding, params.dilation, params.groups


def _to(backend: str, array: np.ndarray):
    if backend == "opencl":
        import pyopencl.array as cl_array

        state = get_backend("opencl").state(convflow.Device("opencl", 0))
        return cl_array.to_device(state.queue, array)
    return array


def _host(result) -> np.ndarray:
    return result.get() if hasattr(result, "get") else np.asarray(result)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("shapes", LARGE, ids=lambda s: f"{s[0]}*{s[1]}")
def test_three_passes_match_the_reference(fft_backend, shapes, dtype):
    x_shape, w_shape, kwargs = shapes
    if dtype in ("float16", "bfloat16") and len(x_shape) != 4:
        pytest.skip("half types: the 2-D cases suffice")
    rng = np.random.default_rng(sum(x_shape) + sum(w_shape))
    x64, w64 = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    x, w = x64.astype(dtype), w64.astype(dtype)
    xr, wr = x.astype(np.float64), w.astype(np.float64)
    stride, padding, dilation, groups = _reference_args(x, w, kwargs)
    expected = reference.conv(xr, wr, None, stride, padding, dilation, groups)
    decision = convflow.explain(x, w, backend=fft_backend, algorithm="fft", **kwargs)
    lengths = _plan_lengths(fft_backend, decision)
    y = _host(_conv(_to(fft_backend, x), _to(fft_backend, w), algorithm="fft", **kwargs))
    assert y.dtype == np.dtype(dtype)
    assert_fft_close(y, expected, dtype, lengths)
    g = rng.standard_normal(expected.shape).astype(dtype)
    dx, dw, _ = convflow.conv_backward(_to(fft_backend, g), _to(fft_backend, x),
                                       _to(fft_backend, w), algorithm="fft", **kwargs)
    ref_dx, ref_dw, _ = reference.conv_backward(g.astype(np.float64), xr, wr, stride, padding,
                                                dilation, groups)
    assert_fft_close(_host(dx), ref_dx, dtype, lengths)
    assert_fft_close(_host(dw), ref_dw, dtype, lengths)


def test_transposed_convolution_with_large_kernel(fft_backend):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 20, 19))
    w = rng.standard_normal((4, 3, 15, 15))
    b = rng.standard_normal(3)
    y = convflow.conv_transpose2d(_to(fft_backend, x.astype(np.float32)),
                                  _to(fft_backend, w.astype(np.float32)),
                                  _to(fft_backend, b.astype(np.float32)), stride=2, padding=3,
                                  output_padding=1, algorithm="fft")
    expected = reference.conv_transpose(x, w, b, (2, 2), ((3, 3), (3, 3)), (1, 1), 1, (1, 1))
    assert_fft_close(_host(y), expected, "float32", (64, 64))


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_fused_bias_and_activation(fft_backend, activation):
    rng = np.random.default_rng(3)
    x, w, b = (rng.standard_normal(s) for s in ((2, 3, 50, 50), (4, 3, 21, 21), (4,)))
    y = convflow.conv2d(*(_to(fft_backend, a.astype(np.float32)) for a in (x, w, b)),
                        padding="same", activation=activation, algorithm="fft")
    expected = reference.activate(reference.conv(x, w, b, (1, 1), ((10, 10), (10, 10)), (1, 1), 1),
                                  activation)
    assert_fft_close(_host(y), expected, "float32", (80, 80))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes(fft_backend, mode):
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((1, 2, 40, 36)), rng.standard_normal((2, 2, 17, 17))
    y = convflow.conv2d(_to(fft_backend, x.astype(np.float32)),
                        _to(fft_backend, w.astype(np.float32)), padding=8, padding_mode=mode,
                        algorithm="fft")
    expected = reference.conv(x, w, None, (1, 1), ((8, 8), (8, 8)), (1, 1), 1, mode)
    assert_fft_close(_host(y), expected, "float32", (64, 64))


def test_channels_last(fft_backend):
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal((1, 40, 42, 3)), rng.standard_normal((5, 3, 15, 15))
    y = convflow.conv2d(_to(fft_backend, x.astype(np.float32)),
                        _to(fft_backend, w.astype(np.float32)), padding="same", layout="NHWC",
                        algorithm="fft")
    expected = reference.conv(x.transpose(0, 3, 1, 2), w, None, (1, 1), ((7, 7), (7, 7)),
                              (1, 1), 1).transpose(0, 2, 3, 1)
    assert_fft_close(_host(y), expected, "float32", (64, 64))


def test_tiles_under_a_small_workspace_give_the_same_result(fft_backend):
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((2, 2, 150, 140)), rng.standard_normal((3, 2, 21, 19))
    g = rng.standard_normal((2, 3, 65, 61))
    expected = reference.conv(x, w, None, (2, 2), ((0, 0), (0, 0)), (1, 1), 1)
    with config.override(CONVFLOW_WORKSPACE_MB=1):
        decision = convflow.explain(x.astype(np.float32), w.astype(np.float32), stride=2,
                                    backend=fft_backend, algorithm="fft")
        plan = get_backend(fft_backend).fft_plan(decision.problem)
        assert plan.tiles > 1 and plan.workspace_bytes <= 1 << 20, plan
        args = [_to(fft_backend, a.astype(np.float32)) for a in (g, x, w)]
        y = _host(convflow.conv2d(args[1], args[2], stride=2, algorithm="fft"))
        dx, dw, _ = convflow.conv_backward(*args, stride=2, algorithm="fft")
    assert_fft_close(y, expected, "float32", plan.lengths)
    ref_dx, ref_dw, _ = reference.conv_backward(g, x, w, (2, 2), ((0, 0), (0, 0)), (1, 1), 1)
    assert_fft_close(_host(dx), ref_dx, "float32", plan.lengths)
    assert_fft_close(_host(dw), ref_dw, "float32", plan.lengths)


def test_non_finite_inputs_stay_local(fft_backend):
    """An FFT would spread one NaN over the whole output: such calls run the direct loops."""
    x = np.ones((1, 1, 40, 40), dtype=np.float32)
    x[0, 0, 5, 5] = np.nan
    x[0, 0, 30, 30] = np.inf
    w = np.ones((1, 1, 9, 9), dtype=np.float32)
    y = _host(convflow.conv2d(_to(fft_backend, x), _to(fft_backend, w), padding=4,
                              algorithm="fft"))
    assert np.isnan(y[0, 0, 1:10, 1:10]).all() and np.isposinf(y[0, 0, 26:35, 26:35]).all()
    assert np.isfinite(y[0, 0, 15:20, 15:20]).all() and np.isfinite(y[0, 0, 0, 39])


# Rules, workspace, find mode, determinism ----------------------------------------------------
def test_rule_picks_fft_for_a_large_image_filter_and_says_why(fft_backend):
    x = _to(fft_backend, np.zeros((1, 1, 1024, 1024), np.float32))
    w = _to(fft_backend, np.zeros((1, 1, 63, 63), np.float32))
    decision = convflow.explain(x, w, padding="same")
    assert decision.algorithm == "fft", str(decision)
    assert "GFLOP" in decision.reason and "vs " in decision.reason


def test_rule_keeps_depthwise_for_small_kernels(fft_backend):
    x = _to(fft_backend, np.zeros((1, 96, 56, 56), np.float32))
    w = _to(fft_backend, np.zeros((96, 1, 7, 7), np.float32))
    decision = convflow.explain(x, w, padding="same", groups=96)
    assert decision.algorithm == "depthwise", str(decision)
    fft_outcome = next(o for o in decision.algorithm_rules if o.rule == "fft")
    assert "not cheaper" in fft_outcome.detail


def test_too_large_for_the_workspace_is_refused_up_front(fft_backend):
    x = np.zeros((1, 64, 64, 64), np.float32)
    w = np.zeros((64, 64, 31, 31), np.float32)
    with config.override(CONVFLOW_WORKSPACE_MB=1):
        decision = convflow.explain(_to(fft_backend, x), _to(fft_backend, w), padding="same")
        outcome = next(o for o in decision.algorithm_rules if o.rule == "fft")
        assert "CONVFLOW_WORKSPACE_MB=1" in outcome.detail
        with pytest.raises(ParameterError, match=r"'fft' cannot run this problem: .*"
                                                 r"CONVFLOW_WORKSPACE_MB=1"):
            convflow.conv2d(_to(fft_backend, x), _to(fft_backend, w), padding="same",
                            algorithm="fft")
        backend = get_backend(fft_backend)
        problem = decision.problem
        tensors = [backend.upload(np.zeros(s, np.float32), decision.device)
                   for s in (problem.x_shape, problem.w_shape)]
        with pytest.raises(WorkspaceTooLargeError, match="CONVFLOW_WORKSPACE_MB=1"):
            backend.forward(*tensors, None, problem, "fft")


def test_find_mode_times_fft(fft_backend, tmp_path, monkeypatch):
    monkeypatch.setenv("CONVFLOW_CACHE_DIR", str(tmp_path / "cache"))
    x = _to(fft_backend, np.random.default_rng(0).standard_normal((1, 2, 64, 64))
            .astype(np.float32))
    w = _to(fft_backend, np.ones((2, 2, 15, 15), np.float32))
    with config.override(CONVFLOW_FIND_MODE="autotune", CONVFLOW_TUNE_BUDGET_MS=5000):
        decision = convflow.explain(x, w, padding="same")
    assert "fft" in decision.candidates
    assert isinstance(decision.timings.get("fft"), float), decision.timings


def test_results_are_bitwise_reproducible_and_kept_when_deterministic(fft_backend):
    rng = np.random.default_rng(8)
    x, w = rng.standard_normal((2, 6, 90, 80)), rng.standard_normal((6, 3, 25, 25))
    args = [_to(fft_backend, a.astype(np.float32)) for a in (x, w)]
    runs = []
    for threads in (0, 1, 0):
        with config.override(CONVFLOW_NUM_THREADS=threads):
            runs.append(_host(convflow.conv2d(*args, groups=2, padding="same", algorithm="fft")))
            runs.append(_host(convflow.conv_backward(
                _to(fft_backend, runs[-1]), *args, groups=2, padding="same",
                algorithm="fft")[1]))
    assert all(np.array_equal(runs[i], runs[i % 2]) for i in range(len(runs)))
    with config.override(CONVFLOW_DETERMINISTIC=True):
        decision = convflow.explain(*args, groups=2, padding="same")
        assert "fft" in decision.candidates


def test_workspace_estimate_is_the_plans(fft_backend):
    decision = convflow.explain(_to(fft_backend, np.zeros((1, 1, 512, 512), np.float32)),
                                _to(fft_backend, np.zeros((1, 1, 31, 31), np.float32)),
                                padding="same", algorithm="fft")
    backend = get_backend(fft_backend)
    plan = backend.fft_plan(decision.problem)
    assert backend.workspace_bytes(decision.problem, "fft") == plan.workspace_bytes
    assert 0 < plan.workspace_bytes <= config.get("CONVFLOW_WORKSPACE_MB") << 20
    assert math.prod(plan.lengths) >= 542 * 542 or plan.tiles > 1


# The cupy backend's fft, on the host (numpy as the array module, as test_cupy_kernels) -------
@pytest.mark.parametrize("budget_mb", [64, 1])
@pytest.mark.parametrize("shapes", LARGE[:5], ids=lambda s: f"{s[0]}*{s[1]}")
def test_cupy_fft_passes_on_the_host(shapes, budget_mb):
    from convflow.backends.cupy import OWN_RULES, algorithms
    from convflow.backends.cupy import fft as cupy_fft

    fft_record = next(r for r in OWN_RULES if r.name == "fft")
    x_shape, w_shape, kwargs = shapes
    rng = np.random.default_rng(sum(x_shape))
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    stride, padding, dilation, groups = _reference_args(x, w, kwargs)
    y_ref = reference.conv(x, w, None, stride, padding, dilation, groups)
    g = rng.standard_normal(y_ref.shape)
    dx_ref, dw_ref, _ = reference.conv_backward(g, x, w, stride, padding, dilation, groups)
    ctx = algorithms.Context(np, None, np.matmul, budget_mb << 20)
    for direction, a, b, expected in ((Direction.FORWARD, x, w, y_ref),
                                      (Direction.BACKWARD_DATA, g, w, dx_ref),
                                      (Direction.BACKWARD_WEIGHT, x, g, dw_ref)):
        problem = ConvProblem(direction, x.shape, w.shape, y_ref.shape, "float32", stride,
                              padding, dilation, groups)
        plan = cupy_fft.plan_for(problem, budget_mb << 20)
        assert plan is not None and plan.workspace_bytes <= budget_mb << 20
        got = algorithms.run(ctx, fft_record.passes[direction], problem, a.astype(np.float32),
                             b.astype(np.float32), None)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert_fft_close(got, expected, "float32", plan.lengths)


def test_cupy_fft_refuses_what_cannot_fit_and_is_not_deterministic():
    from convflow.backends.cupy import OWN_RULES, algorithms

    problem = _problem(x=(1, 64, 64, 64), w=(64, 64, 31, 31), padding=((15, 15), (15, 15)))
    with config.override(CONVFLOW_WORKSPACE_MB=1):
        rule = next(r for r in OWN_RULES if r.name == "fft")
        ok, why = rule.can_run(problem)
        assert not ok and "CONVFLOW_WORKSPACE_MB=1" in why
        assert not rule.deterministic and "bitwise" in rule.why_not_deterministic
    ctx = algorithms.Context(np, None, np.matmul, 1 << 20)
    with pytest.raises(WorkspaceTooLargeError, match="CONVFLOW_WORKSPACE_MB=1"):
        algorithms.run(ctx, rule.passes[problem.direction], problem,
                       np.zeros(problem.x_shape, np.float32),
                       np.zeros(problem.w_shape, np.float32), None)


def test_opencl_fft_without_reikna_says_how_to_get_it(monkeypatch):
    import sys

    from convflow.backends.opencl import fft as opencl_fft

    monkeypatch.setitem(sys.modules, "reikna.fft", None)
    ok, why = opencl_fft.can_run(_problem())
    assert not ok and "reikna" in why and "pip install 'convflow[opencl-fft]'" in why
    assert opencl_fft.rule(_problem(), "depthwise") == (False, why)


def test_direct_rates_for_planes_beyond_the_caches():
    rates = fft_plan.Rates(fft=8e9, mac=8e9,
                           direct=(("default", 1e9), ("depthwise", 60e9), ("depthwise@large", 8e9)))
    small = _problem(x=(1, 128, 56, 56), w=(128, 1, 31, 31), groups=128,
                     padding=((15, 15), (15, 15)))
    large = _problem(x=(1, 3, 1024, 1024), w=(3, 1, 15, 15), groups=3, padding=((7, 7), (7, 7)))
    assert fft_plan.rival_rate_name(small, rates, "depthwise") == "depthwise"
    assert fft_plan.rival_rate_name(large, rates, "depthwise") == "depthwise@large"
    assert fft_plan.rival_rate_name(large, rates, "direct") == "direct"
    assert fft_plan.direct_seconds(large, rates, "depthwise") == large.flops / 8e9
    plan = fft_plan.plan(large, 64 << 20, rates, TOLERANCE["float32"])
    assert "on planes beyond the caches" in fft_plan.fft_rule(large, plan, rates, "depthwise", 64)[1]
