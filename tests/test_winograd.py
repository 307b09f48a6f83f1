"""The numba backend's Winograd F(4x4, 3x3) and the private BLAS its GEMMs run on."""

from __future__ import annotations

import ctypes
import glob
import os
import threading

import numpy as np
import pytest

import convflow
from convflow.errors import ParameterError

import reference
from conftest import assert_close
from helpers import run_in_threads

pytest.importorskip("numba")

from convflow.backends.numba import blas, workspace
from convflow.backends.numba import winograd as wino


def _case(rng, n, c, h, w, k, groups=1, dtype="float32"):
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((k, c // groups, 3, 3)).astype(dtype)
    return x, weight


# The written-out transforms are the matrices ----------------------------------------------

def test_the_written_out_transforms_are_the_matrices():
    rng = np.random.default_rng(0)
    consts = (2.0, 4.0, 5.0, 8.0)
    for _ in range(5):
        d = rng.standard_normal(6)
        m = rng.standard_normal(6)
        np.testing.assert_allclose(wino.input_1d(*d, consts), wino.BT @ d, rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(wino.output_1d(*m, consts), wino.AT @ m, rtol=1e-14, atol=1e-14)
        f = rng.standard_normal((3, 3))
        np.testing.assert_allclose(wino.FILTER_TRANSFORM @ f.ravel(), (wino.G @ f @ wino.G.T).ravel(),
                                   rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads, chunk_floats", [(1, None), (2, 64)], ids=["one-job", "chunks"])
def test_filter_transform_matches_the_matrices(monkeypatch, dtype, threads, chunk_floats):
    """u[g, xi, k, c] = (G w G^T)[xi] for every group, also when the GEMMs run in chunks
    (a last, shorter chunk included: 3 * 43 columns per group)."""
    if chunk_floats is not None:
        monkeypatch.setattr(wino, "FILTER_CHUNK", chunk_floats)
    rng = np.random.default_rng(4)
    groups, k_per_group, c_per_group = 2, 3, 43
    weight = rng.standard_normal((groups * k_per_group, c_per_group, 3, 3)).astype(dtype)
    u = np.full((groups, 36, k_per_group, c_per_group), np.nan, dtype=dtype)
    wino._transform_filter(weight, u, threads)
    expected = np.einsum("ia,kcab,jb->ijkc", wino.G, weight.astype(np.float64), wino.G)
    expected = expected.reshape(36, groups, k_per_group, c_per_group).transpose(1, 0, 2, 3)
    tolerance = 1e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(u, expected, rtol=tolerance, atol=tolerance)


def test_the_matrices_compute_a_correlation():
    """F(4, 3): AT [(G g) * (BT d)] is the valid correlation of 6 inputs with 3 taps."""
    rng = np.random.default_rng(1)
    d, g = rng.standard_normal(6), rng.standard_normal(3)
    expected = np.array([d[i:i + 3] @ g for i in range(4)])
    np.testing.assert_allclose(wino.AT @ ((wino.G @ g) * (wino.BT @ d)), expected, atol=1e-13)


# Forward and data gradient against the float64 reference ---------------------------------

SHAPES = [  # (n, c, h, w, k, padding, groups)
    (1, 16, 16, 16, 16, 1, 1),
    (2, 17, 13, 11, 19, 1, 1),      # partial tiles on both axes, odd channel counts
    (1, 32, 9, 30, 8, 0, 1),        # no padding
    (1, 20, 7, 7, 24, 2, 1),        # padding wider than the kernel's half
    (3, 16, 12, 12, 32, 1, 2),      # groups
    (1, 64, 28, 28, 64, 1, 1),      # enough tiles for several blocks per thread
    (1, 256, 9, 9, 32, 1, 1),       # many channels: the phased steps
    (2, 512, 6, 6, 512, 1, 2),      # phased, with groups
]


def test_phased_steps_over_several_chunks(monkeypatch):
    """The phased steps run a chunk of tiles at a time; a small chunk makes several."""
    from convflow.backends.numba import plans

    monkeypatch.setattr(plans, "PHASED_CHUNK_BYTES", 1 << 20)
    rng = np.random.default_rng(11)
    x, weight = _case(rng, 3, 256, 11, 13, 64)
    assert wino.phased_chunk(wino.tiles_of(3, 11, 13), 256, 64, 4) < wino.tiles_of(3, 11, 13)
    bias = rng.standard_normal(64).astype(np.float32)
    y = convflow.conv2d(x, weight, bias, padding=1, backend="numba", algorithm="winograd")
    assert_close(y, reference.conv(x, weight, bias, padding=((1, 1), (1, 1))))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_the_reference(shape, dtype):
    n, c, h, w, k, padding, groups = shape
    rng = np.random.default_rng(hash(shape) % 2**32)
    x, weight = _case(rng, n, c, h, w, k, groups, dtype)
    y = convflow.conv2d(x, weight, padding=padding, groups=groups, backend="numba",
                        algorithm="winograd")
    assert_close(y, reference.conv(x, weight, padding=((padding, padding),) * 2, groups=groups),
                 dtype)


def test_asymmetric_padding_bias_and_activation_are_fused():
    rng = np.random.default_rng(2)
    x, weight = _case(rng, 2, 16, 15, 14, 24)
    bias = rng.standard_normal(24).astype(np.float32)
    padding = ((1, 2), (0, 1))
    y = convflow.conv2d(x, weight, bias, padding=padding, activation="relu", backend="numba",
                        algorithm="winograd")
    expected = reference.activate(reference.conv(x, weight, bias, padding=padding), "relu")
    assert_close(y, expected)
    decision = convflow.explain(x, weight, bias, padding=padding, activation="relu",
                                backend="numba", algorithm="winograd")
    assert decision.algorithm == "winograd"


def test_channels_last_input_gives_the_same_answer():
    rng = np.random.default_rng(3)
    x, weight = _case(rng, 2, 16, 12, 12, 16)
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    y = convflow.conv2d(nhwc, weight, padding=1, backend="numba", algorithm="winograd")
    assert_close(y, reference.conv(x, weight, padding=((1, 1), (1, 1))))


@pytest.mark.parametrize("padding,groups", [(1, 1), (0, 1), (2, 1), (1, 2)])
def test_data_gradient_matches_the_reference(padding, groups):
    rng = np.random.default_rng(4 + padding + groups)
    x, weight = _case(rng, 2, 16, 14, 13, 24, groups)
    pads = ((padding, padding),) * 2
    dy = rng.standard_normal(reference.conv(x, weight, padding=pads, groups=groups).shape)
    dy = dy.astype(np.float32)
    dx, _, _ = convflow.conv_backward(dy, x, weight, padding=padding, groups=groups,
                                      output_mask=(True, False, False), backend="numba",
                                      algorithm="winograd")
    expected = reference.conv_backward(dy, x, weight, padding=pads, groups=groups)[0]
    assert_close(dx, expected)


def test_the_weight_gradient_is_not_a_winograd_pass():
    rng = np.random.default_rng(5)
    x, weight = _case(rng, 1, 16, 8, 8, 16)
    dy = np.ones((1, 16, 8, 8), np.float32)
    with pytest.raises(ParameterError, match=r"winograd.*weight"):
        convflow.conv_backward(dy, x, weight, padding=1, output_mask=(False, True, False),
                               backend="numba", algorithm="winograd")


def test_strided_and_dilated_problems_are_refused_with_the_reason():
    rng = np.random.default_rng(6)
    x, weight = _case(rng, 1, 16, 16, 16, 16)
    for kwargs in (dict(stride=2), dict(dilation=2)):
        with pytest.raises(ParameterError, match="3x3 kernel with stride 1 and dilation 1"):
            convflow.conv2d(x, weight, backend="numba", algorithm="winograd", **kwargs)


def test_non_finite_tiles_are_recomputed_by_direct_loops():
    """An Inf would become NaN through the transforms' differences; the tiles holding it come
    out as the direct sum says (Inf where Inf is the answer), the others untouched."""
    rng = np.random.default_rng(7)
    x, weight = _case(rng, 1, 16, 12, 12, 16)
    x[0, 3, 5, 6] = np.inf
    y = convflow.conv2d(x, weight, padding=1, backend="numba", algorithm="winograd")
    direct = convflow.conv2d(x, weight, padding=1, backend="numba", algorithm="direct")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(direct))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(direct))
    finite = np.isfinite(direct)
    np.testing.assert_allclose(y[finite], direct[finite], rtol=0,
                               atol=3e-5 * np.abs(direct[finite]).max())
    assert np.isinf(y).any() or np.isnan(y).any()


def test_non_finite_tiles_get_the_bias_and_activation_once():
    """A recomputed tile gets the fused bias and activation as the others do (once: the
    Winograd values written before the recompute already had them)."""
    rng = np.random.default_rng(17)
    x, weight = _case(rng, 2, 16, 13, 11, 8)
    x[1, 2, 0, 10] = -np.inf   # a border tile of the second image
    bias = rng.standard_normal(8).astype(np.float32)
    kwargs = dict(padding=1, activation="relu6", backend="numba")
    y = convflow.conv2d(x, weight, bias, algorithm="winograd", **kwargs)
    direct = convflow.conv2d(x, weight, bias, algorithm="direct", **kwargs)
    touched = direct[1, :, 0:2, 9:11]   # the outputs that sum the infinite input: +-inf
    assert np.isin(touched, (0, 6)).all()
    np.testing.assert_array_equal(y[1, :, 0:2, 9:11], touched)
    np.testing.assert_allclose(y, direct, rtol=0, atol=3e-5 * 6)


def test_concurrent_calls_from_threads_each_get_their_answer():
    rng = np.random.default_rng(8)
    cases = [_case(rng, 1, 32, 20 + i, 20, 32) for i in range(4)]
    expected = [convflow.conv2d(x, w, padding=1, backend="numba", algorithm="direct")
                for x, w in cases]
    results: dict[int, np.ndarray] = {}

    def run(i):
        for _ in range(5):
            x, w = cases[i]
            results[i] = convflow.conv2d(x, w, padding=1, backend="numba", algorithm="winograd")

    run_in_threads(len(cases), run)
    for i, want in enumerate(expected):
        np.testing.assert_allclose(results[i], want, rtol=0, atol=3e-5 * np.abs(want).max())


def test_the_rule_explains_when_winograd_does_not_pay():
    small = convflow.explain(np.ones((1, 8, 64, 64), np.float32), np.ones((8, 8, 3, 3), np.float32),
                             padding=1, backend="numba")
    outcome = next(o for o in small.algorithm_rules if o.rule == "winograd")
    assert not outcome.matched and "too few for the transforms" in outcome.detail
    tiny_map = convflow.explain(np.ones((1, 64, 5, 5), np.float32),
                                np.ones((64, 64, 3, 3), np.float32), padding=1, backend="numba")
    outcome = next(o for o in tiny_map.algorithm_rules if o.rule == "winograd")
    assert not outcome.matched and "output tiles of 4x4" in outcome.detail
    narrow = convflow.explain(np.ones((8, 64, 56, 56), np.float32),
                              np.ones((128, 64, 3, 3), np.float32), padding=1, backend="numba")
    outcome = next(o for o in narrow.algorithm_rules if o.rule == "winograd")
    assert not outcome.matched and "the packed kernels stream so few channels" in outcome.detail
    assert "needs <= 392 tiles" in outcome.detail
    both_narrow = convflow.explain(np.ones((8, 64, 28, 28), np.float32),
                                   np.ones((64, 64, 3, 3), np.float32), padding=1,
                                   backend="numba")
    outcome = next(o for o in both_narrow.algorithm_rules if o.rule == "winograd")
    assert not outcome.matched and "needs >= 96 channels on at least one side" in outcome.detail
    wide = convflow.explain(np.ones((8, 128, 14, 14), np.float32),
                            np.ones((128, 128, 3, 3), np.float32), padding=1, backend="numba")
    assert wide.algorithm == "winograd"
    dgrad = convflow.explain(np.ones((8, 128, 56, 56), np.float32),
                             np.ones((128, 128, 3, 3), np.float32), padding=1, backend="numba",
                             direction="backward_data")
    assert dgrad.algorithm == "winograd"


def test_plan_pads_leading_dimensions_off_4k_strides():
    for channels in (16, 64, 256, 1024):
        for block in (8, 16, 42, 64):
            ld = wino.leading_dimension(block, channels, 4)
            assert ld >= -(-block // wino.LANES) * wino.LANES
            assert ld - block < 2 * wino.LANES
    assert (wino.leading_dimension(64, 64, 4) * 64 * 4) % 4096 != 0


# The private BLAS ------------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matmul_views_stacks_and_accumulation(threads, dtype):
    rng = np.random.default_rng(9)
    a = rng.standard_normal((70, 90)).astype(dtype)
    b = rng.standard_normal((90, 300)).astype(dtype)
    cases = [
        (a, b), (np.asfortranarray(a), b), (a, np.asfortranarray(b)),   # transposed storage
        (a[:, 5:80], b[5:80]),                                           # strided views
        (a, rng.standard_normal((3, 90, 40)).astype(dtype)),             # one a for a stack
        (rng.standard_normal((3, 70, 90)).astype(dtype),
         rng.standard_normal((3, 90, 40)).astype(dtype)),
        (a, b[:, :7]), (a[:3], b),                                       # narrow blocks
        (a, b[:, :1]), (np.asfortranarray(a), b[:, 3:4]),                # one column: GEMV
        (a, np.ascontiguousarray(b[:, :1].T).T),                         # a transposed vector
        (rng.standard_normal((3, 70, 90)).astype(dtype),
         rng.standard_normal((3, 90, 1)).astype(dtype)),                 # a stack of GEMVs
    ]
    for left, right in cases:
        want = np.matmul(left.astype(np.float64), right.astype(np.float64))
        out = np.empty(want.shape, dtype)
        blas.matmul(left, right, out, threads=threads)
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-3)
        start = rng.standard_normal(want.shape).astype(dtype)
        acc = start.copy()
        blas.matmul(left, right, acc, accumulate=True, threads=threads)
        np.testing.assert_allclose(acc, want + start, rtol=1e-4, atol=1e-3)
    for out in (np.empty((300, 70), dtype).T, np.empty((70, 600), dtype)[:, ::2]):
        blas.matmul(a, b, out, threads=threads)  # columns contiguous; neither contiguous
        np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)
    wide = np.zeros((70, 400), dtype)
    blas.matmul(a, b, wide[:, 50:350], threads=threads)  # into a view of a wider array
    np.testing.assert_allclose(wide[:, 50:350], a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)
    assert not wide[:, :50].any() and not wide[:, 350:].any()


def test_matmul_with_an_empty_reduction_writes_zeros():
    out = np.full((3, 4), 7.0, np.float32)
    blas.matmul(np.ones((3, 0), np.float32), np.ones((0, 4), np.float32), out)
    assert not out.any()


def _numpy_openblas():
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs",
                                  "libscipy_openblas64_*.so*"))
    if not libs:
        pytest.skip("numpy's bundled OpenBLAS is not a separate library here")
    lib = ctypes.CDLL(libs[0])
    getter = getattr(lib, "scipy_openblas_get_num_threads64_", None)
    if getter is None:
        pytest.skip("numpy's OpenBLAS has no thread-count getter")
    return getter


