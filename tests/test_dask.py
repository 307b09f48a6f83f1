"""convflow.dask: convolutions of chunked dask arrays, computed on a real
``dask.distributed.LocalCluster`` (two worker processes on 127.0.0.1) and compared with the
in-memory ``convflow.conv{n}d`` result and the float64 reference.

The whole forward and transposed grids run under every chunking with dask's synchronous
scheduler (the same graph, computed in this process); on the cluster a third of each grid
runs, cycling through the chunkings, plus a seeded random sweep with random chunks. Both
workers are limited to 512 MiB; one more cluster convolves an input four times that.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import pathlib
import pickle
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
from dask.distributed import Client, LocalCluster

import convflow
import convflow.dask as cdask
import convflow.params

import reference
from cases import Case, forward_cases, random_cases, transposed_cases
from conftest import assert_close
from helpers import (
    CONV,
    CONV_TRANSPOSE,
    conv_kwargs,
    forward_operands,
    reference_forward,
    reference_transposed,
    transpose_kwargs,
)

DASK_CONV = {1: cdask.conv1d, 2: cdask.conv2d, 3: cdask.conv3d}
DASK_CONV_TRANSPOSE = {1: cdask.conv_transpose1d, 2: cdask.conv_transpose2d,
                       3: cdask.conv_transpose3d}

# One numba thread per worker process: two workers use the machine's two cores.
WORKER_ENV = {"CONVFLOW_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _growing(size: int) -> tuple[int, ...]:
    """Uneven chunks 1, 2, 3, ... (the last one what is left)."""
    chunks, step = [], 1
    while size > 0:
        chunks.append(min(step, size))
        size -= chunks[-1]
        step += 1
    return tuple(chunks)


# Chunkings of an input (N, C, *spatial), by name.
CHUNKINGS: dict[str, Callable[[Case], tuple[Any, ...]]] = {
    # uneven spatial chunks (1, 2, 3, ...), batch whole
    "uneven": lambda c: (c.batch, c.in_channels, *(_growing(s) for s in c.spatial)),
    # chunks smaller than the halo and not multiples of the stride
    "tiny": lambda c: (c.batch, c.in_channels, *((1 if c.nd < 3 else 2),) * c.nd),
    # batch-only
    "batch": lambda c: (1, c.in_channels, *c.spatial),
    # spatial-only, chunks of 3 (not multiples of stride 2)
    "spatial": lambda c: (c.batch, c.in_channels, *(3,) * c.nd),
    # batch and spatial, and channels split in two (gathered into one chunk)
    "mixed": lambda c: (1, max(1, c.in_channels // 2), *(4 if c.nd < 3 else 3,) * c.nd),
}

FORWARD = forward_cases()
TRANSPOSED = transposed_cases()


@contextlib.contextmanager
def local_cluster(memory_limit: str, **config: Any) -> Iterator[Client]:
    """Two worker processes (one thread each) on 127.0.0.1; the scheduler's HTTP server on a
    free loopback port."""
    with dask.config.set(config), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address="127.0.0.1:0", memory_limit=memory_limit,
                         env=WORKER_ENV) as cluster, \
            Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with local_cluster("512MiB") as c:
        yield c


def forward_problem(case: Case, dtype: str, chunking: str):
    x, w, b = forward_operands(case, dtype)
    y = DASK_CONV[case.nd](da.from_array(x, chunks=CHUNKINGS[chunking](case)), w, b,
                           **conv_kwargs(case))
    return x, w, b, y


def transposed_problem(case: Case, dtype: str, chunking: str):
    x, w, b = forward_operands(case, dtype, transposed=True)
    y = DASK_CONV_TRANSPOSE[case.nd](da.from_array(x, chunks=CHUNKINGS[chunking](case)), w, b,
                                     **transpose_kwargs(case))
    return x, w, b, y


def check_forward(case: Case, dtype: str, x, w, b, result) -> None:
    """The dask result against the float64 reference and the in-memory convflow result."""
    assert_close(result, reference_forward(case, x, w, b), dtype)
    in_memory = CONV[case.nd](x, w, b, **conv_kwargs(case))
    assert_close(result, in_memory.astype(np.float64), dtype)


def check_transposed(case: Case, dtype: str, x, w, b, result) -> None:
    assert_close(result, reference_transposed(case, x, w, b), dtype)
    in_memory = CONV_TRANSPOSE[case.nd](x, w, b, **transpose_kwargs(case))
    assert_close(result, in_memory.astype(np.float64), dtype)


# --- every case under every chunking (synchronous scheduler) ---------------------------------

@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("case", FORWARD, ids=lambda c: c.id)
def test_forward_every_chunking(case, chunking):
    x, w, b, y = forward_problem(case, "float64", chunking)
    assert y.shape == CONV[case.nd](x, w, b, **conv_kwargs(case)).shape
    check_forward(case, "float64", x, w, b, y.compute(scheduler="sync"))


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("case", TRANSPOSED, ids=lambda c: c.id)
def test_transposed_every_chunking(case, chunking):
    x, w, b, y = transposed_problem(case, "float64", chunking)
    check_transposed(case, "float64", x, w, b, y.compute(scheduler="sync"))


# --- layout and activation, passed through to every chunk's call -----------------------------

# A spread of the grids (every dimensionality, padding kinds, strides, groups).
LAYOUT_CASES = FORWARD[:: max(1, len(FORWARD) // 8)]
LAYOUT_TRANSPOSED = TRANSPOSED[:: max(1, len(TRANSPOSED) // 4)]


def _channels_last(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(array, 1, -1))


def _channels_last_chunks(chunks: tuple[Any, ...]) -> tuple[Any, ...]:
    return (chunks[0], *chunks[2:], chunks[1])


@pytest.mark.parametrize("layout_last, activation", [(True, None), (False, "relu"),
                                                     (True, "relu")])
@pytest.mark.parametrize("chunking", ["uneven", "mixed"])
@pytest.mark.parametrize("case", LAYOUT_CASES, ids=lambda c: c.id)
def test_forward_layout_and_activation(case, chunking, layout_last, activation):
    x, w, b = forward_operands(case, "float64")
    layout = convflow.params.LAYOUTS[case.nd][1] if layout_last else None
    chunks = CHUNKINGS[chunking](case)
    source = _channels_last(x) if layout_last else x
    y = DASK_CONV[case.nd](da.from_array(source, chunks=_channels_last_chunks(chunks)
                                         if layout_last else chunks),
                           w, b, layout=layout, activation=activation, **conv_kwargs(case))
    result = y.compute(scheduler="sync")
    expected = reference.activate(reference_forward(case, x, w, b), activation)
    assert_close(np.moveaxis(result, -1, 1) if layout_last else result, expected, "float64")
    in_memory = CONV[case.nd](source, w, b, layout=layout, activation=activation,
                              **conv_kwargs(case))
    assert y.shape == in_memory.shape
    assert_close(result, in_memory.astype(np.float64), "float64")


@pytest.mark.parametrize("layout_last, activation", [(True, None), (False, "relu"),
                                                     (True, "relu")])
@pytest.mark.parametrize("case", LAYOUT_TRANSPOSED, ids=lambda c: c.id)
def test_transposed_layout_and_activation(case, layout_last, activation):
    x, w, b = forward_operands(case, "float64", transposed=True)
    layout = convflow.params.LAYOUTS[case.nd][1] if layout_last else None
    chunks = CHUNKINGS["uneven"](case)
    source = _channels_last(x) if layout_last else x
    y = DASK_CONV_TRANSPOSE[case.nd](
        da.from_array(source, chunks=_channels_last_chunks(chunks) if layout_last else chunks),
        w, b, layout=layout, activation=activation, **transpose_kwargs(case))
    result = y.compute(scheduler="sync")
    expected = reference.activate(reference_transposed(case, x, w, b), activation)
    assert_close(np.moveaxis(result, -1, 1) if layout_last else result, expected, "float64")


def test_padding_only_chunks_are_activated():
    """A chunk that reads only padding is the activated bias, in the caller's layout."""
    x = np.arange(2 * 3 * 9, dtype=np.float64).reshape(2, 3, 9)
    w = np.ones((2, 3, 1))
    b = np.array([0.5, -1.0])
    expected = reference.activate(reference.conv(x, w, b, (5,), ((4, 0),), (1,), 1), "relu")
    y = cdask.conv1d(da.from_array(_channels_last(x), chunks=(1, 1, 3)), w, b, stride=5,
                     padding=((4, 0),), layout="NWC", activation="relu")
    assert _bias_only_chunks(y) == 2
    assert_close(np.moveaxis(y.compute(scheduler="sync"), -1, 1), expected, "float64")


