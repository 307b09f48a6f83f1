"""Compile (through ``cupy.RawModule``) and launch the kernels of ``kernels/cuda/``.

Modules are built per (source file, dtype, device) on first use; CuPy also caches the
compiled binaries on disk, keyed by source, options, architecture and NVRTC version.
Kernels run on the current CuPy stream of the current device.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ...errors import KernelBuildError
from ...geometry import Geometry, Tile
from . import sources
from .geometry import Launch, elementwise_launch, kernel_args, reduction_launch

Array = Any


class CudaKernels:
    """The :class:`~.algorithms.KernelLauncher` of the GPU: CuPy arrays of one device."""

    def __init__(self, cupy: Any) -> None:
        self._cupy = cupy
        self._lock = threading.Lock()
        self._modules: dict[tuple[str, str, int], Any] = {}

    def _function(self, name: str, dtype: np.dtype[Any]) -> Any:
        path = sources.KERNEL_FILES[name]
        device = int(self._cupy.cuda.runtime.getDevice())
        key = (path, dtype.name, device)
        with self._lock:
            module = self._modules.get(key)
            if module is None:
                options = sources.compile_options(dtype.name)
                try:
                    module = self._cupy.RawModule(code=sources.expanded_source(path),
                                                  options=options)
                    module.compile()
                except Exception as exc:
                    raise KernelBuildError(
                        f"compiling {path} for {dtype.name} on cuda:{device} with options "
                        f"{' '.join(options)} failed: {exc}") from exc
                self._modules[key] = module
        return module.get_function(name)

    def _launch(self, name: str, dtype: np.dtype[Any], launch: Launch,
                args: tuple[Any, ...]) -> None:
        function = self._function(name, dtype)
        function((launch.grid,), (launch.block,), args, shared_mem=launch.shared_mem)

    @staticmethod
    def _geometry_args(geometry: Geometry) -> tuple[np.int32, ...]:
        return tuple(np.int32(v) for v in kernel_args(geometry))

    def _with_bias(self, name: str, a: Array, w: Array, bias: Array | None, out: Array,
                   geometry: Geometry, activation: int) -> None:
        # A kernel without a bias still needs a pointer of the right type: pass the output,
        # which the epilogue mode keeps it from reading.
        args = (a, w, out if bias is None else bias, np.int32(epilogue_mode(bias, activation)),
                out, *self._geometry_args(geometry))
        self._launch(name, out.dtype, elementwise_launch(out.size), args)

    def _reduce(self, name: str, a: Array, b: Array, out: Array,
                geometry: Geometry) -> None:
        self._launch(name, out.dtype, reduction_launch(out.size),
                     (a, b, out, *self._geometry_args(geometry)))

    def fprop_direct(self, x: Array, w: Array, bias: Array | None, y: Array,
                     geometry: Geometry, activation: int = 0) -> None:
        self._with_bias("cf_fprop_direct", x, w, bias, y, geometry, activation)

    def dgrad_direct(self, dy: Array, w: Array, bias: Array | None, dx: Array,
                     geometry: Geometry, activation: int = 0) -> None:
        self._with_bias("cf_dgrad_direct", dy, w, bias, dx, geometry, activation)

    def wgrad_direct(self, x: Array, dy: Array, dw: Array, geometry: Geometry) -> None:
        self._reduce("cf_wgrad_direct", x, dy, dw, geometry)

    def fprop_depthwise(self, x: Array, w: Array, bias: Array | None, y: Array,
                        geometry: Geometry, activation: int = 0) -> None:
        self._with_bias("cf_fprop_depthwise", x, w, bias, y, geometry, activation)

    def dgrad_depthwise(self, dy: Array, w: Array, bias: Array | None, dx: Array,
                        geometry: Geometry, activation: int = 0) -> None:
        self._with_bias("cf_dgrad_depthwise", dy, w, bias, dx, geometry, activation)

    def wgrad_depthwise(self, x: Array, dy: Array, dw: Array,
                        geometry: Geometry) -> None:
        self._reduce("cf_wgrad_depthwise", x, dy, dw, geometry)

    def im2col(self, x: Array, col: Array, geometry: Geometry, tile: Tile,
               wide: bool) -> None:
        args = (x, col, np.int32(tile.n0), np.int32(tile.count), np.int64(tile.p0),
                np.int64(tile.width), np.int32(wide), *self._geometry_args(geometry))
        self._launch("cf_im2col", x.dtype, elementwise_launch(col.size), args)

    def col2im(self, col: Array, out: Array, geometry: Geometry, tile: Tile,
               accumulate: bool) -> None:
        args = (col, out, np.int32(tile.count), np.int64(tile.p0), np.int64(tile.width),
                np.int32(accumulate), *self._geometry_args(geometry))
        self._launch("cf_col2im", col.dtype, elementwise_launch(out.size), args)

    def bias_activation(self, y: Array, bias: Array | None, activation: int,
                        channels_last: bool = False) -> None:
        """``y = activation(y + bias)`` in one pass; *y* contiguous ``(N, C, *spatial)`` or,
        with *channels_last*, ``(N, *spatial, C)``."""
        channels = y.shape[-1] if channels_last else y.shape[1]
        inner = 1 if channels_last else int(np.prod(y.shape[2:], dtype=np.int64))
        args = (y, y if bias is None else bias, np.int32(epilogue_mode(bias, activation)),
                np.int32(channels), np.int64(inner), np.int64(y.size))
        self._launch("cf_bias_activation", y.dtype, elementwise_launch(y.size), args)


def epilogue_mode(bias: Array | None, activation: int) -> int:
    """The kernels' ep_mode (kernels/cuda/common.cuh): bit 0 bias, bits 1-3 activation."""
    return (1 if bias is not None else 0) | (activation << 1)
