"""One record per algorithm: the tables every backend used to keep are its fields, and the
Decision names the code path (the variant) that actually runs."""

from __future__ import annotations

import numpy as np
import pytest

import convflow
from convflow.backends import get_backend, loaded_backend
from convflow.backends.base import Algorithm
from convflow.backends.numba import algorithms as numba_algorithms

import reference
from conftest import assert_close


@pytest.mark.parametrize("name", ["numba", "opencl", "cupy"])
def test_records_are_consistent(name):
    backend = loaded_backend(name)
    if backend is None:
        pytest.skip(f"the {name} backend's module does not load here")
    records = ([r for r in backend.algorithm_rules()] if backend.status().available
               else [])
    names = [r.name for r in records]
    assert len(names) == len(set(names))
    assert set(names) <= backend.algorithm_names()
    for record in records:
        assert isinstance(record, Algorithm)
        assert record.fused <= record.directions
        assert not record.passes or set(record.passes) == set(record.directions)
        assert record.deterministic or record.why_not_deterministic


def test_a_record_refuses_passes_it_does_not_declare():
    with pytest.raises(ValueError, match=r"passes .* do not match its directions"):
        Algorithm("x", "x", lambda p: (True, ""), lambda p: (True, ""),
                  frozenset({convflow.Direction.FORWARD}),
                  passes={convflow.Direction.BACKWARD_DATA: "f"})
    with pytest.raises(ValueError, match="fuses a pass it does not implement"):
        Algorithm("x", "x", lambda p: (True, ""), lambda p: (True, ""),
                  frozenset({convflow.Direction.FORWARD}),
                  fused=frozenset({convflow.Direction.BACKWARD_DATA}))


RNG = np.random.default_rng(4)


def _arrays(x_shape, w_shape):
    return (RNG.standard_normal(x_shape).astype(np.float32),
            RNG.standard_normal(w_shape).astype(np.float32))


# (algorithm, input shape, weight shape, conv kwargs, layout, variant the Decision must name)
VARIANTS = [
    ("packed_direct", (1, 8, 16, 16), (8, 8, 3, 3), dict(padding=1), None,
     numba_algorithms.SINGLE_PASS),
    ("packed_direct", (2, 64, 40, 40), (64, 64, 1, 1), {}, None, numba_algorithms.IN_PLACE_1X1),
    ("packed_direct", (2, 64, 40, 40), (64, 64, 3, 3), dict(padding=1), None,
     numba_algorithms.PER_IMAGE),
    ("packed_direct", (2, 64, 40, 40), (64, 64, 1, 1), {}, "NHWC", numba_algorithms.PER_IMAGE),
    ("depthwise", (2, 64, 7, 7), (64, 1, 3, 3), dict(padding=1, groups=64), None,
     numba_algorithms.CHANNELS_IN_LANES),
    ("depthwise", (1, 8, 20, 20), (8, 1, 3, 3), dict(padding=1, groups=8), None,
     numba_algorithms.PER_PLANE_SERIAL),
    ("depthwise", (4, 16, 80, 80), (16, 1, 3, 3), dict(padding=1, groups=16), None,
     numba_algorithms.PER_PLANE),
    ("depthwise", (4, 16, 80, 80), (16, 1, 3, 3), dict(padding=1, groups=16), "NHWC",
     numba_algorithms.CHANNELS_IN_LANES),
    ("gemm_1x1", (2, 32, 9, 9), (16, 32, 1, 1), {}, None, numba_algorithms.IN_PLACE_GEMM),
    ("gemm_1x1", (2, 32, 9, 9), (16, 32, 1, 1), dict(stride=2), None,
     numba_algorithms.GATHERED_GEMM),
    ("im2col_gemm", (2, 32, 9, 9), (16, 32, 3, 3), {}, None, ""),
]


@pytest.mark.parametrize("algorithm, x_shape, w_shape, kwargs, layout, variant", VARIANTS)
def test_explain_names_the_variant_that_runs(monkeypatch, algorithm, x_shape, w_shape, kwargs,
                                             layout, variant):
    x, w = _arrays(x_shape, w_shape)
    stride, padding = kwargs.get("stride", 1), kwargs.get("padding", 0)
    expected = reference.conv(x, w, None, (stride, stride), ((padding, padding),) * 2, (1, 1),
                              kwargs.get("groups", 1))
    if layout == "NHWC":
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    decision = convflow.explain(x, w, layout=layout, algorithm=algorithm, backend="numba",
                                **kwargs)
    assert decision.variant == variant
    assert decision.runs == (f"{algorithm} ({variant})" if variant else algorithm)
    assert f"  runs: {decision.runs}" in str(decision)
    record = get_backend("numba").algorithm(algorithm)
    name = record.passes[convflow.Direction.FORWARD]
    seen: list[str] = []
    real = getattr(numba_algorithms, name)

    def spy(*args):
        seen.append(args[-1])
        return real(*args)

    monkeypatch.setattr(numba_algorithms, name, spy)
    get_backend("numba")._prepared_passes.clear()
    y = convflow.conv2d(x, w, layout=layout, algorithm=algorithm, backend="numba", **kwargs)
    get_backend("numba")._prepared_passes.clear()
    assert seen == [variant]
    if layout == "NHWC":
        y = np.moveaxis(y, -1, 1)
    assert_close(y, expected, "float32")


