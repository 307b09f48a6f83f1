"""Transposed convolutions on every backend and algorithm against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

import convflow

import reference
from cases import random_cases, transposed_cases
from conftest import assert_close
from helpers import (
    CONV,
    CONV_TRANSPOSE,
    forward_operands,
    reference_transposed,
    runnable_algorithms,
    transpose_kwargs,
)

TRANSPOSED = transposed_cases()


def check_transposed(backend: str, case, dtype: str) -> None:
    x, w, b = forward_operands(case, dtype, transposed=True)
    expected = reference_transposed(case, x, w, b)
    kwargs = transpose_kwargs(case)
    decision = convflow.explain(x, w, b, transposed=True, backend=backend, **kwargs)
    assert decision.problem.direction == convflow.Direction.BACKWARD_DATA
    for algorithm in [None, *runnable_algorithms(backend, decision)]:
        y = CONV_TRANSPOSE[case.nd](x, w, b, backend=backend, algorithm=algorithm, **kwargs)
        try:
            assert_close(y, expected, dtype)
        except AssertionError as exc:
            raise AssertionError(f"algorithm={algorithm}: {exc}") from None


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", TRANSPOSED, ids=lambda c: c.id)
def test_transposed_grid(backend, case, dtype):
    check_transposed(backend, case, dtype)


@pytest.mark.parametrize("case", TRANSPOSED[::3], ids=lambda c: c.id)
def test_transposed_float16(backend, case):
    check_transposed(backend, case, "float16")


@pytest.mark.parametrize("case", random_cases(seed=12, count=50, transposed=True),
                         ids=lambda c: c.id)
def test_transposed_random_sweep(backend, case):
    check_transposed(backend, case, "float64")


def test_transposed_is_the_adjoint_of_the_forward_convolution(backend):
    """<conv(x), y> == <x, conv_transpose(y)> with the same weight and parameters."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 9, 8))
    w = rng.standard_normal((6, 2, 3, 2))
    kwargs = dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2), groups=2)
    y = CONV[2](x, w, backend=backend, **kwargs)
    g = rng.standard_normal(y.shape)
    back = CONV_TRANSPOSE[2](g, w, backend=backend, output_padding=(0, 0), **kwargs)
    # conv_transpose's output covers the conv input exactly when no rows were left over.
    crop = back[:, :, : x.shape[2], : x.shape[3]]
    padded = np.zeros_like(x)
    padded[:, :, : crop.shape[2], : crop.shape[3]] = crop
    np.testing.assert_allclose(np.vdot(y, g), np.vdot(x, padded), rtol=1e-10)


def test_transposed_unbatched_and_empty(backend):
    w = np.ones((3, 2, 2, 2))
    y = convflow.conv_transpose2d(np.ones((3, 4, 4)), w, stride=2, backend=backend)
    assert y.shape == (2, 8, 8)
    np.testing.assert_allclose(y, reference.conv_transpose(np.ones((1, 3, 4, 4)), w, stride=(2, 2))[0])
    assert convflow.conv_transpose2d(np.ones((0, 3, 4, 4)), w, backend=backend).shape == (0, 2, 5, 5)
