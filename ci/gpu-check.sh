#!/usr/bin/env bash
# GPU check of the cupy backend, in one command on the lent GPU machine: one NVIDIA GPU, no
# network, at most 10 minutes a command, at most 64 MiB of working tree carried along. Its
# python3 (3.12) has torch (CUDA 13), cupy-cuda13x, nvidia-cudnn-cu13, numba, numpy,
# ml-dtypes, scipy, pytest and pytest-xdist; the rest comes as wheels in .whl/.
#
#   here, once (network):  make gpu-wheels
#       fills the git-ignored .whl/ with exactly what that python3 lacks (GPU_WHEELS in the
#       Makefile says what and why), lists it with sizes, checks .whl/ + tree < 64 MiB
#   there (device tool):   command: bash ci/gpu-check.sh "$OUT"    carry: [".whl"]
#                          timeout_s: 600
#       the tool carries an ignored path only when carry names it
#   here, without CUDA:    GPU_CHECK_PYTHON=/path/to/python3.12 bash ci/gpu-check.sh --dry-run OUT
#       the same steps where CUDA is not needed (README, "The cupy backend")
#
# Usage: gpu-check.sh [--dry-run] OUT | --wheels | --help
#   OUT: an existing writable folder; it gets gpu-check.json (everything measured: each
#   step's rc and time, versions, test counts and failures, the benchmark's rows and
#   summary) and gpu-check.log (all output). Both are rewritten after every step, so a run
#   cut short keeps what it had. Exit 0 when every step passed, 1 otherwise, 2 for bad
#   arguments.
#   --wheels: list .whl/ with sizes and check the 64 MiB limit (what make gpu-wheels runs).
#
# Steps, each under its own timeout in seconds (460 in all, within the 480 s budget the
# dry run checks); a step that fails or times out is recorded and the next one runs:
#   wheels (10)        what .whl/ holds
#   install (60)       a venv over python3's packages (--system-site-packages, plus a .pth
#                      to python3's own site folders when python3 is itself a venv); pip
#                      installs the missing wheels offline (--no-index --find-links .whl);
#                      if pip cannot resolve them, each missing wheel without requirements
#                      (recorded); convflow runs from this checkout (PYTHONPATH)
#   info (30)          nvidia-smi, convflow info, versions of everything involved
#   tests-cupy (170)   CONVFLOW_TEST_REQUIRE=numba,cupy: the cupy-backend tests, the
#                      gpu-marked tests, the ONNX conformance cases on cupy and the NVRTC
#                      compile test (not the host build of the kernels), pytest-xdist over
#                      the cores (at most 16)
#   tests-opencl (60)  the opencl backend's tests on NVIDIA's OpenCL, if the driver ships
#                      libnvidia-opencl (an ICD file is written and OCL_ICD_VENDORS set if
#                      none is registered); if it does not, the step says so and is skipped
#   bench (130)        ci/bench_cupy.py: cuDNN and the own kernels vs torch, ResNet-50's
#                      layers, batch 32, float32 and float16, three passes, TF32 off
# In --dry-run, the tests are collected instead of run and the benchmark prints its plan
# and runs its torch side on the CPU (when torch is importable).
#
# Environment (all optional): GPU_CHECK_PYTHON (default python3), GPU_CHECK_WHEELS
# (default .whl), GPU_CHECK_VENV (default .venv-gpu, recreated each run), GPU_CHECK_WORKERS
# (pytest-xdist workers; default: the cores, at most 16), GPU_CHECK_STEPS (a comma-separated
# subset of the steps, in the order given, e.g. install,bench to rerun only the benchmark).
set -uo pipefail   # no -e: a failing step must not stop the later ones

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 2
usage="usage: gpu-check.sh [--dry-run] OUT | --wheels | --help"
die() { echo "gpu-check: $*" >&2; exit 2; }

mode=gpu
case "${1:-}" in
  -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  --wheels) [ $# -eq 1 ] || die "--wheels takes no other argument, but got '${*:2}'; $usage"
            mode=wheels ;;
  --dry-run) mode=dry-run; shift ;;
  -?*) die "unknown option '$1'; $usage" ;;
esac

py_base=${GPU_CHECK_PYTHON:-python3}
command -v "$py_base" >/dev/null 2>&1 \
  || die "GPU_CHECK_PYTHON='$py_base' is not a command; expected a Python 3.12 interpreter"
