"""The opencl backend's own behaviour: device choice, device-resident tensors and pyopencl
arrays, solver selection by device type, fallback on build failures and device limits,
dtype support, explain() and ``convflow info``. Runs on any OpenCL device (PoCL in CI)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import convflow
from convflow import config
from convflow.backends.opencl import runtime
from convflow.backends.opencl.runtime import DeviceEntry, match_devices

import reference
from conftest import assert_close, require_backend


@pytest.fixture
def opencl():
    """The opencl backend object (skipped, or failed in CI, without an OpenCL device)."""
    require_backend("opencl")
    from convflow.backends import get_backend

    return get_backend("opencl")


@pytest.fixture
def state(opencl):
    return opencl.state(convflow.Device("opencl", 0))


def _conv_reference(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    nd = x.ndim - 2

    def per(v):
        return (v,) * nd if isinstance(v, int) else tuple(v)

    pad = tuple((p, p) for p in per(padding))
    return reference.conv(x, w, b, per(stride), pad, per(dilation), groups)


def _operands(shape_x, shape_w, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape_x).astype(dtype), rng.standard_normal(shape_w).astype(dtype))


# Device choice (pure) ------------------------------------------------------------------------
ENTRIES = [
    DeviceEntry(0, "Portable Computing Language", 0, "pthread-haswell", "cpu"),
    DeviceEntry(1, "AMD Accelerated Parallel Processing", 0, "gfx1100", "gpu"),
    DeviceEntry(1, "AMD Accelerated Parallel Processing", 1, "gfx90a", "gpu"),
]


def test_default_device_order_prefers_gpus():
    assert [e.device_name for e in match_devices(ENTRIES, "")] == ["gfx1100", "gfx90a",
                                                                    "pthread-haswell"]


@pytest.mark.parametrize("spec, names", [
    ("0", ["pthread-haswell"]),
    ("1", ["gfx1100", "gfx90a"]),
    ("1:1", ["gfx90a"]),
    ("amd:gfx11", ["gfx1100"]),
    ("POCL", []),  # platform names are matched, not abbreviations
    ("portable", ["pthread-haswell"]),
    (":gfx90", ["gfx90a"]),
    (" 1 : 0 ", ["gfx1100"]),
])
def test_device_spec_matching(spec, names):
    if not names:
        with pytest.raises(convflow.ConfigError, match="matches no OpenCL device"):
            match_devices(ENTRIES, spec)
        return
    assert [e.device_name for e in match_devices(ENTRIES, spec)] == names


def test_a_bad_device_spec_lists_the_devices():
    with pytest.raises(convflow.ConfigError) as info:
        match_devices(ENTRIES, "nvidia")
    message = str(info.value)
    assert "CONVFLOW_OPENCL_DEVICE='nvidia'" in message
    assert "1:1 'gfx90a' (gpu)" in message and "unset it" in message
    with pytest.raises(convflow.ConfigError, match="expected 'platform'"):
        match_devices(ENTRIES, "0:")


def _status_in_subprocess(env_value: str) -> dict:
    code = ("import json, convflow; s = convflow.available_backends()['opencl']; "
            "print(json.dumps({'available': s.available, 'reason': s.reason, "
            "'devices': list(s.devices)}))")
    env = dict(os.environ, CONVFLOW_OPENCL_DEVICE=env_value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_device_variable_selects_and_reports(opencl):
    info = opencl.device_infos()[0]
    chosen = _status_in_subprocess("0:0")
    assert chosen["available"] and len(chosen["devices"]) == 1
    by_name = _status_in_subprocess(f":{info.name[:6]}")
    assert by_name["available"] and info.name in by_name["devices"][0]
    missing = _status_in_subprocess("no-such-platform")
    assert not missing["available"]
    assert "CONVFLOW_OPENCL_DEVICE='no-such-platform' matches no OpenCL device" in missing["reason"]


@pytest.mark.parametrize("setup, reason", [
    ("import sys; sys.modules['pyopencl'] = None", "pip install 'convflow[opencl]'"),
    ("import os; os.environ['OCL_ICD_VENDORS'] = '/nonexistent'", "finds no OpenCL device"),
])
def test_without_pyopencl_or_a_platform_the_status_says_why(setup, reason):
    code = (f"{setup}\nimport numpy, convflow\n"
            "s = convflow.available_backends()['opencl']\n"
            "assert not s.available, s\nprint(s.reason)\n"
            "y = convflow.conv1d(numpy.ones((1, 1, 4)), numpy.ones((1, 1, 2)))\n"
            "assert y.tolist() == [[[2.0, 2.0, 2.0]]]\n"
            "try:\n    convflow.conv1d(numpy.ones((1, 1, 4)), numpy.ones((1, 1, 2)), "
            "backend='opencl')\nexcept convflow.BackendUnavailableError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert reason in out.stdout
    assert "backend='opencl' was requested" in out.stdout


def test_status_names_the_device(opencl):
    status = convflow.available_backends()["opencl"]
    assert status.available and status.device_type == "opencl"
    assert status.devices[0].startswith("opencl:0 ")
    assert opencl.device_infos()[0].style in status.details["solver style"]


# Tensors and pyopencl arrays -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_tensor_round_trip(opencl, dtype):
    import pyopencl.array as cl_array

    x = np.arange(24, dtype=dtype).reshape(2, 3, 4)
    for spec in ("opencl", "opencl:0", convflow.Device("opencl", 0)):
        t = convflow.tensor(x, device=spec)
        assert t.device == convflow.Device("opencl", 0)
        assert isinstance(t.data, cl_array.Array) and t.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(t.numpy(), x)
        np.testing.assert_array_equal(np.asarray(t.to("cpu")), x)
    copy = convflow.tensor(t)  # a device copy, not a view
    assert copy.data.base_data is not t.data.base_data
    np.testing.assert_array_equal(copy.numpy(), x)


def test_a_missing_device_index_is_a_clear_error(opencl):
    count = len(opencl.device_infos())
    with pytest.raises(convflow.DeviceError, match=f"opencl:{count} does not exist"):
        convflow.tensor(np.ones(3), device=f"opencl:{count}")


def _user_arrays(x, w):
    """pyopencl arrays in a context and queue of the caller's own."""
    import pyopencl as cl
    import pyopencl.array as cl_array

    from convflow.backends import get_backend

    device = get_backend("opencl").state(convflow.Device("opencl", 0)).device
    context = cl.Context([device])
    queue = cl.CommandQueue(context)
    return context, queue, cl_array.to_device(queue, x), cl_array.to_device(queue, w)


