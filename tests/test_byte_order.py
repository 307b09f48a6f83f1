"""Big-endian (non-native byte order) operands give the native-order answer on every backend.

numpy arrays may store their numbers in either byte order (``'>f4'`` read from a file, a
network buffer); a backend that received the raw bytes would read other numbers. Every entry
point converts such operands first, whichever of them is non-native.
"""

from __future__ import annotations

import numpy as np
import pytest

import convflow

import reference
from conftest import assert_close

DTYPES = ["float16", "float32", "float64"]


def _swapped(a: np.ndarray) -> np.ndarray:
    """The same numbers stored in the other byte order."""
    return a.astype(a.dtype.newbyteorder("S"))


def _operands(dtype: str):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 4, 6, 6)).astype(dtype)
    w = rng.standard_normal((6, 4, 3, 3)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    return x, w, b


def test_the_swapped_arrays_really_are_non_native():
    x, _, _ = _operands("float32")
    assert not _swapped(x).dtype.isnative and np.array_equal(_swapped(x), x)


@pytest.mark.parametrize("which", ["all", "input", "weight", "bias"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward(backend, dtype, which):
    x, w, b = _operands(dtype)
    expected = reference.conv(x, w, b, padding=((1, 1), (1, 1)))
    args = {"x": x, "w": w, "b": b}
    for name in ("x", "w", "b"):
        if which == "all" or {"input": "x", "weight": "w", "bias": "b"}[which] == name:
            args[name] = _swapped(args[name])
    before = {k: v.copy() for k, v in args.items()}
    y = convflow.conv2d(args["x"], args["w"], args["b"], padding=1, backend=backend)
    assert y.dtype == np.dtype(dtype) and y.dtype.isnative
    assert_close(y, expected, dtype)
    for name, value in args.items():  # inputs are never modified
        assert value.dtype == before[name].dtype and np.array_equal(value, before[name])


@pytest.mark.parametrize("dtype", DTYPES)
def test_repeated_calls_take_no_stale_fast_path(backend, dtype):
    """A native call and a swapped call of the same shapes both give the right answer."""
    x, w, b = _operands(dtype)
    expected = reference.conv(x, w, b)
    for _ in range(2):
        assert_close(convflow.conv2d(x, w, b, backend=backend), expected, dtype)
        assert_close(convflow.conv2d(_swapped(x), _swapped(w), _swapped(b), backend=backend),
                     expected, dtype)


def test_channels_last(backend):
    x, w, b = _operands("float32")
    expected = reference.conv(x, w, b, padding=((1, 1), (1, 1)))
    y = convflow.conv2d(_swapped(np.moveaxis(x, 1, -1)), _swapped(w), b, padding=1,
                        layout="NHWC", backend=backend)
    assert_close(np.moveaxis(y, -1, 1), expected, "float32")


def test_transposed(backend):
    x, _, _ = _operands("float32")
    w = np.random.default_rng(3).standard_normal((4, 5, 3, 3)).astype(np.float32)
    expected = reference.conv_transpose(x, w, stride=(2, 2), padding=((1, 1), (1, 1)))
    y = convflow.conv_transpose2d(_swapped(x), _swapped(w), stride=2, padding=1,
                                  backend=backend)
    assert_close(y, expected, "float32")


def test_backward(backend):
    x, w, _ = _operands("float32")
    dy = np.random.default_rng(5).standard_normal((2, 6, 6, 6)).astype(np.float32)
    expected = reference.conv_backward(dy, x, w, padding=((1, 1), (1, 1)))
    grads = convflow.conv_backward(_swapped(dy), _swapped(x), _swapped(w), padding=1,
                                   backend=backend)
    for got, want in zip(grads, expected):
        assert_close(got, want, "float32")


def test_mixed_byte_orders_are_one_dtype():
    x, w, _ = _operands("float32")
    y = convflow.conv2d(_swapped(x), w, backend="numba")
    assert_close(y, reference.conv(x, w), "float32")


def test_a_real_dtype_mismatch_still_names_both_dtypes():
    x, w, _ = _operands("float32")
    with pytest.raises(convflow.DTypeError, match="input has dtype float32 but weight has "
                                                  "dtype float64"):
        convflow.conv2d(_swapped(x), _swapped(w.astype(np.float64)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_tensor_to_a_device_and_back(backend, dtype):
    x, _, _ = _operands(dtype)
    device = {"numba": "cpu", "opencl": "opencl", "cupy": "cuda"}[backend]
    t = convflow.tensor(_swapped(x), device=device)
    back = np.asarray(t)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    assert np.array_equal(back, x)
