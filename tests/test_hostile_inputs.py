"""Hostile and broken inputs get convflow errors naming the argument, never a raw exception
from numba, numpy or the producer's own code."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import convflow
from convflow import config

import reference
from conftest import assert_close

X = np.ones((1, 2, 5, 5), np.float32)
W = np.ones((3, 2, 3, 3), np.float32)


@pytest.mark.parametrize("name", ["stride", "padding", "dilation"])
@pytest.mark.parametrize("value", [2**31, 2**63, 2**64, (1, 2**64)])
def test_geometry_beyond_32_bits(name, value):
    with pytest.raises(convflow.ParameterError, match=re.escape(
            f"conv2d: {name} must be at most 2147483647 (2**31 - 1) in every dimension, but got "
            f"{value!r}")):
        convflow.conv2d(X, W, **{name: value})


def test_output_padding_and_groups_beyond_32_bits():
    with pytest.raises(convflow.ParameterError, match="output_padding must be at most"):
        convflow.conv_transpose2d(X, np.ones((2, 3, 3, 3), np.float32), stride=2,
                                  output_padding=2**40)
    with pytest.raises(convflow.ParameterError,
                       match=r"groups must be at most 2147483647 \(2\*\*31 - 1\), but got "
                             r"18446744073709551616"):
        convflow.conv2d(X, W, groups=2**64)


def test_numpy_matrix_is_read_as_the_plain_array():
    x = np.matrix(np.arange(16, dtype=np.float32).reshape(2, 8))  # unbatched (C, W)
    w = np.ones((1, 2, 3), np.float32)
    y = convflow.conv1d(x, w)
    assert type(y) is np.ndarray
    assert_close(y, reference.conv(np.asarray(x)[None], w)[0], "float32")


class _ArrayRaises:
    def __array__(self, *args, **kwargs):
        raise RuntimeError("boom from __array__")


class _ArrayGarbage:
    def __array__(self, *args, **kwargs):
        return "not an array"


class _ArrayOfObjects:
    def __array__(self, *args, **kwargs):
        return np.array([object()] * 4, dtype=object)


class _DLPackRaises:
    def __dlpack__(self, *args, **kwargs):
        raise RuntimeError("boom from __dlpack__")

    def __dlpack_device__(self):
        return (1, 0)


class _DLPackGarbageCapsule:
    def __dlpack__(self, *args, **kwargs):
        return 5

    def __dlpack_device__(self):
        return (1, 0)


class _DeviceGarbage:
    def __dlpack__(self, *args, **kwargs):
        return 5

    def __dlpack_device__(self):
        return "cpu"


class _DeviceRaises:
    def __dlpack__(self, *args, **kwargs):
        return 5

    def __dlpack_device__(self):
        raise ValueError("no device")


@pytest.mark.parametrize("argname", ["input", "weight"])
@pytest.mark.parametrize("obj, message", [
    (_ArrayRaises, r"could not be converted to an array by its __array__ / "
                   r"__array_interface__: RuntimeError: boom from __array__"),
    (_ArrayGarbage, r"could not be converted to an array by its __array__"),
    (_ArrayOfObjects, r"converts to an array of Python objects, not numbers"),
    (_DLPackRaises, r"could not be read through DLPack: RuntimeError: boom from __dlpack__"),
    (_DLPackGarbageCapsule, r"could not be read through DLPack: ValueError"),
    (_DeviceGarbage, r"has a __dlpack_device__ that failed: .*expected it to return \(device "
                     r"type, device index\)"),
    (_DeviceRaises, r"has a __dlpack_device__ that failed: ValueError: no device"),
])
def test_broken_array_producers(obj, message, argname):
    args = {"input": X, "weight": W}
    args[argname] = obj()
    with pytest.raises(convflow.ArgumentTypeError,
                       match=rf"conv2d: argument '{argname}' \({obj.__name__}\) {message}"):
        convflow.conv2d(args["input"], args["weight"])


@pytest.mark.parametrize("value", ["9" * 400, "١٢", "２", "1_0", "0x10", "1e3", "-", "0"])
def test_integer_variables_take_ascii_digits_in_range(value, monkeypatch):
    monkeypatch.setenv("CONVFLOW_TUNE_BUDGET_MS", value)
    with pytest.raises(convflow.ConfigError,
                       match=r"CONVFLOW_TUNE_BUDGET_MS=.* is invalid: expected an integer >= 1 "
                             r"\(at most 2147483647, in ASCII digits\)"):
        config.get("CONVFLOW_TUNE_BUDGET_MS")


def test_integer_variables_still_read_plain_values(monkeypatch):
    monkeypatch.setenv("CONVFLOW_TUNE_BUDGET_MS", " +250 ")
    assert config.get("CONVFLOW_TUNE_BUDGET_MS") == 250


@pytest.mark.parametrize("variable, value, expected", [
    ("CONVFLOW_NUMBA_CACHE", "maybe", "expected one of 1, 0, true, false"),
])
def test_bad_numba_settings_are_config_errors_not_a_missing_backend(variable, value, expected):
    """The numba backend reads these as it starts; a bad value is the user's to fix."""
    code = ("import numpy as np, convflow\n"
            "try:\n"
            "    convflow.conv2d(np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), "
            "np.float32), backend='numba')\n"
            "except convflow.ConfigError as exc:\n"
            "    print('ConfigError:', exc)\n")
    env = {**os.environ, variable: value}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert f"ConfigError: environment variable {variable}={value!r} is invalid: {expected}" in (
        result.stdout), result.stdout + result.stderr
