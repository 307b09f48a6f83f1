"""Reliability: running out of memory, bounded scratch, interrupts, no writes outside the cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import convflow
from convflow import WorkspaceTooLargeError
from convflow.backends import get_backend

import reference
from conftest import assert_close


def test_out_of_memory_falls_back_to_a_smaller_scratch(monkeypatch, caplog):
    backend = get_backend("numba")
    real_forward = backend.forward
    tried = []

    def forward(x, w, b, problem, algorithm):
        tried.append(algorithm)
        if algorithm != "direct":
            raise MemoryError(f"pretend {algorithm} cannot get its scratch")
        return real_forward(x, w, b, problem, algorithm)

    monkeypatch.setattr(backend, "forward", forward)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 12, 12))
    w = rng.standard_normal((16, 16, 3, 3))
    with caplog.at_level("WARNING", logger="convflow"):
        y = convflow.conv2d(x[:, :, :11], w, padding=1)
    assert_close(y, reference.conv(x[:, :, :11], w, padding=((1, 1), (1, 1))), "float64")
    assert tried[0] == "packed_direct" and tried[-1] == "direct"
    assert "ran out of memory" in caplog.text and "trying" in caplog.text


def test_out_of_memory_everywhere_is_a_clear_error(monkeypatch):
    backend = get_backend("numba")

    def forward(*args, **kwargs):
        raise MemoryError("pretend nothing fits")

    monkeypatch.setattr(backend, "forward", forward)
    x = np.ones((1, 8, 10, 10))
    w = np.ones((8, 8, 3, 3))
    with pytest.raises(WorkspaceTooLargeError, match=r"conv2d: out of memory on cpu with every "
                                                     r"algorithm that can run this problem "
                                                     r"\(packed_direct, "
                                                     r"((direct|im2col_gemm|packed_gemm|"
                                                     r"numpy_taps), ){4}"
                                                     r"fft\); the last error: "
                                                     r"pretend nothing fits"):
        convflow.conv2d(x, w[:, :, :, :2], padding=1)
    with pytest.raises(WorkspaceTooLargeError, match=r"the forced algorithm 'im2col_gemm' ran out "
                                                     r"of memory"):
        convflow.conv2d(x, w, padding=1, algorithm="im2col_gemm")


RSS_SCRIPT = textwrap.dedent("""
    import threading, time, numpy as np, convflow

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    x = np.random.default_rng(0).standard_normal((1, 64, 512, 512), dtype=np.float32)
    w = np.random.default_rng(1).standard_normal((64, 64, 3, 3), dtype=np.float32)
    convflow.conv2d(x[:, :, :40, :40], w, padding=1)   # compile outside the measurement
    print(convflow.explain(x, w, padding=1).algorithm)
    peak, done = [0], [False]
    def sample():
        while not done[0]:
            peak[0] = max(peak[0], rss())
            time.sleep(0.0005)
    before = rss()
    thread = threading.Thread(target=sample)
    thread.start()
    y = convflow.conv2d(x, w, padding=1)
    done[0] = True
    thread.join()
    print((max(peak[0], rss()) - before - y.nbytes) / 2**20)
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
def test_peak_memory_beyond_the_output_is_bounded():
    """A 3x3 conv over a 64x512x512 input: scratch stays near CONVFLOW_WORKSPACE_MB (64 MiB)."""
    result = subprocess.run([sys.executable, "-c", RSS_SCRIPT], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    algorithm, growth = result.stdout.split()
    # One packed image (67 MiB) exceeds the workspace; im2col's tiles fit it.
    assert algorithm == "im2col_gemm"
    assert float(growth) < 128, f"peak RSS grew {growth} MiB beyond the output"


INTERRUPT_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, convflow
    x = np.random.default_rng(0).standard_normal((4, 32, 160, 160), dtype=np.float32)
    w = np.random.default_rng(1).standard_normal((32, 32, 3, 3), dtype=np.float32)
    expected = convflow.conv2d(x[:1], w, padding=1)
    print("ready", flush=True)
    try:
        while True:
            for algorithm in ("packed_direct", "im2col_gemm", "direct"):
                convflow.conv2d(x, w, padding=1, algorithm=algorithm)
    except KeyboardInterrupt:
        pass
    again = convflow.conv2d(x[:1], w, padding=1)
    print("equal" if np.array_equal(again, expected) else "different", flush=True)
""")


def test_ctrl_c_during_convolutions_leaves_convflow_usable():
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPT_SCRIPT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert out.strip() == "equal"


def test_nothing_is_written_outside_the_cache_directory(tmp_path):
    """Autotune, compile kernels and start OpenCL in a process whose working directory and
    home are watched: everything lands in CONVFLOW_CACHE_DIR."""
    home, work, cache = tmp_path / "home", tmp_path / "work", tmp_path / "cache"
    for d in (home, work):
        d.mkdir()
    code = ("import numpy as np, convflow\n"
            "convflow.available_backends()\n"
            "convflow.conv2d(np.ones((1, 8, 12, 12), np.float32), np.ones((8, 8, 3, 3), np.float32))")
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "POCL_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), CONVFLOW_FIND_MODE="autotune", CONVFLOW_CACHE_DIR=str(cache))
    result = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert list(home.rglob("*")) == [] and list(work.rglob("*")) == []
    assert {p.name for p in cache.iterdir()} <= {"perfdb-v1.sqlite3", "numba", "pocl", "pyopencl",
                                                 "pytools"}
    assert (cache / "numba").is_dir() and (cache / "perfdb-v1.sqlite3").is_file()


def test_threads_mixing_backends_match_serial_calls():
    """Many Python threads calling convflow at once, on every CPU-side backend available,
    with mixed shapes and passes: results bitwise equal to the same calls made serially."""
    import threading

    names = [n for n in ("numba", "opencl") if convflow.available_backends()[n].available]
    rng = np.random.default_rng(11)
    calls = []
    for i in range(12):
        c = 4 * (1 + i % 3)
        x = rng.standard_normal((2, c, 15 + i, 13)).astype(np.float32)
        w = rng.standard_normal((8, c // (1 + i % 2), 3, 1 + i % 3)).astype(np.float32)
        kwargs = dict(padding=1, groups=1 + i % 2, backend=names[i % len(names)])
        calls.append((x, w, kwargs, i % 3 == 2))

    def run(x, w, kwargs, backward):
        y = convflow.conv2d(x, w, **kwargs)
        if backward:
            return (y, *convflow.conv_backward(np.ones_like(y), x, w, **kwargs))
        return (y,)

    serial = [run(*call) for call in calls]
    results: dict[int, list] = {i: [] for i in range(len(calls))}
    errors = []

    def worker(index):
        try:
            for _ in range(3):
                results[index].append(run(*calls[index]))
        except BaseException as exc:  # reported below, with the thread's problem
            errors.append((index, exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors
    for index, expected in enumerate(serial):
        for repeat in results[index]:
            for got, want in zip(repeat, expected):
                np.testing.assert_array_equal(got, want)
