"""The installed package: wheel contents, kernel sources found from an installed wheel."""

from __future__ import annotations

import os
import pathlib
import shutil
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


def test_wheel_is_typed_and_says_which_pythons(wheel):
    archive = zipfile.ZipFile(wheel)
    assert "convflow/py.typed" in archive.namelist()
    (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    text = archive.read(metadata).decode()
    for version in ("3.10", "3.11", "3.12", "3.13"):
        assert f"Classifier: Programming Language :: Python :: {version}\n" in text
    assert "Requires-Python: >=3.10" in text and "Classifier: Typing :: Typed" in text


def test_the_public_namespace_is_the_api():
    public = {name for name in dir(convflow) if not name.startswith("_")}
    assert "annotations" not in public
    modules = {name for name in public if type(getattr(convflow, name)).__name__ == "module"}
    assert public - modules == set(convflow.__all__) - modules  # config, signal: modules


def test_each_cuda_extra_pulls_one_cuda_major():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    # nvidia-cudnn-frontend 1.29 and later require nvidia-cutlass-dsl[cu13] (CUDA 13).
    assert "nvidia-cudnn-frontend>=1.5,<1.29" in extras["cuda12"]
    for extra, other in (("cuda12", "13"), ("cuda13", "12")):
        for requirement in extras[extra]:
            assert f"cu{other}" not in requirement and f"cuda{other}" not in requirement, requirement


def test_make_run_installs_the_extras_the_machine_can_use_with_a_fallback():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # Run as a top-level make even under `make test` (a nested make prints "Entering
    # directory" lines and inherits the parent's flags).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    result = subprocess.run(["make", "-n", "run"], capture_output=True, text=True, cwd=ROOT,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    commands = result.stdout
    assert "pip install -q -e '.[opencl" in commands  # pyopencl, for PoCL or a GPU driver
    assert "pyopencl (the opencl extra) could not be installed here" in commands
    assert "pip install -q -e .;" in commands  # the fallback: convflow alone
    assert commands.rstrip().endswith("convflow demo")
