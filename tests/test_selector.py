"""The selector's rules, the explain() trace, and environment forcing (in subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import convflow
from convflow import BackendUnavailableError, ConfigError, Device, ParameterError, Tensor, config
from convflow import backends as registry
from convflow.backends.base import BackendStatus
from convflow.backends.numba import NumbaBackend

X = np.zeros((2, 8, 10, 10), dtype=np.float32)
W = np.zeros((16, 8, 3, 3), dtype=np.float32)


class FakeGPUBackend(NumbaBackend):
    """A backend that owns 'cuda' memory but computes on the host, recording its calls."""

    name = "fakegpu"
    device_type = "cuda"

    def __init__(self, available=True, refuse=None):
        super().__init__()
        self.calls: list[str] = []
        self._available = available
        self._refuse = refuse

    def status(self):
        if not self._available:
            return BackendStatus(self.name, False, "no CUDA device (pretend)", "cuda")
        return BackendStatus(self.name, True, "pretend GPU", "cuda", ("cuda:0",))

    def unsupported_reason(self, problem, device):
        return self._refuse

    def upload(self, host, device):
        return Tensor(np.array(host, copy=True), device)

    def download(self, t):
        return np.array(t.data, copy=True)

    def forward(self, x, w, b, problem, algorithm):
        self.calls.append(f"forward:{algorithm}")
        out = super().forward(Tensor(x.data), Tensor(w.data), b and Tensor(b.data), problem, algorithm)
        return Tensor(out.data, x.device)


@pytest.fixture
def fake_gpu():
    """Registers a fake backend owning 'cuda' memory through the public registry call; the
    real owner (cupy) takes the device back when it is removed."""
    installed: list[str] = []

    def install(**kwargs):
        fake = FakeGPUBackend(**kwargs)
        registry.register_backend(registry.BackendEntry("fakegpu", lambda: fake, "cuda",
                                                        dlpack_device_codes=(2,)))
        installed.append("fakegpu")
        return fake

    yield install
    for name in installed:
        registry.unregister_backend(name)
    assert registry.DEVICE_BACKENDS["cuda"] == "cupy"


def rule_table(decision):
    return [(o.rule, o.matched) for o in decision.backend_rules]


def test_default_is_the_cpu_fallback():
    decision = convflow.explain(X, W, padding=1)
    assert (decision.backend, decision.source) == ("numba", "heuristic")
    assert rule_table(decision) == [("backend argument", False), ("CONVFLOW_BACKEND", False),
                                    ("data device", False), ("cpu fallback", True)]
    assert decision.device == Device("cpu")


def test_backend_argument_wins():
    decision = convflow.explain(X, W, backend="numba")
    assert rule_table(decision)[0] == ("backend argument", True)
    assert len(decision.backend_rules) == 1


def test_environment_variable_is_the_second_rule(monkeypatch):
    monkeypatch.setenv("CONVFLOW_BACKEND", "numba")
    decision = convflow.explain(X, W)
    assert rule_table(decision) == [("backend argument", False), ("CONVFLOW_BACKEND", True)]
    with config.override(CONVFLOW_BACKEND=""):
        assert rule_table(convflow.explain(X, W))[-1] == ("cpu fallback", True)


def test_environment_list_takes_the_first_usable(fake_gpu, monkeypatch):
    fake_gpu(available=False)
    monkeypatch.setenv("CONVFLOW_BACKEND", "fakegpu,numba")
    decision = convflow.explain(X, W)
    assert decision.backend == "numba"
    assert "skipped: fakegpu is unavailable: no CUDA device (pretend)" in decision.backend_rules[1].detail


def test_environment_forcing_never_falls_back(fake_gpu, monkeypatch):
    fake_gpu(available=False)
    monkeypatch.setenv("CONVFLOW_BACKEND", "fakegpu")
    with pytest.raises(BackendUnavailableError,
                       match=r"environment variable CONVFLOW_BACKEND='fakegpu' forces \['fakegpu'\], but none "
                             r"can run: fakegpu is unavailable: no CUDA device \(pretend\); change or unset"):
        convflow.conv2d(X, W)


def test_unknown_environment_backend_names_the_variable(monkeypatch):
    monkeypatch.setenv("CONVFLOW_BACKEND", "numbaa")
    with pytest.raises(ConfigError, match=r"environment variable CONVFLOW_BACKEND='numbaa': unknown "
                                             r"backend 'numbaa' \(did you mean 'numba'\?\); valid backends: numba"):
        convflow.conv2d(X, W)


def test_data_on_a_device_is_computed_there(fake_gpu):
    fake = fake_gpu()
    x = Tensor(np.ones((1, 8, 6, 6), np.float32), Device("cuda", 0))
    w = np.ones((4, 8, 1, 1), np.float32)  # host weight: goes along with the data
    y = convflow.conv2d(x, w)
    assert fake.calls == ["forward:gemm_1x1"]
    assert isinstance(y, Tensor) and y.device == Device("cuda", 0)
    np.testing.assert_allclose(y.data, 8.0)
    decision = convflow.explain(x, w)
    assert rule_table(decision)[2] == ("data device", True)
    assert "data lives on cuda:0, computed there by fakegpu" in str(decision)


def test_device_data_with_an_unavailable_backend_is_an_error(fake_gpu):
    fake_gpu(available=False)
    x = Tensor(np.ones((1, 8, 6, 6), np.float32), Device("cuda", 0))
    with pytest.raises(BackendUnavailableError, match=r"the data lives on cuda:0, but fakegpu is unavailable"):
        convflow.conv2d(x, np.ones((4, 8, 1, 1), np.float32))


def test_forced_backend_that_refuses_the_problem_is_an_error(fake_gpu):
    fake = fake_gpu(refuse="float64 is not supported (pretend)")
    with pytest.raises(BackendUnavailableError, match=r"backend='fakegpu' was requested, but fakegpu cannot run "
                                                      r"this problem: float64 is not supported \(pretend\)"):
        convflow.conv2d(X.astype(np.float64), W.astype(np.float64), backend="fakegpu")
    assert fake.calls == []


def test_forcing_a_device_backend_copies_host_data_in_and_back(fake_gpu):
    fake = fake_gpu()
    y = convflow.conv2d(np.ones((1, 8, 6, 6), np.float32), np.ones((4, 8, 1, 1), np.float32),
                        backend="fakegpu")
    assert fake.calls == ["forward:gemm_1x1"]
    assert isinstance(y, np.ndarray)
    decision = convflow.explain(np.ones((1, 8, 6, 6), np.float32), np.ones((4, 8, 1, 1), np.float32),
                                backend="fakegpu")
    assert decision.device == Device("cuda", 0)
    assert "operands are copied from cpu to cuda:0 and the result back" in decision.notes


def test_mixed_devices_are_an_error(monkeypatch, fake_gpu):
    fake_gpu()
    a = Tensor(np.ones((1, 8, 6, 6), np.float32), Device("cuda", 0))
    b = Tensor(np.ones((4, 8, 1, 1), np.float32), Device("cuda", 1))
    with pytest.raises(convflow.DeviceError, match=r"arrays live on different devices \(input on cuda:0, "
                                                   r"weight on cuda:1\)"):
        convflow.conv2d(a, b)


@pytest.mark.parametrize("x_shape, w_shape, kwargs, algorithm", [
    ((2, 8, 10, 10), (16, 1, 3, 3), dict(groups=8, padding=1), "depthwise"),
    ((2, 8, 10, 10), (16, 8, 1, 1), dict(), "gemm_1x1"),
    ((2, 8, 10, 10), (16, 8, 1, 1), dict(stride=2), "gemm_1x1"),
    ((2, 32, 10, 10), (16, 32, 1, 1), dict(padding=1), "packed_direct"),
    ((2, 8, 10, 10), (16, 8, 3, 3), dict(padding=1), "packed_direct"),
    ((2, 3, 10, 10), (64, 3, 7, 7), dict(stride=2, padding=3), "packed_direct"),
    ((1, 512, 7, 7), (512, 512, 3, 3), dict(padding=1), "im2col_gemm"),
    ((1, 256, 32, 32), (256, 256, 3, 3), dict(padding=1), "im2col_gemm"),  # 64 tiles
    ((1, 128, 14, 14), (32, 128, 3, 3), dict(padding=1), "packed_direct"),
    ((1, 256, 14, 14), (256, 256, 3, 3), dict(stride=2, padding=1), "im2col_gemm"),
    ((8, 192, 7, 7), (320, 192, 3, 3), dict(padding=1), "im2col_gemm"),    # small map
    ((8, 128, 56, 56), (128, 128, 3, 3), dict(stride=2, padding=1), "im2col_gemm"),  # strided
    ((8, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3), "packed_direct"),  # 147 products
    ((8, 128, 28, 28), (96, 128, 3, 3), dict(stride=2, padding=1), "im2col_gemm"),  # 1152 products
    ((8, 32, 6, 6), (128, 32, 5, 5), dict(padding=2), "im2col_gemm"),     # 128 out, 6x6 map
    ((8, 16, 13, 13), (48, 16, 5, 5), dict(padding=2), "packed_direct"),  # 48 out on 13x13
    ((1, 96, 16, 16), (96, 96, 3, 3), dict(padding=1), "im2col_gemm"),    # 96 out on 16x16
    ((1, 96, 17, 17), (96, 96, 3, 3), dict(padding=1), "packed_direct"),  # 17x17: 289 positions
    ((1, 64, 224, 224), (64, 64, 3, 3), dict(padding=1), "packed_gemm"),
    ((8, 64, 28, 28), (96, 64, 3, 3), dict(padding=1), "winograd"),   # 64 -> 96, 392 tiles
    ((8, 64, 28, 28), (64, 64, 3, 3), dict(padding=1), "packed_direct"),   # 64 -> 64
    ((1, 64, 28, 28), (64, 64, 3, 3), dict(padding=1), "packed_direct"),   # 49 tiles
    ((8, 96, 28, 28), (96, 96, 3, 3), dict(padding=1), "winograd"),        # 392 tiles
    ((8, 128, 14, 14), (128, 128, 3, 3), dict(padding=1), "winograd"),  # 128 tiles, 14x14
    ((8, 64, 13, 13), (256, 64, 3, 3), dict(padding=1), "im2col_gemm"),  # 64 channels, 66% fill
    ((8, 128, 13, 13), (256, 128, 3, 3), dict(padding=1), "im2col_gemm"),  # 66% fill < 70%
    ((2, 256, 32, 32), (256, 256, 3, 3), dict(padding=1), "winograd"),
    ((1, 256, 56, 56), (256, 256, 3, 3), dict(padding=1), "winograd"),
    ((2, 1, 10, 10), (2, 1, 3, 3), dict(), "direct"),
    ((2, 4, 10, 10), (4, 2, 3, 3), dict(groups=2), "direct"),
])
def test_algorithm_rules(x_shape, w_shape, kwargs, algorithm):
    decision = convflow.explain(np.zeros(x_shape, np.float32), np.zeros(w_shape, np.float32), **kwargs)
    assert decision.algorithm == algorithm
    matched = [o.rule for o in decision.algorithm_rules if o.matched]
    assert matched == [algorithm]
    assert decision.algorithm_rules[-1].rule == algorithm


@pytest.mark.parametrize("x_shape, w_shape, padding, direction, algorithm", [
    ((8, 128, 56, 56), (32, 128, 3, 3), 1, "backward_data", "packed_direct"),   # flipped forward
    ((8, 32, 13, 13), (128, 32, 5, 5), 2, "backward_data", "im2col_gemm"),      # 3200 products
    ((2, 64, 8, 8), (64, 64, 3, 3), 1, "backward_data", "packed_direct"),
    ((1, 96, 14, 14), (128, 96, 3, 3), 1, "backward_data", "im2col_gemm"),     # 1152 products
    ((8, 128, 14, 14), (128, 128, 3, 3), 1, "backward_data", "winograd"),       # 128 tiles
    ((8, 256, 14, 14), (256, 256, 3, 3), 1, "backward_data", "winograd"),       # 256 channels
    ((8, 64, 28, 28), (64, 64, 3, 3), 1, "backward_data", "winograd"),          # 392 tiles
    ((8, 64, 28, 28), (48, 64, 3, 3), 1, "backward_data", "packed_direct"),     # 48 channels
    ((8, 16, 13, 13), (48, 16, 5, 5), 2, "backward_weight", "im2col_gemm"),
    ((8, 64, 56, 56), (64, 64, 3, 3), 1, "backward_weight", "im2col_gemm"),
    ((8, 32, 6, 6), (128, 32, 5, 5), 2, "backward_weight", "im2col_gemm"),      # 6x6 map
    ((8, 192, 7, 7), (320, 192, 3, 3), 1, "backward_weight", "im2col_gemm"),    # 1728 products
    ((2, 3, 64, 64), (16, 3, 7, 7), 3, "backward_weight", "im2col_gemm"),       # 3 channels
])
def test_gradient_rules(x_shape, w_shape, padding, direction, algorithm):
    decision = convflow.explain(np.zeros(x_shape, np.float32), np.zeros(w_shape, np.float32),
                                padding=padding, direction=direction)
    assert decision.algorithm == algorithm


def test_forced_algorithm():
    decision = convflow.explain(X, W, padding=1, algorithm="direct")
    assert (decision.algorithm, decision.source) == ("direct", "forced")
    assert "forced by algorithm='direct'" in str(decision)


def test_explain_trace_shows_everything():
    text = str(convflow.explain(X.astype(np.float16), W.astype(np.float16), None, 2, "same",
                                padding_mode="reflect"))
    for expected in ("convflow decision for conv2d (forward pass)",
                     "params:  stride=(2, 2), padding=((0, 1), (0, 1)) (from 'same')",
                     "padding_mode='reflect'", "backends:", "numba    available",
                     "backend rules (first match wins):", "1. backend argument", "4. cpu fallback",
                     "algorithm rules of numba (first match wins; candidates: fft, "
                     "packed_gemm, packed_direct, im2col_gemm, direct, numpy_taps):", "1. fft", "2. depthwise",
                     "note: the input is padded with padding_mode='reflect'",
                     "note: float16 is computed with float32 accumulation",
                     "=> backend=numba algorithm=packed_direct on cpu [heuristic]"):
        assert expected in text, expected


def test_explain_transposed_and_backward_passes():
    transposed = convflow.explain(X, W.transpose(1, 0, 2, 3), transposed=True, stride=2,
                                  output_padding=1)
    assert transposed.problem.direction == convflow.Direction.BACKWARD_DATA
    assert transposed.problem.x_shape == (2, 16, 22, 22) and transposed.problem.y_shape == X.shape
    assert "computed as the backward-data pass" in str(transposed)
    weight_pass = convflow.explain(X, W, padding=1, direction="backward_weight")
    assert weight_pass.problem.direction == convflow.Direction.BACKWARD_WEIGHT
    with pytest.raises(ParameterError, match="direction must be one of forward, backward_data, backward_weight"):
        convflow.explain(X, W, direction="sideways")


def test_explain_costs_nothing_for_huge_views():
    x = np.broadcast_to(np.float32(0), (64, 256, 112, 112))
    w = np.broadcast_to(np.float32(0), (256, 256, 3, 3))
    decision = convflow.explain(x, w, padding=1)
    assert decision.problem.flops == 2 * 64 * 256 * 256 * 9 * 112 * 112


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environment, timeout=300)


SNIPPET = """
import numpy as np, convflow
d = convflow.explain(np.zeros((1, 4, 8, 8), np.float32), np.zeros((4, 4, 3, 3), np.float32))
print(d.backend, [o.rule for o in d.backend_rules if o.matched])
"""


def test_environment_forcing_in_a_subprocess():
    result = run_python(SNIPPET, CONVFLOW_BACKEND="numba")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "numba ['CONVFLOW_BACKEND']"


def test_unknown_environment_backend_in_a_subprocess():
    result = run_python(SNIPPET, CONVFLOW_BACKEND="gpu")
    assert result.returncode != 0
    assert "ConfigError: environment variable CONVFLOW_BACKEND='gpu': unknown backend 'gpu'" in result.stderr
    assert "valid backends: numba" in result.stderr


def test_debug_logging_shows_each_decision():
    code = ("import numpy as np, convflow\n"
            "convflow.conv2d(np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3)))")
    result = run_python(code, CONVFLOW_LOG="debug")
    assert result.returncode == 0, result.stderr
    assert "convflow DEBUG: convflow decision for conv2d (forward pass)" in result.stderr
    assert "=> backend=numba" in result.stderr


def test_invalid_log_level_warns_at_import():
    result = run_python("import convflow", CONVFLOW_LOG="loud")
    assert result.returncode == 0
    assert "environment variable CONVFLOW_LOG='loud' is invalid" in result.stderr


def test_invalid_numeric_variable_is_an_error(monkeypatch):
    monkeypatch.setenv("CONVFLOW_WORKSPACE_MB", "lots")
    with pytest.raises(ConfigError, match=r"environment variable CONVFLOW_WORKSPACE_MB='lots' is invalid: "
                                          r"expected an integer >= 1"):
        convflow.conv2d(X, W)


def test_registering_a_backend_is_public_and_reversible():
    assert "fake" not in registry.BACKEND_NAMES
    fake = FakeGPUBackend()
    registry.register_backend(registry.BackendEntry("fake", lambda: fake, "cuda"))
    try:
        assert registry.BACKEND_NAMES[-1] == "fake"
        assert registry.DEVICE_BACKENDS["cuda"] == "fake"
        assert registry.get_backend("fake") is fake
        assert "fake" in convflow.available_backends()
    finally:
        registry.unregister_backend("fake")
    assert "fake" not in registry.BACKEND_NAMES and registry.DEVICE_BACKENDS["cuda"] == "cupy"
    with pytest.raises(ParameterError, match="register_backend: name must be lower-case"):
        registry.register_backend(registry.BackendEntry("Bad Name", lambda: fake, "cuda"))


@pytest.mark.parametrize("variable, match", [
    ("CONVFLOW_BACKEND", r"environment variable CONVFLOW_BACKEND='bogus': unknown backend 'bogus'"),
    ("CONVFLOW_ALGO", r"CONVFLOW_ALGO='bogus' is not an algorithm of the numba backend"),
    ("CONVFLOW_DISABLE_ALGOS", r"CONVFLOW_DISABLE_ALGOS='bogus': unknown algorithm 'bogus'"),
])
def test_bad_names_in_variables_are_config_errors(monkeypatch, variable, match):
    monkeypatch.setenv(variable, "bogus")
    with pytest.raises(ConfigError, match=match) as info:
        convflow.conv2d(X, W)
    # Still what code written against earlier versions caught.
    assert isinstance(info.value, ParameterError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("alias, backend", [("cpu", "numba"), ("CPU", "numba"), (" cuda ", "cupy")])
def test_device_words_are_backend_aliases(alias, backend):
    assert registry.validate_backend_name(alias, "conv2d") == backend
    if backend == "numba":
        decision = convflow.explain(X, W, backend=alias)
        assert decision.backend == "numba"
        assert f"backend={alias!r} (= 'numba') given" in str(decision)


def test_cuda_alias_reaches_the_cupy_backend(fake_gpu, monkeypatch):
    fake_gpu()
    assert convflow.explain(X, W, backend="cuda").backend == "fakegpu"
    monkeypatch.setenv("CONVFLOW_BACKEND", "cuda")
    assert convflow.explain(X, W).backend == "fakegpu"


def test_an_alias_of_an_unavailable_backend_says_which_backend():
    if convflow.available_backends()["cupy"].available:
        pytest.skip("cupy is available here")
    with pytest.raises(BackendUnavailableError, match=r"conv2d: backend='cuda' \(= 'cupy'\) was "
                                                      r"requested, but cupy is unavailable"):
        convflow.conv2d(X, W, backend="cuda")


def test_gpu_is_ambiguous_and_both_choices_are_named():
    with pytest.raises(ParameterError, match=r"conv2d: unknown backend 'gpu'; 'gpu' names no single "
                                             r"backend: use 'cupy' for NVIDIA GPUs \(CUDA\) or 'opencl'.*"
                                             r"aliases: cpu \(= numba\), cuda \(= cupy\)"):
        convflow.conv2d(X, W, backend="gpu")
    with pytest.raises(ParameterError, match=r"^conv2d: unknown backend 'nvidia'; valid backends"):
        convflow.conv2d(X, W, backend="nvidia")


def test_forcing_an_algorithm_of_another_pass_lists_the_valid_ones():
    x = np.ones((1, 4, 8, 8), np.float32)
    w = np.ones((4, 4, 3, 3), np.float32)
    dy = np.ones((1, 4, 6, 6), np.float32)
    with pytest.raises(ParameterError, match=r"algorithm='packed_direct' is not an algorithm of the "
                                             r"numba backend for the backward_weight pass \(packed_direct "
                                             r"runs only the forward and backward_data passes\); valid for this problem: "
                                             r"fft, packed_gemm, im2col_gemm, direct, numpy_taps$"):
        convflow.conv_backward(dy, x, w, algorithm="packed_direct", output_mask=(False, True, False))
    with pytest.raises(ParameterError, match=r"algorithm='im2col' .* \(did you mean 'im2col_gemm'\?\)"):
        convflow.conv_backward(dy, x, w, algorithm="im2col", output_mask=(False, True, False))


def test_explain_of_a_transposed_convolution_names_the_callers_input():
    x = np.zeros((1, 16, 5, 5), np.float32)
    w = np.zeros((16, 8, 3, 3), np.float32)
    text = str(convflow.explain(x, w, transposed=True, stride=2))
    assert "problem: input[1, 16, 5, 5] weight[16, 8, 3, 3] output[1, 8, 11, 11] float32" in text
    assert ("computed as: the backward_data pass of the convolution it transposes, x[1, 8, 11, 11] "
            "(this call's output) -> y[1, 16, 5, 5] (this call's input)") in text
    assert "y[1, 16, 5, 5] w" not in text
