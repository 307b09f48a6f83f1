"""Shared fixtures: the backends under test and comparison against the float64 reference.

A backend that is not available here is skipped with its reason, unless it is listed in
``CONVFLOW_TEST_REQUIRE`` (CI sets it), in which case its tests fail.
"""

from __future__ import annotations

import math
import os
import pathlib
import sys

import numpy as np
import pytest

import convflow
from convflow import config
from convflow.backends import BACKEND_NAMES

sys.path.insert(0, str(pathlib.Path(__file__).parent))

# Subprocess tests often point CONVFLOW_CACHE_DIR at a temporary directory; they share one
# numba kernel cache with this process instead of compiling every kernel again.
os.environ.setdefault("NUMBA_CACHE_DIR", str(config.cache_dir() / "numba"))

# Tests name the algorithm the rules choose and run it; numba's background warm-up would run
# numpy_taps for a process's first calls instead (test_warmup.py covers that mode).
os.environ.setdefault("CONVFLOW_NUMBA_WARMUP", "wait")

# The tolerances below are for IEEE float32: the suite runs without TF32 (cupy backend).
os.environ["CONVFLOW_ALLOW_TF32"] = "0"

# Relative tolerance against the float64 reference, per input dtype, scaled by the largest
# reference magnitude. float64: rounding of sums of ~1e3 terms. float32: 2**-24 per
# operation, grown by the reduction length (up to ~1e3 here). float16: inputs are rounded
# to float16 before the reference sees them, so only the result's rounding to float16
# (2**-11 relative) and float32 accumulation remain. bfloat16 keeps 8 significant bits: its
# result rounding is 2**-9 relative, and an activation computed after the rounding of the
# convolution in a separate pass can add about as much again; 1.6e-2 of the largest value
# leaves a factor 4 over both, with the float32 accumulation far below.
TOLERANCE = {"float64": 1e-11, "float32": 3e-5, "float16": 2e-3, "bfloat16": 1.6e-2}


def required_backends() -> set[str]:
    return set(config.get("CONVFLOW_TEST_REQUIRE"))


def require_backend(name: str) -> str:
    """Skip the test when backend *name* is unavailable (fail if CONVFLOW_TEST_REQUIRE lists it)."""
    status = convflow.available_backends()[name]
    if not status.available:
        if name in required_backends():
            pytest.fail(f"backend {name!r} is required by CONVFLOW_TEST_REQUIRE but is "
                        f"unavailable: {status.reason}")
        pytest.skip(f"backend {name!r} unavailable: {status.reason}")
    return name


@pytest.fixture(params=BACKEND_NAMES)
def backend(request: pytest.FixtureRequest) -> str:
    """Each registered backend; skipped (or failed, if required) when unavailable."""
    return require_backend(request.param)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``gpu`` need the cupy backend: skipped with its reason where it cannot
    run, failed instead if CONVFLOW_TEST_REQUIRE lists cupy."""
    if item.get_closest_marker("gpu") is None:
        return
    status = convflow.available_backends()["cupy"]
    if status.available:
        return
    if "cupy" in required_backends():
        pytest.fail(f"backend 'cupy' is required by CONVFLOW_TEST_REQUIRE but is unavailable: "
                    f"{status.reason}")
    pytest.skip(f"needs a CUDA GPU: backend 'cupy' unavailable: {status.reason}")


def algorithms_of(backend: str) -> list[str]:
    from convflow.backends import get_backend

    return [rule.name for rule in get_backend(backend).algorithm_rules()]


def assert_close(actual: object, expected: np.ndarray, dtype: str | np.dtype = "float32") -> None:
    """Compare a backend's result with the float64 reference."""
    actual_np = np.asarray(actual)
    name = np.dtype(dtype).name
    assert actual_np.shape == expected.shape, f"shape {actual_np.shape} != {expected.shape}"
    assert actual_np.dtype == np.dtype(dtype), f"dtype {actual_np.dtype} != {dtype}"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    error = float(np.abs(actual_np.astype(np.float64) - expected).max(initial=0.0))
    assert math.isfinite(error) or not np.isfinite(expected).all()
    assert error <= TOLERANCE[name] * scale, (
        f"max abs error {error:.3g} exceeds {TOLERANCE[name]:g} x {scale:.3g}")


def random_array(rng: np.random.Generator, shape: tuple[int, ...], dtype: str = "float64") -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)
