"""Ctrl-C during a long pass: KeyboardInterrupt lands within about a second, convflow stays
usable, and splitting a long pass into chunks (numba) or pieces (opencl) changes no result.

The latency tests run a pass that takes 15-35 s uninterrupted in a subprocess, send SIGINT
one second in, and require the interrupt within LATENCY_BOUND_S of the signal: a hang guard
far above the ~0.2-0.4 s measured, not a performance assertion.
"""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import convflow
from convflow import functional
from convflow.backends import get_backend
from convflow.backends.numba import algorithms
from convflow.backends.opencl import runtime

import reference
from conftest import assert_close, require_backend

LATENCY_BOUND_S = 5.0
TESTS = pathlib.Path(__file__).parent

# One long pass (the shape, or larger), then, after the interrupt, a small call
# compared with the float64 reference and with the same call made before the long one.
LONG_PASS_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    import convflow
    sys.path.insert(0, {tests!r})
    import reference
    backend, algorithm = {backend!r}, {algorithm!r}
    rng = np.random.default_rng(0)
    x = rng.standard_normal({x_shape}, dtype=np.float32)
    w = rng.standard_normal({w_shape}, dtype=np.float32)
    xs = rng.standard_normal((2, 3, 37, 29), dtype=np.float32)
    ws = rng.standard_normal((4, 3, 5, 5), dtype=np.float32)
    def small():
        return convflow.conv2d(xs, ws, padding="same", backend=backend, algorithm=algorithm)
    before = small()
    print("ready", flush=True)
    try:
        convflow.conv2d(x, w, padding="same", backend=backend, algorithm=algorithm)
        print("finished", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    again = small()
    expected = reference.conv(xs, ws, None, (1, 1), ((2, 2), (2, 2)), (1, 1))
    error = np.abs(again - expected).max() / np.abs(expected).max()
    print("equal" if np.array_equal(again, before) and error < 3e-5 else f"wrong {{error}}",
          flush=True)
""")


def _interrupt_latency(backend: str, algorithm: str, x_shape: tuple[int, ...],
                       w_shape: tuple[int, ...], tmp_path: pathlib.Path) -> float:
    """Seconds from SIGINT (sent 1 s into the long pass) to the child's except block."""
    code = LONG_PASS_SCRIPT.format(tests=str(TESTS), backend=backend, algorithm=algorithm,
                                   x_shape=x_shape, w_shape=w_shape)
    # stderr goes to a file: stdout is read line by line (communicate() would bypass the
    # lines readline() has already buffered).
    with open(tmp_path / "stderr", "w+") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                stderr=stderr, text=True)
        guard = threading.Timer(300, proc.kill)  # a hang fails the test instead of stalling it
        guard.start()
        try:
            assert proc.stdout is not None
            ready = proc.stdout.readline().strip()
            if ready == "ready":
                time.sleep(1.0)
                proc.send_signal(signal.SIGINT)
                sent = time.perf_counter()
                marker = proc.stdout.readline().strip()
                latency = time.perf_counter() - sent
            out = proc.stdout.read()
            proc.wait()
        finally:
            guard.cancel()
        stderr.seek(0)
        err = stderr.read()
    assert ready == "ready", err
    assert marker == "interrupted", (marker, err)
    assert proc.returncode == 0, err
    assert out.strip() == "equal", (out, err)
    return latency


def test_numba_direct_long_pass_is_interrupted_within_a_chunk(tmp_path):
    require_backend("numba")
    # 1x1x3072x3072 * 63x63 'same': 75 GFLOP in one output channel, 15-30 s uninterrupted.
    latency = _interrupt_latency("numba", "direct", (1, 1, 3072, 3072), (1, 1, 63, 63),
                                 tmp_path)
    assert latency < LATENCY_BOUND_S, f"KeyboardInterrupt landed {latency:.1f} s after SIGINT"


def test_opencl_naive_long_pass_is_interrupted_within_a_piece(tmp_path):
    require_backend("opencl")
    # 1x1x2048x2048 * 63x63 'same' on naive: ~30 s uninterrupted on PoCL (2 cores).
    latency = _interrupt_latency("opencl", "naive", (1, 1, 2048, 2048), (1, 1, 63, 63),
                                 tmp_path)
    assert latency < LATENCY_BOUND_S, f"KeyboardInterrupt landed {latency:.1f} s after SIGINT"