# --- on the LocalCluster ---------------------------------------------------------------------

def _cycled(cases: list[Case]) -> list[tuple[Case, str]]:
    names = list(CHUNKINGS)
    return [(case, names[i % len(names)]) for i, case in enumerate(cases)]


# A third of each grid (every grid case runs under every chunking above), chunkings cycled.
CLUSTER_FORWARD = _cycled(FORWARD[::3])
CLUSTER_TRANSPOSED = _cycled(TRANSPOSED[::3])
RANDOM_FORWARD = random_cases(seed=23, count=12)
RANDOM_TRANSPOSED = random_cases(seed=29, count=6, transposed=True)


def _random_chunks(case: Case, seed: str) -> tuple[Any, ...]:
    rng = random.Random(seed)

    def split(size: int) -> tuple[int, ...]:
        cuts = sorted({rng.randint(1, size - 1) for _ in range(rng.randint(0, 3))}
                      if size > 1 else ())
        edges = [0, *cuts, size]
        return tuple(b - a for a, b in itertools.pairwise(edges))

    return tuple(split(s) for s in (case.batch, case.in_channels, *case.spatial))


@pytest.fixture(scope="module")
def cluster_results(client):
    """Every cluster case submitted at once (futures, by test id), then awaited per test."""
    futures = {}
    for case, chunking in CLUSTER_FORWARD:
        futures[("forward", case.id, chunking)] = client.compute(
            forward_problem(case, "float32", chunking)[3])
    for case, chunking in CLUSTER_TRANSPOSED:
        futures[("transposed", case.id, chunking)] = client.compute(
            transposed_problem(case, "float32", chunking)[3])
    for case in RANDOM_FORWARD:
        x, w, b = forward_operands(case, "float64")
        y = DASK_CONV[case.nd](da.from_array(x, chunks=_random_chunks(case, case.id)), w, b,
                               **conv_kwargs(case))
        futures[("random", case.id)] = client.compute(y)
    for case in RANDOM_TRANSPOSED:
        x, w, b = forward_operands(case, "float64", transposed=True)
        y = DASK_CONV_TRANSPOSE[case.nd](da.from_array(x, chunks=_random_chunks(case, case.id)),
                                         w, b, **transpose_kwargs(case))
        futures[("random-transposed", case.id)] = client.compute(y)
    return futures


