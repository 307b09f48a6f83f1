"""The private OpenBLAS the numba backend's GEMMs run on, found and opened without numba.

Why a private BLAS at all is said in :mod:`.blas`, which registers the routines opened here
with LLVM for its kernels. Opening it (``ctypes``, one thread, its symbols checked) is what
the rules need to know whether the GEMM algorithms can run, and they run before numba is
imported (see :mod:`.plans`).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import threading

# convflow's names for the routines (what the kernels link to) -> the library's.
SYMBOLS = {"convflow_cblas_sgemm": "scipy_cblas_sgemm",
           "convflow_cblas_dgemm": "scipy_cblas_dgemm",
           "convflow_cblas_sgemv": "scipy_cblas_sgemv",
           "convflow_cblas_dgemv": "scipy_cblas_dgemv"}
_lock = threading.Lock()
_state: dict[str, object] = {}


def _library_path() -> str:
    """The shared library inside the scipy-openblas32 wheel, found without importing the
    package (its ``get_openblas_config`` would load the library ``RTLD_GLOBAL``)."""
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the scipy-openblas32 package is not installed; pip install "
                          "scipy-openblas32 (convflow depends on it)")
    lib_dir = os.path.join(next(iter(spec.submodule_search_locations)), "lib")
    names = sorted(n for n in os.listdir(lib_dir)
                   if n.startswith(("libscipy_openblas", "scipy_openblas"))
                   and n.endswith((".so", ".dylib", ".dll")))
    if not names:
        raise ImportError(f"scipy-openblas32 has no library in {lib_dir}")
    return os.path.join(lib_dir, names[0])


def open_library() -> tuple[ctypes.CDLL, str]:
    """The private OpenBLAS, opened once (``RTLD_LOCAL``: its symbols never resolve anyone
    else's calls), set to one thread, every routine in :data:`SYMBOLS` checked; and a
    description for ``convflow info``. Raises ImportError (kept as the reason the GEMM
    algorithms cannot run) when the library is missing or lacks a routine."""
    opened = _state.get("opened")
    if opened is not None:
        return opened  # type: ignore[return-value]
    with _lock:
        if "opened" in _state:
            return _state["opened"]  # type: ignore[return-value]
        path = _library_path()
        try:
            library = ctypes.CDLL(path, mode=os.RTLD_LOCAL | getattr(os, "RTLD_NOW", 0))
            library.scipy_openblas_set_num_threads(1)
            for theirs in SYMBOLS.values():
                getattr(library, theirs)
            config = library.scipy_openblas_get_config
            config.restype = ctypes.c_char_p
            built = config().decode("ascii", "replace").strip()
        except (OSError, AttributeError) as exc:
            raise ImportError(f"could not load the private OpenBLAS {path}: {exc}") from None
        # Kept alive for the process: the kernels hold its addresses.
        _state["opened"] = (library, f"private {built}, 1 thread per partition ({path})")
        return _state["opened"]  # type: ignore[return-value]
