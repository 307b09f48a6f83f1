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

SHAPES = {
    # name: (input shape, weight shape, groups)
    "dense": ((2, 4, 7, 7), (4, 4, 3, 3), 1),
    "depthwise": ((2, 4, 7, 7), (4, 1, 3, 3), 4),
    "wide": ((1, 16, 6, 6), (16, 16, 3, 3), 1),
}
PLACES = ["weight", "input", "grad_output"]


def _classes(a: np.ndarray) -> np.ndarray:
    """0 finite, 1 NaN, 2 +Inf, 3 -Inf."""
    return np.select([np.isnan(a), a == np.inf, a == -np.inf], [1, 2, 3], 0)


def _operands(shape: str, place: str, stride: int):
    x_shape, w_shape, groups = SHAPES[shape]
    rng = np.random.default_rng(sum(map(ord, shape + place)) + stride)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    out = (x_shape[2] + 2 - 3) // stride + 1
    dy = rng.standard_normal((x_shape[0], w_shape[0], out, out))
    target = {"weight": w, "input": x, "grad_output": dy}[place]
    flat = target.reshape(-1)
    # One +Inf on a corner tap (it meets the padding), one -Inf inside, one NaN.
    flat[0] = np.inf
    flat[flat.size // 2] = -np.inf
    flat[-1] = np.nan
    return x, w, dy, groups


def _assert_ieee_equal(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    got_classes, expected_classes = _classes(got), _classes(expected)
    mismatched = np.argwhere(got_classes != expected_classes)
    names = np.array(["finite", "NaN", "+Inf", "-Inf"])
    assert mismatched.size == 0, (
        f"{what}: {len(mismatched)} positions differ in kind, first {mismatched[0].tolist()}: "
        f"got {names[got_classes[tuple(mismatched[0])]]}, expected "
        f"{names[expected_classes[tuple(mismatched[0])]]}")
    finite = expected_classes == 0
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    np.testing.assert_allclose(got[finite], expected[finite], rtol=0, atol=3e-5 * scale,
                               err_msg=what)


def _algorithms(backend: str, decision: convflow.Decision) -> list[str]:
    return runnable_algorithms(backend, decision)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("place", ["weight", "input"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_forward_non_finite(backend, shape, place, stride):
    x, w, _, groups = _operands(shape, place, stride)
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    expected = reference.conv(x32, w32, stride=(stride, stride), padding=((1, 1), (1, 1)),
                              groups=groups)
    kwargs = dict(stride=stride, padding=1, groups=groups, backend=backend)
    decision = convflow.explain(x32, w32, **kwargs)
    for algorithm in _algorithms(backend, decision):
        y = convflow.conv2d(x32, w32, algorithm=algorithm, **kwargs)
        _assert_ieee_equal(np.asarray(y), expected, f"{backend} {algorithm}")


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("place", ["weight", "input"])
@pytest.mark.parametrize("shape", ["dense", "depthwise"])
def test_transposed_non_finite(backend, shape, place, stride):
    """A transposed convolution scatters real products only: no NaN from padding zeros."""
    x, w, _, groups = _operands(shape, place, stride)
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    expected = reference.conv_transpose(x32, w32, stride=(stride, stride),
                                        padding=((1, 1), (1, 1)), groups=groups)
    kwargs = dict(stride=stride, padding=1, groups=groups, backend=backend)
    decision = convflow.explain(x32, w32, transposed=True, **kwargs)
    for algorithm in _algorithms(backend, decision):
        y = convflow.conv_transpose2d(x32, w32, algorithm=algorithm, **kwargs)
        _assert_ieee_equal(np.asarray(y), expected, f"{backend} {algorithm}")


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("shape", ["dense", "depthwise"])
def test_backward_non_finite(backend, shape, place, stride):
    x, w, dy, groups = _operands(shape, place, stride)
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
            _assert_ieee_equal(np.asarray(grads[index]), expected,
                               f"{backend} {direction} {algorithm}")