@pytest.mark.parametrize("case, chunking", CLUSTER_FORWARD,
                         ids=[f"{c.id}-{k}" for c, k in CLUSTER_FORWARD])
def test_forward_on_cluster(cluster_results, case, chunking):
    x, w, b = forward_operands(case, "float32")
    check_forward(case, "float32", x, w, b,
                  cluster_results[("forward", case.id, chunking)].result(timeout=120))


@pytest.mark.parametrize("case, chunking", CLUSTER_TRANSPOSED,
                         ids=[f"{c.id}-{k}" for c, k in CLUSTER_TRANSPOSED])
def test_transposed_on_cluster(cluster_results, case, chunking):
    x, w, b = forward_operands(case, "float32", transposed=True)
    check_transposed(case, "float32", x, w, b,
                     cluster_results[("transposed", case.id, chunking)].result(timeout=120))


@pytest.mark.parametrize("case", RANDOM_FORWARD, ids=lambda c: c.id)
def test_random_sweep_on_cluster(cluster_results, case):
    x, w, b = forward_operands(case, "float64")
    check_forward(case, "float64", x, w, b,
                  cluster_results[("random", case.id)].result(timeout=120))


@pytest.mark.parametrize("case", RANDOM_TRANSPOSED, ids=lambda c: c.id)
def test_random_transposed_sweep_on_cluster(cluster_results, case):
    x, w, b = forward_operands(case, "float64", transposed=True)
    check_transposed(case, "float64", x, w, b,
                     cluster_results[("random-transposed", case.id)].result(timeout=120))


