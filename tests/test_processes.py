"""convflow in child processes after the parent has used it: fork, spawn and forkserver."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import multiprocessing as mp, sys, numpy as np, convflow

    def child(queue, x, w):
        results = [convflow.conv2d(x, w, padding=1, algorithm=a) for a in ALGORITHMS]
        grads = convflow.conv_backward(np.ones_like(results[0]), x, w, padding=1)
        queue.put(([float(r.sum()) for r in results], float(grads[1].sum()),
                   convflow.available_backends()["numba"].details.get("forked_child")))

    ALGORITHMS = ("packed_direct", "direct", "im2col_gemm", "winograd")
    if __name__ == "__main__":
        x = np.random.default_rng(0).standard_normal((2, 8, 40, 40)).astype(np.float32)
        w = np.random.default_rng(1).standard_normal((8, 8, 3, 3)).astype(np.float32)
        parent = [float(convflow.conv2d(x, w, padding=1, algorithm=a).sum()) for a in ALGORITHMS]
        ctx = mp.get_context(sys.argv[1])
        queue = ctx.Queue()
        process = ctx.Process(target=child, args=(queue, x, w))
        process.start()
        process.join(600)
        assert process.exitcode == 0, process.exitcode
        sums, grad_sum, forked = queue.get(timeout=10)
        assert all(abs(a - b) <= 1e-3 * abs(b) for a, b in zip(sums, parent)), (sums, parent)
        after = float(convflow.conv2d(x, w, padding=1).sum())
        print(sys.argv[1], forked, after == parent[0])
""")


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_children_after_the_parent_used_convflow(tmp_path, method):
    script = tmp_path / "children.py"
    script.write_text(SCRIPT)
    result = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True,
                            cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr
    name, forked, parent_still_works = result.stdout.split()
    assert name == method
    assert parent_still_works == "True"
    # A forked child of a process that started GNU OpenMP runs single-threaded kernels.
    assert forked in ("single-threaded", "None")
    if method != "fork":
        assert forked == "None"
