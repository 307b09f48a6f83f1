"""The constants that shape the device kernels come from one Python table each (opencl and
cuda) as -D values: every macro a kernel source takes from the host is in its table, the
sources never define one themselves, and each is guarded by an #error so a build without it
cannot compile silently. Pure text checks: no device needed."""

from __future__ import annotations

import re

import numpy as np
import pytest

from convflow import kernels
from convflow.backends.cupy import sources as cuda_sources
from convflow.backends.opencl import solvers

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
_GUARD = re.compile(r"^\s*#\s*ifndef\s+(\w+)\s*\n\s*#\s*error\b", re.MULTILINE)
_DEFINE = re.compile(r"^\s*#\s*define\s+(\w+)", re.MULTILINE)
_IDENTIFIER = re.compile(r"\b[A-Za-z_]\w*\b")

OPENCL_TABLES = {dtype: solvers.kernel_constants(np.dtype(dtype))
                 for dtype in ("float32", "float64")}
CUDA_TABLES = {dtype: cuda_sources.kernel_constants(dtype) for dtype in cuda_sources.DTYPE_CODES}


def _code(name: str) -> str:
    return _COMMENT.sub(" ", kernels.load_source(name))


def _guarded(name: str) -> set[str]:
    return set(_GUARD.findall(_code(name)))


def _used(name: str, names: set[str]) -> set[str]:
    return set(_IDENTIFIER.findall(_code(name))) & names


def _sources(prefix: str) -> list[str]:
    return [name for name in kernels.list_sources() if name.startswith(prefix)]


@pytest.mark.parametrize("family, tables", [("opencl/", OPENCL_TABLES), ("cuda/", CUDA_TABLES)])
def test_every_constant_a_kernel_uses_comes_from_the_table(family, tables):
    names = set.union(*(set(table) for table in tables.values()))
    assert all(set(table) == names for table in tables.values()), "one table, every dtype"
    common = set.union(*(_guarded(n) for n in _sources(family) if n.endswith((".h", ".cuh"))))
    required_somewhere: set[str] = set()
    for name in _sources(family):
        guarded = _guarded(name)
        required_somewhere |= guarded
        assert guarded <= names, f"{name} requires {sorted(guarded - names)}, not in the table"
        defined = set(_DEFINE.findall(_code(name))) & names
        assert not defined, f"{name} defines {sorted(defined)} itself instead of taking -D values"
        unguarded = _used(name, names) - guarded - common
        assert not unguarded, (f"{name} uses {sorted(unguarded)} without an #ifndef / #error "
                               f"guard")
    assert required_somewhere == names, f"unused table entries: {names - required_somewhere}"


def test_the_opencl_build_options_carry_the_table():
    for dtype, table in OPENCL_TABLES.items():
        call = solvers.Call(state=None, queue=None, dtype=np.dtype(dtype), budget=0)
        defines = call.defines(TS=32)
        assert {k: defines[k] for k in table} == table and defines["TS"] == 32
        assert ("USE_DOUBLE" in defines) == (dtype == "float64")
    # The host's launch arithmetic reads the same values.
    assert solvers.kernel_constants(np.dtype("float32"))["VW"] == solvers.vector_width(np.float32)
    assert OPENCL_TABLES["float64"]["NT_VW"] * 2 == solvers.vector_width(np.float64)
    assert (solvers.KERNEL_CONSTANTS["DW_OPI"], solvers.KERNEL_CONSTANTS["PACK_RUN"]) == (
        solvers.DW_OPI, solvers.PACK_RUN)


def test_the_cuda_compile_options_carry_the_table():
    for dtype, table in CUDA_TABLES.items():
        options = cuda_sources.compile_options(dtype)
        assert [f"-D{k}={v}" for k, v in table.items()] == [o for o in options
                                                            if o.startswith("-D")]