def test_float16_and_unbatched_on_cluster(client):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 20, 23)).astype(np.float16)        # unbatched (C, H, W)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float16)
    b = rng.standard_normal(4).astype(np.float16)
    y = cdask.conv2d(da.from_array(x, chunks=(3, 7, 5)), w, b, stride=2, padding="same")
    assert y.shape == (4, 10, 12) and y.dtype == np.float16
    result = y.compute()
    expected = convflow.conv2d(x, w, b, stride=2, padding="same")
    assert result.dtype == np.float16
    np.testing.assert_array_equal(result, expected)


def test_dask_weight_and_bias_are_gathered(client):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 4, 30, 17)).astype(np.float32)
    w = rng.standard_normal((8, 2, 3, 5)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    y = cdask.conv2d(da.from_array(x, chunks=(1, 4, 8, 6)), da.from_array(w, chunks=(3, 1, 2, 2)),
                     da.from_array(b, chunks=3), padding=((2, 0), (1, 3)), groups=2)
    expected = convflow.conv2d(x, w, b, padding=((2, 0), (1, 3)), groups=2)
    assert_close(y.compute(), expected.astype(np.float64), "float32")


def test_large_output_chunk_counts_and_padding_only_chunks(client):
    # Stride 5 with 1-tap kernels and padding 4: an output chunk that reads only padding is
    # the bias alone; chunks of one position cover the whole input.
    x = np.arange(2 * 3 * 9, dtype=np.float64).reshape(2, 3, 9)
    w = np.ones((2, 3, 1))
    b = np.array([0.5, -1.0])
    y = cdask.conv1d(da.from_array(x, chunks=(1, 3, 1)), w, b, stride=5, padding=((4, 0),))
    assert _bias_only_chunks(y) == 2  # output 0 of each of the two batch chunks
    np.testing.assert_allclose(y.compute(), convflow.conv1d(x, w, b, stride=5,
                                                            padding=((4, 0),)))
    # Transposed: stride 4, a 1-tap kernel and 2 cropped leave outputs between contributions.
    t = cdask.conv_transpose1d(da.from_array(x[:, :, :2], chunks=(2, 3, 1)), w.transpose(1, 0, 2),
                               b, stride=4, padding=((2, 0),))
    assert _bias_only_chunks(t) == 1
    np.testing.assert_allclose(t.compute(), convflow.conv_transpose1d(
        x[:, :, :2], w.transpose(1, 0, 2), b, stride=4, padding=((2, 0),)))


def _bias_only_chunks(y) -> int:
    """Chunk tasks of *y*'s graph that read no input (in any layer: a channels-last result
    is a transpose of the convolution's layer)."""
    return sum(1 for layer in y.__dask_graph__().layers.values() for task in layer.values()
               if isinstance(task, tuple) and task[0] is cdask._conv_chunk and task[1] is None)


# --- the graph ---------------------------------------------------------------------------------

def _graph_values_holding(graph, array: np.ndarray) -> list[Any]:
    """Keys whose value is (a graph node holding) ``array``."""
    found = []
    for key, value in dict(graph).items():
        data = getattr(value, "value", value)
        if isinstance(data, np.ndarray) and data.shape == array.shape and data is array:
            found.append(key)
    return found


def test_weight_and_bias_appear_once_in_the_graph():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((16, 8, 5, 5))
    b = rng.standard_normal(16)
    x = da.random.default_rng(0).random((4, 8, 96, 96), chunks=(1, 8, 24, 24))
    y = cdask.conv2d(x, w, b, padding="same")
    graph = y.__dask_graph__()
    (w_key,) = _graph_values_holding(graph, w)
    (b_key,) = _graph_values_holding(graph, b)
    dependencies = dict(graph.get_all_dependencies())
    chunk_keys = [k for k in dict(graph) if isinstance(k, tuple) and k[0] == y.name]
    assert len(chunk_keys) == 4 * 4 * 4
    assert all({w_key, b_key} <= dependencies[k] for k in chunk_keys)
    # The graph, pickled as it is sent to the scheduler, holds the weight's data once.
    assert pickle.dumps(dict(graph)).count(w.tobytes()[:256]) == 1


def test_halos_are_cut_where_the_chunks_live():
    """After dask's optimization the halo slices are still their own tasks, so only the
    halo (not the neighbouring chunk) travels to the worker computing a chunk."""
    from dask.array.optimization import optimize

    x = da.random.default_rng(0).random((1, 2, 64, 64), chunks=(1, 2, 16, 16))
    y = cdask.conv2d(x, np.ones((3, 2, 3, 3)), padding=1)
    graph = dict(optimize(y.__dask_graph__(), y.__dask_keys__()))
    halos = [v for v in graph.values()
             if getattr(v, "func", None) is operator.getitem]
    # A 4 x 4 grid of chunks: each corner chunk takes 3 slices of its neighbours, each other
    # edge chunk 5 and each interior chunk 8.
    assert len(halos) == 4 * 3 + 8 * 5 + 4 * 8
    for task in halos:
        index = task.args[1]
        spatial = [s.stop - s.start for s in index[2:]]
        assert min(spatial) == 1


def test_metadata_needs_no_call(monkeypatch):
    """Shape, dtype, chunks and meta are known without running convflow."""
    def refuse(*args, **kwargs):
        raise AssertionError("convflow was called while building the graph")

    monkeypatch.setattr(convflow, "conv2d", refuse)
    monkeypatch.setattr(convflow, "conv_transpose2d", refuse)
    x = da.zeros((5, 3, 40, 31), chunks=(2, 3, 16, 8), dtype=np.float32)
    y = cdask.conv2d(x, np.zeros((6, 3, 3, 3), np.float32), stride=2, padding="same")
    assert y.shape == (5, 6, 20, 16) and y.dtype == np.float32
    assert type(y._meta) is np.ndarray and y._meta.ndim == 4 and y._meta.dtype == np.float32
    assert y.chunks[:2] == ((2, 2, 1), (6,))
    assert sum(y.chunks[2]) == 20 and sum(y.chunks[3]) == 16
    t = cdask.conv_transpose2d(x, np.zeros((3, 2, 4, 4), np.float32), stride=2, padding=1)
    assert t.shape == (5, 2, 80, 62) and t.dtype == np.float32


def test_empty_batch():
    x = np.zeros((0, 3, 10, 9), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    y = cdask.conv2d(da.from_array(x, chunks=(1, 3, 4, 4)), w, padding=1, padding_mode="reflect")
    assert y.compute(scheduler="sync").shape == (0, 4, 10, 9)
    t = cdask.conv_transpose2d(da.from_array(x, chunks=(1, 3, 4, 4)), w.transpose(1, 0, 2, 3),
                               stride=2)
    assert t.compute(scheduler="sync").shape == (0, 4, 21, 19)


def test_import_convflow_does_not_import_dask():
    code = "import sys, convflow; print('dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- errors --------------------------------------------------------------------------------

BAD_CALLS = [
    ("groups", dict(groups=2), (1, 5, 9, 9), (6, 2, 3, 3)),
    ("stride", dict(stride=0), (1, 3, 9, 9), (4, 3, 3, 3)),
    ("padding string", dict(padding="sam"), (1, 3, 9, 9), (4, 3, 3, 3)),
    ("padding pairs", dict(padding=(1, 2, 3, 4)), (1, 3, 9, 9), (4, 3, 3, 3)),
    ("negative padding", dict(padding=-1), (1, 3, 9, 9), (4, 3, 3, 3)),
    ("padding mode", dict(padding=1, padding_mode="reflekt"), (1, 3, 9, 9), (4, 3, 3, 3)),
    ("reflect too wide", dict(padding=9, padding_mode="reflect"), (1, 3, 9, 9), (4, 3, 3, 3)),
    ("kernel too large", dict(), (1, 3, 2, 9), (4, 3, 3, 3)),
    ("weight rank", dict(), (1, 3, 9, 9), (4, 3, 3)),
    ("input rank", dict(), (3, 9), (4, 3, 3, 3)),
    ("backend name", dict(backend="numbaa"), (1, 3, 9, 9), (4, 3, 3, 3)),
]


@pytest.mark.parametrize("name, kwargs, x_shape, w_shape", BAD_CALLS,
                         ids=[c[0] for c in BAD_CALLS])
def test_errors_match_the_in_memory_call(name, kwargs, x_shape, w_shape):
    x = np.zeros(x_shape, np.float32)
    w = np.zeros(w_shape, np.float32)
    with pytest.raises(convflow.ConvflowError) as in_memory:
        convflow.conv2d(x, w, **kwargs)
    with pytest.raises(type(in_memory.value)) as chunked:
        cdask.conv2d(da.from_array(x, chunks=2), w, **kwargs)
    assert str(chunked.value) == str(in_memory.value)


def test_dtype_and_bias_errors_match():
    x = np.zeros((1, 3, 9, 9), np.float32)
    for w, b in ((np.zeros((4, 3, 3, 3), np.float64), None),
                 (np.zeros((4, 3, 3, 3), np.float32), np.zeros(5, np.float32)),
                 (np.zeros((4, 3, 3, 3), np.int32), None)):
        with pytest.raises(convflow.ConvflowError) as in_memory:
            convflow.conv2d(x, w, b)
        with pytest.raises(type(in_memory.value), match=None) as chunked:
            cdask.conv2d(da.from_array(x, chunks=4), w, b)
        assert str(chunked.value) == str(in_memory.value)


def test_input_must_be_a_dask_array():
    with pytest.raises(convflow.ArgumentTypeError,
                       match=r"conv2d: convflow.dask.conv2d takes a dask.array.Array as input, "
                             r"but got ndarray; wrap it with dask.array.from_array"):
        cdask.conv2d(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3)))
    with pytest.raises(convflow.ArgumentTypeError, match="argument 'weight' is None"):
        cdask.conv2d(da.zeros((1, 1, 4, 4)), None)