def test_pyopencl_arrays_in_pyopencl_arrays_out(opencl):
    import pyopencl.array as cl_array

    x, w = _operands((2, 4, 9, 8), (6, 2, 3, 3))
    context, queue, dx, dw = _user_arrays(x, w)
    before = (dx.get().copy(), dw.get().copy())
    y = convflow.conv2d(dx, dw, padding=1, groups=2)
    assert isinstance(y, cl_array.Array) and y.context == context and y.queue == queue
    assert y.base_data is not dx.base_data and y.base_data is not dw.base_data
    assert_close(y.get(), _conv_reference(x, w, padding=1, groups=2))
    np.testing.assert_array_equal(dx.get(), before[0])
    np.testing.assert_array_equal(dw.get(), before[1])

    gi, gw, gb = convflow.conv_backward(y, dx, dw, padding=1, groups=2)
    assert all(isinstance(g, cl_array.Array) and g.context == context for g in (gi, gw, gb))
    expected = reference.conv_backward(y.get(), x, w, (1, 1), ((1, 1), (1, 1)), (1, 1), 2)
    for got, want in zip((gi, gw, gb), expected):
        assert_close(got.get(), want)


def test_noncontiguous_and_offset_pyopencl_views(opencl):
    x, w = _operands((2, 6, 10, 9), (4, 3, 3, 3))
    _, _, dx, dw = _user_arrays(x, w)
    view = dx[:, 1:4]            # an offset into the buffer, not C-contiguous
    assert not view.flags.c_contiguous and view.offset > 0
    y = convflow.conv2d(view, dw, padding=1)
    assert_close(y.get(), _conv_reference(x[:, 1:4], w, padding=1))
    assert_close(convflow.tensor(view).numpy(), x[:, 1:4].astype(np.float64))
    half = convflow.tensor(x.astype(np.float16), device="opencl")
    sliced = convflow.Tensor(half.data[:, 1:4], half.device)
    y16 = convflow.conv2d(sliced, convflow.tensor(w.astype(np.float16), device="opencl"),
                          padding=1)
    assert y16.dtype == np.float16
    assert_close(y16.numpy(), _conv_reference(x[:, 1:4].astype(np.float16), w.astype(np.float16),
                                              padding=1), "float16")


