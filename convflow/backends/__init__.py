"""The backend registry: names, lazy loading, and the reason a backend cannot run.

A backend's module is imported the first time it is needed; an import failure is kept and
reported as the reason the backend is unavailable, so a missing optional library never
breaks ``import convflow``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import BackendUnavailableError, ParameterError, did_you_mean
from ..tensor import Device
from .base import Algorithm, AlgorithmRule, Backend, BackendStatus


@dataclass(frozen=True)
class BackendEntry:
    """One registered backend: where its class lives and what it owns.

    Attributes
    ----------
    name : str
        What ``backend=`` and ``CONVFLOW_BACKEND`` call it.
    factory : str or callable
        ``"module:Class"`` (imported when first needed, so a missing library never breaks
        ``import convflow``), or a callable returning the backend object.
    device_type : str
        The memory it owns and computes in (``"cpu"``, ``"opencl"``, ``"cuda"``, ...).
    dlpack_device_codes : tuple of int
        DLPack ``DLDeviceType`` codes of the arrays it can adopt (``__dlpack_device__``).
    array_modules : tuple of str
        Top-level modules whose array types are its native arrays (recognized by name,
        without importing them).
    cpu_fallback : bool
        Computes host data when no backend is forced (in registration order).
    """

    name: str
    factory: str | Callable[[], Backend]
    device_type: str
    dlpack_device_codes: tuple[int, ...] = ()
    array_modules: tuple[str, ...] = ()
    cpu_fallback: bool = False


# The one registry table. Order is the order of preference and of every listing.
_ENTRIES: dict[str, BackendEntry] = {entry.name: entry for entry in (
    BackendEntry("numba", "convflow.backends.numba:NumbaBackend", "cpu",
                 dlpack_device_codes=(1, 3), cpu_fallback=True),   # kDLCPU, kDLCUDAHost
    BackendEntry("opencl", "convflow.backends.opencl:OpenCLBackend", "opencl",
                 dlpack_device_codes=(4,), array_modules=("pyopencl",)),    # kDLOpenCL
    BackendEntry("cupy", "convflow.backends.cupy:CupyBackend", "cuda",
                 dlpack_device_codes=(2,), array_modules=("cupy",)),        # kDLCUDA
)}
BACKEND_NAMES: tuple[str, ...] = tuple(_ENTRIES)
# The backend that owns each device type's memory: the last registered for the type.
DEVICE_BACKENDS: dict[str, str] = {e.device_type: e.name for e in _ENTRIES.values()}

_lock = threading.Lock()
_instances: dict[str, Backend] = {}
_load_errors: dict[str, BaseException] = {}


def _refresh() -> None:
    """Recompute the derived views of the table (callers hold no lock on them)."""
    global BACKEND_NAMES, DEVICE_BACKENDS
    BACKEND_NAMES = tuple(_ENTRIES)
    DEVICE_BACKENDS = {e.device_type: e.name for e in _ENTRIES.values()}


def register_backend(entry: BackendEntry) -> None:
    """Add a backend to the registry (or replace one of the same name).

    It becomes selectable by name, owns its ``device_type`` (replacing the previous owner for
    data on that device), and adopts its DLPack device codes and array modules. Test doubles
    and third-party backends use this; :func:`unregister_backend` removes it again.
    """
    if not entry.name or not entry.name.replace("_", "").isalnum() or entry.name != entry.name.lower():
        raise ParameterError(f"register_backend: name must be lower-case letters, digits and "
                             f"underscores, but got {entry.name!r}")
    with _lock:
        _ENTRIES.pop(entry.name, None)
        _ENTRIES[entry.name] = entry
        _instances.pop(entry.name, None)
        _load_errors.pop(entry.name, None)
        _refresh()


def unregister_backend(name: str) -> None:
    """Remove a backend added with :func:`register_backend` (KeyError if it is unknown)."""
    with _lock:
        del _ENTRIES[name]
        _instances.pop(name, None)
        _load_errors.pop(name, None)
        _refresh()


def cpu_fallbacks() -> tuple[str, ...]:
    """The backends that compute host data when none is forced, in order of preference."""
    return tuple(name for name, entry in _ENTRIES.items() if entry.cpu_fallback)


def device_types() -> tuple[str, ...]:
    """Every device type some backend owns, ``cpu`` first."""
    owned = [e.device_type for e in _ENTRIES.values() if e.device_type != "cpu"]
    return ("cpu", *dict.fromkeys(owned))


def dlpack_device_type(code: int) -> str | None:
    """The device type of a DLPack ``DLDeviceType`` code, or None if no backend adopts it."""
    for entry in reversed(_ENTRIES.values()):
        if code in entry.dlpack_device_codes:
            return entry.device_type
    return None


def dlpack_device_code(device_type: str) -> int | None:
    """The DLPack ``DLDeviceType`` code of *device_type*'s memory (its owner's first), or None."""
    owner = _ENTRIES.get(DEVICE_BACKENDS.get(device_type, ""))
    return owner.dlpack_device_codes[0] if owner is not None and owner.dlpack_device_codes else None


def _array_module_backend(module: str) -> str | None:
    for entry in reversed(_ENTRIES.values()):
        if module in entry.array_modules:
            return entry.name
    return None


def _device_type_of(name: str) -> str:
    entry = _ENTRIES.get(name)
    return entry.device_type if entry is not None else "?"


# Words users type for a backend that are device types, not backend names: each means the
# backend that owns that device type's memory (DEVICE_BACKENDS), so "cpu" is numba and "cuda"
# is cupy. "gpu" names no single backend (NVIDIA GPUs run cupy, AMD and other GPUs opencl), so
# it is refused with both choices rather than guessed.
_AMBIGUOUS_NAMES: dict[str, str] = {
    "gpu": "'gpu' names no single backend: use 'cupy' for NVIDIA GPUs (CUDA) or 'opencl' for "
           "AMD and other OpenCL GPUs",
}


def backend_aliases() -> dict[str, str]:
    """Device-type words accepted as backend names: ``alias -> backend`` (``cpu``, ``cuda``)."""
    return {device: backend for device, backend in DEVICE_BACKENDS.items()
            if device not in _ENTRIES}


def validate_backend_name(name: Any, source: str,
                          error: type[ParameterError] = ParameterError) -> str:
    """Return the backend *name* means (a backend name, or an alias such as ``"cpu"``),
    normalized; raise *error* naming *source* (an argument or variable) otherwise."""
    key = name.strip().lower() if isinstance(name, str) else None
    aliases = backend_aliases()
    if key in _ENTRIES:
        return key
    if key in aliases:
        return aliases[key]
    alias_text = ", ".join(f"{alias} (= {backend})" for alias, backend in aliases.items())
    hint = (f"; {_AMBIGUOUS_NAMES[key]}" if key in _AMBIGUOUS_NAMES
            else did_you_mean(str(name), (*BACKEND_NAMES, *aliases)))
    raise error(
        f"{source}: unknown backend {name!r}{hint}; valid backends: {', '.join(BACKEND_NAMES)}"
        f"{f'; aliases: {alias_text}' if alias_text else ''}"
    )


def _load(name: str) -> Backend | None:
    with _lock:
        if name in _instances:
            return _instances[name]
        if name in _load_errors:
            return None
        factory = _ENTRIES[name].factory
        try:
            if isinstance(factory, str):
                module_name, _, class_name = factory.partition(":")
                instance = getattr(importlib.import_module(module_name), class_name)()
            else:
                instance = factory()
        except Exception as exc:
            _load_errors[name] = exc
            return None
        _instances[name] = instance
        return instance


def loaded_backend(name: str) -> Backend | None:
    """The backend object if its module loads, available or not (for its rule table)."""
    return _load(name)


def backend_status(name: str, full: bool = False) -> BackendStatus:
    """The status of one backend (never raises for a registered name). With *full*, what
    the backend can only say once its runtime started (numba's threading layer, which
    otherwise starts with its first kernel)."""
    backend = _load(name)
    if backend is None:
        error = _load_errors[name]
        factory = _ENTRIES[name].factory
        where = factory.partition(":")[0] if isinstance(factory, str) else repr(factory)
        return BackendStatus(name, False, f"loading {where} failed: {error!r}",
                             _device_type_of(name))
    return backend.full_status() if full else backend.status()


class BackendStatuses(Mapping[str, BackendStatus]):
    """Every registered backend's status, each computed when it is first read: planning a
    call opens only the backends it needs (a numba call never imports pyopencl or cupy),
    and ``str(decision)`` shows the others when it is printed."""

    def __getitem__(self, name: str) -> BackendStatus:
        if name not in _ENTRIES:
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
    return {name: backend_status(name, full=True) for name in BACKEND_NAMES}


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
    name = _array_module_backend(top)
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
    "BackendEntry",
    "BackendStatus",
    "BackendStatuses",
    "available_backends",
    "backend_aliases",
    "backend_for_array",
    "backend_for_device",
    "backend_status",
    "cpu_fallbacks",
    "device_types",
    "dlpack_device_type",
    "get_backend",
    "is_current",
    "loaded_backend",
    "register_backend",
    "unregister_backend",
    "validate_backend_name",
]
