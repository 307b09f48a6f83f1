"""Find mode, the perf-db, algorithm forcing and disabling, and deterministic mode."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import convflow
from convflow import ParameterError, config, find, perfdb
from convflow.backends import get_backend

X = np.random.default_rng(0).standard_normal((2, 16, 20, 20)).astype(np.float32)
W = np.random.default_rng(1).standard_normal((16, 16, 3, 3)).astype(np.float32)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVFLOW_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=600)


EXPLAIN = """
import json, numpy as np, convflow
from convflow import find
if {forbid_timing}:
    def forbidden(*args, **kwargs):
        raise AssertionError("timed although the perf-db has the answer")
    find.time_candidates = forbidden
x = np.zeros((2, 16, 20, 20), np.float32); w = np.zeros((16, 16, 3, 3), np.float32)
d = convflow.explain(x, w, padding=1)
y = convflow.conv2d(x + 1, w + 1, padding=1)
assert float(y[0, 0, 5, 5]) == 16 * 9, y[0, 0, 5, 5]
print(json.dumps({{"source": d.source, "algorithm": d.algorithm, "timings": dict(d.timings)}}))
"""


def run_explain(cache_dir, forbid_timing=False, **env):
    result = python(EXPLAIN.format(forbid_timing=forbid_timing), CONVFLOW_FIND_MODE="autotune",
                    CONVFLOW_CACHE_DIR=str(cache_dir), **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_tuning_is_reused_by_a_later_process_without_timing(cache_dir):
    first, _ = run_explain(cache_dir)
    assert first["source"] == "autotune"
    measured = {k: v for k, v in first["timings"].items() if isinstance(v, float)}
    assert len(measured) >= 2 and first["algorithm"] == min(measured, key=measured.get)
    second, _ = run_explain(cache_dir, forbid_timing=True)
    assert second["source"] == "cache" and second["algorithm"] == first["algorithm"]
    assert second["timings"] == first["timings"]
    assert perfdb.FILE_NAME in {p.name for p in cache_dir.iterdir()}


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupted_perf_db_is_reported_once_and_rebuilt(cache_dir, damage):
    run_explain(cache_dir)
    path = cache_dir / perfdb.FILE_NAME
    if damage == "garbage":
        path.write_bytes(b"this is not a database" * 100)
    else:
        path.write_bytes(path.read_bytes()[:700])
    result, stderr = run_explain(cache_dir)
    assert result["source"] == "autotune"
    assert stderr.count("was unreadable") == 1 and "a new one started" in stderr
    assert any(p.name.startswith(perfdb.FILE_NAME + ".corrupt-") for p in cache_dir.iterdir())
    again, stderr = run_explain(cache_dir, forbid_timing=True)
    assert again["source"] == "cache" and "unreadable" not in stderr


def test_concurrent_tuners_share_one_perf_db(cache_dir):
    code = textwrap.dedent("""
        import sys, numpy as np, convflow
        i = int(sys.argv[1])
        for k in range(6):
            c = 8 + 4 * ((i + k) % 4)
            x = np.zeros((1, c, 12 + k, 12), np.float32); w = np.zeros((8, c, 3, 3), np.float32)
            d = convflow.explain(x, w, padding=1)
            assert d.source in ("autotune", "cache"), d.source
        print("ok")
    """)
    env = {**os.environ, "CONVFLOW_FIND_MODE": "autotune", "CONVFLOW_CACHE_DIR": str(cache_dir),
           "CONVFLOW_TUNE_BUDGET_MS": "200"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(4)]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0 and out.strip() == "ok", err
    with sqlite3.connect(cache_dir / perfdb.FILE_NAME) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        keys = [row[0] for row in db.execute("SELECT key FROM entries")]
    assert len(keys) == len(set(keys)) and 4 <= len(keys) <= 24
    for key in keys:
        assert json.loads(key)["backend"] == "numba"


def test_records_are_data_only(cache_dir):
    with config.override(CONVFLOW_FIND_MODE="autotune"):
        decision = convflow.explain(X, W, padding=1)
    db = perfdb.current()
    key = perfdb.problem_key(find.problem_fields(decision, get_backend("numba")))
    assert db.lookup(key) is not None
    with sqlite3.connect(db.path) as raw:
        raw.execute("UPDATE entries SET timings = ? WHERE key = ?", ("__import__('os')", key))
    fresh = perfdb.PerfDB(db.directory)
    assert fresh.lookup(key) is None  # not JSON: ignored, never evaluated


def test_heuristic_mode_times_nothing(cache_dir, monkeypatch):
    monkeypatch.setattr(find, "time_candidates", lambda *a: pytest.fail("timed in heuristic mode"))
    decision = convflow.explain(X, W, padding=1)
    assert decision.source == "heuristic" and not decision.timings
    assert not cache_dir.exists()


def test_budget_and_failing_candidates(cache_dir, monkeypatch):
    backend = get_backend("numba")
    real_forward = backend.forward

    def forward(x, w, b, problem, algorithm):
        if algorithm == "im2col_gemm":
            raise MemoryError("pretend the scratch does not fit")
        if algorithm == "packed_direct":
            time.sleep(0.002)  # the rules' choice, timed first, outlasts a 1 ms budget
        return real_forward(x, w, b, problem, algorithm)

    monkeypatch.setattr(backend, "forward", forward)
    with config.override(CONVFLOW_FIND_MODE="autotune"):
        decision = convflow.explain(X[:, :, :19], W, padding=1)
    assert decision.timings["im2col_gemm"].startswith("failed: MemoryError: pretend")
    assert decision.source == "autotune" and decision.algorithm != "im2col_gemm"
    with config.override(CONVFLOW_FIND_MODE="autotune", CONVFLOW_TUNE_BUDGET_MS=1):
        decision = convflow.explain(X[:, :, :18], W, padding=1)
    first = next(iter(decision.timings))
    assert first == "packed_direct" and isinstance(decision.timings[first], float)
    assert all(v == "skipped: tuning budget spent" for k, v in decision.timings.items()
               if k != first), decision.timings


def test_forcing_by_variable_and_argument(monkeypatch):
    monkeypatch.setenv("CONVFLOW_ALGO", "direct")
    decision = convflow.explain(X, W, padding=1)
    assert (decision.algorithm, decision.source) == ("direct", "forced")
    assert "forced by CONVFLOW_ALGO='direct'" in str(decision)
    assert convflow.explain(X, W, padding=1, algorithm="im2col_gemm").algorithm == "im2col_gemm"
    monkeypatch.setenv("CONVFLOW_ALGO", "tiled_direct")
    with pytest.raises(ParameterError, match=r"CONVFLOW_ALGO='tiled_direct' is not an algorithm of "
                                             r"the numba backend .* valid for this problem: "
                                             r"fft, winograd, packed_gemm, packed_direct, im2col_gemm, direct"):
        convflow.conv2d(X, W, padding=1)
    monkeypatch.setenv("CONVFLOW_ALGO", "gemm_1x1")
    with pytest.raises(ParameterError, match=r"CONVFLOW_ALGO='gemm_1x1' cannot run this problem"):
        convflow.conv2d(X, W, padding=1)


def test_disabling_algorithms(monkeypatch):
    monkeypatch.setenv("CONVFLOW_DISABLE_ALGOS", "packed_direct")
    decision = convflow.explain(X, W, padding=1)
    assert decision.algorithm == "im2col_gemm" and "packed_direct" not in decision.candidates
    assert "disabled by CONVFLOW_DISABLE_ALGOS" in str(decision)
    np.testing.assert_allclose(convflow.conv2d(X, W, padding=1),
                               convflow.conv2d(X, W, padding=1, algorithm="direct"), rtol=1e-4,
                               atol=1e-4)
    with pytest.raises(ParameterError, match=r"algorithm='packed_direct' is disabled by "
                                             r"CONVFLOW_DISABLE_ALGOS"):
        convflow.conv2d(X, W, padding=1, algorithm="packed_direct")
    compiled = "fft,winograd,packed_gemm,packed_direct,im2col_gemm,direct"
    monkeypatch.setenv("CONVFLOW_DISABLE_ALGOS", compiled)
    assert convflow.explain(X, W, padding=1).algorithm == "numpy_taps"   # no compiled code left
    monkeypatch.setenv("CONVFLOW_DISABLE_ALGOS", compiled + ",numpy_taps")
    with pytest.raises(ParameterError, match=r"no algorithm of the numba backend is left"):
        convflow.conv2d(X, W, padding=1)
    monkeypatch.setenv("CONVFLOW_DISABLE_ALGOS", "im2col")
    with pytest.raises(ParameterError, match=r"CONVFLOW_DISABLE_ALGOS='im2col': unknown algorithm "
                                             r"'im2col' \(did you mean 'im2col_gemm'\?\)"):
        convflow.conv2d(X, W, padding=1)


def test_deterministic_mode_excludes_blas(monkeypatch):
    monkeypatch.setenv("CONVFLOW_DETERMINISTIC", "1")
    pointwise = convflow.explain(X, W[:, :, :1, :1])
    assert pointwise.algorithm == "packed_direct"
    assert "gemm_1x1" not in pointwise.candidates and "im2col_gemm" not in pointwise.candidates
    assert "not deterministic" in str(pointwise)
    with pytest.raises(ParameterError, match=r"algorithm='im2col_gemm' is not deterministic"):
        convflow.conv2d(X, W, algorithm="im2col_gemm")
    monkeypatch.setenv("CONVFLOW_DISABLE_ALGOS", "fft,packed_direct,direct")
    with pytest.raises(ParameterError, match=r"no algorithm of the numba backend is left .* "
                                             r"relax CONVFLOW_DISABLE_ALGOS or CONVFLOW_DETERMINISTIC"):
        convflow.conv2d(X, W, padding=1)


DETERMINISTIC = """
import hashlib, numpy as np, convflow
rng = np.random.default_rng(3)
digest = hashlib.sha256()
for shape, w_shape, kw in [((4, 24, 33, 31), (16, 24, 3, 3), dict(padding=1)),
                           ((4, 24, 33, 31), (24, 1, 3, 3), dict(padding=1, groups=24)),
                           ((4, 24, 33, 31), (16, 24, 1, 1), dict()),
                           ((3, 8, 40, 40), (8, 8, 5, 5), dict(stride=2, padding=2))]:
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    y = convflow.conv2d(x, w, **kw)
    for r in (y, *convflow.conv_backward(np.ones_like(y), x, w, **kw)):
        digest.update(np.ascontiguousarray(r).tobytes())
