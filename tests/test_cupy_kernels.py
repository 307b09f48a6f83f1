"""The cupy backend's CUDA kernels without a GPU.

* every ``kernels/cuda/*.cu`` compiles with ``nvcc`` for several architectures, with the
  options the backend gives NVRTC;
* the kernels' per-element functions, built for the host (tests/cuda_emulation.cpp), run
  the backend's own algorithms (tiles, groups, GEMMs, col2im, the fused epilogue of bias and
  activation) on numpy arrays and are compared with the float64 reference for forward,
  backward-data and backward-weight passes, in float16, bfloat16, float32 and float64;
* non-finite values give the IEEE answer of tests/test_ieee.py on every own algorithm
  (cuDNN's behaviour on them is NVIDIA's: test_ieee.py checks it only where a GPU runs the
  cupy backend);
* the kernel names and the geometry argument order agree between Python and CUDA.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import ml_dtypes
import numpy as np
import pytest

import convflow
from convflow import kernels
from convflow.backends.cupy import OWN_RULES, algorithms, sources
from convflow.backends.cupy.geometry import GEOMETRY_FIELDS
from convflow.params import ConvProblem

import reference
from conftest import TOLERANCE
from cuda_host import HostKernels, build, compiler, host_context
from cupy_cases import PROBLEMS, expected_pass, pass_operands
from ieee_cases import PLACES, assert_ieee_equal, operands

CUDA_SOURCES = kernels.list_sources(".cu")
DTYPES = ("float16", "bfloat16", "float32", "float64")
# nvcc 13 supports sm_75 and newer; CI compiles for Turing, Ampere and Hopper.
ARCHITECTURES = ("sm_75", "sm_80", "sm_90")


# Compilation ---------------------------------------------------------------------------------


def run_own(ctx, algorithm, problem, a, b, bias):
    """One pass of an own algorithm, through the code its record names for the pass."""
    record = next(r for r in OWN_RULES if r.name == algorithm)
    return algorithms.run(ctx, record.passes[problem.direction], problem, a, b, bias)

def test_every_cuda_source_is_known():
    assert sorted(CUDA_SOURCES) == ["cuda/depthwise.cu", "cuda/direct.cu", "cuda/im2col.cu"]
    assert set(sources.KERNEL_FILES.values()) == set(CUDA_SOURCES)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("source", CUDA_SOURCES)
def test_nvcc_compiles_every_source(source, dtype, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed here (CI machines have it): the CUDA sources were "
                    "not compiled")
    path = kernels.source_path(source)

    def compile_for(arch: str) -> subprocess.CompletedProcess:
        command = [nvcc, *sources.compile_options(dtype), "--cubin", f"-arch={arch}",
                   "-Werror", "all-warnings", "-o", str(tmp_path / f"{arch}.cubin"), str(path)]
        return subprocess.run(command, capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=len(ARCHITECTURES)) as pool:
        results = list(pool.map(compile_for, ARCHITECTURES))
    for arch, result in zip(ARCHITECTURES, results):
        assert result.returncode == 0, f"nvcc {source} {dtype} {arch}:\n{result.stderr}"
        assert (tmp_path / f"{arch}.cubin").stat().st_size > 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_nvrtc_compiles_every_source_as_cupy_does(dtype):
    """The exact text RawModule compiles (headers inlined) with CuPy's added NVRTC options.
    Needs CuPy and NVRTC (cupy-cudaXXx[ctk]), not a GPU."""
    pytest.importorskip("cupy", reason="CuPy is not installed here")
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as exc:
        pytest.skip(f"NVRTC cannot be loaded here: {exc}")
    for source in CUDA_SOURCES:
        for arch in ARCHITECTURES:
            program = nvrtc.createProgram(sources.expanded_source(source), "kern.cu", (), ())
            options = (*sources.compile_options(dtype), "-ftz=true", f"-arch={arch}",
                       "--device-as-default-execution-space")
            try:
                nvrtc.compileProgram(program, options)
                assert len(nvrtc.getCUBIN(program)) > 0
            except Exception as exc:
                log = nvrtc.getProgramLog(program)
                raise AssertionError(f"NVRTC {source} {dtype} {arch}: {exc}\n{log}") from exc
            finally:
                nvrtc.destroyProgram(program)


def test_kernel_names_match_the_sources():
    defined = {}
    for source in CUDA_SOURCES:
        for name in re.findall(r'extern "C" __global__ void(?: __launch_bounds__\(\w+\))?\s+(\w+)',
                               kernels.load_source(source)):
            defined[name] = source
    assert defined == sources.KERNEL_FILES


def test_geometry_arguments_match_cf_geom_params():
    common = kernels.load_source("cuda/common.cuh")
    macro = re.search(r"#define CF_GEOM_PARAMS(.*?)\n#define", common, re.S).group(1)
    names = re.findall(r"int g_(\w+)", macro)
    assert tuple(names) == GEOMETRY_FIELDS
    struct = re.search(r"struct cf_geom \{(.*?)\};", common, re.S).group(1)
    fields = re.findall(r"(\w+)[,;]", struct.replace("int ", ""))
    assert tuple(fields) == GEOMETRY_FIELDS
    make = re.search(r"#define CF_GEOM_MAKE(.*?)\}", common, re.S).group(1)
    assert tuple(re.findall(r"g_(\w+)", make)) == GEOMETRY_FIELDS


def test_expanded_sources_inline_each_header_once():
    for source in CUDA_SOURCES:
        text = sources.expanded_source(source)
        assert not re.search(r'^\s*#\s*include\s+"', text, re.M), source
        assert not re.search(r"^\s*#\s*pragma\s+once", text, re.M), source
        assert text.count("struct cf_geom {") == 1, source
    depthwise = sources.expanded_source("cuda/depthwise.cu")
    assert "// begin cuda/direct.cuh" in depthwise and "// begin cuda/common.cuh" in depthwise


def test_compile_options():
    assert sources.compile_options("float16") == ("-std=c++14", "-DCF_DTYPE=16", "-DCF_BLOCK=256")
    assert sources.compile_options("float64")[1] == "-DCF_DTYPE=64"
    assert sources.compile_options("bfloat16")[1] == "-DCF_DTYPE=116"


# Host builds of the kernels ------------------------------------------------------------------

@pytest.fixture(scope="session")
def host_kernels(tmp_path_factory):
    if compiler() is None:
        pytest.skip("no C++ compiler on PATH: the host build of the CUDA kernels needs one")
    directory = tmp_path_factory.mktemp("cuda_host")
    return {dtype: HostKernels(build(directory, dtype), dtype) for dtype in DTYPES}


def test_half_conversions_match_numpy(host_kernels):
    lib = host_kernels["float16"].lib
    bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    expected = bits.view(np.float16).astype(np.float32)
    got = np.array([lib.emu_half_to_float(int(b)) for b in bits], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)  # nan == nan for assert_array_equal
    rng = np.random.default_rng(1)
    finite = expected[np.isfinite(expected) & (np.abs(expected) < 65504)]
    ties = (finite.astype(np.float64)
            + np.spacing(finite.astype(np.float16)).astype(np.float64) / 2).astype(np.float32)
    values = np.concatenate([
        rng.standard_normal(20000).astype(np.float32) * np.float32(100),
        rng.standard_normal(20000).astype(np.float32) * np.float32(1e-5),  # subnormal halves
        finite,                                                # exact halves
        ties,                                                  # halfway: ties to even
        np.array([65504, 65519.99, 65520, 7e4, np.inf, -np.inf, 2**-25, 2**-26, 3 * 2**-26,
                  -0.0, 0.0], dtype=np.float32),
    ])
    half = np.array([lib.emu_float_to_half(float(v)) for v in values], dtype=np.uint16)
    with np.errstate(over="ignore"):  # 7e4 and 65520 round to inf, as intended
        rounded = values.astype(np.float16)
    np.testing.assert_array_equal(half, rounded.view(np.uint16))
    assert np.isnan(np.uint16(lib.emu_float_to_half(float("nan"))).view(np.float16))


def test_bfloat16_conversions_match_ml_dtypes(host_kernels):
    lib = host_kernels["bfloat16"].lib
    bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    expected = bits.view(ml_dtypes.bfloat16).astype(np.float32)
    got = np.array([lib.emu_bf16_to_float(int(b)) for b in bits], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)
    rng = np.random.default_rng(2)
    exact = expected[np.isfinite(expected)]
    ties = (exact.astype(np.float64) + np.spacing(exact.astype(ml_dtypes.bfloat16)).astype(
        np.float64) / 2).astype(np.float32)
    values = np.concatenate([
        rng.standard_normal(20000).astype(np.float32) * np.float32(1e3),
        rng.standard_normal(20000).astype(np.float32) * np.float32(1e-39),  # subnormal floats
        exact[::7], ties[::7],
        np.array([3.4e38, 3.3961e38, -3.4e38, np.inf, -np.inf, -0.0, 0.0, 1e-45], np.float32),
    ])
    with np.errstate(over="ignore"):
        rounded = values.astype(ml_dtypes.bfloat16)
    got_bits = np.array([lib.emu_float_to_bf16(float(v)) for v in values], dtype=np.uint16)
    np.testing.assert_array_equal(got_bits, rounded.view(np.uint16))
    assert np.isnan(np.uint16(lib.emu_float_to_bf16(float("nan"))).view(ml_dtypes.bfloat16))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_epilogue_activations_keep_ieee_semantics(host_kernels, dtype):
    """cf_activate against the reference's definitions, non-finite values included."""
    lib = host_kernels[dtype].lib
    values = np.array([np.nan, np.inf, -np.inf, -30.0, -6.5, -3.0, -1e-3, -0.0, 0.0, 0.5, 3.0,
                       6.0, 8.0, 30.0, 100.0, -100.0, -1000.0])
    # float32: rounding x / sqrt 2 perturbs erfc's argument by 2**-24 relative, which its
    # slope in the tail (gelu(-7) ~ -3e-10) amplifies about x**2 times. atol: where the
    # values are tiny the reference itself is off (its 1 + erf(x / sqrt 2) cancels: it gives
    # gelu(-30) = -0 for -1.5e-196) and x / (1 + exp(-x)) underflows to -0 (silu(-100)).
    rtol = 2e-5 if dtype == "float32" else 1e-6
    for name, code in (("relu", 1), ("relu6", 2), ("silu", 3), ("gelu", 4)):
        got = np.array([lib.emu_activate(float(v), code) for v in values])
        with np.errstate(invalid="ignore"):
            want = reference.activate(values, name)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=name)
        np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)], err_msg=name)
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=rtol, atol=1e-9,
                                   err_msg=name)
    assert [lib.emu_activate(v, 2) for v in (np.inf, -np.inf, 7.0)] == [6.0, 0.0, 6.0]
    assert lib.emu_activate(-2.5, 0) == -2.5


