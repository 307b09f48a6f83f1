"""conv_backward (input, weight and bias gradients) against the float64 reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import convflow

import reference
from cases import Case, forward_cases, random_cases, transposed_cases
from conftest import assert_close
from helpers import assert_matches_finite_differences, rng_for, runnable_algorithms

BACKWARD = [c for c in forward_cases() if c.padding_mode == "zeros"]
BACKWARD_TRANSPOSED = transposed_cases()


def _operands(case: Case, dtype: str, transposed: bool):
    rng = rng_for(case, "backward" + dtype)
    x = rng.standard_normal((case.batch, case.in_channels, *case.spatial)).astype(dtype)
    w = rng.standard_normal(case.weight_shape(transposed)).astype(dtype)
    stride, dilation = case.per_dim(case.stride), case.per_dim(case.dilation)
    if transposed:
        y = reference.conv_transpose(x, w, None, stride, case.padding_pairs(),
                                     case.per_dim(case.output_padding), case.groups, dilation)
    else:
        y = reference.conv(x, w, None, stride, case.padding_pairs(), dilation, case.groups)
    dy = rng.standard_normal(y.shape).astype(dtype)
    expected = reference.conv_backward(dy, x, w, stride, case.padding_pairs(), dilation,
                                       case.groups, transposed, case.per_dim(case.output_padding))
    return dy, x, w, expected


def check_backward(backend: str, case: Case, dtype: str, transposed: bool) -> None:
    dy, x, w, expected = _operands(case, dtype, transposed)
    kwargs = dict(stride=case.stride, padding=case.padding, dilation=case.dilation,
                  groups=case.groups, transposed=transposed)
    if transposed:
        kwargs["output_padding"] = case.output_padding
    explain_kwargs = {k: v for k, v in kwargs.items()}
    data_pass = convflow.explain(x, w, **explain_kwargs, backend=backend, direction="backward_data")
    weight_pass = convflow.explain(x, w, **explain_kwargs, backend=backend,
                                   direction="backward_weight")
    algorithms = sorted(set(runnable_algorithms(backend, data_pass))
                        & set(runnable_algorithms(backend, weight_pass)))
    for algorithm in [None, *algorithms]:
        grads = convflow.conv_backward(dy, x, w, backend=backend, algorithm=algorithm, **kwargs)
        for name, got, want in zip(("grad_input", "grad_weight", "grad_bias"), grads, expected):
            try:
                assert_close(got, want, dtype)
            except AssertionError as exc:
                raise AssertionError(f"algorithm={algorithm} {name}: {exc}") from None


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", BACKWARD, ids=lambda c: c.id)
def test_backward_grid(backend, case, dtype):
    check_backward(backend, case, dtype, transposed=False)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", BACKWARD_TRANSPOSED, ids=lambda c: c.id)
def test_backward_transposed_grid(backend, case, dtype):
    check_backward(backend, case, dtype, transposed=True)


@pytest.mark.parametrize("case", BACKWARD[::4] + BACKWARD_TRANSPOSED[::4], ids=lambda c: c.id)
def test_backward_float16(backend, case):
    check_backward(backend, case, "float16", transposed=case in BACKWARD_TRANSPOSED)


@pytest.mark.parametrize("case", random_cases(seed=13, count=40), ids=lambda c: c.id)
def test_backward_random_sweep(backend, case):
    from dataclasses import replace

    check_backward(backend, replace(case, padding_mode="zeros"), "float64", transposed=False)


@pytest.mark.parametrize("case", random_cases(seed=14, count=40, transposed=True),
                         ids=lambda c: c.id)
def test_backward_transposed_random_sweep(backend, case):
    check_backward(backend, case, "float64", transposed=True)


@pytest.mark.parametrize("mask", list(itertools.product([False, True], repeat=3)))
def test_output_mask(backend, mask):
    case = BACKWARD[1]
    dy, x, w, expected = _operands(case, "float64", False)
    grads = convflow.conv_backward(dy, x, w, padding=case.padding, output_mask=mask,
                                   backend=backend)
    for wanted, got, want in zip(mask, grads, expected):
        if wanted:
            assert_close(got, want, "float64")
        else:
            assert got is None


def test_backward_empty_batch(backend):
    x = np.zeros((0, 4, 6, 6))
    w = np.ones((6, 2, 3, 3))
    dy = np.zeros((0, 6, 6, 6))
    gi, gw, gb = convflow.conv_backward(dy, x, w, padding=1, groups=2, backend=backend)
    assert gi.shape == x.shape and gw.shape == w.shape and gb.shape == (6,)
    assert not gw.any() and not gb.any()


def test_gradients_match_finite_differences(backend):
    """An independent check of the gradient definitions on a tiny problem."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 5, 4))
    w = rng.standard_normal((4, 1, 2, 3))
    kwargs = dict(stride=(2, 1), padding=((1, 0), (0, 2)), dilation=(1, 2), groups=2)
    y = convflow.conv2d(x, w, backend=backend, **kwargs)
    g = rng.standard_normal(y.shape)
    gi, gw, _ = convflow.conv_backward(g, x, w, backend=backend, **kwargs)
    assert_matches_finite_differences(
        lambda a, b: convflow.conv2d(a, b, backend=backend, **kwargs), x, w, gi, gw, g)