def test_unknown_chunk_sizes_are_refused():
    unknown = da.zeros((1, 1, 8, 8), chunks=4).map_blocks(
        lambda b: b, chunks=((np.nan,), (1,), (4, 4), (4, 4)))
    with pytest.raises(convflow.ShapeError, match="unknown chunk sizes"):
        cdask.conv2d(unknown, np.zeros((1, 1, 3, 3)))


def test_a_forced_backend_is_chosen_on_the_worker(client):
    """backend= travels to the workers; each chunk is convolved there by convflow's rules, so
    an unavailable forced backend fails at compute time with convflow's own error."""
    x = da.ones((1, 1, 8, 8), chunks=4, dtype=np.float32)
    w = np.ones((1, 1, 3, 3), np.float32)
    assert float(cdask.conv2d(x, w, backend="numba").sum().compute()) == 9 * 36
    if convflow.available_backends()["cupy"].available:
        pytest.skip("cupy is available here")
    with pytest.raises(convflow.BackendUnavailableError, match="backend='cupy' was requested"):
        cdask.conv2d(x, w, backend="cupy").compute()


@pytest.mark.gpu
def test_cupy_chunks_go_to_the_cupy_backend():
    import cupy

    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 4, 33, 20)).astype(np.float32)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    xd = da.from_array(cupy.asarray(x), chunks=(1, 4, 10, 7))
    y = cdask.conv2d(xd, w, padding="same", stride=2)
    assert isinstance(y._meta, cupy.ndarray)
    result = y.compute(scheduler="sync")
    assert isinstance(result, cupy.ndarray)
    assert_close(cupy.asnumpy(result), convflow.conv2d(x, w, padding="same", stride=2)
                 .astype(np.float64), "float32")