wheels=${GPU_CHECK_WHEELS:-$repo/.whl}
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || die "cannot create a temporary folder"
trap 'rm -rf "$work"' EXIT

# The Python side of the script (stdlib only): wheel lists, site folders, the report.
helper=$work/helper.py
cat > "$helper" <<'PY'
import json, os, pathlib, re, subprocess, sys, time, zipfile
import xml.etree.ElementTree as ET

LIMIT = 64 << 20


def wheel_files(folder):
    return sorted(pathlib.Path(folder).glob("*.whl")) if os.path.isdir(folder) else []


def dist_name(path):
    return re.sub(r"[-_.]+", "-", path.name.split("-")[0]).lower()


def tree_bytes(repo, skip):
    """What the device tool carries: tracked and untracked, not ignored, files."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=repo, capture_output=True,
                             check=True).stdout.decode()
        files = [pathlib.Path(repo, f) for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in pathlib.Path(repo).rglob("*") if ".git" not in p.parts
                 and not any(part.startswith((".venv", ".whl")) for part in p.parts)]
    return sum(f.stat().st_size for f in files if f.is_file() and not f.is_symlink()
               and not str(f).startswith(skip))


def cmd_wheels(folder, repo, json_out=None):
    files = wheel_files(folder)
    listed = [dict(file=f.name, bytes=f.stat().st_size) for f in files]
    total = sum(w["bytes"] for w in listed)
    tree = tree_bytes(repo, str(pathlib.Path(folder).resolve()))
    for w in listed:
        print(f"{w['bytes'] / 2**20:8.2f} MiB  {w['file']}")
    print(f"{total / 2**20:8.2f} MiB  in {len(listed)} wheels in {folder}")
    print(f"{tree / 2**20:8.2f} MiB  working tree (tracked and untracked, not ignored)")
    ok = bool(listed) and total + tree < LIMIT
    print(f"{(total + tree) / 2**20:8.2f} MiB  in all: "
          + ("within" if total + tree < LIMIT else "OVER") + f" the {LIMIT >> 20} MiB the "
          "GPU machine takes")
    if not listed:
        print(f"no wheels in {folder}: run make gpu-wheels (on a machine with network)")
    if json_out:
        pathlib.Path(json_out).write_text(json.dumps(dict(
            folder=str(folder), wheels=listed, wheel_bytes=total, tree_bytes=tree,
            limit_bytes=LIMIT, within_limit=total + tree < LIMIT)))
    return 0 if ok else 1


def cmd_pth(venv):
    """Make the venv see this interpreter's site folders too (when it is itself a venv,
    --system-site-packages alone would skip them)."""
    import site
    dirs = [d for d in [*site.getsitepackages(), site.getusersitepackages()]
            if os.path.isdir(d)]
    target = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                             "import sysconfig; print(sysconfig.get_path('purelib'))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    pathlib.Path(target, "_gpu_check_base.pth").write_text("".join(d + "\n" for d in dirs))
    print("base site folders:", ", ".join(dirs))
    return 0


def cmd_missing(folder):
    """Names of the wheels whose distribution is not installed yet (run in the venv)."""
    from importlib import metadata
    installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"] or "").lower()
                 for d in metadata.distributions()}
    print(" ".join(dist_name(f) for f in wheel_files(folder) if dist_name(f) not in installed))
    return 0


def cmd_unzip(folder, target, names):
    """Without pip: unpack each missing wheel into *target*, a site folder (no scripts)."""
    for f in wheel_files(folder):
        if dist_name(f) in names:
            zipfile.ZipFile(f).extractall(target)
            print("unpacked", f.name)
    return 0


IMPORTS = ("convflow", "numpy", "numba", "ml_dtypes", "platformdirs", "cupy", "cudnn", "torch",
           "pyopencl", "onnx", "hypothesis", "dask", "distributed", "pytest", "xdist")


def cmd_imports(json_out):
    import importlib
    found = {}
    for name in IMPORTS:
        try:
            module = importlib.import_module(name)
            found[name] = dict(ok=True, version=str(getattr(module, "__version__", "?")),
                               path=str(getattr(module, "__file__", "")))
        except BaseException as exc:
            found[name] = dict(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
        print(f"  {name:<12} " + (found[name].get("version", "") if found[name]["ok"]
                                 else "NOT importable: " + found[name]["error"]))
    pathlib.Path(json_out).write_text(json.dumps(found))
    return 0


def cmd_facts(json_out):
    """Backends, their reasons and details, torch's view of the GPU."""
    import convflow
    facts = {"backends": {n: dict(available=s.available, reason=s.reason,
                                  devices=list(s.devices), details=dict(s.details))
                          for n, s in convflow.available_backends().items()}}
    try:
        import torch
        facts["torch"] = dict(version=torch.__version__, cuda=torch.version.cuda,
                              cuda_available=torch.cuda.is_available(),
                              cudnn=torch.backends.cudnn.version() if torch.cuda.is_available()
                              else None,
                              device=torch.cuda.get_device_name(0) if torch.cuda.is_available()
                              else None)
    except BaseException as exc:
        facts["torch"] = dict(error=f"{type(exc).__name__}: {exc}"[:300])
    pathlib.Path(json_out).write_text(json.dumps(facts))
    for name, status in facts["backends"].items():
        print(f"  {name:<8} {'available' if status['available'] else 'UNAVAILABLE'}: "
              f"{status['reason']}")
    return 0


