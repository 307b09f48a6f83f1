"""The ``convflow`` command line, run as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def convflow_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convflow", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)


def test_info():
    result = convflow_cli("info")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in ("convflow 0.", "numpy", "host:", "cores", "backends:", "numba    available",
                     "threading_layer:", "threads:", "algorithms (in rule order): fft, depthwise, gemm_1x1, "
                     "winograd, packed_gemm, packed_direct, im2col_gemm, direct", "blas: private OpenBLAS", "configuration:", "CONVFLOW_WORKSPACE_MB = 64 [default]"):
        assert expected in out, expected


def test_info_reports_invalid_settings():
    result = convflow_cli("info", CONVFLOW_WORKSPACE_MB="zero")
    assert result.returncode == 0
    assert "CONVFLOW_WORKSPACE_MB = INVALID" in result.stdout


def test_explain():
    result = convflow_cli("explain", "--input", "8,128,56,56", "--weight", "128,128,3,3", "--padding", "1")
    assert result.returncode == 0, result.stderr
    assert "problem: x[8, 128, 56, 56] w[128, 128, 3, 3] y[8, 128, 56, 56] float32" in result.stdout
    assert "=> backend=numba algorithm=winograd" in result.stdout


@pytest.mark.parametrize("args, expected", [
    (["--input", "1,32,10,10", "--weight", "32,1,3,3", "--groups", "32", "--padding", "same"],
     "algorithm=depthwise"),
    (["--input", "1,16,10,10", "--weight", "16,8,3,3", "--transposed", "--stride", "2",
      "--output-padding", "1", "--bias"], "transposed convolution is computed as the backward-data pass"),
    (["--input", "2,16,9,9", "--weight", "8,16,3,3", "--padding", "(1,0),(0,2)", "--direction",
      "backward_weight", "--dtype", "float64"], "(backward_weight pass)"),
    (["--input", "1,4,8", "--weight", "4,4,3", "--padding", "same", "--padding-mode", "circular",
      "--algorithm", "direct"], "algorithm=direct on cpu [forced]"),
    (["--input", "8,56,56,64", "--weight", "64,64,3,3", "--padding", "1", "--layout", "NHWC",
      "--activation", "relu", "--dtype", "bfloat16", "--backend", "numba"],
     "channels-last data is read and written in place by packed_gemm"),
])
def test_explain_variants(args, expected):
    result = convflow_cli("explain", *args)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_explain_errors_are_reported_cleanly():
    result = convflow_cli("explain", "--input", "8,64,56,56", "--weight", "64,32,3,3")
    assert result.returncode == 2
    assert result.stderr.startswith("convflow explain: error: conv2d: given groups=1 and weight of size [64, 32, 3, 3]")
    assert "Traceback" not in result.stderr
    result = convflow_cli("explain", "--input", "8,x", "--weight", "1,1,1,1")
    assert result.returncode == 2 and "expected comma-separated integers" in result.stderr


def test_demo_shows_the_dispatch_and_runs_on_every_available_backend():
    import convflow

    result = convflow_cli("demo", "--size", "64")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    statuses = convflow.available_backends()
    available = [name for name, status in statuses.items() if status.available]
    for name, status in statuses.items():
        state = "available  " if status.available else "unavailable"
        assert f"  {name:<7} {state} {status.reason}" in out
    assert "dispatch: a numpy call without backend= runs on numba" in out
    assert "4. cpu fallback      -> numba, the CPU backend" in out
    for name in available:
        assert f"== on {name} (" in out and f"{name} total:" in out
    assert out.count(" ok\n") == 11 * len(available)
    assert f"all layers agree with the float64 check on {', '.join(available)}" in out
    for name in ("conv1", "layer1.0.downsample", "layer1.2.conv3"):
        assert name in out


def test_demo_runs_on_both_cpu_side_backends_where_ci_requires_them():
    from conftest import require_backend

    require_backend("opencl")
    result = convflow_cli("demo", "--size", "32", "--backend", "opencl")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "== on opencl (" in result.stdout and "== on numba" not in result.stdout
    assert "vec_gemm_1x1" in result.stdout


def test_demo_of_an_empty_batch():
    result = convflow_cli("demo", "--batch", "0", "--size", "32", "--backend", "cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "output [0, 256, 8, 8]" in result.stdout and "an empty batch" in result.stdout
    assert result.stdout.count(" ok\n") == 11


def test_version():
    import convflow

    result = convflow_cli("--version")
    assert result.returncode == 0 and result.stdout == f"convflow {convflow.__version__}\n"


def test_help_lists_every_command_and_the_defaults():
    top = convflow_cli("--help")
    assert top.returncode == 0
    for command in ("info", "explain", "demo", "bench", "tune", "cache"):
        assert f"\n    {command} " in top.stdout, command
    assert "``" not in top.stdout
    bench = convflow_cli("bench", "--help", COLUMNS="200").stdout
    assert "--list" in bench and "(default: 1,8)" in bench and "(default: resnet50)" in bench
    assert "bfloat16" in convflow_cli("tune", "--help").stdout


@pytest.mark.parametrize("args, message", [
    ([], "convflow: error: the following arguments are required: COMMAND"),
    (["tune", "--net", "foo"], "convflow tune: error: --net: unknown network 'foo'; known: resnet50"),
    (["bench", "--net", "tiny", "--compare", "tf"],
     "convflow bench: error: argument --compare: 'tf' is not one of torch"),
    (["demo", "--batch", "-1"], "convflow demo: error: argument --batch: expected an integer >= 0, got '-1'"),
    (["demo", "--size", "100000"],
     "convflow demo: error: batch 1 of 100000x100000 images needs about 5960.5 GiB, but"),
    (["demo", "--size", "0"], "convflow demo: error: argument --size: expected an integer >= 1"),
    (["demo", "--backend", "gpu"], "convflow demo: error: unknown backend 'gpu'; 'gpu' names no single backend"),
    (["bench", "--net", "tiny", "--json", "/nonexistent/x.json"],
     "convflow bench: error: --json /nonexistent/x.json: the directory '/nonexistent' does not exist"),
    (["bench", "--net", "tiny", "--plot", "/nonexistent/x.png"],
     "convflow bench: error: --plot /nonexistent/x.png: the directory '/nonexistent' does not exist"),
    (["bench", "--net", "tiny", "--json", "/"], "convflow bench: error: --json /: is a directory"),
    (["bench", "--batch", "abc"],
     "convflow bench: error: argument --batch: expected comma-separated integers >= 1, e.g. 1,8, got 'abc'"),
    (["bench", "--batch", "0"], "argument --batch: expected comma-separated integers >= 1"),
    (["tune", "--batch", "1,0"], "argument --batch: expected comma-separated integers >= 1"),
    (["bench", "--repeats", "0"], "convflow bench: error: argument --repeats: expected an integer >= 1, got '0'"),
    (["bench", "--net", "tiny", "--layers", "5:2"],
     "convflow bench: error: --layers 5:2: selects no layer of tiny, which has layers 0 to 0"),
    (["bench", "--layers", "0:5:0"], "argument --layers: expected a layer index or a slice"),
    (["tune", "--direction", "sideways"],
     "convflow tune: error: argument --direction: 'sideways' is not one of forward, backward_data, backward_weight"),
    (["bench", "--net", "tiny", "--backend", "numbba"],
     "convflow bench: error: --backend: unknown backend 'numbba' (did you mean 'numba'?)"),
    (["bench", "--net", "tiny", "--backend", "numba:packd_direct"],
     "convflow bench: error: --backend numba:packd_direct: 'packd_direct' is not an algorithm of the numba backend "
     "(did you mean 'packed_direct'?)"),
    (["bench", "--pass", "sideways"],
     "convflow bench: error: argument --pass: 'sideways' is not one of forward, backward-data, "
     "backward-weight, backward"),
    (["bench", "--pass", "forward,backwards"],
     "argument --pass: 'backwards' is not one of forward, backward-data, backward-weight, backward "
     "(did you mean 'backward'?)"),
    (["bench", "--timeout", "0"],
     "convflow bench: error: argument --timeout: expected a number of seconds > 0, got '0'"),
    (["bench", "--timeout", "soon"], "argument --timeout: expected a number of seconds > 0, got 'soon'"),
    (["bench", "--settle", "-1"],
     "convflow bench: error: argument --settle: expected a number of seconds >= 0, got '-1'"),
    (["bench", "--threads", "-1"],
     "convflow bench: error: argument --threads: expected an integer >= 0, got '-1'"),
    (["bench", "--net", "tiny", "--backend", ""],
     "convflow bench: error: --backend / --compare: no contender to benchmark"),
    (["bench", "--net", "tiny", "--backend", "numba,numba"],
     "convflow bench: error: --backend / --compare: numba named twice; name each contender once"),
    (["bench", "--net", "tiny", "--backend", "", "--compare", "scipy", "--torch-first"],
     "convflow bench: error: --torch-first: imports torch before convflow in convflow's process, "
     "but no convflow backend is benchmarked; give --backend"),
    (["tune", "--dtype", "int8"], "convflow tune: error: argument --dtype: invalid choice: 'int8'"),
    (["explain", "--input", "1,4,8,8", "--weight", "4,4,3,3", "--output-padding", "1"],
     "convflow explain: error: conv2d: output_padding applies only to transposed convolutions"),
    (["explain", "--input", "1,4,8,8", "--weight", "4,4,3,3", "--backend", "gpu"],
     "convflow explain: error: conv2d: unknown backend 'gpu'"),
])
def test_every_bad_argument_is_a_one_line_error(args, message):
    result = convflow_cli(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""  # refused before anything ran


def test_plot_without_matplotlib_fails_before_measuring(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from convflow.cli import main\n"
            f"sys.exit(main(['bench', '--net', 'tiny', '--no-progress', '--plot', {str(tmp_path / 'x.png')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith("convflow bench: error: --plot needs matplotlib")
    assert "pip install 'convflow[plot]'" in result.stderr
    assert result.stdout == ""


def test_bench_list():
    result = convflow_cli("bench", "--list")
    assert result.returncode == 0, result.stderr
    assert "resnet50                  23 distinct conv layers (53 in the network): 1x1, 3x3, other" in result.stdout
    assert "mobilenet_v2_depthwise" in result.stdout


def test_tune_takes_bfloat16(tmp_path):
    result = convflow_cli("tune", "--net", "tiny", "--dtype", "bfloat16", "--no-progress",
                          "--backend", "cpu", CONVFLOW_CACHE_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "tiny           b1   #0" in result.stdout and "tuned 1 problems" in result.stdout


def test_cache_clear_removes_the_compiler_caches_that_info_lists(tmp_path):
    for name in ("numba", "pyopencl", "pocl"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "entry").write_bytes(b"x" * 2048)
    info = convflow_cli("cache", "info", CONVFLOW_CACHE_DIR=str(tmp_path))
    assert info.returncode == 0, info.stderr
    for what in ("numba's compiled kernels", "PyOpenCL programs", "PoCL kernels"):
        assert what in info.stdout
    cleared = convflow_cli("cache", "clear", CONVFLOW_CACHE_DIR=str(tmp_path))
    assert cleared.returncode == 0, cleared.stderr
    assert "removed 0 entries from" in cleared.stdout
    for name, what in (("numba", "numba's compiled kernels"), ("pyopencl", "PyOpenCL programs"),
                       ("pocl", "PoCL kernels")):
        assert f"removed {what}: {tmp_path / name}" in cleared.stdout
        assert not (tmp_path / name).exists()
    again = convflow_cli("cache", "info", CONVFLOW_CACHE_DIR=str(tmp_path))
    assert "numba's compiled kernels" not in again.stdout


@pytest.mark.parametrize("variable, value, flagged", [
    ("CONVFLOW_BACKEND", "numbaa", "CONVFLOW_BACKEND = numbaa INVALID (CONVFLOW_BACKEND='numbaa': unknown "
                                   "backend 'numbaa' (did you mean 'numba'?)"),
    ("CONVFLOW_ALGO", "bogus", "CONVFLOW_ALGO = bogus INVALID (unknown algorithm 'bogus'; known algorithms: "),
    ("CONVFLOW_DISABLE_ALGOS", "winograd,foo", "CONVFLOW_DISABLE_ALGOS = winograd,foo INVALID (unknown "
                                               "algorithm 'foo'"),
])
def test_info_flags_names_that_no_backend_knows(variable, value, flagged):
    result = convflow_cli("info", **{variable: value})
    assert result.returncode == 0, result.stderr
    assert flagged in result.stdout


def test_info_accepts_backend_aliases():
    result = convflow_cli("info", CONVFLOW_BACKEND="cpu")
    assert "CONVFLOW_BACKEND = cpu [set]" in result.stdout


def test_progress_bar_keeps_the_table_rows_whole_on_a_terminal():
    import re

    primary, secondary = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "convflow", "bench", "--net", "tiny", "--batch", "1,2",
                             "--repeats", "3", "--warmup", "1"], stdout=secondary, stderr=secondary,
                            env={**os.environ, "COLUMNS": "120"})
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    assert proc.wait(timeout=300) == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))
    lines = re.split(r"[\r\n]+", text)
    rows = [line for line in lines if line.startswith("  0 8x16x16 -> 8 k3x3 p1")]
    assert len(rows) == 2 and all(line.rstrip().endswith(line.split()[-1]) for line in rows)
    assert all("━" not in line for line in rows)  # no bar drawn into a row
    assert any("2/2" in line and "━" in line for line in lines)  # the bar itself, finished
