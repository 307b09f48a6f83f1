"""OpenCL platforms, devices, contexts, program builds and launches, in one place.

Device choice (``CONVFLOW_OPENCL_DEVICE``) is a pure function of the platforms' and devices'
names and types (:func:`match_devices`), testable without OpenCL. Everything that touches
pyopencl lives in :class:`ContextState`: one per OpenCL context, holding its in-order queue,
a memory pool, the device's limits and the programs built so far. Programs are memoized
per context and key (sources + build options) and go through PyOpenCL's on-disk cache;
launch geometry (rounding to the work-group size, checking the device's limits) is computed
in :meth:`ContextState.launch` and nowhere else.
"""

from __future__ import annotations

import collections
import importlib
import logging
import sys
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import config
from ...errors import ConfigError, KernelBuildError
from ...kernels import load_source
from . import caches

logger = logging.getLogger("convflow")

# Order of preference when CONVFLOW_OPENCL_DEVICE is not set.
TYPE_PREFERENCE = ("gpu", "accelerator", "other", "cpu")


class SolverUnavailable(Exception):
    """A solver cannot run a problem on this device (local memory, work-group limits, a
    buffer over the device's maximum allocation); the backend falls back to the next one."""


@dataclass(frozen=True)
class DeviceEntry:
    """What device matching needs to know about one device (no pyopencl objects)."""

    platform_index: int
    platform_name: str
    device_index: int
    device_name: str
    type: str

    def label(self) -> str:
        return (f"{self.platform_index}:{self.device_index} {self.device_name!r} ({self.type}) "
                f"on {self.platform_name!r}")


def _matches(part: str, index: int, name: str) -> bool:
    if part.isdigit():
        return int(part) == index
    return part.lower() in name.lower()


def match_devices(entries: Sequence[DeviceEntry], spec: str) -> list[DeviceEntry]:
    """The devices convflow uses, in order: ``opencl:0`` is the first.

    *spec* is ``CONVFLOW_OPENCL_DEVICE``: empty for every device, GPUs first (then
    accelerators, then CPUs); ``P`` for every device of platform ``P``; ``P:D`` for one
    device; ``:D`` for device ``D`` of any platform. ``P`` and ``D`` are an index or a
    case-insensitive substring of the name, as in ``PYOPENCL_CTX``. Raises ConfigError
    listing the devices when nothing matches.
    """
    spec = spec.strip()
    if not spec:
        rank = {t: i for i, t in enumerate(TYPE_PREFERENCE)}
        return sorted(entries, key=lambda e: rank.get(e.type, len(rank)))
    platform_part, sep, device_part = spec.partition(":")
    platform_part, device_part = platform_part.strip(), device_part.strip()
    if sep and not device_part:
        raise ConfigError(f"CONVFLOW_OPENCL_DEVICE={spec!r} is invalid: expected 'platform', "
                          f"'platform:device' or ':device' (each an index or a name substring)")
    chosen = [e for e in entries
              if (not platform_part or _matches(platform_part, e.platform_index, e.platform_name))
              and (not device_part or _matches(device_part, e.device_index, e.device_name))]
    if not chosen:
        listing = "; ".join(e.label() for e in entries) or "none"
        raise ConfigError(f"CONVFLOW_OPENCL_DEVICE={spec!r} matches no OpenCL device; available "
                          f"(platform:device): {listing}; unset it to use every device")
    return chosen


@dataclass(frozen=True)
class DeviceInfo:
    """A device's identity and the limits kernels must respect (queried once)."""

    name: str
    platform: str
    vendor: str
    version: str
    driver: str
    type: str
    compute_units: int
    max_work_group_size: int
    max_work_item_sizes: tuple[int, ...]
    local_mem_size: int
    global_mem_size: int
    max_mem_alloc_size: int
    fp64: bool
    fp16: bool

    @property
    def style(self) -> str:
        """``cpu`` for CPU devices (vector kernels), ``gpu`` for everything else."""
        return "cpu" if self.type == "cpu" else "gpu"

    def describe(self) -> str:
        return (f"{self.name} ({self.type}, {self.platform}, {self.compute_units} compute units, "
                f"{self.global_mem_size / 2**30:.1f} GiB)")

    def limits(self) -> dict[str, str]:
        return {
            "type": self.type,
            "version": self.version,
            "driver": self.driver,
            "compute units": str(self.compute_units),
            "max work-group size": str(self.max_work_group_size),
            "max work-item sizes": "x".join(map(str, self.max_work_item_sizes)),
            "local memory": f"{self.local_mem_size // 1024} KiB",
            "global memory": f"{self.global_mem_size / 2**30:.1f} GiB",
            "max allocation": f"{self.max_mem_alloc_size / 2**30:.1f} GiB",
            "float64": "yes" if self.fp64 else "no (cl_khr_fp64 missing)",
            "float16 arithmetic": "yes" if self.fp16 else "no (storage only, computed in float32)",
        }


