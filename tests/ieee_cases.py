"""Operands with non-finite values and the IEEE comparison, shared by tests/test_ieee.py (every
backend's algorithms) and tests/test_cupy_kernels.py (the CUDA kernels built for the host)."""

from __future__ import annotations

import numpy as np

SHAPES = {
    # name: (input shape, weight shape, groups)
    "dense": ((2, 4, 7, 7), (4, 4, 3, 3), 1),
    "depthwise": ((2, 4, 7, 7), (4, 1, 3, 3), 4),
    "wide": ((1, 16, 6, 6), (16, 16, 3, 3), 1),
}
PLACES = ["weight", "input", "grad_output"]


def classes(a: np.ndarray) -> np.ndarray:
    """0 finite, 1 NaN, 2 +Inf, 3 -Inf."""
    return np.select([np.isnan(a), a == np.inf, a == -np.inf], [1, 2, 3], 0)


def operands(shape: str, place: str, stride: int):
    """(x, w, dy, groups) in float64 for a 3x3 convolution with padding 1 and *stride*, with
    one +Inf on a corner (it meets the padding), one -Inf inside and one NaN in *place*."""
    x_shape, w_shape, groups = SHAPES[shape]
    rng = np.random.default_rng(sum(map(ord, shape + place)) + stride)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    out = (x_shape[2] + 2 - 3) // stride + 1
    dy = rng.standard_normal((x_shape[0], w_shape[0], out, out))
    target = {"weight": w, "input": x, "grad_output": dy}[place]
    flat = target.reshape(-1)
    flat[0] = np.inf
    flat[flat.size // 2] = -np.inf
    flat[-1] = np.nan
    return x, w, dy, groups


def assert_ieee_equal(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    """The same positions are NaN, +Inf and -Inf, and the finite ones agree (float32)."""
    got = np.asarray(got, dtype=np.float64)
    got_classes, expected_classes = classes(got), classes(expected)
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
