"""Forward convolutions on every backend and algorithm against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

import convflow

from cases import forward_cases, random_cases
from conftest import assert_close
from helpers import CONV, conv_kwargs, forward_operands, reference_forward, runnable_algorithms

FORWARD = forward_cases()


def check_forward(backend: str, case, dtype: str) -> list[str]:
    x, w, b = forward_operands(case, dtype)
    expected = reference_forward(case, x, w, b)
    kwargs = conv_kwargs(case)
    decision = convflow.explain(x, w, b, backend=backend, **kwargs)
    algorithms = runnable_algorithms(backend, decision)
    assert decision.algorithm in algorithms
    for algorithm in [None, *algorithms]:
        y = CONV[case.nd](x, w, b, backend=backend, algorithm=algorithm, **kwargs)
        try:
            assert_close(y, expected, dtype)
        except AssertionError as exc:
            raise AssertionError(f"algorithm={algorithm}: {exc}") from None
    return algorithms


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", FORWARD, ids=lambda c: c.id)
def test_forward_grid(backend, case, dtype):
    check_forward(backend, case, dtype)


@pytest.mark.parametrize("case", FORWARD[::3], ids=lambda c: c.id)
def test_forward_float16(backend, case):
    check_forward(backend, case, "float16")


@pytest.mark.parametrize("case", random_cases(seed=11, count=60), ids=lambda c: c.id)
def test_forward_random_sweep(backend, case):
    check_forward(backend, case, "float64")


def test_every_algorithm_is_exercised_by_the_grid(backend):
    """Each algorithm of the backend can run at least one grid case (and so is tested)."""
    from convflow.backends import get_backend

    seen: set[str] = set()
    for case in FORWARD:
        x, w, b = forward_operands(case, "float32")
        seen.update(runnable_algorithms(backend, convflow.explain(x, w, b, backend=backend,
                                                                  **conv_kwargs(case))))
    names = {rule.name for rule in get_backend(backend).algorithm_rules()
             if convflow.Direction.FORWARD in rule.directions}
    assert names <= seen, f"never exercised: {names - seen}"


def test_unbatched_input_gives_unbatched_output(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 8, 8))
    w = rng.standard_normal((5, 3, 3, 3))
    y = convflow.conv2d(x, w, padding=1, backend=backend)
    assert y.shape == (5, 8, 8)
    np.testing.assert_allclose(y, convflow.conv2d(x[None], w, padding=1, backend=backend)[0])


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_empty_batch(backend, nd):
    x = np.zeros((0, 4, *([6] * nd)), dtype=np.float32)
    w = np.ones((8, 2, *([3] * nd)), dtype=np.float32)
    y = CONV[nd](x, w, np.ones(8, np.float32), stride=2, padding="same", groups=2, backend=backend)
    assert y.shape == (0, 8, *([3] * nd)) and y.dtype == np.float32


def test_nan_and_inf_propagate(backend):
    x = np.ones((1, 2, 6, 6), dtype=np.float32)
    x[0, 0, 2, 2] = np.nan
    x[0, 1, 4, 4] = np.inf
    w = np.ones((3, 2, 3, 3), dtype=np.float32)
    decision = convflow.explain(x, w, padding=1, backend=backend)
    for algorithm in runnable_algorithms(backend, decision):
        y = convflow.conv2d(x, w, padding=1, backend=backend, algorithm=algorithm)
        assert np.isnan(y[0, :, 1:4, 1:4]).all(), algorithm
        assert np.isnan(y[0, :, 3, 3]).all(), algorithm  # nan + inf = nan
        assert np.isposinf(y[0, :, 5, 5]).all(), algorithm
        assert np.isfinite(y[0, :, 0, 5]).all(), algorithm
