"""One tensor type for every backend, and the conversions at the API boundary.

A :class:`Tensor` pairs a backend-native array (``numpy.ndarray`` on the CPU; a device array
for GPU backends) with the :class:`Device` it lives on. User inputs of any supported kind
are adopted with :func:`as_tensor` (no copy where none is needed), and results are handed
back as the same kind of array the user passed in (:func:`wrap_like`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ArgumentTypeError, DeviceError, did_you_mean


def _registered_device_types() -> tuple[str, ...]:
    from .backends import device_types  # the registry table says which devices exist

    return device_types()


@dataclass(frozen=True, order=True)
class Device:
    """Where a tensor's memory lives: ``cpu``, ``opencl:<index>`` or ``cuda:<index>``."""

    type: str
    index: int = 0

    @classmethod
    def parse(cls, spec: Device | str | None) -> Device:
        """Parse ``"cpu"``, ``"opencl"``, ``"opencl:1"``, ``"cuda:0"``, ... (None means cpu)."""
        if spec is None:
            return CPU
        if isinstance(spec, Device):
            return spec
        if not isinstance(spec, str):
            raise ArgumentTypeError(
                f"device must be a string such as 'cpu', 'opencl:0' or 'cuda:0', but got {spec!r}"
            )
        kind, _, index_text = spec.strip().lower().partition(":")
        known = _registered_device_types()
        if kind not in known:
            forms = ", ".join(repr(k) if k == "cpu" else f"'{k}[:index]'" for k in known)
            raise DeviceError(
                f"device {spec!r} is unknown{did_you_mean(kind, known)}; expected one of {forms}"
            )
        if not index_text:
            return cls(kind, 0)
        if not index_text.isdigit():
            raise DeviceError(f"device {spec!r} has an invalid index {index_text!r}; expected "
                              f"a non-negative integer, e.g. '{kind}:0'")
        if kind == "cpu" and int(index_text) != 0:
            raise DeviceError(f"device {spec!r} does not exist; the only CPU device is 'cpu'")
        return cls(kind, int(index_text))

    def __str__(self) -> str:
        return "cpu" if self.type == "cpu" else f"{self.type}:{self.index}"


CPU = Device("cpu", 0)