def test_a_run_time_fallback_is_what_later_decisions_name(monkeypatch, tmp_path):
    """opencl: the rules' choice fails at run time; the call falls back with a warning, and
    from then on explain(), the plan and the perf-db name the solver that really runs."""
    from conftest import require_backend

    require_backend("opencl")
    from convflow.backends.opencl import solvers
    from convflow.backends.opencl.runtime import SolverUnavailable

    backend = get_backend("opencl")
    monkeypatch.setitem(backend.__dict__, "_fallbacks", {})
    monkeypatch.setitem(backend.__dict__, "_fallback_epoch", backend.fallback_epoch)

    def unavailable(*args):
        raise SolverUnavailable("pretend the device is too small")

    broken = solvers.SOLVERS["vec_im2col_gemm"]
    monkeypatch.setitem(solvers.SOLVERS, "vec_im2col_gemm", solvers.replace(
        broken, passes={**broken.passes, convflow.Direction.FORWARD: unavailable}))
    x, w = _arrays((2, 16, 8, 8), (8, 16, 3, 3))
    before = convflow.explain(x, w, padding=1, backend="opencl")
    assert before.algorithm == "vec_im2col_gemm"
    with pytest.warns(convflow.SolverFallbackWarning, match="pretend the device is too small"):
        y = convflow.conv2d(x, w, padding=1, backend="opencl")
    expected = reference.conv(x, w, None, (1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    assert_close(y, expected, "float32")
    after = convflow.explain(x, w, padding=1, backend="opencl")
    assert after.algorithm != "vec_im2col_gemm" and after.algorithm in before.candidates
    assert any("vec_im2col_gemm failed at run time on opencl:0 (opencl solver "
               "'vec_im2col_gemm' cannot run here: pretend the device is too small); "
               f"{after.algorithm} runs instead" in note for note in after.notes)
    assert_close(convflow.conv2d(x, w, padding=1, backend="opencl"), expected, "float32")

    # A perf-db record naming the failed solver is corrected when it is next read.
    from convflow import config, find, perfdb

    monkeypatch.setenv("CONVFLOW_CACHE_DIR", str(tmp_path / "cache"))
    with config.override(CONVFLOW_FIND_MODE="autotune"):
        tuned = convflow.explain(x, w, padding=1, backend="opencl")
        key = perfdb.problem_key(find.problem_fields(tuned, backend))
        perfdb.current().store(key, perfdb.Entry("vec_im2col_gemm", {"vec_im2col_gemm": 0.1},
                                                 0.0))
        cached = convflow.explain(x, w, padding=1, backend="opencl")
    assert cached.source == "cache" and cached.algorithm == after.algorithm
    stored = perfdb.PerfDB(perfdb.current().directory).lookup(key)
    assert stored is not None and stored.algorithm == after.algorithm
    assert str(stored.timings["vec_im2col_gemm"]).startswith("failed at run time")


def test_device_limits_are_part_of_the_opencl_rules(monkeypatch):
    """A GPU whose work-groups are too small for the tiled GEMM and tiled_direct: the rules
    refuse those solvers up front (explain() says why) and choose one that runs, with no
    run-time fallback."""
    import dataclasses
    import warnings

    from conftest import require_backend

    require_backend("opencl")
    backend = get_backend("opencl")
    entry, device, info = backend._devices[0]
    small = dataclasses.replace(info, name="tiny device", type="gpu", max_work_group_size=16)
    monkeypatch.setattr(backend, "_devices", [(entry, device, small), *backend._devices[1:]])
    x, w = _arrays((1, 16, 12, 12), (16, 16, 3, 3))
    decision = convflow.explain(x, w, padding=1, backend="opencl")
    outcomes = {o.rule: o.detail for o in decision.algorithm_rules}
    for name in ("winograd", "gemm_1x1", "im2col_gemm"):
        assert outcomes[name] == ("its tiled GEMM needs work-groups of at least 64 items; "
                                  "'tiny device' allows 16"), name
    assert outcomes["tiled_direct"] == ("tiled_direct needs work-groups of 32 items; "
                                        "'tiny device' allows 16")
    assert decision.algorithm == "naive"
    roomy = dataclasses.replace(small, max_work_group_size=1024, local_mem_size=1024)
    monkeypatch.setattr(backend, "_devices", [(entry, device, roomy), *backend._devices[1:]])
    x, w = _arrays((1, 8, 12, 12), (8, 8, 5, 5))
    ok, why = backend.algorithm("tiled_direct").applies(
        convflow.explain(x, w, padding=2, backend="opencl").problem)
    assert not ok and why.endswith("bytes of local memory, but 'tiny device' has 1024")
    monkeypatch.setattr(backend, "_devices", [(entry, device, small), *backend._devices[1:]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", convflow.SolverFallbackWarning)
        y = convflow.conv2d(x, w, padding=2, backend="opencl")
    assert_close(y, reference.conv(x, w, None, (1, 1), ((2, 2), (2, 2)), (1, 1), 1), "float32")


def test_find_mode_shows_the_variant_of_each_timed_candidate(tmp_path, monkeypatch):
    from convflow import config

    monkeypatch.setenv("CONVFLOW_CACHE_DIR", str(tmp_path / "cache"))
    x, w = _arrays((2, 64, 40, 40), (64, 64, 3, 3))
    with config.override(CONVFLOW_FIND_MODE="autotune", CONVFLOW_TUNE_BUDGET_MS=200):
        tuned = convflow.explain(x, w, padding=1, backend="numba")
        cached = convflow.explain(x, w, padding=1, backend="numba")
    for decision in (tuned, cached):
        assert decision.timed_variants["packed_direct"] == numba_algorithms.PER_IMAGE
        assert decision.timed_variants["im2col_gemm"] == ""
        assert f"packed_direct ({numba_algorithms.PER_IMAGE})" in str(decision)
