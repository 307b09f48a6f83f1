"""Whether the cupy backend can run here, and exactly why not: CuPy, driver, devices, NVRTC,
cuDNN frontend. Modules are imported through a callable so tests can stand in for them."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

INSTALL_HINT = "pip install 'convflow[cuda12]' (CUDA 12) or 'convflow[cuda13]' (CUDA 13)"
FRONTEND_HINT = ("pip install nvidia-cudnn-frontend nvidia-cudnn-cu12 (or -cu13); both come "
                 "with convflow[cuda12] / convflow[cuda13]")

ImportModule = Callable[[str], ModuleType]


@dataclass
class Probe:
    """The outcome of probing: availability, the reason, devices, versions, the modules."""

    available: bool
    reason: str
    devices: tuple[str, ...] = ()
    version: str = ""
    details: dict[str, str] = field(default_factory=dict)
    cupy: Any = None
    cudnn: Any = None


def _cuda_version(code: int) -> str:
    return f"{code // 1000}.{code % 1000 // 10}"


def _device_name(props: dict[str, Any]) -> str:
    name = props.get("name", b"")
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


def probe(import_module: ImportModule = importlib.import_module) -> Probe:
    """Probe CuPy, the CUDA driver and devices, NVRTC and the cuDNN frontend; never raises."""
    try:
        cupy = import_module("cupy")
    except ImportError as exc:
        return Probe(False, f"CuPy is not installed ({exc}); {INSTALL_HINT}")
    except Exception as exc:
        return Probe(False, f"importing CuPy failed: {exc!r}; reinstall it: {INSTALL_HINT}")
    version = str(getattr(cupy, "__version__", "?"))
    details = {"cupy": version}
    runtime = cupy.cuda.runtime
    try:
        details["cuda_runtime"] = _cuda_version(int(runtime.runtimeGetVersion()))
        driver = int(runtime.driverGetVersion())
    except Exception as exc:
        return Probe(False, f"CuPy {version} cannot query the CUDA driver: {exc}",
                     version=version, details=details)
    if driver == 0:
        return Probe(False, f"CuPy {version} is installed but no NVIDIA driver was found "
                            f"(no libcuda, or no GPU visible to this machine)",
                     version=version, details=details)
    details["cuda_driver"] = _cuda_version(driver)
    try:
        count = int(runtime.getDeviceCount())
    except Exception as exc:
        return Probe(False, f"CuPy {version} (CUDA runtime {details['cuda_runtime']}, driver "
                            f"{details['cuda_driver']}) cannot use a CUDA device: {exc}",
                     version=version, details=details)
    if count == 0:
        return Probe(False, f"CuPy {version} sees no CUDA device (check CUDA_VISIBLE_DEVICES)",
                     version=version, details=details)
    devices = []
    for index in range(count):
        try:
            props = runtime.getDeviceProperties(index)
            memory = int(props.get("totalGlobalMem", 0)) / 2**30
            devices.append(f"cuda:{index} ({_device_name(props)}, sm_{props.get('major', '?')}"
                           f"{props.get('minor', '?')}, {memory:.1f} GiB)")
        except Exception as exc:
            devices.append(f"cuda:{index} (properties unavailable: {exc})")
    try:
        nvrtc = import_module("cupy_backends.cuda.libs.nvrtc")
        major, minor = nvrtc.getVersion()
        details["nvrtc"] = f"{major}.{minor}"
    except Exception as exc:
        return Probe(False, f"CuPy {version} cannot load NVRTC, which compiles convflow's CUDA "
                            f"kernels: {exc}; {INSTALL_HINT} (it brings the CUDA toolkit "
                            f"libraries as wheels)",
                     tuple(devices), version, details)
    summary = (f"CuPy {version}, CUDA runtime {details['cuda_runtime']}, driver "
               f"{details['cuda_driver']}, {count} device{'s' if count > 1 else ''}")
    try:
        cudnn = import_module("cudnn")
    except ImportError:
        details["cudnn_frontend"] = "not installed"
        return Probe(True, f"{summary}; cuDNN frontend not installed ({FRONTEND_HINT}), so only "
                           f"convflow's own CUDA kernels run", tuple(devices), version, details,
                     cupy)
    except Exception as exc:
        details["cudnn_frontend"] = f"import failed: {exc!r}"
        return Probe(True, f"{summary}; importing the cuDNN frontend failed ({exc!r}), so only "
                           f"convflow's own CUDA kernels run", tuple(devices), version, details,
                     cupy)
    details["cudnn_frontend"] = str(getattr(cudnn, "__version__", "?"))
    try:
        backend_version = int(cudnn.backend_version())
    except Exception as exc:
        return Probe(True, f"{summary}; cuDNN frontend {details['cudnn_frontend']} is installed "
                           f"but cuDNN itself could not be loaded ({exc}; {FRONTEND_HINT}), so "
                           f"only convflow's own CUDA kernels run", tuple(devices), version,
                     details, cupy)
    details["cudnn"] = format_cudnn_version(backend_version)
    return Probe(True, f"{summary}; cuDNN {details['cudnn']} through cuDNN frontend "
                       f"{details['cudnn_frontend']}", tuple(devices), version, details, cupy,
                 cudnn)


def format_cudnn_version(code: int) -> str:
    """cuDNN's integer version (e.g. 90700, or 8902 before cuDNN 9) as text."""
    if code >= 90000:
        return f"{code // 10000}.{code % 10000 // 100}.{code % 100}"
    return f"{code // 1000}.{code % 1000 // 100}.{code % 100}"
