"""Planning opens only the backends a call needs: a numba call never imports pyopencl or
cupy (nor writes their caches); the other backends' statuses are computed when shown."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CALLS = """
import json, sys, numpy as np, convflow
x = np.ones((1, 2, 8, 8), np.float32); w = np.ones((2, 2, 3, 3), np.float32)
convflow.conv2d(x, w, {backend})
convflow.conv_transpose2d(x, np.ones((2, 2, 3, 3), np.float32), {backend})
convflow.conv_backward(np.ones((1, 2, 6, 6), np.float32), x, w, {backend})
decision = convflow.explain(x, w, {backend})
before = sorted(m for m in ("pyopencl", "cupy", "pytools") if m in sys.modules)
cache = convflow.config.cache_dir()
caches = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
text = str(decision)
print(json.dumps({{"before": before, "caches": caches,
                   "shown": "opencl" in text and "cupy" in text}}))
"""


@pytest.mark.parametrize("backend", ["", "backend='numba'"])
@pytest.mark.parametrize("env", [{}, {"CONVFLOW_BACKEND": "numba"},
                                 {"CONVFLOW_DISABLE_ALGOS": "im2col_gemm"},
                                 {"CONVFLOW_FIND_MODE": "autotune"}])
def test_a_numba_call_imports_no_other_backend(tmp_path, backend, env):
    cache = tmp_path / "cache"
    result = subprocess.run(
        [sys.executable, "-c", CALLS.format(backend=backend)], capture_output=True, text=True,
        timeout=300, env={**os.environ, "CONVFLOW_CACHE_DIR": str(cache), **env})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["before"] == [] and report["shown"], report
    # pyopencl's and PoCL's caches were never created before the decision was printed.
    assert "pocl" not in report["caches"] and "pytools" not in report["caches"], report