def test_opencl_tiled_gemm_pass_is_interrupted_within_two_tiles(tmp_path):
    require_backend("opencl")
    # 1x16x1536x1536 * 13x13 'same': 204 GFLOP in ~380 workspace tiles (im2col + GEMM
    # each), ~20 s on PoCL (2 cores); the solver enqueues tile after tile (Call.checkpoint).
    latency = _interrupt_latency("opencl", "vec_im2col_gemm", (1, 16, 1536, 1536),
                                 (16, 16, 13, 13), tmp_path)
    assert latency < LATENCY_BOUND_S, f"KeyboardInterrupt landed {latency:.1f} s after SIGINT"


# Chunked numba passes equal unchunked ones bitwise --------------------------------------------
@pytest.fixture
def tiny_chunks(monkeypatch):
    """Split every numba pass into chunks of the given flops (and forget the cached plans, so
    the next calls are planned with these limits, and again after the test)."""
    numba_backend = get_backend("numba")

    def use(chunk_flops: int | None) -> None:
        if chunk_flops is None:
            monkeypatch.undo()
        else:
            monkeypatch.setattr(algorithms, "CHUNK_FLOPS", chunk_flops)
            monkeypatch.setattr(algorithms, "LONG_PASS_FLOPS", 0)
        numba_backend._prepared_passes.clear()
        functional._PLANS.clear()

    yield use
    use(None)


def _chunk_counts() -> list[int]:
    return [len(p.chunks) for p in get_backend("numba")._prepared_passes.values()]


CHUNK_CASES = [  # x shape, w shape, arguments: images, groups, rows, strides, 1-D and 3-D
    ((3, 4, 11, 9), (6, 2, 3, 3), dict(padding=1, groups=2)),
    ((1, 1, 23, 17), (1, 1, 5, 4), dict(padding="same")),
    ((2, 3, 19, 13), (4, 3, 3, 5), dict(stride=2, padding=(2, 1), dilation=(2, 1))),
    ((1, 2, 20, 15), (2, 1, 4, 3), dict(stride=(3, 1), padding=3, groups=2)),
    ((2, 2, 5, 9, 8), (2, 2, 2, 3, 3), dict(padding=1)),
    ((2, 4, 30), (4, 2, 5), dict(padding=2, groups=2)),
]
CONV = {3: convflow.conv1d, 4: convflow.conv2d, 5: convflow.conv3d}


@pytest.mark.parametrize("x_shape, w_shape, kwargs", CHUNK_CASES)
def test_chunked_direct_passes_equal_unchunked_bitwise(tiny_chunks, x_shape, w_shape, kwargs):
    require_backend("numba")
    rng = np.random.default_rng(len(x_shape) * 100 + x_shape[2])
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    w_inf = w.copy()
    w_inf.flat[3] = np.inf  # NaN wherever that tap reads the padding, chunked or not
    conv = CONV[len(x_shape)]
    y = conv(x, w, **kwargs, backend="numba")
    dy = rng.standard_normal(y.shape).astype(np.float32)

    def passes():
        return (conv(x, w, b, **kwargs, backend="numba", algorithm="direct", activation="relu"),
                conv(x, w_inf, **kwargs, backend="numba", algorithm="direct"),
                *convflow.conv_backward(dy, x, w, **kwargs, backend="numba", algorithm="direct",
                                        output_mask=(True, True, False))[:2])

    whole = passes()
    assert max(_chunk_counts()) == 0
    tiny_chunks(1000)
    chunked = passes()
    assert min(_chunk_counts()) > 1, "every pass should have been split"
    for name, expected, actual in zip(("forward", "inf weight", "data grad", "weight grad"),
                                      whole, chunked):
        assert np.array_equal(expected, actual, equal_nan=True), name
    problem = convflow.explain(x, w, **kwargs, backend="numba").problem
    expected = reference.conv(x, w, b, problem.stride, problem.padding, problem.dilation,
                              problem.groups)
    assert_close(chunked[0], reference.activate(expected, "relu"))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("algorithm, x_shape, w_shape, groups", [
    ("packed_direct", (5, 8, 12, 10), (8, 8, 3, 3), 1),
    ("depthwise", (5, 6, 12, 10), (12, 1, 3, 3), 6),
])
def test_image_chunks_of_other_algorithms_equal_unchunked_bitwise(tiny_chunks, algorithm,
                                                                   x_shape, w_shape, groups,
                                                                   layout):
    """Images of channels-last data are chunked where they lie (views, no copies)."""
    require_backend("numba")
    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape).astype(np.float32)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)

    def run():
        return convflow.conv2d(x, w, b, padding=1, groups=groups, backend="numba",
                               algorithm=algorithm, activation="silu", layout=layout)

    whole = run()
    tiny_chunks(2 * 8 * 9 * 120 * 2)  # about two images per chunk
    chunked = run()
    assert min(_chunk_counts()) > 1
    assert np.array_equal(whole, chunked)