def test_device_data_stays_on_the_device(opencl, monkeypatch):
    x, w = _operands((2, 4, 8, 8), (8, 4, 3, 3))
    tx, tw = convflow.tensor(x, device="opencl"), convflow.tensor(w, device="opencl")
    tb = convflow.tensor(np.ones(8, np.float32), device="opencl")
    moved = []
    monkeypatch.setattr(type(opencl), "download", lambda self, t: moved.append("down"))
    monkeypatch.setattr(type(opencl), "upload", lambda self, h, d: moved.append("up"))
    y = convflow.conv2d(tx, tw, tb, padding=1)
    y2 = convflow.conv_transpose2d(y, tw, stride=2)
    grads = convflow.conv_backward(y, tx, tw, padding=1)
    assert moved == []
    assert isinstance(y, convflow.Tensor) and y.device.type == "opencl"
    assert all(g.device.type == "opencl" for g in (y2, *grads))
    monkeypatch.undo()
    assert_close(y.numpy(), _conv_reference(x, w, np.ones(8), padding=1))


def test_numpy_inputs_forced_onto_opencl_come_back_as_numpy(opencl):
    x, w = _operands((1, 3, 7, 7), (5, 3, 3, 3))
    expected = _conv_reference(x, w, padding=1)
    y = convflow.conv2d(x, w, padding=1, backend="opencl")
    assert type(y) is np.ndarray
    assert_close(y, expected)
    with config.override(CONVFLOW_BACKEND="opencl"):
        decision = convflow.explain(x, w, padding=1)
        assert decision.backend == "opencl"
        assert_close(convflow.conv2d(x, w, padding=1), expected)


def test_concurrent_calls_from_threads(opencl):
    cases = [_operands((2, c, 12, 12), (c + 2, c, 3, 3), seed=c) for c in range(1, 9)]

    def run(case):
        x, w = case
        return convflow.conv2d(x, w, padding=1, backend="opencl"), _conv_reference(x, w, padding=1)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for got, want in pool.map(run, cases * 3):
            assert_close(got, want)


# dtypes --------------------------------------------------------------------------------------
def test_float16_is_computed_in_float32_and_returned_as_float16(opencl):
    x, w = _operands((2, 8, 9, 9), (8, 8, 3, 3), "float16")
    for algorithm in (None, "naive", "vec_im2col_gemm", "winograd"):
        y = convflow.conv2d(x, w, padding=1, backend="opencl", algorithm=algorithm)
        assert y.dtype == np.float16
        assert_close(y, _conv_reference(x, w, padding=1), "float16")
    note = str(convflow.explain(x, w, padding=1, backend="opencl"))
    assert "float16 is computed with float32 accumulation" in note


def test_float64_on_a_device_without_fp64_is_a_clear_error(opencl, monkeypatch):
    infos = opencl.device_infos()
    no_fp64 = [dataclasses.replace(infos[0], fp64=False), *infos[1:]]
    monkeypatch.setattr(type(opencl), "device_infos", lambda self: no_fp64)
    x, w = _operands((1, 2, 5, 5), (3, 2, 3, 3), "float64")
    with pytest.raises(convflow.BackendUnavailableError, match="does not support float64"):
        convflow.conv2d(x, w, backend="opencl")
    y = convflow.conv2d(x.astype(np.float32), w.astype(np.float32), backend="opencl")
    assert_close(y, _conv_reference(x, w))


# Selection -----------------------------------------------------------------------------------
FORWARD_SOLVERS = {"naive", "depthwise", "winograd", "vec_winograd", "gemm_1x1", "vec_gemm_1x1",
                   "tiled_direct", "im2col_gemm", "vec_im2col_gemm", "fft"}


