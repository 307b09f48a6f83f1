"""ci/gpu-check.sh and ci/bench_cupy.py without a GPU: argument handling, the wheel list and
its Makefile target, the dry run, the benchmark's plan and its torch side on the CPU.

Nothing here downloads: ``make gpu-wheels`` is a manual step (run once where there is
network); the test that installs its wheels into a Python 3.12 skips when .whl/ or a Python
3.12 is not there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "ci" / "gpu-check.sh"
BENCH = ROOT / "ci" / "bench_cupy.py"
LIMIT = 64 << 20

sys.path.insert(0, str(ROOT / "ci"))
try:
    import bench_cupy
finally:
    sys.path.remove(str(ROOT / "ci"))


def gpu_check(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run the script with only the GPU_CHECK_* settings given here."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env={**inherited, **env}, timeout=timeout, cwd=ROOT)


def makefile_variable(name: str) -> list[str]:
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{name}\s*:=\s*((?:.*\\\n)*.*)$", text, re.MULTILINE)
    assert match, f"{name} is not set in the Makefile"
    return match.group(1).replace("\\\n", " ").split()


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    """GPU_WHEELS as {normalized name: version}."""
    return {normalized(p.split("==")[0]): p.split("==")[1] for p in makefile_variable("GPU_WHEELS")}


# Arguments ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, env, message", [
    ((), {}, r"missing the output folder; usage: gpu-check.sh \[--dry-run\] OUT"),
    (("--dry-run",), {}, r"missing the output folder"),
    (("{tmp}/nowhere",), {}, r"output folder '.*/nowhere' does not exist; create it first"),
    (("{tmp}/file",), {}, r"output folder '.*/file' is not a folder"),
    (("/proc",), {}, r"output folder '/proc' is not writable"),
    (("{tmp}", "{tmp}"), {}, r"expected one output folder, but got 2 arguments"),
    (("--fast", "{tmp}"), {}, r"unknown option '--fast'; usage:"),
    (("--wheels", "{tmp}"), {}, r"--wheels takes no other argument, but got '.*'"),
    (("{tmp}",), {"GPU_CHECK_STEPS": "install,tests"},
     r"GPU_CHECK_STEPS: unknown step 'tests'; expected some of wheels install info tests-cupy"),
    (("{tmp}",), {"GPU_CHECK_WORKERS": "0"}, r"GPU_CHECK_WORKERS='0' is invalid: expected an "
                                             r"integer >= 1"),
    (("{tmp}",), {"GPU_CHECK_PYTHON": "python9"}, r"GPU_CHECK_PYTHON='python9' is not a command"),
])
def test_bad_arguments_get_one_line_and_exit_2(tmp_path, args, env, message):
    (tmp_path / "file").write_text("")
    result = gpu_check(*(a.format(tmp=tmp_path) for a in args), timeout=60, **env)
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("gpu-check: ")
    assert re.search(message, result.stderr), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]   # nothing written


def test_help_shows_how_to_prepare_and_run_it():
    result = gpu_check("--help", timeout=60)
    assert result.returncode == 0
    for text in ("make gpu-wheels", 'command: bash ci/gpu-check.sh "$OUT"', 'carry: [".whl"]',
                 "--dry-run OUT", "gpu-check.json", "gpu-check.log", "GPU_CHECK_PYTHON"):
        assert text in result.stdout, text
    assert not result.stdout.startswith("#")


def test_the_steps_fit_well_under_the_ten_minutes():
    text = SCRIPT.read_text()
    steps = re.search(r"^STEPS=\((.*)\)$", text, re.MULTILINE).group(1).split()
    budget = int(re.search(r"^BUDGET_S=(\d+)$", text, re.MULTILINE).group(1))
    timeouts = {s.split(":")[0]: int(s.split(":")[1]) for s in steps}
    assert list(timeouts) == ["wheels", "install", "info", "tests-cupy", "tests-opencl", "bench"]
    assert sum(timeouts.values()) <= budget <= 480      # 2 minutes left of the 600 s a command
    for name, seconds in timeouts.items():              # the header says the same numbers
        assert re.search(rf"^#   {name} \({seconds}\)", text, re.MULTILINE), name


# The wheels ----------------------------------------------------------------------------------

def test_wheels_mode_lists_sizes_and_checks_the_limit(tmp_path):
    (tmp_path / "a-1.0-py3-none-any.whl").write_bytes(b"\0" * (1 << 20))
    (tmp_path / "b-2.0-py3-none-any.whl").write_bytes(b"\0" * (2 << 20))
    result = gpu_check("--wheels", GPU_CHECK_WHEELS=str(tmp_path), timeout=60)
    assert result.returncode == 0, result
    assert "    1.00 MiB  a-1.0-py3-none-any.whl" in result.stdout
    assert f"    3.00 MiB  in 2 wheels in {tmp_path}" in result.stdout
    assert "MiB  working tree" in result.stdout and "within the 64 MiB" in result.stdout
    with open(tmp_path / "c-3.0-py3-none-any.whl", "wb") as f:
        f.truncate(LIMIT)                                   # sparse: costs no disk
    result = gpu_check("--wheels", GPU_CHECK_WHEELS=str(tmp_path), timeout=60)
    assert result.returncode == 1 and "OVER the 64 MiB" in result.stdout


def test_wheels_mode_says_where_the_wheels_come_from(tmp_path):
    result = gpu_check("--wheels", GPU_CHECK_WHEELS=str(tmp_path), timeout=60)
    assert result.returncode == 1
    assert "no wheels in" in result.stdout and "run make gpu-wheels" in result.stdout


def test_the_wheel_list_is_pinned_and_apart_from_what_the_machine_has():
    wheels = makefile_variable("GPU_WHEELS")
    preinstalled = {normalized(n) for n in makefile_variable("GPU_PREINSTALLED")}
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9.]*", w) for w in wheels), wheels
    names = [normalized(w.split("==")[0]) for w in wheels]
    assert len(set(names)) == len(names)
    assert not set(names) & preinstalled
    # The list of what the machine has, all in GPU_PREINSTALLED.
    assert {"torch", "cupy-cuda13x", "nvidia-cudnn-cu13", "numba", "numpy", "ml-dtypes", "scipy",
            "pytest", "pytest-xdist"} <= preinstalled


def test_the_wheel_list_covers_what_convflow_and_the_checked_tests_need():
    tomllib = pytest.importorskip("tomllib", reason="tomllib (Python 3.11+) reads pyproject.toml")
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = pins()
    have = set(pinned) | {normalized(n) for n in makefile_variable("GPU_PREINSTALLED")}
    runtime = [Requirement(r) for r in project["dependencies"]]
    assert {normalized(r.name) for r in runtime} <= have
    extras = project["optional-dependencies"]
    needed = [Requirement(r) for r in [*extras["opencl"], *extras["cuda13"], *extras["test"]]
              if Requirement(r).name in ("pyopencl", "nvidia-cudnn-frontend", "onnx",
                                         "hypothesis", "dask", "distributed")]
    assert len(needed) >= 6
    for req in [*runtime, *needed]:
        name = normalized(req.name)
        assert name in have, f"{req} is neither pinned in GPU_WHEELS nor on the machine"
        if name in pinned:
            assert req.specifier.contains(pinned[name], prereleases=True), (req, pinned[name])


def test_each_pinned_wheel_finds_its_requirements():
    """Every requirement of each pinned package (as installed here at the pinned version, for
    Python 3.12 on Linux) is pinned too or on the machine: the offline install resolves."""
    from importlib import metadata

    from packaging.requirements import Requirement

    pinned = pins()
    have = set(pinned) | {normalized(n) for n in makefile_variable("GPU_PREINSTALLED")}
    environment = {"python_version": "3.12", "python_full_version": "3.12.0",
                   "sys_platform": "linux", "platform_system": "Linux",
                   "platform_machine": "x86_64", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython", "os_name": "posix"}
    checked, unmet = [], []
    for name, version in pinned.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if dist.version != version:
            continue
        checked.append(name)
        for text in dist.requires or []:
            req = Requirement(text)
            extras = ["array"] if name == "dask" else []     # convflow[test] wants dask[array]
            if req.marker is None or any(req.marker.evaluate({**environment, "extra": e})
                                         for e in ["", *extras]):
                if normalized(req.name) not in have:
                    unmet.append(f"{name}: {text}")
    if not checked:
        pytest.skip("none of the pinned versions is installed here to read requirements from")
    assert unmet == []


def test_make_gpu_wheels_downloads_exactly_the_list():
    if shutil.which("make") is None:
        pytest.skip("make is not installed here")
    result = subprocess.run(["make", "-n", "gpu-wheels"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    command = result.stdout.replace("\\\n", " ")
    download = next(line for line in command.splitlines() if "pip download" in line)
    for option in ("--no-deps", "--only-binary=:all:", "--python-version 3.12", "-d .whl",
                   *(f"--platform {p}" for p in makefile_variable("GPU_PLATFORMS"))):
        assert option in download, option
    assert download.split("-d .whl")[1].split() == makefile_variable("GPU_WHEELS")
    assert "bash ci/gpu-check.sh --wheels" in command       # the listing and the 64 MiB check
    assert {"manylinux2014_x86_64", "manylinux_2_28_x86_64"} <= set(
        makefile_variable("GPU_PLATFORMS"))


def test_the_wheel_folder_is_ignored_by_git():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(["git", "check-ignore", "-q", ".whl/x.whl"], cwd=ROOT, timeout=60)
    assert result.returncode == 0


def _python312() -> str:
    for candidate in (os.environ.get("GPU_CHECK_PYTHON"), shutil.which("python3.12")):
        if not candidate:
            continue
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60).stdout
        except OSError:
            continue
        if out.strip() == "(3, 12)":
            return candidate
    pytest.skip("no Python 3.12 here (set GPU_CHECK_PYTHON to one): the wheels are cp312")


def _top_level_modules(wheel: pathlib.Path) -> list[str]:
    names = zipfile.ZipFile(wheel).namelist()
    top = next((n for n in names if n.endswith(".dist-info/top_level.txt")), None)
    if top is not None:
        return zipfile.ZipFile(wheel).read(top).decode().split()
    modules = set()
    for name in names:
        first, _, rest = name.partition("/")
        if first.endswith((".dist-info", ".data")):
            continue
        if rest == "__init__.py":
            modules.add(first)
        elif not rest and first.endswith((".py", ".so")):
            modules.add(first.split(".")[0])
    return sorted(modules)


@pytest.mark.slow
def test_the_wheels_install_into_python312_and_import(tmp_path):
    """Offline, without requirements, into a bare Python 3.12: every module of every wheel
    imports, or fails only for a package the GPU machine has (numpy, typing_extensions, ...)."""
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if not wheels:
        pytest.skip("no .whl/ here: make gpu-wheels (a manual step, with network) fills it")
    python = _python312()
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
                    "--no-deps", "--no-compile", *map(str, wheels)], check=True, timeout=300)
    preinstalled = {normalized(n).replace("-", "_") for n in makefile_variable("GPU_PREINSTALLED")}
    modules = sorted({m for w in wheels for m in _top_level_modules(w)})
    code = ("import importlib, json, sys\nout = {}\nfor m in sys.argv[1:]:\n    try:\n"
            "        importlib.import_module(m); out[m] = 'ok'\n"
            "    except ModuleNotFoundError as e:\n        out[m] = 'missing ' + str(e.name)\n"
            "    except Exception as e:\n        out[m] = repr(e)\nprint(json.dumps(out))")
    result = subprocess.run([str(venv / "bin" / "python"), "-c", code, *modules],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    found = json.loads(result.stdout)
    wrong = {m: r for m, r in found.items() if r != "ok" and not (
        r.startswith("missing ") and r.split()[1].split(".")[0] in preinstalled)}
    assert wrong == {}
    assert found["cudnn"] == "ok" and found["platformdirs"] == "ok"


# The dry run ---------------------------------------------------------------------------------

def test_dry_run_runs_every_step_and_records_each_rc(tmp_path):
    """With no wheels the first two steps fail, the next still runs; the JSON and the log
    record every step; the cupy selection collects (no GPU needed to collect)."""
    out, wheels = tmp_path / "out", tmp_path / "wheels"
    out.mkdir()
    wheels.mkdir()
    result = gpu_check("--dry-run", str(out), GPU_CHECK_PYTHON=sys.executable,
                       GPU_CHECK_WHEELS=str(wheels), GPU_CHECK_VENV=str(tmp_path / "venv"),
                       GPU_CHECK_STEPS="wheels,install,tests-cupy")
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((out / "gpu-check.json").read_text())
    log = (out / "gpu-check.log").read_text()
    assert report["mode"] == "dry-run" and report["finished"] is True
    assert [(s["name"], s["status"]) for s in report["steps"]] == [
        ("wheels", "failed"), ("install", "failed"), ("tests-cupy", "ok")]
    assert [s["rc"] for s in report["steps"]] == [1, 1, 0]
    assert all(0 <= s["seconds"] <= s["timeout_s"] for s in report["steps"])
    assert report["wheels"]["wheels"] == [] and report["wheels"]["within_limit"]
    assert f"no wheels in {wheels}: run make gpu-wheels" in log
    tests = report["tests"]["cupy"]
    assert tests["collected"] > 100 and tests["errors"] == 0 and tests["of"] > tests["collected"]
    assert report["install"]["imports"]["convflow"]["path"].startswith(str(ROOT))
    assert "gpu-check: tests-cupy    rc=0" in result.stdout
    assert "== gpu-check dry-run summary ==" in result.stdout
    assert all(line in log for line in result.stdout.splitlines())


# The benchmark -------------------------------------------------------------------------------

def test_bench_plan_lists_every_layer_pass_and_dtype(tmp_path, capsys):
    pytest.importorskip("onnx", reason="the onnx package holds ResNet-50's layer shapes")
    assert bench_cupy.main(["--plan", "--json", str(tmp_path / "plan.json")]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["configurations"] == 23 * 2 * 3 == len(plan["plan"]) and plan["complete"]
    stem = plan["plan"][:6]
    assert [(c["dtype"], c["direction"]) for c in stem] == [
        (d, p) for d in ("float32", "float16") for p in bench_cupy.PASSES]
    assert all(c["gflop"] == 2 * 32 * 64 * 3 * 7 * 7 * 112 * 112 / 1e9 for c in stem)
    assert {c["own_algorithm"] for c in plan["plan"] if c["layer_spec"]["kernel"] == [1, 1]
            and c["layer_spec"]["stride"] == [1, 1]} == {"gemm_1x1"}
    assert "138 configurations, batch 32" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--dtypes", "float32,bfloat16"], r"--dtypes: expected a comma-separated list of float32, "
                                       r"float16, got 'float32,bfloat16'"),
    (["--batch", "0"], r"--batch: expected an integer >= 1, got '0'"),
    (["--plan", "--torch-cpu"], r"not allowed with argument"),
    (["--json", "/nonexistent/bench.json"], r"the folder /nonexistent does not exist"),
])
def test_bench_rejects_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_cupy.main(args)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_bench_summary_geomeans_and_targets():
    rows = [dict(layer="a", dtype="float32", direction="forward", torch_ms=1.0, cudnn_ms=2.0,
                 own_ms=4.0, fused_ms=1.0, separate_ms=2.0, own_max_rel_diff=1e-6),
            dict(layer="b", dtype="float32", direction="forward", torch_ms=2.0, cudnn_ms=1.0,
                 own_ms=10.0, cudnn_max_rel_diff=0.5, own_error="RuntimeError: x")]
    summary = bench_cupy.summarize(rows)["all"]
    assert summary["cudnn_vs_torch_geomean"] == pytest.approx(1.0)      # sqrt(2 * 0.5)
    assert (summary["cudnn_within_target"], summary["cudnn_measured"]) == (1, 2)
    assert summary["own_vs_cudnn_geomean"] == pytest.approx((0.5 * 0.1) ** 0.5)
    assert (summary["own_within_target"], summary["fused_faster"]) == (1, 1)
    full = bench_cupy.summarize(rows)
    assert full["disagreements"] == ["b float32 forward: cudnn_max_rel_diff 0.5"]
    assert full["errors"] == ["b float32 forward: own_error RuntimeError: x"]
    assert bench_cupy.max_rel_diff([1.0, 2.0], [1.0, 4.0]) == 0.5
    assert bench_cupy.max_rel_diff([0.5], [0.25]) == 0.25               # scaled by at least 1
    assert bench_cupy.max_rel_diff([1.0], [1.0, 2.0]) == float("inf")


@pytest.mark.slow
def test_bench_torch_side_runs_on_the_cpu(tmp_path):
    """The GPU run's torch calls, on the CPU, next to convflow's CPU backend (in a subprocess:
    the benchmark sets torch's TF32 flags, which must not leak into the test process)."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed here (tests and benchmarks only: pip install "
                    "torch==2.13.0)")
    pytest.importorskip("onnx", reason="the onnx package holds ResNet-50's layer shapes")
    path = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(BENCH), "--torch-cpu", "--layers", "1",
                             "--batch", "1", "--dtypes", "float32", "--iterations", "1",
                             "--warmup", "0", "--json", str(path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(path.read_text())
    assert report["mode"] == "torch-cpu" and report["complete"]
    assert report["torch_settings"].get("torch.backends.cudnn.conv.fp32_precision",
                                        report["torch_settings"].get(
                                            "torch.backends.cudnn.allow_tf32")) in ("ieee",
                                                                                    "False")
    rows = report["results"]
    assert [r["direction"] for r in rows] == list(bench_cupy.PASSES)
    assert all(r["torch_ms"] > 0 and r["convflow_ms"] > 0 for r in rows)
    assert all(r["convflow_max_rel_diff"] <= bench_cupy.AGREEMENT["float32"] for r in rows)
    assert report["summary"]["errors"] == [] and report["summary"]["disagreements"] == []
    assert "convflow/torch geomean" in result.stdout


REFUSED = (r"ParameterError: conv(2d|_backward \(grad_(input|weight)\)): algorithm='cudnn' is "
           r"not an algorithm of the numba backend")


def test_bench_gpu_rows_run_with_numpy_standing_in_for_cupy():
    """The GPU run's per-row code (operands, torch, cudnn, own, epilogue, comparisons) on the
    CPU: numpy stands in for CuPy and a CPU clock for CUDA events. convflow computes on its
    CPU backend, where the own algorithm (gemm_1x1) exists and 'cudnn' is refused, which
    must be recorded as that error, not as a wrong call."""
    torch = pytest.importorskip("torch", reason="torch is not installed here (tests only: pip "
                                                "install torch==2.13.0)")
    import types

    import numpy as np

    rng = np.random.default_rng(0)
    fake_cupy = types.SimpleNamespace(
        float32=np.float32, maximum=np.maximum, from_dlpack=np.from_dlpack,
        random=types.SimpleNamespace(standard_normal=lambda shape, dtype: rng.standard_normal(
            shape).astype(dtype)))
    layer = bench_cupy.Layer(4, (5, 5), 6, (1, 1), (1, 1), ((0, 0), (0, 0)), 1)
    args = bench_cupy.parse_args(["--iterations", "1", "--warmup", "0"])
    args.batch = 2
    clock = bench_cupy.Clock(None, None)
    rule = types.SimpleNamespace(can_run=lambda problem: (True, "stand-in"))

    def compare(result, reference):
        return bench_cupy.max_rel_diff(result, reference.numpy())

    operands = bench_cupy._gpu_operands(fake_cupy, torch, layer, 2, "float32")
    assert [tuple(a.shape) for a in operands] == [(2, 4, 5, 5), (6, 4, 1, 1), (2, 6, 5, 5)] * 2
    rows = []
    for config in bench_cupy.configurations([layer], 2, ["float32"]):
        row = dict(config)
        bench_cupy._gpu_row(row, args, layer, operands, fake_cupy, torch, rule, clock, clock,
                            compare)
        rows.append(row)
        assert row["own_algorithm"] == "gemm_1x1" and row["torch_ms"] > 0 and row["own_ms"] > 0
        assert row["own_max_rel_diff"] <= bench_cupy.AGREEMENT["float32"]
        assert row["cudnn_ms"] is None
        assert re.match(REFUSED, row["cudnn_error"]), row["cudnn_error"]
    forward = dict(rows[0], cudnn_ms=1.0)
    x, w = operands[:2]
    bench_cupy._time_epilogue(forward, args, layer, x, w, fake_cupy, torch, clock, clock, compare)
    assert forward["torch_bias_relu_ms"] > 0
    for key in ("fused_error", "separate_error"):
        assert re.match(REFUSED, forward[key]), forward[key]


def test_the_report_counts_test_results_and_keeps_the_benchmark(tmp_path):
    """The script's report (its embedded Python) on a step table, a JUnit file as pytest
    writes it and a benchmark JSON: the counts, failures and skip reasons in the JSON."""
    helper = re.search(r"^cat > \"\$helper\" <<'PY'\n(.*?)\nPY\n", SCRIPT.read_text(),
                       re.MULTILINE | re.DOTALL).group(1)
    (tmp_path / "helper.py").write_text(helper)
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (work / "meta.json").write_text(json.dumps(dict(mode="gpu", budget_s=480)))
    (work / "steps.tsv").write_text("tests-cupy\t170\t1\t12.5\ntests-opencl\t60\t0\t0.2\n"
                                    "bench\t130\t124\t130.0\n")
    (work / "tests-opencl.note").write_text("skipped: no libnvidia-opencl on this machine\n")
    (work / "tests-cupy.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="4" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_forward" name="test_a[cupy]"/>'
        '<testcase classname="tests.test_forward" name="test_b[cupy]">'
        '<failure message="AssertionError: max abs error 1">tb</failure></testcase>'
        '<testcase classname="tests.test_cupy_gpu" name="test_c">'
        '<skipped message="torch is optional for the tests"/></testcase>'
        '<testcase classname="tests.test_cupy_gpu" name="test_d"/></testsuite></testsuites>')
    (work / "bench.json").write_text(json.dumps(dict(results=[{"layer": "x"}], complete=False)))
    result = subprocess.run([sys.executable, str(tmp_path / "helper.py"), "report", str(work),
                             str(out), "final"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "gpu-check.json").read_text())
    assert [(s["name"], s["status"], s["rc"]) for s in report["steps"]] == [
        ("tests-cupy", "failed", 1), ("tests-opencl", "skipped", 0), ("bench", "timed out", 124)]
    cupy = report["tests"]["cupy"]
    assert (cupy["passed"], cupy["failures"], cupy["skipped"]) == (2, 1, 1)
    assert cupy["failed"] == ["failure: tests.test_forward::test_b[cupy]: AssertionError: max "
                              "abs error 1"]
    assert cupy["skip_reasons"] == {"torch is optional for the tests": 1}
    assert report["bench"]["results"] == [{"layer": "x"}] and report["finished"] is True
    assert "tests cupy: 2 passed, 1 failed, 0 errors, 1 skipped" in result.stdout
