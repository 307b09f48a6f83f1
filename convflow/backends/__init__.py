"""The backend registry: names, lazy loading, and the reason a backend cannot run.

A backend's module is imported the first time it is needed; an import failure is kept and
reported as the reason the backend is unavailable, so a missing optional library never
breaks ``import convflow``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import BackendUnavailableError, ParameterError, did_you_mean
from ..tensor import Device
from .base import Algorithm, AlgorithmRule, Backend, BackendStatus

# name -> (module, class). Order is the order of preference for CPU-resident data.
_BACKEND_CLASSES: dict[str, tuple[str, str]] = {
    "numba": ("convflow.backends.numba", "NumbaBackend"),
    "opencl": ("convflow.backends.opencl", "OpenCLBackend"),
    "cupy": ("convflow.backends.cupy", "CupyBackend"),
}
BACKEND_NAMES: tuple[str, ...] = tuple(_BACKEND_CLASSES)

# The backend that owns each device type's memory.
DEVICE_BACKENDS: dict[str, str] = {
    "cpu": "numba",
    "opencl": "opencl",
    "cuda": "cupy",
}

# Top-level modules whose array types belong to a backend (recognized without importing).
ARRAY_MODULE_BACKENDS: dict[str, str] = {
    "pyopencl": "opencl",
    "cupy": "cupy",
}

_lock = threading.Lock()
_instances: dict[str, Backend] = {}
_load_errors: dict[str, BaseException] = {}


def _device_type_of(name: str) -> str:
    return next((dev for dev, backend in DEVICE_BACKENDS.items() if backend == name), "?")


def validate_backend_name(name: Any, source: str) -> str:
    """Return *name* normalized, or raise naming *source* (an argument or variable)."""
    if not isinstance(name, str) or name.strip().lower() not in _BACKEND_CLASSES:
        raise ParameterError(
            f"{source}: unknown backend {name!r}{did_you_mean(str(name), BACKEND_NAMES)}; "
            f"valid backends: {', '.join(BACKEND_NAMES)}"
        )
    return name.strip().lower()


def _load(name: str) -> Backend | None:
    with _lock:
        if name in _instances:
            return _instances[name]
        if name in _load_errors:
            return None
        module_name, class_name = _BACKEND_CLASSES[name]
        try:
            module = importlib.import_module(module_name)
            instance = getattr(module, class_name)()
        except Exception as exc:
            _load_errors[name] = exc
            return None
        _instances[name] = instance
        return instance


def loaded_backend(name: str) -> Backend | None:
    """The backend object if its module loads, available or not (for its rule table)."""
    return _load(name)


def backend_status(name: str) -> BackendStatus:
    """The status of one backend (never raises for a registered name)."""
    backend = _load(name)
    if backend is None:
        error = _load_errors[name]
        return BackendStatus(name, False, f"loading {_BACKEND_CLASSES[name][0]} failed: {error!r}",
                             _device_type_of(name))
    return backend.status()


class BackendStatuses(Mapping[str, BackendStatus]):
    """Every registered backend's status, each computed when it is first read: planning a
    call opens only the backends it needs (a numba call never imports pyopencl or cupy),
    and ``str(decision)`` shows the others when it is printed."""

    def __getitem__(self, name: str) -> BackendStatus:
        if name not in _BACKEND_CLASSES:
            raise KeyError(name)
        return backend_status(name)

    def __iter__(self) -> Iterator[str]:
        return iter(BACKEND_NAMES)

    def __len__(self) -> int:
        return len(BACKEND_NAMES)

    def __repr__(self) -> str:
        return f"BackendStatuses({', '.join(BACKEND_NAMES)})"


def available_backends() -> dict[str, BackendStatus]:
    """Every registered backend with whether it can run here and why (not).

    Returns
    -------
    dict
        ``name -> BackendStatus(available, reason, device_type, devices, version, details)``.
    """
    return {name: backend_status(name) for name in BACKEND_NAMES}


def get_backend(name: str) -> Backend:
    """The backend object, or BackendUnavailableError with the reason it cannot run."""
    status = backend_status(name)
    if not status.available:
        raise BackendUnavailableError(f"backend {name!r} is unavailable: {status.reason}")
    backend = _instances[name]
    return backend


def is_current(backend: Backend) -> bool:
    """Whether *backend* is still the registry's loaded, available instance of its name
    (caches of earlier decisions check this before reusing them)."""
    with _lock:
        current = _instances.get(backend.name)
    return current is backend and backend.status().available


def backend_for_device(device: Device) -> Backend:
    """The backend that owns memory on *device*."""
    name = DEVICE_BACKENDS.get(device.type)
    if name is None:
        raise BackendUnavailableError(
            f"no backend for device '{device}' is registered in this version of convflow; "
            f"registered backends: {', '.join(BACKEND_NAMES)}"
        )
    try:
        return get_backend(name)
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(f"data on device '{device}' needs the {name} backend, "
                                      f"which is unavailable: {backend_status(name).reason}") from exc


def backend_for_array(obj: Any) -> Backend | None:
    """The backend whose native array type *obj* is, if any (e.g. pyopencl arrays)."""
    top = type(obj).__module__.split(".")[0]
    name = ARRAY_MODULE_BACKENDS.get(top)
    if name is None:
        return None
    try:
        return get_backend(name)
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(
            f"a {type(obj).__module__}.{type(obj).__name__} needs the {name} backend, which is "
            f"unavailable: {backend_status(name).reason}"
        ) from exc


__all__ = [
    "BACKEND_NAMES",
    "Algorithm",
    "AlgorithmRule",
    "Backend",
    "BackendStatus",
    "BackendStatuses",
    "available_backends",
    "backend_for_array",
    "backend_for_device",
    "backend_status",
    "get_backend",
    "is_current",
    "loaded_backend",
    "validate_backend_name",
]