def _device_type(cl: Any, device: Any) -> str:
    kind = int(device.type)
    if kind & cl.device_type.GPU:
        return "gpu"
    if kind & cl.device_type.ACCELERATOR:
        return "accelerator"
    if kind & cl.device_type.CPU:
        return "cpu"
    return "other"


def query_info(cl: Any, device: Any) -> DeviceInfo:
    extensions = device.extensions.split()
    return DeviceInfo(
        name=device.name.strip(),
        platform=device.platform.name.strip(),
        vendor=device.vendor.strip(),
        version=device.version.strip(),
        driver=device.driver_version.strip(),
        type=_device_type(cl, device),
        compute_units=int(device.max_compute_units),
        max_work_group_size=int(device.max_work_group_size),
        max_work_item_sizes=tuple(int(s) for s in device.max_work_item_sizes),
        local_mem_size=int(device.local_mem_size),
        global_mem_size=int(device.global_mem_size),
        max_mem_alloc_size=int(device.max_mem_alloc_size),
        fp64="cl_khr_fp64" in extensions or int(device.double_fp_config or 0) != 0,
        fp16="cl_khr_fp16" in extensions,
    )


def import_pyopencl() -> Any:
    """Import pyopencl with its on-disk caches off (caches.py says why): pyopencl reads
    PYOPENCL_NO_CACHE, and creates its kernel-invoker cache (a pytools persistent dict), when
    its modules are first imported, so the settings are scoped around that import."""
    if "pyopencl.invoker" not in sys.modules:
        with caches.pyopencl_import_scope():
            # The invoker module (imported lazily by pyopencl, at the first kernel launch)
            # is where the persistent dict is made.
            for name in ("pyopencl", "pyopencl.invoker", "pyopencl.array", "pyopencl.tools"):
                importlib.import_module(name)
    return sys.modules["pyopencl"]


def pocl_cache_scope() -> Any:
    """PoCL reads its kernel-cache location once, when its platform or first context starts:
    around those calls, point it at a cache convflow has checked (caches.py), unless the
    user set POCL_CACHE_DIR. Raises caches.PoclCacheTrouble when PoCL cannot start safely."""
    return caches.pocl_scope()


def enumerate_devices(cl: Any) -> list[tuple[DeviceEntry, Any]]:
    """Every (entry, pyopencl device) of every platform; platforms that fail are skipped."""
    found: list[tuple[DeviceEntry, Any]] = []
    with pocl_cache_scope():
        return _enumerate_devices(cl, found)


def _enumerate_devices(cl: Any, found: list[tuple[DeviceEntry, Any]]) -> list[tuple[DeviceEntry, Any]]:
    for p_index, platform in enumerate(cl.get_platforms()):
        try:
            devices = platform.get_devices()
        except cl.Error as exc:
            logger.debug("OpenCL platform %s lists no devices: %s", platform.name, exc)
            continue
        for d_index, device in enumerate(devices):
            found.append((DeviceEntry(p_index, platform.name.strip(), d_index,
                                      device.name.strip(), _device_type(cl, device)), device))
    return found


# Launches given an estimate of their work (``item_flops``) run in pieces over this many
# floating-point operations: ~0.2 s of PoCL's naive kernel on 2 cores (~1 GFLOP/s there);
# a GPU runs it in milliseconds, so the adaptive pieces grow there at once.
LONG_LAUNCH_FLOPS = 200_000_000
FIRST_PIECE_FLOPS = 100_000_000
PIECE_SECONDS = 0.2


