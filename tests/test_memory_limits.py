"""The up-front memory check sees every limit the process lives under: its cgroup (and the
cgroup's ancestors), ``RLIMIT_AS``, and for a CPU OpenCL device the host RAM its buffers use."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from convflow import hostinfo

from conftest import require_backend


def _fake_cgroup(monkeypatch, tmp_path, proc_self_cgroup: str, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    real_read = hostinfo._read
    monkeypatch.setattr(hostinfo, "_CGROUP_ROOT", str(tmp_path))
    monkeypatch.setattr(hostinfo, "_read", lambda path: proc_self_cgroup
                        if path == "/proc/self/cgroup" else real_read(path))


def test_the_process_cgroup_and_its_ancestors_bound_the_room(monkeypatch, tmp_path):
    """cgroup v2: the process's own group allows 4 GiB, its parent only 2 GiB with 1.5 used."""
    gib = 2**30
    _fake_cgroup(monkeypatch, tmp_path, "0::/user.slice/job\n", {
        "memory.max": "max\n",
        "user.slice/memory.max": f"{2 * gib}\n",
        "user.slice/memory.current": f"{int(1.5 * gib)}\n",
        "user.slice/job/memory.max": f"{4 * gib}\n",
        "user.slice/job/memory.current": f"{gib}\n",
    })
    assert hostinfo._cgroup_room() == (2 * gib, gib // 2)
    assert hostinfo.memory_available() <= gib // 2
    assert hostinfo.memory_total() <= 2 * gib


def test_cgroup_v1_memory_controller(monkeypatch, tmp_path):
    _fake_cgroup(monkeypatch, tmp_path, "5:cpu:/\n4:memory:/batch/42\n0::/\n", {
        "memory/memory.limit_in_bytes": "9223372036854771712\n",
        "memory/batch/42/memory.limit_in_bytes": "1000000000\n",
        "memory/batch/42/memory.usage_in_bytes": "400000000\n",
    })
    assert hostinfo._cgroup_room() == (1000000000, 600000000)


def test_no_cgroup_limit_is_no_limit(monkeypatch, tmp_path):
    _fake_cgroup(monkeypatch, tmp_path, "0::/\n", {"memory.max": "max\n"})
    assert hostinfo._cgroup_room() == (None, None)


_UNDER_RLIMIT = """
import resource, numpy as np, convflow
convflow.conv2d(np.ones((1, 1, 8, 8), np.float32), np.ones((1, 1, 3, 3), np.float32),
                backend={backend!r})
in_use = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
              if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (in_use + 3 * 2**29, resource.getrlimit(
    resource.RLIMIT_AS)[1]))
# The output of inputs that take no memory (broadcast views) fits in RAM, but not
# under the limit once the {extra} is counted.
x = np.broadcast_to(np.float32(1), {x_shape})
w = np.ones((16, 16, 1, 1), np.float32)
try:
    convflow.explain(x, w, backend={backend!r})
except convflow.WorkspaceTooLargeError as exc:
    print("refused:", exc)
"""


@pytest.mark.parametrize("backend, x_shape, extra", [
    ("numba", (4, 16, 2048, 2048), "output (1 GiB)"),
    ("opencl", (2, 16, 2048, 2048), "host copy of the result"),
])
def test_rlimit_as_bounds_the_room(backend, x_shape, extra):
    require_backend(backend)
    code = _UNDER_RLIMIT.format(backend=backend, x_shape=x_shape, extra=extra)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=180, env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    assert "refused:" in result.stdout, result.stdout + result.stderr
    assert "is available" in result.stdout
    if backend == "opencl":
        assert "host copy of the result 512.0 MiB" in result.stdout, result.stdout
