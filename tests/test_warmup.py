"""numba's background warm-up (CONVFLOW_NUMBA_WARMUP=background) and numpy_taps.

The suite runs with CONVFLOW_NUMBA_WARMUP=wait (conftest), so numpy_taps' own correctness
is covered by the forward, backward, transposed and IEEE tests, which run every algorithm
that can run a case. Here: what the default mode does in a new process (each test starts
one, since the warm-up state is the process's), and numpy_taps' blocking under a small
workspace budget.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import convflow

from conftest import assert_close
from reference import conv, conv_backward


def _run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "CONVFLOW_NUMBA_WARMUP": "background", **env}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args],
                            capture_output=True, text=True, env=environment, timeout=900)
    assert result.returncode == 0, result.stderr
    return result


PRELUDE = """
    import sys
    sys.path.insert(0, {tests!r})
    import numpy as np, convflow
    from conftest import assert_close
    from reference import conv, conv_backward
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 20, 20)).astype(np.float32)
    w = rng.standard_normal((12, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    expected = conv(x, w, b, padding=((1, 1), (1, 1)))
    def runs(**kw):
        return convflow.explain(x, w, b, padding=1, **kw).algorithm
"""
TESTS = os.path.dirname(__file__)


def test_first_calls_run_numpy_taps_until_the_kernels_are_compiled():
    script = PRELUDE.format(tests=TESTS) + """
    decision = convflow.explain(x, w, b, padding=1)
    assert decision.algorithm == "numpy_taps", decision
    note = [n for n in decision.notes if "not compiled in this process yet" in n]
    assert note and "packed_direct" in note[0] and "finish_warmup" in note[0], decision.notes
    assert "chosen: packed_direct" in decision.reason, decision.reason
    first = convflow.conv2d(x, w, b, padding=1)
    assert_close(first, expected, "float32")
    assert convflow.finish_warmup(timeout=600) is True
    assert runs() == "packed_direct"
    assert_close(convflow.conv2d(x, w, b, padding=1), expected, "float32")
    # A problem whose kernels are the same (same algorithm, path and dtype) needs no warm-up.
    x2 = rng.standard_normal((2, 8, 14, 14)).astype(np.float32)
    assert convflow.explain(x2, w, b, padding=1).algorithm == "packed_direct"
    print("ok")
    """
    assert _run(script).stdout.split() == ["ok"]


def test_a_first_call_imports_no_numba():
    """Planning (every rule, variant and workspace estimate) and numpy_taps run before numba
    is imported: a process's first result does not wait for numba's start-up."""
    script = PRELUDE.format(tests=TESTS) + """
    from convflow.backends.numba.warmup import WarmUp
    WarmUp.submit = lambda self, key, job: None      # what the calls themselves import
    layers = [((1, 16, 12, 12), (16, 16, 1, 1), {}),
              ((1, 16, 12, 12), (16, 1, 3, 3), dict(groups=16, padding=1)),
              ((2, 64, 28, 28), (64, 64, 3, 3), dict(padding=1)),
              ((2, 128, 16, 16), (128, 128, 3, 3), dict(padding=1)),
              ((1, 3, 64, 64), (16, 3, 7, 7), dict(padding=3, stride=2)),
              ((1, 4, 40, 40), (4, 4, 17, 17), dict(padding=8))]
    for xs, ws, kw in layers:
        lx, lw = rng.standard_normal(xs), rng.standard_normal(ws)
        lx, lw = lx.astype(np.float32), lw.astype(np.float32)
        assert convflow.explain(lx, lw, **kw).algorithm == "numpy_taps"
        s, p = kw.get("stride", 1), kw.get("padding", 0)
        reference = conv(lx, lw, None, (s, s), ((p, p), (p, p)), None, kw.get("groups", 1))
        assert_close(convflow.conv2d(lx, lw, **kw), reference, "float32")
    convflow.conv_backward(np.ones(expected.shape, np.float32), x, w, padding=1)
    print(sorted(m for m in ("numba", "llvmlite", "scipy") if m in sys.modules))
    """
    assert _run(script).stdout.split() == ["[]"]


def test_forced_deterministic_and_wait_calls_run_their_algorithm():
    script = PRELUDE.format(tests=TESTS) + """
    assert runs(algorithm="direct") == "direct"
    assert_close(convflow.conv2d(x, w, b, padding=1, algorithm="direct"), expected, "float32")
    with convflow.config.override(CONVFLOW_DETERMINISTIC=True):
        assert runs() == "packed_direct"
    with convflow.config.override(CONVFLOW_NUMBA_WARMUP="wait"):
        assert runs() == "packed_direct"
    assert runs() == "numpy_taps"
    print("ok")
    """
    assert _run(script).stdout.split() == ["ok"]


def test_long_calls_and_calls_after_cached_kernels_wait_for_their_kernels():
    """numpy_taps stands in only where it is quick: a call it would take long to run waits
    for its kernels, and once a warm-up found its kernels in the disk cache, the next
    problems load theirs in the caller's thread instead."""
    script = PRELUDE.format(tests=TESTS) + """
    big_x = np.ones((1, 128, 160, 160), np.float32)       # 7.5 GFLOP
    big_w = np.ones((128, 128, 3, 3), np.float32)
    assert convflow.explain(big_x, big_w, padding=1).algorithm != "numpy_taps"
    assert runs() == "numpy_taps"
    convflow.conv2d(x, w, b, padding=1)
    convflow.finish_warmup(timeout=600)
    dw_x = rng.standard_normal((1, 24, 20, 20)).astype(np.float32)
    dw_w = rng.standard_normal((24, 1, 5, 5)).astype(np.float32)
    print(sys.argv[1], convflow.explain(dw_x, dw_w, groups=24).algorithm)
    """
    _run(script, "first")   # leaves packed_direct's kernels in the disk cache, if not there yet
    assert _run(script, "second").stdout.split() == ["second", "depthwise"]


@pytest.mark.parametrize("attempt", range(3))
def test_a_caller_and_the_warm_up_start_numba_at_once(attempt):
    """A forced call right after a first call: both threads need numba at once (imports of
    numba's submodules from two threads could meet half-initialized modules)."""
    script = PRELUDE.format(tests=TESTS) + """
    convflow.conv2d(x, w, b, padding=1)                    # the warm-up thread starts numba
    for algorithm in ("direct", "im2col_gemm", "fft"):    # ... and this one, at once
        assert_close(convflow.conv2d(x, w, b, padding=1, algorithm=algorithm), expected,
                     "float32")
    print("ok")
    """
    assert _run(script).stdout.split() == ["ok"]


def test_gradients_run_numpy_taps_then_their_algorithms():
    script = PRELUDE.format(tests=TESTS) + """
    dy = rng.standard_normal(expected.shape).astype(np.float32)
    ref_dx, ref_dw, ref_db = conv_backward(dy, x, w, padding=((1, 1), (1, 1)))
    for attempt in ("warming", "ready"):
        dx, dw, db = convflow.conv_backward(dy, x, w, padding=1)
        assert_close(dx, ref_dx, "float32")
        assert_close(dw, ref_dw, "float32")
        assert_close(db, ref_db, "float32")
        convflow.finish_warmup(timeout=600)
    print("ok")
    """
    assert _run(script).stdout.split() == ["ok"]


def test_a_process_exits_once_its_warm_up_is_done():
    script = PRELUDE.format(tests=TESTS) + """
    convflow.conv2d(x, w, b, padding=1)
    print("returned")
    """
    result = _run(script, CONVFLOW_LOG="debug")
    assert result.stdout.split() == ["returned"]
    assert "convflow warm-up of ('packed_direct'" in result.stderr, result.stderr


def test_fork_during_the_warm_up():
    script = PRELUDE.format(tests=TESTS) + """
    import os
    convflow.conv2d(x, w, b, padding=1)     # queues packed_direct's compile
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            assert_close(convflow.conv2d(x, w, b, padding=1), expected, "float32")
            convflow.finish_warmup(timeout=600)
            assert_close(convflow.conv2d(x, w, b, padding=1), expected, "float32")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    convflow.finish_warmup(timeout=600)
    assert runs() == "packed_direct"
    print("ok")
    """
    assert _run(script).stdout.split() == ["ok"]


def test_finish_warmup_without_a_warm_up_and_its_errors():
    assert convflow.finish_warmup() is True
    assert convflow.finish_warmup(0) is True
    for bad in (-1, "soon", True, float("nan")):
        with pytest.raises(convflow.ParameterError,
                           match=rf"finish_warmup: timeout must be a number of seconds >= 0 or "
                                 rf"None, got {bad!r}"):
            convflow.finish_warmup(bad)


def test_a_bad_warmup_setting_is_named(monkeypatch):
    monkeypatch.setenv("CONVFLOW_NUMBA_WARMUP", "soon")
    with pytest.raises(convflow.ConfigError,
                       match=r"CONVFLOW_NUMBA_WARMUP='soon'.*expected one of background, wait"):
        convflow.conv2d(np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32))


@pytest.mark.parametrize("budget_mb", [1, 2])
@pytest.mark.parametrize("shape", [(2, 4, 3, 40, 37), (1, 4, 1, 300, 301)])
def test_numpy_taps_in_blocks_of_the_workspace(budget_mb, shape):
    """A small workspace splits numpy_taps' passes into blocks of images, planes and rows;
    the blocks' results are those of one whole pass."""
    rng = np.random.default_rng(budget_mb)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((6, 2, 2, 3, 3)).astype(np.float32)
    padding = ((1, 0), (2, 1), (0, 2))
    kwargs = dict(stride=(1, 2, 1), padding=padding, dilation=(1, 1, 2), groups=2)
    expected = conv(x, w, None, (1, 2, 1), padding, (1, 1, 2), 2)
    dy = rng.standard_normal(expected.shape).astype(np.float32)
    ref_dx, ref_dw, _ = conv_backward(dy, x, w, (1, 2, 1), padding, (1, 1, 2), 2)
    with convflow.config.override(CONVFLOW_WORKSPACE_MB=budget_mb):
        assert_close(convflow.conv3d(x, w, algorithm="numpy_taps", **kwargs), expected)
        dx, dw, _ = convflow.conv_backward(dy, x, w, algorithm="numpy_taps", **kwargs)
    assert_close(dx, ref_dx)
    assert_close(dw, ref_dw)