def test_plan_chunks_covers_every_output_once():
    # images first; then, for an image too long, groups; then rows of one group
    plan = algorithms.plan_chunks(0, 4, 2, 10, 4000, True, chunk_flops=1000)
    assert [(c.n0, c.n1, c.g0, c.g1, c.rows) for c in plan] == [
        (0, 1, 0, 2, None), (1, 2, 0, 2, None), (2, 3, 0, 2, None), (3, 4, 0, 2, None)]
    plan = algorithms.plan_chunks(0, 2, 2, 10, 4000, True, chunk_flops=1000)
    assert [(c.n0, c.g0, c.g1, c.rows) for c in plan] == [(0, 0, 1, None), (0, 1, 2, None),
                                                          (1, 0, 1, None), (1, 1, 2, None)]
    plan = algorithms.plan_chunks(2, 8, 1, 10, 4000, True, chunk_flops=1000)
    assert {(c.n0, c.n1) for c in plan} == {(0, 8)}  # the weight gradient keeps the batch
    assert [c.rows for c in plan] == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    # algorithms other than direct split only into images
    assert algorithms.plan_chunks(0, 1, 4, 10, 4000, False, chunk_flops=1000) == [
        algorithms.Chunk(0, 1, 0, 4)]


def test_short_passes_are_not_chunked():
    require_backend("numba")
    x = np.ones((1, 8, 16, 16), np.float32)
    convflow.conv2d(x, np.ones((8, 8, 3, 3), np.float32), backend="numba", algorithm="direct")
    prepared = [p for (problem, _), p in get_backend("numba")._prepared_passes.items()
                if problem.x_shape == (1, 8, 16, 16)]
    assert prepared and all(p.chunks == () for p in prepared)


# opencl pieces equal one launch bitwise ------------------------------------------------------
def test_opencl_naive_pieces_equal_one_launch_bitwise(monkeypatch):
    require_backend("opencl")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 30, 26)).astype(np.float32)
    w = rng.standard_normal((6, 2, 5, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    kwargs = dict(stride=(2, 1), padding=(2, 1), dilation=(1, 2), groups=2, backend="opencl",
                  algorithm="naive")
    y = convflow.conv2d(x, w, b, **kwargs)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    whole = (y, *convflow.conv_backward(dy, x, w, **kwargs,
                                        output_mask=(True, True, False))[:2])
    pieces = []
    original = runtime.ContextState._launch_pieces

    def counted(self, queue, kernel, total, group, *args):
        pieces.append(total)
        return original(self, queue, kernel, total, group, *args)

    monkeypatch.setattr(runtime.ContextState, "_launch_pieces", counted)
    monkeypatch.setattr(runtime, "LONG_LAUNCH_FLOPS", 0)
    monkeypatch.setattr(runtime, "FIRST_PIECE_FLOPS", 1)   # pieces of one work-group at first
    monkeypatch.setattr(runtime, "PIECE_SECONDS", 1e-5)    # and they stay small
    split = (convflow.conv2d(x, w, b, **kwargs),
             *convflow.conv_backward(dy, x, w, **kwargs, output_mask=(True, True, False))[:2])
    assert len(pieces) == 3
    for name, expected, actual in zip(("forward", "data grad", "weight grad"), whole, split):
        assert np.array_equal(expected, actual), name


def test_wait_interruptibly_returns_once_the_command_completes():
    require_backend("opencl")
    cl = runtime.import_pyopencl()
    state = get_backend("opencl").state(convflow.Device("opencl"))
    event = cl.enqueue_marker(state.queue)
    runtime.wait_interruptibly(cl, event)
    assert event.command_execution_status == cl.command_execution_status.COMPLETE
