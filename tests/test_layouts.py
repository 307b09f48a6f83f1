"""Channels-last layouts, float16 / bfloat16, and fused activations, on every backend,
against the float64 reference. Tolerances per dtype are stated and justified in conftest."""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import pytest

import convflow
from convflow import ParameterError

import reference
from conftest import assert_close

CONV = {1: convflow.conv1d, 2: convflow.conv2d, 3: convflow.conv3d}
CONV_T = {1: convflow.conv_transpose1d, 2: convflow.conv_transpose2d, 3: convflow.conv_transpose3d}
LAYOUT = {1: ("NCW", "NWC"), 2: ("NCHW", "NHWC"), 3: ("NCDHW", "NDHWC")}
SPATIAL = {1: (13,), 2: (9, 11), 3: (5, 6, 7)}
DTYPES = ("float32", "float64", "float16", "bfloat16")
ACTIVATIONS = (None, "relu", "relu6", "silu", "gelu")


def to_last(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def cast(a: np.ndarray, dtype: str) -> np.ndarray:
    return a.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)


def operands(nd, dtype, channels, groups, transposed=False, seed=0):
    rng = np.random.default_rng(seed)
    x = cast(rng.standard_normal((2, channels, *SPATIAL[nd])), dtype)
    shape = (channels, 8 // groups) if transposed else (8, channels // groups)
    w = cast(rng.standard_normal((*shape, *([3] * nd))) / 3, dtype)
    b = cast(rng.standard_normal(8), dtype)
    return x, w, b


CASES = ([(2, d, a, last) for d in DTYPES for a in ACTIVATIONS for last in (False, True)]
         + [(nd, d, a, True) for nd in (1, 3) for d, a in zip(DTYPES, ACTIVATIONS[1:])])


@pytest.mark.parametrize("nd, dtype, activation, last", CASES,
                         ids=lambda v: str(v) if not isinstance(v, bool) else ("last" if v else "first"))
def test_forward(backend, nd, dtype, activation, last):
    x, w, b = operands(nd, dtype, channels=6, groups=2)
    expected = reference.activate(reference.conv(x, w, b, (2,) * nd, ((1, 0),) * nd, None, 2),
                                  activation)
    layout = LAYOUT[nd][last]
    y = CONV[nd](to_last(x) if last else x, w, b, 2, ((1, 0),) * nd, 1, 2, layout=layout,
                 activation=activation, backend=backend)
    assert_close(np.moveaxis(y, -1, 1) if last else y, expected, dtype)
    assert y.flags.c_contiguous


@pytest.mark.parametrize("nd, dtype, activation, last", CASES[::3],
                         ids=lambda v: str(v) if not isinstance(v, bool) else ("last" if v else "first"))
def test_transposed(backend, nd, dtype, activation, last):
    x, w, b = operands(nd, dtype, channels=4, groups=2, transposed=True)
    expected = reference.activate(
        reference.conv_transpose(x, w, b, (2,) * nd, ((1, 1),) * nd, (1,) * nd, 2, None),
        activation)
    y = CONV_T[nd](to_last(x) if last else x, w, b, 2, 1, 1, 2, layout=LAYOUT[nd][last],
                   activation=activation, backend=backend)
    assert_close(np.moveaxis(y, -1, 1) if last else y, expected, dtype)


@pytest.mark.parametrize("nd, dtype", [(2, "float32"), (2, "bfloat16"), (2, "float16"),
                                       (1, "float64"), (3, "float32")])
@pytest.mark.parametrize("transposed", [False, True])
def test_backward_in_channels_last(backend, nd, dtype, transposed):
    x, w, _ = operands(nd, dtype, channels=4, groups=2, transposed=transposed, seed=3)
    pads = ((1, 1),) * nd
    if transposed:
        y = reference.conv_transpose(x, w, None, (2,) * nd, pads, None, 2, None)
    else:
        y = reference.conv(x, w, None, (2,) * nd, pads, None, 2)
    dy = cast(np.random.default_rng(4).standard_normal(y.shape), dtype)
    expected = reference.conv_backward(dy, x, w, (2,) * nd, pads, None, 2, transposed)
    grads = convflow.conv_backward(to_last(dy), to_last(x), w, stride=2, padding=1, groups=2,
                                   transposed=transposed, layout=LAYOUT[nd][1], backend=backend)
    assert grads[0].shape == to_last(x).shape and grads[0].flags.c_contiguous
    assert_close(np.moveaxis(grads[0], -1, 1), expected[0], dtype)
    assert_close(grads[1], expected[1], dtype)
    assert_close(grads[2], expected[2], dtype)


def test_unbatched_channels_last_and_tensors(backend):
    x, w, b = operands(2, "float32", channels=6, groups=2)
    expected = reference.activate(reference.conv(x, w, b, None, ((1, 1), (1, 1)), None, 2), "relu")
    image = to_last(x)[0]  # (H, W, C)
    y = convflow.conv2d(image, w, b, padding=1, groups=2, layout="NHWC", activation="relu",
                        backend=backend)
    assert y.shape == (9, 11, 8)
    assert_close(np.moveaxis(y, -1, 0)[None], expected[:1], "float32")
    t = convflow.conv2d(convflow.tensor(to_last(x)), convflow.tensor(w), b, padding=1, groups=2,
                        layout="nhwc", activation="relu", backend=backend)
    assert isinstance(t, convflow.Tensor) and t.shape == (2, 9, 11, 8)
    assert_close(np.moveaxis(t.numpy(), -1, 1), expected, "float32")


def test_activations_keep_ieee_semantics(backend):
    x = np.zeros((1, 1, 1, 6), np.float32)
    x[0, 0, 0] = [np.nan, np.inf, -np.inf, -3.0, 3.0, 8.0]
    w = np.ones((1, 1, 1, 1), np.float32)
    relu = convflow.conv2d(x, w, activation="relu", backend=backend)[0, 0, 0]
    np.testing.assert_array_equal(relu, [np.nan, np.inf, 0, 0, 3, 8])
    relu6 = convflow.conv2d(x, w, activation="relu6", backend=backend)[0, 0, 0]
    np.testing.assert_array_equal(relu6, [np.nan, 6, 0, 0, 3, 6])
    # x * sigmoid(x) and x * Phi(x) in IEEE arithmetic: -inf * 0 is NaN (as in PyTorch).
    for name in ("silu", "gelu"):
        got = convflow.conv2d(x, w, activation=name, backend=backend)[0, 0, 0]
        assert np.isnan(got[0]) and got[1] == np.inf and np.isnan(got[2]), (name, got)
        np.testing.assert_allclose(got[3:], reference.activate(x[0, 0, 0, 3:], name), rtol=1e-6)


def test_explain_reports_layout_and_epilogue(backend):
    x = np.broadcast_to(np.float32(0), (2, 28, 28, 32))
    w = np.broadcast_to(np.float32(0), (32, 32, 3, 3))
    text = str(convflow.explain(x, w, padding=1, layout="NHWC", activation="relu",
                                backend=backend))
    assert "channels-last" in text
    assert ("read and written in place" in text) or ("layout conversion" in text)
    assert "relu" in text


@pytest.mark.parametrize("call, match", [
    (lambda: convflow.conv2d(np.zeros((1, 4, 4, 2)), np.zeros((2, 2, 1, 1)), layout="NWC"),
     r"conv2d: layout must be 'NCHW' \(channels first, the default\) or 'NHWC' \(channels last\), "
     r"but got 'NWC'"),
    (lambda: convflow.conv3d(np.zeros((1, 2, 4, 4, 4)), np.zeros((2, 2, 1, 1, 1)), layout="NDHCW"),
     r"did you mean 'NDHWC'"),
    (lambda: convflow.conv2d(np.zeros((1, 2, 4, 4)), np.zeros((2, 2, 1, 1)), activation="tanh"),
     r"activation must be one of 'relu', 'relu6', 'silu', 'gelu' or None, but got 'tanh'"),
    (lambda: convflow.conv2d(np.zeros((1, 2, 4, 4)), np.zeros((2, 2, 1, 1)), activation="Relu6"),
     None),
    (lambda: convflow.conv2d(np.zeros((1, 4, 4, 3)), np.zeros((2, 2, 1, 1)), layout="NHWC"),
     r"expected input\[1, 4, 4, 3\] \(layout NHWC\) to have 2 channels"),
    (lambda: convflow.conv_backward(np.zeros((1, 4, 4, 2)), np.zeros((1, 4, 4, 2)),
                                    np.zeros((2, 2, 1, 1)), layout="NCW"),
     r"conv_backward: layout must be 'NCHW'"),
])
def test_layout_and_activation_errors(call, match):
    if match is None:
        call()  # case-insensitive names are accepted
        return
    with pytest.raises((ParameterError, convflow.ShapeError), match=match):
        call()


def test_bfloat16_dtype_mismatch_is_an_error():
    x = np.zeros((1, 2, 4, 4), ml_dtypes.bfloat16)
    with pytest.raises(convflow.DTypeError, match="input has dtype bfloat16 but weight has dtype "
                                                   "float32"):
        convflow.conv2d(x, np.zeros((2, 2, 1, 1), np.float32))


def test_all_combinations_listed():
    assert len(list(itertools.product(DTYPES, ACTIVATIONS, (False, True)))) + 8 == len(CASES)