# --- larger than the workers' memory -----------------------------------------------------------

def _peak_rss_mib(client: Client) -> dict[str, float]:
    """Each worker process's peak RSS so far (VmHWM), in MiB. Not getrusage's ru_maxrss: a
    spawned worker inherits the high-water mark of the process it was forked from. A bound
    method of a Path runs there, so the worker imports nothing of these tests."""
    status = client.run(pathlib.Path("/proc/self/status").read_text)
    return {address: int(re.search(r"VmHWM:\s*(\d+) kB", text).group(1)) / 1024  # type: ignore[union-attr]
            for address, text in status.items()}


class _MemorySampler:
    """The largest process memory of each worker, from the scheduler's view, sampled while a
    computation runs."""

    def __init__(self, client: Client) -> None:
        self.client, self.peaks, self._stop = client, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for address, info in self.client.scheduler_info()["workers"].items():
                memory = info["metrics"]["memory"] / 2**20
                self.peaks[address] = max(self.peaks.get(address, 0.0), memory)

    def __enter__(self) -> _MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.slow
@pytest.mark.skipif(not pathlib.Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_input_larger_than_each_workers_memory(capsys):
    """A 2-D convolution of a 2 GiB float32 image on workers limited to 512 MiB each, with
    spilling to disk turned off (a worker past 95% of its limit is restarted, which fails
    the test): the input is generated chunk by chunk on the workers, never whole, and the
    result is reduced, never gathered."""
    limit = 512 * 2**20
    # 8 MiB chunks, two per row: the input chunks waiting for their neighbours' halos (about
    # one row of chunks) stay small next to the limit.
    height, width, chunks = 65536, 8192, (1, 1, 512, 4096)
    w = np.full((1, 1, 3, 3), 1 / 9, np.float32)
    # Compile (or load from numba's cache) the chunk kernel here first, so the workers load
    # it from the cache instead of compiling it under their memory limit.
    convflow.conv2d(np.ones((1, 1, 514, 4098), np.float32), w)
    memory = {"distributed.worker.memory.target": False, "distributed.worker.memory.spill": False}
    with local_cluster(f"{limit}B", **memory) as client:
        workers = set(client.scheduler_info()["workers"])
        started = _peak_rss_mib(client)
        x = da.random.default_rng(42).random((1, 1, height, width), dtype=np.float32,
                                             chunks=chunks)
        assert x.nbytes >= 4 * limit
        y = cdask.conv2d(x, w, padding="same")
        start = time.perf_counter()
        with _MemorySampler(client) as sampler:
            mean = float(client.compute(y.mean()).result(timeout=300))
        seconds = time.perf_counter() - start
        peaks = _peak_rss_mib(client)
        assert set(client.scheduler_info()["workers"]) == workers, "a worker was restarted"
    # Uniform [0, 1) inputs, a 3x3 mean filter with zero padding: about 0.5, less the border.
    assert abs(mean - 0.5) < 1e-3
    assert sampler.peaks and max(sampler.peaks.values()) < 0.95 * limit / 2**20
    assert max(peaks.values()) < limit / 2**20
    with capsys.disabled():
        print(f"\nconvflow.dask: {x.nbytes / 2**30:.1f} GiB input, chunks {chunks[2:]}, workers "
              f"limited to {limit >> 20} MiB, {seconds:.1f} s; worker memory while computing "
              f"(sampled) up to {', '.join(f'{p:.0f}' for p in sampler.peaks.values())} MiB, "
              f"peak RSS {', '.join(f'{p:.0f}' for p in peaks.values())} MiB (at start "
              f"{', '.join(f'{p:.0f}' for p in started.values())} MiB)")