OPENCL_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/nvidia/lib64",
               "/usr/local/nvidia/lib", "/usr/lib/wsl/lib", "/run/nvidia/driver/usr/lib64",
               "/run/nvidia/driver/usr/lib/x86_64-linux-gnu")


def cmd_find_opencl(json_out):
    """Where NVIDIA's OpenCL library is and which ICD files are registered."""
    found = []
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
        found += [line.split("=>")[-1].strip() for line in out.splitlines()
                  if "libnvidia-opencl.so" in line]
    except OSError:
        pass
    for d in OPENCL_DIRS:
        found += sorted(str(p) for p in pathlib.Path(d).glob("libnvidia-opencl.so*"))
    found = [f for f in dict.fromkeys(found) if os.path.exists(f)]
    found.sort(key=lambda f: (not f.endswith(".so.1"), f))
    vendors = os.environ.get("OCL_ICD_VENDORS") or "/etc/OpenCL/vendors"
    icds = {}
    for p in (sorted(pathlib.Path(vendors).glob("*.icd")) if os.path.isdir(vendors)
              else [pathlib.Path(vendors)] if os.path.isfile(vendors) else []):
        icds[str(p)] = p.read_text(errors="replace").strip()
    nvidia = [p for p, text in icds.items() if "nvidia" in text.lower()]
    info = dict(library=found[0] if found else None, candidates=found, vendors=vendors,
                icds=icds, nvidia_icds=nvidia,
                searched=["ldconfig -p", *OPENCL_DIRS])
    pathlib.Path(json_out).write_text(json.dumps(info))
    print(json.dumps(info, indent=1))
    return 0