def test_the_private_blas_leaves_numpys_threads_and_symbols_alone():
    get_threads = _numpy_openblas()
    before = get_threads()
    blas.load()
    x, w = _case(np.random.default_rng(10), 1, 32, 32, 32, 32)
    convflow.conv2d(x, w, padding=1, backend="numba", algorithm="winograd")
    assert get_threads() == before
    # Loaded RTLD_LOCAL: its symbols resolve nobody else's calls.
    with pytest.raises(AttributeError):
        ctypes.CDLL(None).scipy_cblas_sgemm  # noqa: B018


def test_convflow_info_names_the_private_blas():
    status = convflow.available_backends()["numba"]
    assert "OpenBLAS" in status.details["blas"] and "1 thread" in status.details["blas"]
    assert "OMP_WAIT_POLICY" not in os.environ or status.details["omp_wait_policy"]


# Workspace kept between calls --------------------------------------------------------------

def test_scratch_is_reused_per_thread_and_large_buffers_are_not_kept():
    workspace.release()
    first = workspace.scratch(np.float32, 1000)
    again = workspace.scratch(np.float32, 500)
    assert np.shares_memory(first, again)
    other: list[np.ndarray] = []
    t = threading.Thread(target=lambda: other.append(workspace.scratch(np.float32, 1000)))
    t.start()
    t.join()
    assert not np.shares_memory(first, other[0])
    huge = workspace.scratch(np.uint8, workspace.KEEP_BYTES + 1)
    assert not np.shares_memory(huge, workspace.scratch(np.uint8, 10))
    workspace.release()


def test_transformed_filters_beyond_the_workspace_limit_are_refused():
    from convflow import config

    x = np.ones((1, 512, 16, 16), np.float32)
    w = np.ones((512, 512, 3, 3), np.float32)
    with config.override(CONVFLOW_WORKSPACE_MB=16):
        decision = convflow.explain(x, w, padding=1, backend="numba")
        outcome = next(o for o in decision.algorithm_rules if o.rule == "winograd")
        assert "more than CONVFLOW_WORKSPACE_MB=16" in outcome.detail
        assert decision.algorithm != "winograd"


def test_an_empty_batch():
    w = np.ones((16, 16, 3, 3), np.float32)
    y = convflow.conv2d(np.ones((0, 16, 8, 8), np.float32), w, padding=1, backend="numba",
                        algorithm="winograd")
    assert y.shape == (0, 16, 8, 8)