def _round_up(value: int, multiple: int) -> int:
    return max(1, -(-value // multiple)) * multiple


def wait_interruptibly(cl: Any, event: Any) -> None:
    """Wait for *event* in sleeps of at most 10 ms (not in pyopencl's blocking wait), so a
    KeyboardInterrupt is raised in this thread within that time; errors of the command are
    raised by the final ``wait``."""
    delay = 5e-5
    while event.command_execution_status > cl.command_execution_status.COMPLETE:
        time.sleep(delay)
        delay = min(2 * delay, 0.01)
    event.wait()


def _as_arg(value: Any) -> Any:
    """Python ints become int32 kernel arguments; everything else passes through."""
    if isinstance(value, (bool, np.bool_)):
        return np.int32(int(value))
    if isinstance(value, int):
        if not -(2**31) <= value < 2**31:
            raise SolverUnavailable(f"an index ({value}) does not fit the kernels' 32-bit ints")
        return np.int32(value)
    return value


def options_text(defines: Mapping[str, Any]) -> str:
    """Build options from ``-D`` macros (sorted, so equal sets give one program)."""
    parts = ["-cl-mad-enable", "-w"]
    for name in sorted(defines):
        value = defines[name]
        parts.append(f"-D{name}" if value is True else f"-D{name}={value}")
    return " ".join(parts)


class ContextState:
    """One OpenCL context on one device: queue, memory pool, limits, built programs."""

    def __init__(self, cl: Any, context: Any, device: Any, info: DeviceInfo,
                 queue: Any = None) -> None:
        import pyopencl.tools as cl_tools

        self.cl = cl
        self.context = context
        self.device = device
        self.info = info
        self.queue = queue if queue is not None else cl.CommandQueue(context, device)
        self.allocator = cl_tools.MemoryPool(cl_tools.ImmediateAllocator(self.queue))
        self._programs: dict[tuple[tuple[str, ...], str], Any] = {}
        self._kernels: dict[tuple[tuple[str, ...], str, str], Any] = {}
        self._wg_limits: dict[int, tuple[int, int]] = {}
        self._signatures: dict[int, tuple[Any, ...]] = {}
        self._build_lock = threading.Lock()
        self._launch_lock = threading.Lock()
        self._alloc_lock = threading.Lock()

    # Programs ----------------------------------------------------------------------------
    def build(self, source: str, options: str, label: str) -> Any:
        """Compile *source*; a failure raises KernelBuildError carrying the build log."""
        cl = self.cl
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                program = cl.Program(self.context, source).build(
                    options=options, devices=[self.device],
                    cache_dir=False if getattr(cl, "_PYOPENCL_NO_CACHE", False)
                    else caches.pyopencl_cache_dir())
            except cl.Error as exc:
                log = str(exc)
                raise KernelBuildError(
                    f"building OpenCL program {label} with options '{options}' for "
                    f"{self.info.name!r} ({self.info.platform}) failed; build log:\n{log}"
                ) from exc
        for warning in caught:
            logger.debug("OpenCL build of %s: %s", label, warning.message)
        return program

    def program(self, sources: tuple[str, ...], defines: Mapping[str, Any]) -> Any:
        options = options_text(defines)
        key = (sources, options)
        with self._build_lock:
            program = self._programs.get(key)
            if program is None:
                text = "\n".join(load_source(name) for name in sources)
                program = self.build(text, options, "+".join(sources))
                self._programs[key] = program
                logger.debug("built OpenCL program %s (%s) for %s", "+".join(sources), options,
                             self.info.name)
            return program

    def kernel(self, sources: tuple[str, ...], name: str, defines: Mapping[str, Any]) -> Any:
        key = (sources, options_text(defines), name)
        kernel = self._kernels.get(key)
        if kernel is None:
            program = self.program(sources, defines)
            with self._build_lock:
                kernel = self._kernels.get(key)
                if kernel is None:
                    kernel = self.cl.Kernel(program, name)
                    self._kernels[key] = kernel
        return kernel

    def forget_programs(self) -> None:
        """Drop every memoized program and kernel (the next use rebuilds them)."""
        with self._build_lock:
            self._programs.clear()
            self._kernels.clear()
            self._wg_limits.clear()
            self._signatures.clear()

    # Launches ----------------------------------------------------------------------------
    def kernel_limits(self, kernel: Any) -> tuple[int, int]:
        """(largest work-group size, static local memory bytes) of a built kernel."""
        key = id(kernel)
        limits = self._wg_limits.get(key)
        if limits is None:
            info = self.cl.kernel_work_group_info
            size = int(kernel.get_work_group_info(info.WORK_GROUP_SIZE, self.device))
            local = int(kernel.get_work_group_info(info.LOCAL_MEM_SIZE, self.device))
            limits = (min(size, self.info.max_work_group_size), local)
            self._wg_limits[key] = limits
        return limits

    def max_group(self, kernel: Any) -> int:
        return self.kernel_limits(kernel)[0]

    def check_local(self, kernel: Any, local_bytes: int, what: str) -> None:
        """Raise SolverUnavailable when *local_bytes* of ``__local`` buffers do not fit."""
        static = self.kernel_limits(kernel)[1]
        if local_bytes + static > self.info.local_mem_size:
            raise SolverUnavailable(
                f"{what} needs {local_bytes + static} bytes of local memory, but "
                f"{self.info.name!r} has {self.info.local_mem_size}")

    def fit_group(self, kernel: Any, local_size: Sequence[int]) -> tuple[int, ...]:
        """*local_size* shrunk (halving its largest dims) until it respects the device's
        work-item sizes and the kernel's work-group limit."""
        local = [max(1, int(v)) for v in local_size]
        limit = self.max_group(kernel)
        sizes = self.info.max_work_item_sizes
        for dim in range(len(local)):
            while local[dim] > sizes[dim]:
                local[dim] = max(1, local[dim] // 2)
        while int(np.prod(local)) > limit:
            dim = int(np.argmax(local))
            local[dim] = max(1, local[dim] // 2)
        return tuple(local)

    def launch(self, queue: Any, kernel: Any, global_size: Sequence[int],
               local_size: Sequence[int], *args: Any, fixed: bool = False,
               item_flops: float = 0) -> None:
        """Enqueue *kernel*: the global size is rounded up to a multiple of the work-group
        size. A *fixed* work-group size (a kernel compiled for it) that exceeds the device's
        or the kernel's limits raises SolverUnavailable; other sizes shrink to fit.

        *item_flops* (the work of one work-item, given for 1-D kernels that index by
        ``get_global_id`` alone, so that a global offset shifts them exactly) marks a launch
        that may be long: over LONG_LAUNCH_FLOPS it runs in pieces, see :meth:`_launch_pieces`.
        """
        local = tuple(int(v) for v in local_size)
        if fixed:
            group = int(np.prod(local))
            for dim, size in enumerate(local):
                if size > self.info.max_work_item_sizes[dim]:
                    raise SolverUnavailable(
                        f"a work-group of {local} exceeds {self.info.name!r}'s maximum "
                        f"work-item sizes {self.info.max_work_item_sizes}")
            if group > self.max_group(kernel):
                raise SolverUnavailable(
                    f"a work-group of {group} work-items exceeds the {self.max_group(kernel)} "
                    f"that {self.info.name!r} allows for kernel {kernel.function_name}")
        else:
            local = self.fit_group(kernel, local)
        rounded = tuple(max(1, -(-int(size) // group_size)) * group_size
                        for size, group_size in zip(global_size, local))
        converted = [_as_arg(a) for a in args]
        if item_flops and len(rounded) == 1 and item_flops * rounded[0] > LONG_LAUNCH_FLOPS:
            self._launch_pieces(queue, kernel, rounded[0], local[0], converted, item_flops)
            return
        self._enqueue(queue, kernel, rounded, local, converted)

    def _enqueue(self, queue: Any, kernel: Any, global_size: tuple[int, ...],
                 local: tuple[int, ...], converted: list[Any],
                 offset: tuple[int, ...] | None = None) -> Any:
        signature = tuple(np.dtype(type(a)) if isinstance(a, np.integer) else None
                          for a in converted)
        with self._launch_lock:
            known = self._signatures.get(id(kernel))
            if known is None:
                # Typed scalar arguments make pyopencl's set_args ~50x faster.
                kernel.set_scalar_arg_dtypes(list(signature))
                self._signatures[id(kernel)] = signature
            elif known != signature:
                raise TypeError(f"kernel {kernel.function_name} launched with argument types "
                                f"{signature}, but earlier with {known}")
            kernel.set_args(*converted)
            return self.cl.enqueue_nd_range_kernel(queue, kernel, global_size, local,
                                                   global_work_offset=offset)

    def _launch_pieces(self, queue: Any, kernel: Any, total: int, group: int,
                       converted: list[Any], item_flops: float) -> None:
        """Run a long 1-D launch as consecutive ranges of work-items (global offsets), at
        most two in flight, waiting on each in short sleeps.

        A kernel, once enqueued, cannot be stopped, and pyopencl's waits block the Python
        thread in C, where no signal handler runs: one 30 s launch holds a Ctrl-C for 30 s.
        Between pieces the thread sleeps in Python, so a KeyboardInterrupt lands there;
        the pieces already enqueued (at most two) are then finished before it propagates,
        so the queue is empty and the next call sound. Piece sizes adapt to the measured
        rate, aiming at PIECE_SECONDS each: the first covers FIRST_PIECE_FLOPS."""
        cl = self.cl
        piece = _round_up(max(group, int(FIRST_PIECE_FLOPS / item_flops)), group)
        pending: collections.deque[tuple[Any, int, float]] = collections.deque()
        offset, last_done = 0, time.perf_counter()
        try:
            while offset < total or pending:
                while offset < total and len(pending) < 2:
                    size = min(piece, total - offset)
                    event = self._enqueue(queue, kernel, (size,), (group,), converted, (offset,))
                    queue.flush()
                    pending.append((event, size, time.perf_counter()))
                    offset += size
                event, size, enqueued = pending.popleft()
                wait_interruptibly(cl, event)
                now = time.perf_counter()
                elapsed = max(now - max(enqueued, last_done), 1e-6)
                last_done = now
                wanted = size * PIECE_SECONDS / elapsed
                piece = _round_up(int(min(max(wanted, piece / 4), piece * 4)), group)
        except BaseException:
            queue.finish()
            raise

    def reduction_group(self, preferred: int = 64) -> int:
        """The work-group size of tree reductions: a power of two within the device limit."""
        size = preferred
        while size > 1 and size > self.info.max_work_group_size:
            size //= 2
        return size

    # Memory ------------------------------------------------------------------------------
    def empty(self, queue: Any, shape: Sequence[int], dtype: Any, scratch: bool = False) -> Any:
        """A new device array. One over the device's maximum allocation raises
        SolverUnavailable for a solver's *scratch* (another solver may need less) and
        WorkspaceTooLargeError for tensors (outputs, copies), which no solver can avoid."""
        import pyopencl.array as cl_array

        from ...errors import WorkspaceTooLargeError

        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes > self.info.max_mem_alloc_size:
            message = (f"a buffer of {nbytes} bytes (shape {tuple(shape)}, {dtype.name}) exceeds "
                       f"{self.info.name!r}'s maximum allocation of "
                       f"{self.info.max_mem_alloc_size} bytes")
            if scratch:
                raise SolverUnavailable(message)
            raise WorkspaceTooLargeError(f"{message}; split the batch or use another backend")
        try:
            with self._alloc_lock:
                return cl_array.empty(queue, tuple(shape), dtype, allocator=self.allocator)
        except self.cl.MemoryError as exc:
            raise WorkspaceTooLargeError(
                f"allocating {nbytes} bytes on {self.info.name!r} failed ({exc}); free device "
                f"memory or lower the batch size") from exc

    def to_device(self, queue: Any, host: np.ndarray) -> Any:
        """A new device array holding a copy of *host* (blocking: *host* may be freed)."""
        array = self.empty(queue, host.shape, host.dtype)
        if array.size:
            array.set(np.ascontiguousarray(host), queue=queue)
        return array


def inventory() -> list[str]:
    """Every OpenCL platform and device with its limits, as lines for ``convflow info``
    (never raises: a missing pyopencl or driver is reported as a line)."""
    try:
        cl = import_pyopencl()
    except ImportError as exc:
        return [f"pyopencl is not installed ({exc}); pip install 'convflow[opencl]'"]
    try:
        with pocl_cache_scope():
            platforms = cl.get_platforms()
    except cl.Error as exc:
        return [f"no OpenCL platform ({str(exc).strip()}); install a driver, e.g. "
                f"apt-get install pocl-opencl-icd"]
    except Exception as exc:  # the PoCL cache cannot be used safely, or anything else
        return [f"OpenCL could not start: {type(exc).__name__}: {exc}"]
    lines = []
    chosen: dict[tuple[int, int], int] = {}
    try:

        entries = [entry for entry, _ in enumerate_devices(cl)]
        for index, entry in enumerate(match_devices(entries,
                                                    config.get("CONVFLOW_OPENCL_DEVICE"))):
            chosen[(entry.platform_index, entry.device_index)] = index
    except ConfigError as exc:
        lines.append(f"(no device selected: {exc})")
    for p_index, platform in enumerate(platforms):
        lines.append(f"platform {p_index}: {platform.name.strip()} ({platform.vendor.strip()}, "
                     f"{platform.version.strip()})")
        try:
            devices = platform.get_devices()
        except cl.Error as exc:
            lines.append(f"  no devices: {str(exc).strip()}")
            continue
        for d_index, device in enumerate(devices):
            info = query_info(cl, device)
            used = chosen.get((p_index, d_index))
            mark = f" -> convflow device opencl:{used}" if used is not None else " (not selected)"
            lines.append(f"  device {p_index}:{d_index}: {info.name}{mark}")
            lines.extend(f"    {key}: {value}" for key, value in info.limits().items())
    return lines