def junit(path):
    """Counts, failures and skip reasons from a pytest JUnit XML file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = dict(tests=0, failures=0, errors=0, skipped=0)
    failed, skips = [], {}
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            for kind in ("failure", "error"):
                node = case.find(kind)
                if node is not None:
                    failed.append(f"{kind}: {name}: {(node.get('message') or '')[:200]}")
            node = case.find("skipped")
            if node is not None:
                reason = (node.get("message") or "")[:200]
                skips[reason] = skips.get(reason, 0) + 1
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed"] = failed[:100]
    counts["failed_total"] = len(failed)
    counts["skip_reasons"] = dict(sorted(skips.items(), key=lambda kv: -kv[1])[:15])
    return counts


def collected(path):
    text = pathlib.Path(path).read_text(errors="replace")
    match = re.search(r"(\d+)(?:/(\d+))? tests? collected", text)
    return dict(collected=int(match.group(1)) if match else 0,
                of=int(match.group(2) or match.group(1)) if match else 0,
                errors=text.count("ERROR collecting"))


def load(path):
    try:
        return json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return None


def cmd_report(work, out, final):
    work, out = pathlib.Path(work), pathlib.Path(out)
    meta = load(work / "meta.json") or {}
    steps = []
    if (work / "steps.tsv").exists():
        for line in (work / "steps.tsv").read_text().splitlines():
            name, limit, rc, seconds = line.split("\t")
            rc = int(rc)
            note = (work / f"{name}.note").read_text().strip() if (work / f"{name}.note").exists() else ""
            status = ("timed out" if rc in (124, 137) else "skipped" if note.startswith("skipped")
                      else "ok" if rc == 0 else "failed")
            steps.append(dict(name=name, timeout_s=int(limit), rc=rc, seconds=float(seconds),
                              status=status, note=note))
    report = dict(meta, steps=steps, finished=final,
                  updated_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    report["wheels"] = load(work / "wheels.json")
    install = dict(imports=load(work / "imports.json"))
    for name in ("pip-check", "install-mode"):
        if (work / f"{name}.txt").exists():
            install[name.replace("-", "_")] = (work / f"{name}.txt").read_text().strip()
    report["install"] = install
    report["info"] = load(work / "facts.json")
    if (work / "nvidia-smi.txt").exists():
        report["nvidia_smi"] = (work / "nvidia-smi.txt").read_text().strip()
    report["opencl"] = load(work / "opencl.json")
    tests = {}
    for name in ("cupy", "cupy-host", "opencl"):
        if (work / f"tests-{name}.xml").exists():
            try:
                tests[name] = junit(work / f"tests-{name}.xml")
            except (OSError, ET.ParseError) as exc:
                tests[name] = dict(error=f"unreadable JUnit XML: {exc}")
        elif (work / f"collect-{name}.txt").exists():
            tests[name] = collected(work / f"collect-{name}.txt")
    report["tests"] = tests
    report["bench"] = load(work / "bench.json")
    report["bench_plan"] = load(work / "bench-plan.json")
    report["bench_torch_cpu"] = load(work / "bench-torch-cpu.json")
    tmp = out / "gpu-check.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out / "gpu-check.json")
    if final:
        summary(report, out)
    return 0


def summary(report, out):
    print(f"\n== gpu-check {report.get('mode')} summary ==")
    for s in report["steps"]:
        print(f"  {s['name']:<13} {s['status']:<10} rc={s['rc']:<4} {s['seconds']:6.1f} s of "
              f"{s['timeout_s']} s  {s['note']}")
    for name, t in report["tests"].items():
        if "tests" in t:
            print(f"  tests {name}: {t['passed']} passed, {t['failures']} failed, "
                  f"{t['errors']} errors, {t['skipped']} skipped")
            for line in t["failed"][:25]:
                print(f"    {line}")
            for reason, n in list(t["skip_reasons"].items())[:5]:
                print(f"    skipped x{n}: {reason}")
        elif "collected" in t:
            print(f"  tests {name}: {t['collected']} of {t['of']} collected, "
                  f"{t['errors']} collection errors")
    bench = report.get("bench") or {}

    def ratio(value):
        return "-" if value is None else f"{value:.2f}"
    for key, s in (bench.get("summary") or {}).items():
        if isinstance(s, dict) and "rows" in s and key in ("all", "float32", "float16"):
            print(f"  bench {key}: {s['rows']} rows; geomeans: cudnn/torch time "
                  f"{ratio(s['cudnn_vs_torch_geomean'])} (target <= 1.1), own throughput vs "
                  f"cudnn {ratio(s['own_vs_cudnn_geomean'])} (>= 0.3), fused/separate time "
                  f"{ratio(s['fused_vs_separate_geomean'])} (< 1)")
    if bench:
        print(f"  bench: {len(bench.get('results', []))} rows, complete: "
              f"{bench.get('complete')}, not run: {len(bench.get('not_run', []))}, errors: "
              f"{len((bench.get('summary') or {}).get('errors', []))}, disagreements with "
              f"torch: {len((bench.get('summary') or {}).get('disagreements', []))}")
    print(f"  everything: {out}/gpu-check.json and {out}/gpu-check.log")


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "wheels":
        sys.exit(cmd_wheels(*rest))
    if command == "unzip":
        sys.exit(cmd_unzip(rest[0], rest[1], set(rest[2:])))
    if command == "report":
        sys.exit(cmd_report(rest[0], rest[1], rest[2] == "final"))
    sys.exit(globals()["cmd_" + command.replace("-", "_")](*rest))
PY

if [ "$mode" = wheels ]; then
  "$py_base" "$helper" wheels "$wheels" "$repo"
  exit $?
fi

STEPS=(wheels:10 install:60 info:30 tests-cupy:170 tests-opencl:60 bench:130)
BUDGET_S=480
if [ -n "${GPU_CHECK_STEPS:-}" ]; then
  chosen=()
  for name in ${GPU_CHECK_STEPS//,/ }; do
    match=""
    for entry in "${STEPS[@]}"; do [ "${entry%%:*}" = "$name" ] && match=$entry; done
    [ -n "$match" ] || die "GPU_CHECK_STEPS: unknown step '$name'; expected some of" \
      "$(printf '%s ' "${STEPS[@]%%:*}")(install is what the later steps run in)"
    chosen+=("$match")
  done
  STEPS=("${chosen[@]}")
fi

venv=${GPU_CHECK_VENV:-$repo/.venv-gpu}
cores=$(nproc 2>/dev/null || echo 1)
workers=${GPU_CHECK_WORKERS:-$(( cores < 16 ? cores : 16 ))}
[[ "$workers" =~ ^[1-9][0-9]*$ ]] \
  || die "GPU_CHECK_WORKERS='$workers' is invalid: expected an integer >= 1"

# The output folder: one argument, an existing, writable folder.
[ $# -ge 1 ] || die "missing the output folder; $usage"
[ $# -eq 1 ] || die "expected one output folder, but got $# arguments: $*; $usage"
out=$1
[ -e "$out" ] || die "output folder '$out' does not exist; create it first"
[ -d "$out" ] || die "output folder '$out' is not a folder"
probe=$(mktemp "$out/.gpu-check-probe.XXXXXX" 2>/dev/null) \
  || die "output folder '$out' is not writable"
rm -f "$probe"
out=$(cd "$out" && pwd)
log=$out/gpu-check.log
: > "$log"

py=$venv/bin/python
dry=$([ "$mode" = dry-run ] && echo 1 || echo 0)
# The cupy selection: module names count as keywords, so every test of test_cupy_host.py
# and test_cupy_gpu.py, the [cupy] cases of the parametrized suites, the gpu-marked tests;
# of test_cupy_kernels.py (a host build of the kernels, run by CI) only the NVRTC compile.
cupy_selection="(cupy or gpu) and not (cupy_kernels and not nvrtc)"

# cuDNN's library for the frontend: it looks in LD_LIBRARY_PATH first, then only in the
# venv's own site folder, where nvidia-cudnn-cu13 is not (it is in python3's).
cudnn_dir=$("$py_base" - <<'PY' 2>/dev/null
import glob, site
dirs = [*site.getsitepackages(), site.getusersitepackages()]
hits = [p for d in dirs for p in glob.glob(f"{d}/nvidia/**/libcudnn.so.9", recursive=True)]
print(hits[0].rsplit("/", 1)[0] if hits else "")
PY
)
if [ -n "$cudnn_dir" ]; then
  export LD_LIBRARY_PATH="$cudnn_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export repo work helper wheels venv py py_base dry workers cupy_selection log
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

"$py_base" - "$work/meta.json" "$mode" "$py_base" "$cudnn_dir" "$BUDGET_S" "${STEPS[@]}" <<'PY'
import json, os, platform, sys, time
path, mode, py, cudnn_dir, budget, *steps = sys.argv[1:]
plan = [dict(name=s.split(":")[0], timeout_s=int(s.split(":")[1])) for s in steps]
json.dump(dict(schema=1, mode=mode, started_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ",
               time.gmtime()), host=platform.node(), cores=os.cpu_count(),
               python=py, python_version=platform.python_version(),
               cudnn_library_dir=cudnn_dir or None, plan=plan, budget_s=int(budget),
               planned_s=sum(p["timeout_s"] for p in plan)), open(path, "w"))
PY

step_wheels() {
  "$py_base" "$helper" wheels "$wheels" "$repo" "$work/wheels.json"
}

step_install() {
  local rc=0 missing
  echo "python3: $("$py_base" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
  "$py_base" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' \
    || echo "warning: $py_base is not Python 3.12; the wheels in $wheels are for 3.12"
  local target=()
  rm -rf "$venv"
  if "$py_base" -m venv --system-site-packages --without-pip "$venv"; then
    "$py_base" "$helper" pth "$venv" || return 1
  else
    echo "python3 -m venv failed: running $py_base itself with $venv/site on PYTHONPATH"
    rm -rf "$venv" && mkdir -p "$venv/bin" "$venv/site" || return 1
    printf '#!/bin/sh\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec "%s" "$@"\n' \
      "$venv/site" "$(command -v "$py_base")" > "$py" && chmod +x "$py" || return 1
    target=(--target "$venv/site" --no-deps)  # --target ignores what is installed
  fi
  missing=$("$py" "$helper" missing "$wheels")
  echo "wheels to install (the rest is there already): ${missing:-none}"
  if [ -z "$(ls "$wheels"/*.whl 2>/dev/null)" ]; then
    echo "no wheels in $wheels: run make gpu-wheels here and carry .whl (see the header)"
    rc=1
  elif [ -z "$missing" ]; then
    echo "nothing to install" > "$work/install-mode.txt"
  elif "$py" -m pip --version >/dev/null 2>&1; then
    # shellcheck disable=SC2086  # $missing is a list of names
    if "$py" -m pip install -q --no-index --find-links "$wheels" --only-binary=:all: \
         --no-cache-dir --no-compile "${target[@]}" $missing; then
      echo "pip, with requirements resolved: $missing" > "$work/install-mode.txt"
    else
      echo "pip could not resolve the requirements offline; installing each missing wheel" \
           "without its requirements (pip check below lists what is unmet)"
      rc=1
      # shellcheck disable=SC2086
      "$py" -m pip install -q --no-index --find-links "$wheels" --no-deps --no-cache-dir \
        --no-compile "${target[@]}" $missing && echo "pip --no-deps (resolution failed): $missing" > "$work/install-mode.txt"
    fi
    "$py" -m pip check > "$work/pip-check.txt" 2>&1
    cat "$work/pip-check.txt"
  else
    echo "no pip in $py_base: unpacking the wheels into the venv"
    # shellcheck disable=SC2086
    "$py" "$helper" unzip "$wheels" "${target[1]:-$("$py" -c \
      'import sysconfig; print(sysconfig.get_path("purelib"))')}" $missing || rc=1
    echo "unpacked without pip: $missing" > "$work/install-mode.txt"
  fi
  echo "imports (convflow from $repo):"
  "$py" "$helper" imports "$work/imports.json" || rc=1
  return $rc
}

step_info() {
  local rc=0
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
      --format=csv,noheader > "$work/nvidia-smi.txt" 2>&1
    nvidia-smi
  else
    echo "nvidia-smi: not on this machine" | tee "$work/nvidia-smi.txt"
  fi
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  "$py" -m convflow info || rc=1
  "$py" "$helper" facts "$work/facts.json" || rc=1
  return $rc
}

# pytest over the selection: collected only in a dry run, else run on the workers.
run_tests() {
  local name=$1 selection=$2
  local ignore=(--ignore=tests/test_gpu_check.py)   # its name matches 'gpu'; this script's own tests
  if [ "$dry" = 1 ]; then
    "$py" -m pytest tests "${ignore[@]}" -p no:cacheprovider --collect-only -q -k "$selection" \
      > "$work/collect-$name.txt" 2>&1
    local rc=$?
    tail -n 3 "$work/collect-$name.txt"
    return $rc
  fi
  "$py" -m pytest tests "${ignore[@]}" -p no:cacheprovider -q -n "$workers" --tb=short -rfE \
    -k "$selection" --junitxml="$work/tests-$name.xml"
}

step_tests_cupy() {
  local rc=0
  CONVFLOW_TEST_REQUIRE=numba,cupy run_tests cupy "$cupy_selection" || rc=1
  if [ "$dry" = 1 ] && "$py" -c 'import cudnn' 2>/dev/null; then
    echo "the cupy backend's host tests against the installed cuDNN frontend:"
    "$py" -m pytest tests/test_cupy_host.py -p no:cacheprovider -q --tb=short -rfE \
      --junitxml="$work/tests-cupy-host.xml" || rc=1
  fi
  return $rc
}

step_tests_opencl() {
  "$py" "$helper" find-opencl "$work/opencl.json" || return 1
  local lib icd
  lib=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["library"] or "")' \
        "$work/opencl.json")
  if [ -z "$lib" ]; then
    echo "skipped: no libnvidia-opencl on this machine (searched ldconfig and the driver's" \
         "usual folders): the driver here ships no OpenCL, so the opencl backend was not" \
         "checked on NVIDIA" | tee "$work/tests-opencl.note"
    if [ "$dry" = 1 ]; then
      CONVFLOW_TEST_REQUIRE=numba,opencl run_tests opencl opencl
      return $?
    fi
    return 0
  fi
  if [ -n "$("$py" -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["nvidia_icds"]))' "$work/opencl.json")" ]; then
    echo "NVIDIA's OpenCL is registered; library $lib" | tee "$work/tests-opencl.note"
  else
    icd=$work/icd
    mkdir -p "$icd" && echo "$lib" > "$icd/nvidia.icd"
    export OCL_ICD_VENDORS=$icd
    echo "no ICD file named $lib: wrote one and set OCL_ICD_VENDORS (this run only)" \
      | tee "$work/tests-opencl.note"
  fi
  "$py" -c 'import pyopencl as cl
for p in cl.get_platforms():
    print(p.name, p.version, [d.name for d in p.get_devices()])' || return 1
  CONVFLOW_OPENCL_DEVICE=nvidia CONVFLOW_TEST_REQUIRE=numba,opencl run_tests opencl opencl
}

step_bench() {
  local rc=0
  export CONVFLOW_ALLOW_TF32=0 CONVFLOW_WORKSPACE_MB=1024
  if [ "$dry" = 1 ]; then
    "$py" ci/bench_cupy.py --plan --batch 32 --dtypes float32,float16 \
      --json "$work/bench-plan.json" > "$work/bench-plan.txt" 2>&1 || rc=1
    head -n 8 "$work/bench-plan.txt"
    if "$py" -c 'import torch' 2>/dev/null; then
      "$py" ci/bench_cupy.py --torch-cpu --layers 2 --batch 2 --dtypes float32,float16 \
        --iterations 1 --warmup 0 --json "$work/bench-torch-cpu.json" || rc=1
    else
      echo "torch is not importable here: the benchmark's torch side was not run on the CPU"
    fi
    return $rc
  fi
  # cuDNN's fastest engines for some layers need more than the default 64 MiB workspace; the
  # benchmark allows 1 GiB (as PyTorch allows what memory permits), recorded in the JSON.
  "$py" ci/bench_cupy.py --batch 32 --dtypes float32,float16 --json "$work/bench.json" \
    --time-budget $(( STEP_LIMIT - 20 ))
}
export -f step_wheels step_install step_info run_tests step_tests_cupy step_tests_opencl \
  step_bench

failed=0
planned=0
for entry in "${STEPS[@]}"; do planned=$(( planned + ${entry##*:} )); done
if [ "$planned" -gt "$BUDGET_S" ]; then
  echo "gpu-check: the steps' timeouts add up to $planned s, over the $BUDGET_S s budget" \
    | tee -a "$log"
  failed=1
fi
report() { "$py_base" "$helper" report "$work" "$out" "$1"; }
echo "gpu-check: $mode run; output in $out; steps: ${STEPS[*]} (s)" | tee -a "$log"
for entry in "${STEPS[@]}"; do
  name=${entry%%:*}
  limit=${entry##*:}
  echo "== $name (timeout ${limit} s) ==" >> "$log"
  start=$(date +%s%N)
  # timeout signals its whole process group: pytest and its workers, or the benchmark, get
  # SIGINT (and write what they have), then SIGKILL 10 s later.
  STEP_LIMIT=$limit timeout -s INT -k 10 "$limit" bash -c "step_${name//-/_}" >> "$log" 2>&1
  rc=$?
  seconds=$(( ($(date +%s%N) - start) / 1000000 ))
  printf '%s\t%s\t%s\t%d.%03d\n' "$name" "$limit" "$rc" $((seconds / 1000)) $((seconds % 1000)) \
    >> "$work/steps.tsv"
  [ "$rc" -eq 0 ] || failed=1
  printf 'gpu-check: %-13s rc=%-3s %6d.%01d s (timeout %s s)\n' "$name" "$rc" \
    $((seconds / 1000)) $((seconds % 1000 / 100)) "$limit" | tee -a "$log"
  report partial >> "$log" 2>&1
done
report final | tee -a "$log"
exit $failed
