"""The float64 reference checked against independent definitions, so tests trust it."""

from __future__ import annotations

import numpy as np
import pytest

import reference
from helpers import assert_matches_finite_differences


def test_1d_matches_numpy_correlate():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(20)
    w = rng.standard_normal(5)
    y = reference.conv(x[None, None], w[None, None])[0, 0]
    np.testing.assert_allclose(y, np.correlate(x, w, mode="valid"))
    padded = reference.conv(x[None, None], w[None, None], padding=((2, 2),))[0, 0]
    np.testing.assert_allclose(padded, np.correlate(x, w, mode="same"))


def test_small_2d_by_hand():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])
    y = reference.conv(x, w, stride=(2, 2))
    np.testing.assert_array_equal(y[0, 0], [[-5.0, -5.0], [-5.0, -5.0]])
    np.testing.assert_array_equal(reference.conv(x, w, np.array([1.0]), padding=((1, 0), (0, 0)))[0, 0, 0],
                                  [0.0, -1.0, -2.0])


def test_padding_modes_match_numpy_pad():
    x = np.arange(30.0).reshape(1, 2, 3, 5)
    pairs = ((2, 1), (1, 3))
    for mode, numpy_mode in (("zeros", "constant"), ("reflect", "reflect"), ("replicate", "edge"),
                             ("circular", "wrap")):
        np.testing.assert_array_equal(reference.pad(x, pairs, mode),
                                      np.pad(x, ((0, 0), (0, 0), *pairs), mode=numpy_mode))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_transposed_is_the_adjoint_of_forward(nd):
    rng = np.random.default_rng(nd)
    stride, dilation = (2,) * nd, (1,) * (nd - 1) + (2,)
    pads = ((1, 0),) * nd
    x = rng.standard_normal((2, 4, *([7] * nd)))
    w = rng.standard_normal((6, 2, *([3] * nd)))
    y = reference.conv(x, w, None, stride, pads, dilation, 2)
    g = rng.standard_normal(y.shape)
    output_padding = tuple(
        7 - ((o - 1) * s - lo - hi + d * 2 + 1) for o, s, (lo, hi), d in zip(y.shape[2:], stride, pads, dilation))
    back = reference.conv_transpose(g, w, None, stride, pads, output_padding, 2, dilation)
    assert back.shape == x.shape
    np.testing.assert_allclose(np.vdot(y, g), np.vdot(x, back))
    grad_input, _, _ = reference.conv_backward(g, x, w, stride, pads, dilation, 2)
    np.testing.assert_allclose(grad_input, back)


@pytest.mark.parametrize("transposed", [False, True])
def test_gradients_match_finite_differences(transposed):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 2, 5, 4))
    w = rng.standard_normal((2, 2, 2, 3)) if transposed else rng.standard_normal((4, 1, 2, 3))
    kwargs = dict(stride=(2, 1), padding=((1, 0), (0, 1)), dilation=(1, 2), groups=2)

    def forward(xv, wv):
        if transposed:
            return reference.conv_transpose(xv, wv, None, kwargs["stride"], kwargs["padding"], (1, 0),
                                            2, kwargs["dilation"])
        return reference.conv(xv, wv, None, kwargs["stride"], kwargs["padding"], kwargs["dilation"], 2)

    y = forward(x, w)
    g = rng.standard_normal(y.shape)
    gi, gw, gb = reference.conv_backward(g, x, w, kwargs["stride"], kwargs["padding"],
                                         kwargs["dilation"], 2, transposed, (1, 0))
    np.testing.assert_allclose(gb, g.sum(axis=(0, 2, 3)))
    assert_matches_finite_differences(forward, x, w, gi, gw, g)