print(digest.hexdigest())
"""


def test_deterministic_results_are_bitwise_equal_across_runs_and_thread_counts():
    digests = set()
    for threads in ("1", "2", "2"):
        result = python(DETERMINISTIC, CONVFLOW_DETERMINISTIC="1", NUMBA_NUM_THREADS=threads)
        assert result.returncode == 0, result.stderr
        digests.add(result.stdout.strip())
    assert len(digests) == 1


def test_tune_and_cache_commands(cache_dir):
    env = {"CONVFLOW_CACHE_DIR": str(cache_dir), "CONVFLOW_TUNE_BUDGET_MS": "50"}
    tune = subprocess.run([sys.executable, "-m", "convflow", "tune", "--net", "alexnet", "--batch",
                           "1", "--no-progress"], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=900)
    assert tune.returncode == 0, tune.stderr
    assert tune.stdout.count("[autotune]") == 5 and "tuned 5 problems (autotune: 5)" in tune.stdout
    info = subprocess.run([sys.executable, "-m", "convflow", "cache", "info"], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)
    assert "entries: 5" in info.stdout and "numba: 5" in info.stdout
    clear = subprocess.run([sys.executable, "-m", "convflow", "cache", "clear"], capture_output=True,
                           text=True, env={**os.environ, **env}, timeout=300)
    assert "removed 5 entries" in clear.stdout


def test_find_mode_on_every_backend(backend, cache_dir):
    x = np.random.default_rng(4).standard_normal((1, 8, 14, 14)).astype(np.float32)
    w = np.random.default_rng(5).standard_normal((8, 8, 3, 3)).astype(np.float32)
    with config.override(CONVFLOW_FIND_MODE="autotune", CONVFLOW_TUNE_BUDGET_MS=20000):
        first = convflow.explain(x, w, padding=1, backend=backend)
        assert first.source == "autotune", str(first)
        assert all(isinstance(v, float) or v.startswith(("failed", "skipped"))
                   for v in first.timings.values())
        assert isinstance(first.timings[first.algorithm], float)
        perfdb._databases.clear()  # a fresh in-memory cache, as a new process would have
        again = convflow.explain(x, w, padding=1, backend=backend)
        assert (again.source, again.algorithm) == ("cache", first.algorithm)
        y = convflow.conv2d(x, w, padding=1, backend=backend)
    np.testing.assert_allclose(y, convflow.conv2d(x, w, padding=1, algorithm="direct"), rtol=1e-4,
                               atol=1e-4)


def test_layout_and_activation_get_their_own_perfdb_entries(cache_dir, monkeypatch):
    """Tuning an NCHW problem says nothing about the same shapes as NHWC, or with a fused
    activation: each is timed (on operands in its own layout) and stored under its own key."""
    timed: list[tuple[bool, str, bool]] = []
    real = find.time_candidates

    def recording(backend, decision, order):
        p = decision.problem
        a, _ = find._operands(backend, decision)
        # The activation operand lies in memory as the problem's layout says.
        timed.append((p.channels_last, p.activation, bool(a.data.flags.c_contiguous)))
        return real(backend, decision, order)

    monkeypatch.setattr(find, "time_candidates", recording)
    x_nhwc = np.ascontiguousarray(np.moveaxis(X, 1, -1))
    variants = [dict(input=X), dict(input=x_nhwc, layout="NHWC"),
                dict(input=X, activation="relu"), dict(input=x_nhwc, layout="NHWC",
                                                       activation="relu")]
    with config.override(CONVFLOW_FIND_MODE="autotune"):
        decisions = [convflow.explain(weight=W, padding=1, **v) for v in variants]
        again = [convflow.explain(weight=W, padding=1, **v) for v in variants]
    assert [d.source for d in decisions] == ["autotune"] * 4
    assert [d.source for d in again] == ["cache"] * 4
    assert timed == [(False, "", True), (True, "", False), (False, "relu", True),
                     (True, "relu", False)]
    keys = {perfdb.problem_key(find.problem_fields(d, get_backend("numba"))) for d in decisions}
    assert len(keys) == 4
    fields = json.loads(sorted(keys)[0])
    for name in ("channels_last", "activation", "dtype", "stride", "padding", "dilation",
                 "groups", "x_shape", "w_shape", "y_shape", "direction",
                 "CONVFLOW_DETERMINISTIC", "CONVFLOW_ALLOW_TF32", "CONVFLOW_WORKSPACE_MB"):
        assert name in fields, name