def test_explain_lists_every_solver_with_a_reason(opencl, monkeypatch):
    # A problem only the naive solver takes by rule: the trace then shows every rule.
    decision = _rule_choice(opencl, monkeypatch, "cpu", (1, 2, 9), (3, 2, 2))
    assert decision.algorithm == "naive"
    assert {o.rule for o in decision.algorithm_rules} == FORWARD_SOLVERS
    text = str(decision)
    for name in FORWARD_SOLVERS:
        assert f". {name} " in text
    assert "GPU-style solver, not chosen on a CPU device (force it with algorithm=" in text
    wgrad = _rule_choice(opencl, monkeypatch, "cpu", (1, 2, 9), (3, 2, 2),
                         direction="backward_weight")
    assert "direct_wrw" in {o.rule for o in wgrad.algorithm_rules}
    assert {r.name for r in opencl.algorithm_rules()} == FORWARD_SOLVERS | {"direct_wrw"}


def _rule_choice(opencl, monkeypatch, style, x_shape, w_shape, **kwargs):
    infos = opencl.device_infos()
    kind = "gpu" if style == "gpu" else "cpu"
    fake = [dataclasses.replace(infos[0], type=kind), *infos[1:]]
    monkeypatch.setattr(type(opencl), "device_infos", lambda self: fake)
    x = np.broadcast_to(np.float32(0), x_shape)
    w = np.broadcast_to(np.float32(0), w_shape)
    return convflow.explain(x, w, backend="opencl", **kwargs)


@pytest.mark.parametrize("x_shape, w_shape, kwargs, cpu, gpu", [
    ((1, 64, 56, 56), (64, 64, 3, 3), {"padding": 1}, "vec_winograd", "winograd"),
    ((1, 256, 14, 14), (1024, 256, 1, 1), {}, "vec_gemm_1x1", "gemm_1x1"),
    ((1, 128, 56, 56), (128, 128, 3, 3), {"stride": 2, "padding": 1}, "vec_im2col_gemm",
     "im2col_gemm"),
    ((1, 3, 224, 224), (16, 3, 7, 7), {"stride": 2, "padding": 3}, "vec_im2col_gemm",
     "tiled_direct"),
    ((1, 32, 28, 28), (32, 1, 3, 3), {"padding": 1, "groups": 32}, "depthwise", "depthwise"),
    ((1, 2, 9, 9), (2, 2, 3, 3), {"padding": 1}, "naive", "tiled_direct"),
    ((1, 2, 9), (3, 2, 2), {}, "naive", "tiled_direct"),
])
def test_rules_choose_by_device_type(opencl, monkeypatch, x_shape, w_shape, kwargs, cpu, gpu):
    assert _rule_choice(opencl, monkeypatch, "cpu", x_shape, w_shape, **kwargs).algorithm == cpu
    decision = _rule_choice(opencl, monkeypatch, "gpu", x_shape, w_shape, **kwargs)
    assert decision.algorithm == gpu
    if gpu != cpu:
        cpu_rule = [o for o in decision.algorithm_rules if o.rule == cpu]
        assert not cpu_rule or "not chosen on a non-CPU device" in cpu_rule[0].detail


def test_weight_gradient_rules(opencl, monkeypatch):
    for style, expected in (("cpu", "naive"), ("gpu", "direct_wrw")):
        decision = _rule_choice(opencl, monkeypatch, style, (2, 2, 9, 9), (3, 2, 3, 3),
                                padding=1, direction="backward_weight")
        assert decision.algorithm == expected
    decision = _rule_choice(opencl, monkeypatch, "cpu", (2, 64, 28, 28), (64, 64, 3, 3),
                            padding=1, direction="backward_weight")
    assert decision.algorithm == "vec_im2col_gemm"


def test_solvers_can_be_disabled(opencl):
    x = np.broadcast_to(np.float32(0), (1, 64, 56, 56))
    w = np.broadcast_to(np.float32(0), (64, 64, 3, 3))
    with config.override(CONVFLOW_DISABLE_ALGOS="vec_winograd,winograd"):
        decision = convflow.explain(x, w, padding=1, backend="opencl")
        assert decision.algorithm not in ("vec_winograd", "winograd")
        assert "disabled by CONVFLOW_DISABLE_ALGOS" in str(decision)
        with pytest.raises(convflow.ParameterError, match="disabled by CONVFLOW_DISABLE_ALGOS"):
            convflow.explain(x, w, padding=1, backend="opencl", algorithm="winograd")
    with config.override(CONVFLOW_DISABLE_ALGOS="winogard"), \
            pytest.raises(convflow.ParameterError, match="did you mean 'winograd'"):
        convflow.explain(x, w, padding=1, backend="opencl")


