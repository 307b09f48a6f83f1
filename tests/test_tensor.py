"""The array kinds convflow accepts and returns, memory orders, and input immutability."""

from __future__ import annotations

import numpy as np
import pytest

import convflow
from convflow import Device, DeviceError, Tensor

import reference
from conftest import assert_close


def operands(dtype="float64"):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((2, 4, 7, 6)).astype(dtype),
            rng.standard_normal((6, 2, 3, 3)).astype(dtype),
            rng.standard_normal(6).astype(dtype))


def expected_of(x, w, b):
    return reference.conv(x, w, b, (1, 1), ((1, 1), (1, 1)), (1, 1), 2)


@pytest.mark.parametrize("layout", ["fortran", "transposed_view", "negative_strides", "sliced",
                                    "readonly", "broadcast_bias"])
def test_any_memory_order(backend, layout):
    x, w, b = operands()
    if layout == "fortran":
        x, w = np.asfortranarray(x), np.asfortranarray(w)
    elif layout == "transposed_view":
        x = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    elif layout == "negative_strides":
        x = np.ascontiguousarray(x[:, :, ::-1, ::-1])[:, :, ::-1, ::-1]
        w = np.ascontiguousarray(w[::-1])[::-1]
    elif layout == "sliced":
        big = np.zeros((2, 8, 14, 12))
        big[:, ::2, ::2, ::2] = x
        x = big[:, ::2, ::2, ::2]
    elif layout == "readonly":
        for array in (x, w, b):
            array.flags.writeable = False
    elif layout == "broadcast_bias":
        b = np.broadcast_to(np.float64(0.5), (6,))
    assert layout in ("readonly", "broadcast_bias") or not x.flags.c_contiguous or not w.flags.c_contiguous
    y = convflow.conv2d(x, w, b, padding=1, groups=2, backend=backend)
    assert_close(y, expected_of(x, w, b), "float64")
    assert y.flags.c_contiguous and y.flags.writeable


def test_inputs_are_never_modified_and_outputs_never_alias(backend):
    x, w, b = operands()
    dy = np.random.default_rng(1).standard_normal((2, 6, 7, 6))
    copies = [a.copy() for a in (x, w, b, dy)]
    results = [
        convflow.conv2d(x, w, b, padding=1, groups=2, backend=backend),
        convflow.conv2d(x, w, b, padding=1, groups=2, padding_mode="reflect", backend=backend),
        convflow.conv2d(x, w[:, :, :1, :1], b, groups=2, backend=backend),
        convflow.conv_transpose2d(dy, w, None, padding=1, groups=2, backend=backend),
        *convflow.conv_backward(dy, x, w, padding=1, groups=2, backend=backend),
    ]
    for original, array in zip(copies, (x, w, b, dy)):
        np.testing.assert_array_equal(original, array)
    for result in results:
        for array in (x, w, b, dy):
            assert not np.shares_memory(result, array)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_result_dtype_follows_input(backend, dtype):
    x, w, b = operands(dtype)
    y = convflow.conv2d(x, w, b, padding=1, groups=2, backend=backend)
    assert y.dtype == np.dtype(dtype)
    assert_close(y, expected_of(x, w, b), dtype)
    gi, gw, gb = convflow.conv_backward(np.ones_like(y), x, w, padding=1, groups=2, backend=backend)
    assert gi.dtype == gw.dtype == gb.dtype == np.dtype(dtype)


def test_tensor_in_tensor_out(backend):
    x, w, b = operands()
    tx, tw = convflow.tensor(x), convflow.tensor(w)
    y = convflow.conv2d(tx, tw, b, padding=1, groups=2, backend=backend)
    assert isinstance(y, Tensor) and y.device == Device("cpu")
    assert_close(y.numpy(), expected_of(x, w, b), "float64")
    assert_close(np.asarray(y), expected_of(x, w, b), "float64")


class DLPackOnly:
    """An array exposing only the DLPack protocol (like many foreign array libraries)."""

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


def test_dlpack_producers_are_accepted(backend):
    x, w, b = operands()
    y = convflow.conv2d(DLPackOnly(x), DLPackOnly(w), b, padding=1, groups=2, backend=backend)
    # The producer's own module has no from_dlpack, so the result is a convflow Tensor.
    assert isinstance(y, Tensor)
    assert_close(y.numpy(), expected_of(x, w, b), "float64")


