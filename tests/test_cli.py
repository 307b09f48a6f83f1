"""The ``convflow`` command line, run as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def convflow(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convflow", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)


def test_info():
    result = convflow("info")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in ("convflow 0.", "numpy", "host:", "cores", "backends:", "numba    available",
                     "threading_layer:", "threads:", "algorithms (in rule order): fft, depthwise, gemm_1x1, "
                     "packed_direct, im2col_gemm, direct", "configuration:", "CONVFLOW_WORKSPACE_MB = 64 [default]"):
        assert expected in out, expected


def test_info_reports_invalid_settings():
    result = convflow("info", CONVFLOW_WORKSPACE_MB="zero")
    assert result.returncode == 0
    assert "CONVFLOW_WORKSPACE_MB = INVALID" in result.stdout


def test_explain():
    result = convflow("explain", "--input", "8,64,56,56", "--weight", "64,64,3,3", "--padding", "1")
    assert result.returncode == 0, result.stderr
    assert "problem: x[8, 64, 56, 56] w[64, 64, 3, 3] y[8, 64, 56, 56] float32" in result.stdout
    assert "=> backend=numba algorithm=packed_direct" in result.stdout


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
     "channels-last data is read and written in place by packed_direct"),
])
def test_explain_variants(args, expected):
    result = convflow("explain", *args)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_explain_errors_are_reported_cleanly():
    result = convflow("explain", "--input", "8,64,56,56", "--weight", "64,32,3,3")
    assert result.returncode == 2
    assert result.stderr.startswith("convflow: error: conv2d: given groups=1 and weight of size [64, 32, 3, 3]")
    assert "Traceback" not in result.stderr
    result = convflow("explain", "--input", "8,x", "--weight", "1,1,1,1")
    assert result.returncode == 2 and "expected comma-separated integers" in result.stderr


def test_demo_runs_and_checks_itself():
    result = convflow("demo", "--size", "64")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" ok") == 11
    assert "all layers agree with the float64 check" in result.stdout
    for name in ("conv1", "layer1.0.downsample", "layer1.2.conv3"):
        assert name in result.stdout