def _runnable(problem: ConvProblem) -> list[str]:
    return [rule.name for rule in OWN_RULES if rule.can_run(problem)[0]]


def _check(host_kernels, problem: ConvProblem, dtype: str, name: str,
           workspace_bytes: int = 64 << 20) -> list[str]:
    problem = dataclasses.replace(problem, dtype=dtype)
    a, b, bias = pass_operands(problem, dtype, name)
    expected = expected_pass(problem, a, b, bias)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    copies = [None if t is None else t.copy() for t in (a, b, bias)]
    ctx = host_context(host_kernels[dtype], workspace_bytes)
    algorithm_names = _runnable(problem)
    for algorithm in algorithm_names:
        got = run_own(ctx, algorithm, problem, a, b, bias)
        assert got.dtype == np.dtype(dtype) and got.shape == expected.shape, algorithm
        assert not any(np.shares_memory(got, t) for t in (a, b, bias) if t is not None)
        error = float(np.abs(got.astype(np.float64) - expected).max(initial=0.0))
        assert error <= TOLERANCE[dtype] * scale, (
            f"{algorithm} on {problem.describe()}: max error {error:.3g} > "
            f"{TOLERANCE[dtype]:g} x {scale:.3g}")
    for original, copy in zip((a, b, bias), copies):
        if original is not None:
            np.testing.assert_array_equal(original, copy)  # inputs are never modified
    return algorithm_names