def test_array_interface_objects_are_accepted(backend):
    x, w, b = operands()

    class ArrayLike:
        def __init__(self, a):
            self.a = a

        def __array__(self, dtype=None, copy=None):
            return self.a

    y = convflow.conv2d(ArrayLike(x), w, b, padding=1, groups=2, backend=backend)
    assert isinstance(y, np.ndarray)
    assert_close(y, expected_of(x, w, b), "float64")


def test_torch_tensors_round_trip_when_torch_is_installed(backend):
    torch = pytest.importorskip("torch", reason="optional: checks the DLPack round trip with torch")
    x, w, b = operands()
    y = convflow.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), padding=1,
                        groups=2, backend=backend)
    assert isinstance(y, torch.Tensor)
    assert_close(y.numpy(), expected_of(x, w, b), "float64")


def test_tensor_constructor_copies():
    data = np.arange(6.0).reshape(2, 3)
    t = convflow.tensor(data)
    data[0, 0] = 100
    assert t.numpy()[0, 0] == 0
    assert t.shape == (2, 3) and t.dtype == np.float64 and t.ndim == 2 and t.size == 6
    assert t.nbytes == 48 and t.is_contiguous
    assert "Tensor(shape=[2, 3], dtype=float64, device='cpu')" == repr(t)
    assert convflow.tensor([[1.0, 2.0]]).shape == (1, 2)
    assert convflow.tensor(t) is not t
    assert t.to("cpu") is t
    np.testing.assert_array_equal(np.from_dlpack(t), t.numpy())


@pytest.mark.parametrize("spec, device", [
    ("cpu", Device("cpu")), ("CPU", Device("cpu")), (None, Device("cpu")),
    ("opencl", Device("opencl", 0)), ("opencl:1", Device("opencl", 1)), ("cuda:2", Device("cuda", 2)),
])
def test_device_parsing(spec, device):
    assert Device.parse(spec) == device
    assert str(device) in ("cpu", f"{device.type}:{device.index}")


@pytest.mark.parametrize("spec, match", [
    ("gpu", r"device 'gpu' is unknown .*; expected one of 'cpu', 'opencl\[:index\]', 'cuda\[:index\]'"),
    ("cdua:0", r"device 'cdua:0' is unknown \(did you mean 'cuda'\?\)"),
    ("cuda:x", r"invalid index 'x'"),
    ("cpu:1", r"the only CPU device is 'cpu'"),
])
def test_bad_device_names(spec, match):
    with pytest.raises(DeviceError, match=match):
        Device.parse(spec)


def test_bad_device_type():
    with pytest.raises(TypeError, match="device must be a string"):
        Device.parse(3)  # type: ignore[arg-type]


def test_torch_bfloat16_tensors_cross_dlpack():
    torch = pytest.importorskip("torch", reason="optional: checks bfloat16 tensors from torch")
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.standard_normal((2, 4, 7, 7), dtype=np.float32)).to(torch.bfloat16)
    w = torch.from_numpy(rng.standard_normal((6, 4, 3, 3), dtype=np.float32)).to(torch.bfloat16)
    y = convflow.conv2d(x, w, padding=1)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.bfloat16 and y.shape == (2, 6, 7, 7)
    expected = reference.conv(x.float().numpy().astype(np.float64), w.float().numpy().astype(np.float64),
                              padding=((1, 1), (1, 1)))
    import ml_dtypes

    assert_close(y.view(torch.int16).numpy().view(ml_dtypes.bfloat16), expected, "bfloat16")
    assert x.dtype == torch.bfloat16  # the input is read, not converted in place


def test_an_opencl_tensor_refuses_dlpack_with_the_way_out():
    from conftest import require_backend

    require_backend("opencl")
    t = convflow.tensor(np.arange(6, dtype=np.float32).reshape(2, 3), device="opencl")
    assert t.__dlpack_device__() == (4, 0)  # kDLOpenCL
    with pytest.raises(BufferError, match=r"a convflow Tensor on opencl:0 cannot be exported through "
                                          r"DLPack .* numpy\.from_dlpack\(t\.to\('cpu'\)\) or t\.numpy\(\)"):
        np.from_dlpack(t)
    np.testing.assert_array_equal(np.from_dlpack(t.to("cpu")), np.arange(6).reshape(2, 3))