# Builds and device limits --------------------------------------------------------------------
def test_a_build_error_carries_the_build_log(state):
    with pytest.raises(convflow.KernelBuildError) as info:
        state.build("__kernel void broken(__global float* y) { y[0] = undefined_name; }", "",
                    "broken.cl")
    message = str(info.value)
    assert "broken.cl" in message and "undefined_name" in message
    assert state.info.name in message
    assert isinstance(info.value, RuntimeError) and info.value.__cause__ is not None


def test_a_kernel_built_without_its_constants_does_not_compile(state):
    """The .cl files take their shape constants only from the host's table: without one, the
    build stops at its #error instead of compiling another shape than the host launches."""
    from convflow.backends.opencl.solvers import PROGRAMS, kernel_constants

    defines = kernel_constants(np.dtype(np.float32))
    del defines["DW_OPI"]
    with pytest.raises(convflow.KernelBuildError, match="DW_OPI is a -D value from the host"):
        state.program(PROGRAMS["depthwise"], defines)


@pytest.fixture
def broken_source(state, monkeypatch):
    """Make one kernel source fail to compile (until the test ends)."""
    original = runtime.load_source

    def install(name: str) -> None:
        def load(source: str) -> str:
            text = original(source)
            return text + "\n#error deliberately broken for a test\n" if source == name else text

        monkeypatch.setattr(runtime, "load_source", load)
        state.forget_programs()

    yield install
    monkeypatch.undo()
    state.forget_programs()


def test_a_solver_that_fails_to_build_falls_back_with_a_warning(state, broken_source):
    broken_source("opencl/direct_tiled.cl")
    x, w = _operands((2, 3, 9, 9), (4, 3, 3, 3))
    with pytest.warns(convflow.SolverFallbackWarning, match="'tiled_direct' failed to build") as rec:
        y = convflow.conv2d(x, w, padding=1, backend="opencl", algorithm="tiled_direct")
    assert "deliberately broken" in str(rec[0].message)
    assert_close(y, _conv_reference(x, w, padding=1))


def test_a_build_error_reaches_the_user_when_no_solver_is_left(state, broken_source):
    broken_source("opencl/naive.cl")
    x, w = _operands((1, 2, 5, 5), (3, 2, 3, 3))
    with pytest.raises(convflow.KernelBuildError, match="deliberately broken"):
        convflow.conv2d(x, w, backend="opencl", algorithm="naive")


def test_local_memory_overflow_falls_back(state):
    # tiled_direct stages 4 channels x (7*d + 3) x (31 + 2*d + 1) floats of input in local
    # memory: pick the dilation d that overflows this device's local memory.
    local_floats = state.info.local_mem_size // 4
    d = 2
    while 4 * (7 + 2 * d + 1) * (31 + 2 * d + 1) <= local_floats:
        d *= 2
    size = 2 * d + 3
    x, w = _operands((1, 1, size, size), (2, 1, 3, 3))
    with pytest.warns(convflow.SolverFallbackWarning, match="bytes of local memory"):
        y = convflow.conv2d(x, w, dilation=d, backend="opencl", algorithm="tiled_direct")
    assert_close(y, _conv_reference(x, w, dilation=d))


def test_work_group_limits_are_respected(opencl, state, monkeypatch):
    import pyopencl as cl

    launched = []
    original = cl.enqueue_nd_range_kernel

    def spy(queue, kernel, global_size, local_size, *args, **kwargs):
        launched.append((kernel.function_name, int(np.prod(local_size))))
        return original(queue, kernel, global_size, local_size, *args, **kwargs)

    monkeypatch.setattr(cl, "enqueue_nd_range_kernel", spy)
    monkeypatch.setattr(state, "info", dataclasses.replace(state.info, max_work_group_size=64))
    state.forget_programs()
    x, w = _operands((2, 16, 10, 10), (16, 16, 3, 3))
    expected = _conv_reference(x, w, padding=1)
    for algorithm in ("tiled_direct", "im2col_gemm", "winograd", "vec_im2col_gemm", "naive"):
        assert_close(convflow.conv2d(x, w, padding=1, backend="opencl", algorithm=algorithm),
                     expected)
    assert launched and max(size for _, size in launched) <= 64
    assert {"gemm_tiled", "direct_tiled_fwd"} <= {name for name, _ in launched}

    # Below the tiled GEMM's smallest work-group (64 items) it falls back, with a warning,
    # and every other kernel shrinks its work-groups to the limit.
    monkeypatch.setattr(state, "info", dataclasses.replace(state.info, max_work_group_size=32))
    state.forget_programs()
    launched.clear()
    with pytest.warns(convflow.SolverFallbackWarning, match="work-groups of at least 64"):
        y = convflow.conv2d(x, w, padding=1, backend="opencl", algorithm="im2col_gemm")
    assert_close(y, expected)
    grads = convflow.conv_backward(y, x, w, padding=1, backend="opencl", algorithm="naive")
    for got, want in zip(grads, reference.conv_backward(y, x, w, (1, 1), ((1, 1), (1, 1)),
                                                         (1, 1), 1)):
        assert_close(got, want)
    assert max(size for _, size in launched) <= 32
    assert "bias_grad" in {name for name, _ in launched}
    monkeypatch.undo()
    state.forget_programs()