@pytest.mark.parametrize(("name", "problem"), PROBLEMS, ids=[n for n, _ in PROBLEMS])
def test_own_algorithms_match_the_reference(host_kernels, name, problem):
    _check(host_kernels, problem, "float64", name)


@pytest.mark.parametrize(("name", "problem"), PROBLEMS[::4], ids=[n for n, _ in PROBLEMS[::4]])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_own_algorithms_in_single_and_half_precision(host_kernels, name, problem, dtype):
    _check(host_kernels, problem, dtype, name)


@pytest.mark.parametrize(("name", "problem"), PROBLEMS[2::12], ids=[n for n, _ in PROBLEMS[2::12]])
def test_own_algorithms_in_bfloat16(host_kernels, name, problem):
    _check(host_kernels, problem, "bfloat16", name)


ACTIVATED = [(f"{name}-{activation}", dataclasses.replace(problem, activation=activation))
             for (name, problem), activation in zip(
                 (p for p in PROBLEMS[3::7] if p[1].direction.value != "backward_weight"),
                 itertools.cycle(("relu", "relu6", "silu", "gelu")))]


@pytest.mark.parametrize(("name", "problem"), ACTIVATED, ids=[n for n, _ in ACTIVATED])
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_fused_epilogue_of_every_own_algorithm(host_kernels, name, problem, dtype):
    """Bias and activation: in the direct and depthwise kernels' write-back, in one
    bias_activation pass after cuBLAS / col2im, against reference.activate."""
    kernels_ = host_kernels[dtype]
    kernels_.calls.clear()
    ran = _check(host_kernels, problem, dtype, name)
    gemm = {"gemm_1x1", "im2col_gemm"} & set(ran)
    assert kernels_.calls.count("bias_activation") == len(gemm), (ran, kernels_.calls)


