"""Find and load device kernel sources (``.cl``, ``.cu``).

Sources live in the repository's top-level ``kernels/`` directory; a wheel ships the same
files as ``convflow/_kernels/``. Kernels are loaded by a relative name such as
``"opencl/direct.cl"``, read as text (never executed on the host) and cached.
"""

from __future__ import annotations

import functools
import pathlib

from .errors import ConvflowError

_PACKAGE = pathlib.Path(__file__).resolve().parent


class KernelSourceError(ConvflowError, FileNotFoundError):
    """A kernel source file is missing from the installation."""


def kernel_root() -> pathlib.Path:
    """The directory holding the kernel sources: installed copy first, then the checkout."""
    for candidate in (_PACKAGE / "_kernels", _PACKAGE.parent / "kernels"):
        if candidate.is_dir():
            return candidate
    raise KernelSourceError(
        f"convflow's kernel sources are missing: neither {_PACKAGE / '_kernels'} (an installed "
        f"wheel) nor {_PACKAGE.parent / 'kernels'} (a checkout) exists; reinstall convflow")


def _resolve(name: str) -> pathlib.Path:
    root = kernel_root()
    path = (root / name).resolve()
    if root.resolve() not in path.parents:
        raise KernelSourceError(f"kernel source name {name!r} points outside {root}")
    if not path.is_file():
        available = ", ".join(list_sources()) or "none"
        raise KernelSourceError(f"kernel source {name!r} not found in {root}; available: "
                                f"{available}")
    return path


@functools.cache
def load_source(name: str) -> str:
    """The text of kernel source *name* (relative to the kernel root, e.g. ``"opencl/x.cl"``)."""
    return _resolve(name).read_text(encoding="utf-8")


def source_path(name: str) -> pathlib.Path:
    """The file a kernel source is read from (for include paths and error messages)."""
    return _resolve(name)


def list_sources(suffix: str = "") -> list[str]:
    """Relative names of every kernel source, optionally only those ending in *suffix*."""
    root = kernel_root()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.suffix in (".cl", ".cu", ".h", ".cuh")
                  and p.name.endswith(suffix))
