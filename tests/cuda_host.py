"""Run the cupy backend's algorithms on the host: numpy arrays and a host build of the CUDA
kernels' per-element functions (tests/cuda_emulation.cpp), loaded with ctypes.

The launcher checks what the GPU launcher cannot: every array handed to a kernel is
C-contiguous and of the dtype the kernel was compiled for, so orchestration mistakes (a
strided view passed as a pointer, a float32 buffer where float16 is expected) fail here.
"""

from __future__ import annotations

import ctypes
import pathlib
import shutil
import subprocess

import ml_dtypes  # noqa: F401  (registers the dtype name "bfloat16")
import numpy as np

from convflow.backends.cupy import algorithms
from convflow.backends.cupy.geometry import kernel_args
from convflow.backends.cupy.kernels import epilogue_mode
from convflow.backends.cupy.sources import DTYPE_CODES, compile_options
from convflow.geometry import Geometry, Tile

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "cuda_emulation.cpp"
KERNEL_DIR = ROOT / "kernels" / "cuda"


def compiler() -> str | None:
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def build(directory: pathlib.Path, dtype: str) -> pathlib.Path:
    """Compile the host build for *dtype* into *directory*; returns the shared library."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (c++, g++ or clang++) on PATH")
    out = directory / f"libconvflow_cuda_host_{dtype}.so"
    command = [cxx, "-O1", *compile_options(dtype), "-shared", "-fPIC", "-Wall", "-Wextra",
               "-Werror", f"-I{KERNEL_DIR}", "-o", str(out), str(SOURCE)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr}")
    return out


_void_p = ctypes.c_void_p
_int = ctypes.c_int
_i64 = ctypes.c_longlong


def _load(path: pathlib.Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    pointer_args = {"emu_fprop_direct": 5, "emu_dgrad_direct": 5, "emu_fprop_depthwise": 5,
                    "emu_dgrad_depthwise": 5}
    for name in pointer_args:
        getattr(lib, name).argtypes = [_void_p, _void_p, _void_p, _int, _void_p, _void_p]
    for name in ("emu_wgrad_direct", "emu_wgrad_depthwise"):
        getattr(lib, name).argtypes = [_void_p, _void_p, _void_p, _void_p]
    lib.emu_im2col.argtypes = [_void_p, _void_p, _int, _int, _i64, _i64, _int, _void_p]
    lib.emu_col2im.argtypes = [_void_p, _void_p, _int, _i64, _i64, _int, _void_p]
    lib.emu_bias_activation.argtypes = [_void_p, _void_p, _int, _int, _i64, _i64]
    for kind in ("half", "bf16"):
        getattr(lib, f"emu_float_to_{kind}").argtypes = [ctypes.c_float]
        getattr(lib, f"emu_float_to_{kind}").restype = ctypes.c_ushort
        getattr(lib, f"emu_{kind}_to_float").argtypes = [ctypes.c_ushort]
        getattr(lib, f"emu_{kind}_to_float").restype = ctypes.c_float
    lib.emu_activate.argtypes = [ctypes.c_double, _int]
    lib.emu_activate.restype = ctypes.c_double
    return lib


class HostKernels:
    """The KernelLauncher protocol over numpy arrays of one dtype, run on the host."""

    def __init__(self, library: pathlib.Path, dtype: str) -> None:
        self.lib = _load(library)
        self.dtype = np.dtype(dtype)
        self.acc = np.dtype(np.float32) if self.dtype.itemsize == 2 else self.dtype
        assert self.lib.emu_dtype() == DTYPE_CODES[dtype]
        self.calls: list[str] = []

    def _ptr(self, a: np.ndarray, dtype: np.dtype | None = None) -> int:
        expected = self.dtype if dtype is None else dtype
        assert isinstance(a, np.ndarray), type(a)
        assert a.flags.c_contiguous, f"a kernel operand must be C-contiguous, got strides {a.strides}"
        assert a.dtype == expected, f"a kernel operand must be {expected}, got {a.dtype}"
        return a.ctypes.data

    @staticmethod
    def _geometry(geometry: Geometry) -> np.ndarray:
        return np.array(kernel_args(geometry), dtype=np.int32)

    def _with_bias(self, name: str, a, w, bias, out, geometry: Geometry,
                   activation: int) -> None:
        self.calls.append(name)
        geom = self._geometry(geometry)
        bias_ptr = self._ptr(out if bias is None else bias)
        getattr(self.lib, f"emu_{name}")(self._ptr(a), self._ptr(w), bias_ptr,
                                         epilogue_mode(bias, activation), self._ptr(out),
                                         geom.ctypes.data)

    def _reduce(self, name: str, a, b, out, geometry: Geometry) -> None:
        self.calls.append(name)
        geom = self._geometry(geometry)
        getattr(self.lib, f"emu_{name}")(self._ptr(a), self._ptr(b), self._ptr(out),
                                         geom.ctypes.data)

    def fprop_direct(self, x, w, bias, y, geometry, activation=0):
        assert y.shape[0] == geometry.n
        self._with_bias("fprop_direct", x, w, bias, y, geometry, activation)

    def dgrad_direct(self, dy, w, bias, dx, geometry, activation=0):
        self._with_bias("dgrad_direct", dy, w, bias, dx, geometry, activation)

    def wgrad_direct(self, x, dy, dw, geometry):
        self._reduce("wgrad_direct", x, dy, dw, geometry)

    def fprop_depthwise(self, x, w, bias, y, geometry, activation=0):
        self._with_bias("fprop_depthwise", x, w, bias, y, geometry, activation)

    def dgrad_depthwise(self, dy, w, bias, dx, geometry, activation=0):
        self._with_bias("dgrad_depthwise", dy, w, bias, dx, geometry, activation)

    def wgrad_depthwise(self, x, dy, dw, geometry):
        self._reduce("wgrad_depthwise", x, dy, dw, geometry)

    def im2col(self, x, col, geometry: Geometry, tile: Tile, wide: bool) -> None:
        self.calls.append("im2col")
        assert col.size == tile.count * geometry.rows * tile.width
        geom = self._geometry(geometry)
        self.lib.emu_im2col(self._ptr(x), self._ptr(col), tile.n0, tile.count, tile.p0,
                            tile.width, int(wide), geom.ctypes.data)

    def col2im(self, col, out, geometry: Geometry, tile: Tile, accumulate: bool) -> None:
        self.calls.append("col2im")
        assert col.size == tile.count * geometry.rows * tile.width
        assert out.size == tile.count * geometry.c * geometry.in_plane
        geom = self._geometry(geometry)
        self.lib.emu_col2im(self._ptr(col), self._ptr(out, self.acc), tile.count, tile.p0,
                            tile.width, int(accumulate), geom.ctypes.data)

    def bias_activation(self, y, bias, activation, channels_last=False) -> None:
        self.calls.append("bias_activation")
        channels = y.shape[-1] if channels_last else y.shape[1]
        inner = 1 if channels_last else int(np.prod(y.shape[2:], dtype=np.int64))
        self.lib.emu_bias_activation(self._ptr(y), self._ptr(y if bias is None else bias),
                                     epilogue_mode(bias, activation), channels, inner, y.size)


def host_matmul(a, b, out=None):
    """numpy's matmul with what cuBLAS does for 16-bit types through CuPy: float32
    accumulation (bfloat16 through algorithms.matmul_wide)."""
    if a.dtype == np.float16:
        result = np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(np.float16)
    else:
        assert a.dtype.name != "bfloat16", "bfloat16 products go through matmul_wide"
        result = np.matmul(a, b)
    if out is None:
        return result
    assert out.shape == result.shape and out.dtype == result.dtype
    out[...] = result
    return out


def host_context(kernels: HostKernels, workspace_bytes: int = 64 << 20) -> algorithms.Context:
    """What CupyBackend._context builds, with numpy and the host kernels."""
    return algorithms.Context(np, kernels, algorithms.matmul_wide(np, host_matmul),
                              workspace_bytes)