def test_convflow_info_lists_platforms_devices_and_limits(opencl, capsys):
    from convflow.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    info = opencl.device_infos()[0]
    assert "opencl platforms and devices:" in out
    assert info.platform in out and info.name in out
    for limit in ("max work-group size", "max work-item sizes", "local memory",
                  "global memory", "max allocation", "float64", "compute units"):
        assert limit in out
    assert "-> convflow device opencl:0" in out
    assert "CONVFLOW_OPENCL_DEVICE" in out


def test_kernel_sources_are_found_and_shipped_in_the_wheel(tmp_path):
    from convflow.backends.opencl.solvers import PROGRAMS
    from convflow.kernels import list_sources

    needed = {name for sources in PROGRAMS.values() for name in sources}
    needed |= {"opencl/layout.cl", "opencl/convert.cl"}
    assert needed <= set(list_sources())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d",
                    str(tmp_path)], cwd=root, check=True, capture_output=True)
    import zipfile

    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"convflow/_kernels/{n}" for n in needed} <= names


def test_warnings_are_not_raised_on_the_normal_path(opencl):
    x, w = _operands((1, 8, 12, 12), (8, 8, 3, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for algorithm in [r.name for r in opencl.algorithm_rules()
                          if convflow.Direction.FORWARD in r.directions and r.name != "depthwise"
                          and r.name not in ("gemm_1x1", "vec_gemm_1x1")]:
            convflow.conv2d(x, w, padding=1, backend="opencl", algorithm=algorithm)


def test_buffers_over_the_maximum_allocation(state, monkeypatch):
    monkeypatch.setattr(state, "info", dataclasses.replace(state.info, max_mem_alloc_size=32768))
    # A tensor no solver can avoid allocating: a clear MemoryError.
    with pytest.raises(convflow.WorkspaceTooLargeError, match="maximum allocation of 32768"):
        convflow.tensor(np.ones(10000, np.float32), device="opencl")
    # Solver scratch: Winograd's transformed input (64 KiB) does not fit, im2col tiles do.
    x, w = _operands((1, 16, 16, 16), (8, 16, 3, 3))
    with pytest.warns(convflow.SolverFallbackWarning, match="maximum allocation"):
        y = convflow.conv2d(x, w, padding=1, backend="opencl", algorithm="vec_winograd")
    assert_close(y, _conv_reference(x, w, padding=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = convflow.conv2d(x, w, padding=1, backend="opencl", algorithm="vec_im2col_gemm")
    assert_close(y, _conv_reference(x, w, padding=1))


def _conv_in_forked_child(queue):
    x, w = np.ones((1, 2, 6, 6)), np.ones((3, 2, 3, 3))
    try:
        convflow.conv2d(x, w, backend="opencl")
        queue.put("opencl ran")
    except convflow.BackendUnavailableError as exc:
        queue.put(f"refused: {exc}")


def test_a_forked_child_gets_a_clear_error_not_a_hang(opencl):
    import multiprocessing

    convflow.conv1d(np.ones((1, 1, 4)), np.ones((1, 1, 2)), backend="opencl")
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_conv_in_forked_child, args=(queue,))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung")
    message = queue.get(timeout=5)
    assert message.startswith("refused:") and "do not survive fork()" in message
    assert child.exitcode == 0