@pytest.mark.parametrize(("name", "problem"), PROBLEMS[1::9], ids=[n for n, _ in PROBLEMS[1::9]])
@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_tiny_workspace_splits_images_into_position_tiles(host_kernels, name, problem, dtype):
    """A budget below one image's scratch: every GEMM pass works column range by column range."""
    _check(host_kernels, problem, dtype, name, workspace_bytes=512)


def test_every_own_algorithm_and_kernel_is_exercised(host_kernels):
    seen: set[str] = set()
    for _, problem in PROBLEMS:
        seen.update(_runnable(problem))
    assert seen == {rule.name for rule in OWN_RULES}
    calls = set()
    for kernels_ in host_kernels.values():
        calls.update(kernels_.calls)
    assert {name.removeprefix("cf_") for name in sources.KERNEL_FILES} <= calls


NON_FINITE = [(shape, place, stride, direction)
              for shape in ("dense", "depthwise") for place in PLACES for stride in (1, 2)
              for direction in ("forward", "backward_data", "backward_weight", "transposed")
              if not (place == "grad_output" and direction in ("forward", "transposed"))]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("shape", "place", "stride", "direction"), NON_FINITE,
                         ids=["-".join(map(str, case)) for case in NON_FINITE])
def test_own_algorithms_give_the_ieee_answer_for_non_finite_values(host_kernels, dtype, shape,
                                                                   place, stride, direction):
    """As tests/test_ieee.py: a forward pass multiplies the padding zeros by the weights (an
    Inf weight on a border tap gives NaN there), a weight gradient multiplies them by the
    output gradient, a data gradient or transposed convolution sums real products only."""
    x, w, dy, groups = operands(shape, place, stride)
    x, w, dy = (a.astype(dtype) for a in (x, w, dy))
    kwargs = dict(stride=stride, padding=1, groups=groups, backend="numba")
    if direction == "transposed":
        problem = convflow.explain(x, w, transposed=True, **kwargs).problem
        a, b = x, w  # the transposed convolution is the data-gradient pass of x
    else:
        problem = convflow.explain(x, w, direction=direction, **kwargs).problem
        a, b = {"forward": (x, w), "backward_data": (dy, w), "backward_weight": (x, dy)}[direction]
    expected = expected_pass(problem, a, b, None)
    ctx = host_context(host_kernels[dtype])
    ran = _runnable(problem)
    assert ran
    for algorithm in ran:
        got = run_own(ctx, algorithm, problem, a, b, None)
        assert_ieee_equal(got, expected, f"{algorithm} on {problem.describe()}")
