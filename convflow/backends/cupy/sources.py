"""The CUDA sources of the cupy backend as NVRTC compiles them: no CuPy needed here.

Each ``kernels/cuda/*.cu`` file is compiled once per storage dtype with ``-DCF_DTYPE`` and
``-DCF_BLOCK``. Local ``#include "x.cuh"`` lines are replaced by the header's text before
compiling, so CuPy's compile cache (keyed by source and options) sees every line that is
compiled, and the headers need no include path. The test suite compiles the files with
``nvcc`` and the same options (:func:`compile_options`).
"""

from __future__ import annotations

import re

from ... import kernels
from .geometry import REDUCTION_BLOCK

# storage dtype name -> CF_DTYPE
DTYPE_CODES = {"float16": 16, "bfloat16": 116, "float32": 32, "float64": 64}

# kernel name -> source file (relative to the kernel root)
KERNEL_FILES = {
    "cf_fprop_direct": "cuda/direct.cu",
    "cf_dgrad_direct": "cuda/direct.cu",
    "cf_wgrad_direct": "cuda/direct.cu",
    "cf_fprop_depthwise": "cuda/depthwise.cu",
    "cf_dgrad_depthwise": "cuda/depthwise.cu",
    "cf_wgrad_depthwise": "cuda/depthwise.cu",
    "cf_im2col": "cuda/im2col.cu",
    "cf_col2im": "cuda/im2col.cu",
    "cf_bias_activation": "cuda/im2col.cu",
}

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)
_PRAGMA_ONCE = re.compile(r"^\s*#\s*pragma\s+once\s*$", re.MULTILINE)


def kernel_constants(dtype: str) -> dict[str, int]:
    """Every -D constant the CUDA sources require for storage dtype *dtype* (each is guarded
    by an ``#error`` there, so a source compiled without it does not compile)."""
    return {"CF_DTYPE": DTYPE_CODES[dtype], "CF_BLOCK": REDUCTION_BLOCK}


def compile_options(dtype: str) -> tuple[str, ...]:
    """The NVRTC / nvcc options a source is compiled with for storage dtype *dtype*."""
    return ("-std=c++14", *(f"-D{name}={value}" for name, value in kernel_constants(dtype).items()))


def expanded_source(name: str) -> str:
    """The text of kernel source *name* with its local includes inlined (each header once)."""
    seen: set[str] = set()

    def expand(relative: str) -> str:
        directory = relative.rsplit("/", 1)[0] if "/" in relative else ""
        text = _PRAGMA_ONCE.sub("", kernels.load_source(relative))

        def replace(match: re.Match[str]) -> str:
            header = f"{directory}/{match.group(1)}" if directory else match.group(1)
            if header in seen:
                return f"// {match.group(0).strip()} (already included)"
            seen.add(header)
            return f"// begin {header}\n{expand(header)}\n// end {header}"

        return _INCLUDE.sub(replace, text)

    seen.add(name)
    return expand(name)
