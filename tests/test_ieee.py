"""Non-finite values: every algorithm of every backend gives one IEEE answer.

The defined behaviour is the one PyTorch's CPU convolution has: a forward pass with zero
padding multiplies the padding zeros by the weights (so an Inf weight makes ``0 * Inf = NaN``
at the border outputs), a weight gradient multiplies them by the output gradient, and a data
gradient (or a transposed convolution) sums only the products of real entries. NaN and Inf
propagate as IEEE arithmetic says. Each algorithm is checked on its own against the float64
reference: the same positions are NaN, +Inf and -Inf, and the finite ones agree.
"""

from __future__ import annotations

import numpy as np
import pytest

import convflow

import reference
from helpers import runnable_algorithms
from ieee_cases import PLACES, SHAPES, assert_ieee_equal, operands


def _algorithms(backend: str, decision: convflow.Decision) -> list[str]:
    return runnable_algorithms(backend, decision)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("place", ["weight", "input"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_forward_non_finite(backend, shape, place, stride):
    x, w, _, groups = operands(shape, place, stride)
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    expected = reference.conv(x32, w32, stride=(stride, stride), padding=((1, 1), (1, 1)),
                              groups=groups)
    kwargs = dict(stride=stride, padding=1, groups=groups, backend=backend)
    decision = convflow.explain(x32, w32, **kwargs)
    for algorithm in _algorithms(backend, decision):
        y = convflow.conv2d(x32, w32, algorithm=algorithm, **kwargs)
        assert_ieee_equal(np.asarray(y), expected, f"{backend} {algorithm}")


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("place", ["weight", "input"])
@pytest.mark.parametrize("shape", ["dense", "depthwise"])
def test_transposed_non_finite(backend, shape, place, stride):
    """A transposed convolution scatters real products only: no NaN from padding zeros."""
    x, w, _, groups = operands(shape, place, stride)
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    expected = reference.conv_transpose(x32, w32, stride=(stride, stride),
                                        padding=((1, 1), (1, 1)), groups=groups)
    kwargs = dict(stride=stride, padding=1, groups=groups, backend=backend)
    decision = convflow.explain(x32, w32, transposed=True, **kwargs)
    for algorithm in _algorithms(backend, decision):
        y = convflow.conv_transpose2d(x32, w32, algorithm=algorithm, **kwargs)
        assert_ieee_equal(np.asarray(y), expected, f"{backend} {algorithm}")


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("shape", ["dense", "depthwise"])
def test_backward_non_finite(backend, shape, place, stride):
    x, w, dy, groups = operands(shape, place, stride)
    x32, w32, dy32 = (a.astype(np.float32) for a in (x, w, dy))
    expected_dx, expected_dw, _ = reference.conv_backward(
        dy32, x32, w32, stride=(stride, stride), padding=((1, 1), (1, 1)), groups=groups)
    kwargs = dict(stride=stride, padding=1, groups=groups, backend=backend)
    for direction, index, expected in (("backward_data", 0, expected_dx),
                                       ("backward_weight", 1, expected_dw)):
        decision = convflow.explain(x32, w32, direction=direction, **kwargs)
        mask = (index == 0, index == 1, False)
        for algorithm in _algorithms(backend, decision):
            grads = convflow.conv_backward(dy32, x32, w32, output_mask=mask, algorithm=algorithm,
                                           **kwargs)
            assert_ieee_equal(np.asarray(grads[index]), expected,
                               f"{backend} {direction} {algorithm}")


def _last(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("shape", ["dense", "depthwise"])
def test_channels_last_non_finite(backend, shape, place, stride):
    """The same answers from channels-last data (the solvers that compute it in place have
    their own kernels)."""
    x, w, dy, groups = operands(shape, place, stride)
    x32, w32, dy32 = (a.astype(np.float32) for a in (x, w, dy))
    geometry = dict(stride=(stride, stride), padding=((1, 1), (1, 1)), groups=groups)
    expected_y = reference.conv(x32, w32, **geometry)
    expected_dx, expected_dw, _ = reference.conv_backward(dy32, x32, w32, **geometry)
    kwargs = dict(stride=stride, padding=1, groups=groups, backend=backend, layout="NHWC")
    for direction, expected in (("forward", expected_y), ("backward_data", expected_dx),
                                ("backward_weight", expected_dw)):
        decision = convflow.explain(_last(x32), w32, direction=direction, **kwargs)
        for algorithm in _algorithms(backend, decision):
            if direction == "forward":
                got = np.moveaxis(np.asarray(convflow.conv2d(
                    _last(x32), w32, algorithm=algorithm, **kwargs)), -1, 1)
            else:
                index = 0 if direction == "backward_data" else 1
                grads = convflow.conv_backward(_last(dy32), _last(x32), w32,
                                               output_mask=(index == 0, index == 1, False),
                                               algorithm=algorithm, **kwargs)
                got = np.asarray(grads[index])
                got = np.moveaxis(got, -1, 1) if index == 0 else got
            assert_ieee_equal(got, expected, f"{backend} NHWC {direction} {algorithm}")