class Tensor:
    """An n-dimensional array on one device, shared by all backends.

    Create one with :func:`convflow.tensor`; convflow functions also accept numpy arrays,
    DLPack producers and backend-native arrays directly. ``Tensor`` supports
    ``numpy.asarray(t)`` and DLPack (``numpy.from_dlpack(t)``, ``torch.from_dlpack(t)``).
    """

    __slots__ = ("_data", "_device")

    def __init__(self, data: Any, device: Device = CPU) -> None:
        self._data = data
        self._device = device

    @property
    def data(self) -> Any:
        """The backend-native array (``numpy.ndarray`` for ``cpu``)."""
        return self._data

    @property
    def device(self) -> Device:
        return self._device

    @property
    def shape(self) -> tuple[int, ...]:
        shape = self._data.shape
        return shape if type(shape) is tuple else tuple(int(s) for s in shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self._data.dtype)

    @property
    def ndim(self) -> int:
        return len(self._data.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def is_contiguous(self) -> bool:
        """Whether the data is C-contiguous (kernels need it; otherwise a copy is made)."""
        return bool(self._data.flags.c_contiguous)

    def permute(self, axes: tuple[int, ...]) -> Tensor:
        """A tensor viewing the same data with its axes reordered (no copy)."""
        return Tensor(self._data.transpose(axes), self._device)

    def reshape(self, shape: tuple[int, ...]) -> Tensor:
        """A tensor viewing the same data with another shape (contiguous data only)."""
        return Tensor(self._data.reshape(shape), self._device)

    def numpy(self) -> np.ndarray:
        """The data as a numpy array: the array itself on the CPU, a host copy otherwise."""
        if self._device.type == "cpu":
            return self._data  # type: ignore[no-any-return]
        return _device_backend(self._device).download(self)  # type: ignore[no-any-return]

    def to(self, device: Device | str) -> Tensor:
        """This tensor on *device*: itself if already there, else a copy."""
        target = Device.parse(device)
        if target == self._device:
            return self
        host = native_byte_order(self).numpy()
        if target.type == "cpu":
            return Tensor(np.array(host, copy=True), CPU)
        return _device_backend(target).upload(np.ascontiguousarray(host), target)  # type: ignore[no-any-return]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        host = self.numpy()
        if dtype is not None:
            host = host.astype(dtype, copy=False)
        return np.array(host, copy=True) if copy else host

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        if not hasattr(self._data, "__dlpack__"):
            # pyopencl arrays export nothing through DLPack, and no importer (numpy, torch,
            # CuPy) reads OpenCL memory: say how to get the data instead of an AttributeError.
            raise BufferError(
                f"a convflow Tensor on {self._device} cannot be exported through DLPack (no "
                f"DLPack importer reads {self._device.type} memory); copy it to the host first: "
                f"numpy.from_dlpack(t.to('cpu')) or t.numpy()")
        return self._data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> Any:
        if not hasattr(self._data, "__dlpack_device__"):
            from .backends import dlpack_device_code

            return (dlpack_device_code(self._device.type), self._device.index)
        return self._data.__dlpack_device__()

    def __repr__(self) -> str:
        return f"Tensor(shape={list(self.shape)}, dtype={self.dtype}, device='{self._device}')"


def native_byte_order(t: Tensor) -> Tensor:
    """*t* with its bytes in this machine's order: itself if already so, else a converted
    copy (same values, same memory order). Kernels and device copies read native numbers
    only; a big-endian ``'>f4'`` array handed to them as raw bytes would be read wrongly."""
    dtype = t.dtype
    if dtype.isnative or t.device.type != "cpu":
        return t
    return Tensor(np.asarray(t.data).astype(dtype.newbyteorder("="), order="K"), t.device)


def _device_backend(device: Device) -> Any:
    from .backends import backend_for_device

    return backend_for_device(device)


# How a result is handed back: as numpy, as a convflow Tensor, as a backend-native array,
# or through the input's own library's ``from_dlpack``.
ResultKind = Callable[[Tensor], Any]


def _as_numpy(t: Tensor) -> Any:
    return t.numpy()


def _as_tensor(t: Tensor) -> Any:
    return t


def _as_native(t: Tensor) -> Any:
    return t.data


def _from_dlpack_of(obj: Any) -> ResultKind:
    top = type(obj).__module__.split(".")[0]
    if top in ("jax", "jaxlib"):
        top = "jax.numpy"
    module = sys.modules.get(top)
    from_dlpack = getattr(module, "from_dlpack", None)
    if from_dlpack is None:
        return _as_tensor

    def convert(t: Tensor) -> Any:
        return from_dlpack(t.data)

    return convert


def _is_bfloat16(obj: Any) -> bool:
    return str(getattr(obj, "dtype", "")).rpartition(".")[2] == "bfloat16"


def _bfloat16_from_dlpack(obj: Any) -> tuple[Tensor, ResultKind] | None:
    """A host bfloat16 array of another library (e.g. a torch bfloat16 tensor), read as
    ``ml_dtypes.bfloat16``: numpy's DLPack importer has no bfloat16, so its bits cross as
    int16 (the library's own ``view``) and are viewed back; results go back the same way.
    None when *obj* is not bfloat16 or its library has no int16 view."""
    module = sys.modules.get(type(obj).__module__.split(".")[0])
    int16, bfloat16 = getattr(module, "int16", None), getattr(module, "bfloat16", None)
    from_dlpack = getattr(module, "from_dlpack", None)
    if not _is_bfloat16(obj) or int16 is None or bfloat16 is None or from_dlpack is None:
        return None
    import ml_dtypes

    array = np.from_dlpack(obj.view(int16)).view(ml_dtypes.bfloat16)

    def convert(t: Tensor) -> Any:
        host = np.ascontiguousarray(t.numpy())
        return from_dlpack(host.view(np.int16)).view(bfloat16)

    return Tensor(array, CPU), convert


def as_tensor(obj: Any, op: str, argname: str) -> tuple[Tensor, ResultKind]:
    """Adopt a user argument as a Tensor without copying; also return how to hand a result
    back in the same kind. Raises ArgumentTypeError naming *argname* for unusable objects."""
    if obj is None:
        raise ArgumentTypeError(
            f"{op}: argument '{argname}' is None; expected an array (numpy.ndarray, "
            f"convflow.Tensor, or an object with __dlpack__)"
        )
    if isinstance(obj, Tensor):
        return obj, _as_tensor
    if isinstance(obj, np.ndarray):
        if isinstance(obj, np.ma.MaskedArray):
            raise ArgumentTypeError(
                f"{op}: argument '{argname}' is a numpy masked array, whose mask a convolution "
                f"would silently ignore; pass obj.filled(value) or numpy.asarray(obj) instead"
            )
        if type(obj) is not np.ndarray:
            # Subclasses (numpy.matrix, memmap, ...) are read as the plain array they hold:
            # their own operators (matrix's 2-D-only indexing) mean nothing to a convolution.
            obj = obj.view(np.ndarray)
        return Tensor(obj, CPU), _as_numpy
    from .backends import backend_for_array

    native_backend = backend_for_array(obj)
    if native_backend is not None:
        return native_backend.adopt(obj), _as_native
    if hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__"):
        device_code, device_index = _dlpack_device_of(obj, op, argname)
        from .backends import dlpack_device_type

        device_type = dlpack_device_type(device_code)
        if device_type is None:
            raise DeviceError(
                f"{op}: argument '{argname}' lives on DLPack device type {int(device_code)}, "
                f"which convflow cannot reach; move it to the CPU or a CUDA/OpenCL device first"
            )
        # An unavailable backend for the device is a BackendUnavailableError, not a DLPack error.
        owner = None if device_type == "cpu" else _device_backend(Device(device_type,
                                                                         int(device_index)))
        try:
            if owner is None:
                bfloat16 = _bfloat16_from_dlpack(obj) if _is_bfloat16(obj) else None
                if bfloat16 is not None:
                    return bfloat16
                array = np.from_dlpack(obj)
                return Tensor(array, CPU), _from_dlpack_of(obj)
            return owner.adopt(obj), _from_dlpack_of(obj)
        except Exception as exc:  # the producer's own code: any failure is its failure
            raise ArgumentTypeError(
                f"{op}: argument '{argname}' ({type(obj).__name__}) could not be read through "
                f"DLPack: {type(exc).__name__}: {exc}"
            ) from exc
    if hasattr(obj, "__array__") or hasattr(obj, "__array_interface__"):
        try:
            array = np.asarray(obj)
        except Exception as exc:  # the object's own __array__ failed or returned garbage
            raise ArgumentTypeError(
                f"{op}: argument '{argname}' ({type(obj).__name__}) could not be converted to "
                f"an array by its __array__ / __array_interface__: {type(exc).__name__}: {exc}"
            ) from exc
        if array.dtype == object:
            raise ArgumentTypeError(
                f"{op}: argument '{argname}' ({type(obj).__name__}) converts to an array of "
                f"Python objects, not numbers; expected a float16, float32 or float64 array")
        return Tensor(array, CPU), _as_numpy
    raise ArgumentTypeError(
        f"{op}: argument '{argname}' must be an array (numpy.ndarray, convflow.Tensor, or an "
        f"object with __dlpack__), but got {type(obj).__name__}"
        + ("; wrap it with numpy.asarray(...)" if isinstance(obj, (list, tuple, int, float)) else "")
    )


def _dlpack_device_of(obj: Any, op: str, argname: str) -> tuple[int, int]:
    """``obj.__dlpack_device__()`` as ``(device type code, index)``, or ArgumentTypeError when
    the producer raises or answers something that is not two integers."""
    try:
        answer = obj.__dlpack_device__()
        code, index = answer
        if not all(isinstance(v, (int, np.integer)) for v in (code, index)):  # IntEnums too
            raise TypeError(f"expected (device type, device index) ints, got {answer!r}")
        return int(code), int(index)
    except Exception as exc:
        raise ArgumentTypeError(
            f"{op}: argument '{argname}' ({type(obj).__name__}) has a __dlpack_device__ that "
            f"failed: {type(exc).__name__}: {exc}; expected it to return (device type, device "
            f"index)") from exc


def tensor(data: Any, device: Device | str | None = None) -> Tensor:
    """Create a Tensor holding a copy of *data* on *device*.

    Parameters
    ----------
    data : array_like
        A numpy array, nested sequence, ``Tensor``, DLPack producer or backend-native array.
    device : str or Device, optional
        ``"cpu"`` (default for host data), ``"opencl[:i]"``, ``"cuda[:i]"``. Without it, a
        device array stays on its own device.

    Returns
    -------
    Tensor
        A new tensor that shares no memory with *data*.
    """
    if isinstance(data, (list, tuple, int, float)):
        source = Tensor(np.array(data), CPU)
    else:
        source, _ = as_tensor(data, "tensor", "data")
    target = source.device if device is None else Device.parse(device)
    if target == source.device:
        if target.type == "cpu":
            return Tensor(np.array(source.data, copy=True, order="C",
                                   dtype=source.dtype.newbyteorder("=")), CPU)
        return _device_backend(target).copy(source)  # type: ignore[no-any-return]
    return source.to(target)
