"""The installed package: wheel contents, kernel sources found from an installed wheel."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

import convflow
from convflow import kernels

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_kernel_root_in_a_checkout():
    assert kernels.kernel_root() in (ROOT / "kernels", pathlib.Path(convflow.__file__).parent / "_kernels")


def test_kernel_names_cannot_escape_the_root():
    with pytest.raises(kernels.KernelSourceError, match="points outside"):
        kernels.load_source("../pyproject.toml")
    with pytest.raises(kernels.KernelSourceError, match="not found"):
        kernels.load_source("opencl/no_such_kernel.cl")
    with pytest.raises(FileNotFoundError):
        kernels.load_source("cuda/no_such_kernel.cu")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "-q", "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    if result.returncode != 0 and "No module named 'hatchling'" in result.stderr:
        pytest.skip("hatchling (a test extra) is not installed")
    assert result.returncode == 0, result.stderr
    (path,) = out.glob("convflow-*.whl")
    return path


def test_wheel_ships_the_kernel_sources(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n for n in names if n.startswith("convflow/_kernels/")}
    checkout = {f"convflow/_kernels/{p.relative_to(ROOT / 'kernels')}" for p in (ROOT / "kernels").rglob("*")
                if p.is_file()}
    assert checkout and checkout == shipped
    assert "convflow/backends/numba/kernels.py" in names
    assert not any(n.startswith("tests/") for n in names)


def test_installed_wheel_finds_its_kernels(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import convflow.kernels as k; root = k.kernel_root(); print(root); "
            "print(sorted(p.name for p in root.rglob('*') if p.is_file()))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    root_line = result.stdout.splitlines()[0]
    assert root_line == str(site / "convflow" / "_kernels")
    expected = sorted(p.name for p in (ROOT / "kernels").rglob("*") if p.is_file())
    assert result.stdout.splitlines()[1] == str(expected)
