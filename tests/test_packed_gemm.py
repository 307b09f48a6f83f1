"""The numba backend's ``packed_gemm``: the packed, phase-split input of ``packed_direct``
with the kernel taps as GEMMs on the private BLAS, against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

import convflow
from convflow.errors import ParameterError

import reference
from conftest import assert_close
from helpers import run_in_threads

pytest.importorskip("numba")

from convflow.backends.numba import algorithms
from convflow.geometry import Geometry

ALGO = dict(backend="numba", algorithm="packed_gemm")


def _pads(padding, ndim):
    if isinstance(padding, int):
        return ((padding, padding),) * ndim
    return tuple(p if isinstance(p, tuple) else (p, p) for p in padding)


# (n, c, spatial, k, kernel, stride, padding, dilation, groups): each expansion of the taps,
# strides (several phase planes), dilation, asymmetric padding, groups, 1-D and 3-D.
CASES = [
    (2, 64, (14, 14), 32, (3, 3), 1, 1, 1, 1),      # per-tap GEMMs (64 channels)
    (3, 96, (7, 9), 40, (3, 3), 1, 1, 1, 2),         # per-tap, two groups of 48 -> rows
    (2, 32, (13, 13), 48, (5, 5), 1, 2, 1, 1),      # a GEMM per kernel row (32 x 5 >= 64)
    (2, 24, (15, 12), 20, (3, 3), 2, 1, 1, 1),      # kernel rows, stride 2: four phase planes
    (1, 3, (33, 31), 16, (7, 7), 2, 3, 1, 1),       # all taps expanded (a stem)
    (2, 3, (29, 29), 8, (11, 11), 4, 0, 1, 1),      # all taps, stride 4
    (1, 16, (20, 20), 24, (3, 3), 1, 2, 2, 1),      # dilation
    (2, 8, (11, 10), 12, (3, 2), (2, 1), ((1, 0), (0, 2)), 1, 4),  # asymmetric everything
    (2, 70, (9,), 33, (5,), 2, 2, 1, 1),            # 1-D
    (1, 12, (6, 7, 8), 10, (3, 3, 3), (1, 2, 1), 1, 1, 1),  # 3-D, stride on one axis
    (1, 65, (4, 4), 300, (3, 3), 1, 1, 1, 1),       # more than one block of output channels
]


def _run(case, dtype="float32", bias=False, activation=None, rng=None):
    n, c, spatial, k, kernel, stride, padding, dilation, groups = case
    rng = rng or np.random.default_rng(abs(hash(str(case))) % 2**32)
    x = rng.standard_normal((n, c, *spatial)).astype(dtype)
    w = rng.standard_normal((k, c // groups, *kernel)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype) if bias else None
    conv = {1: convflow.conv1d, 2: convflow.conv2d, 3: convflow.conv3d}[len(spatial)]
    y = conv(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
             activation=activation, **ALGO)
    ndim = len(spatial)
    expected = reference.conv(x, w, b, stride=stride if not isinstance(stride, int)
                              else (stride,) * ndim, padding=_pads(padding, ndim),
                              dilation=(dilation,) * ndim, groups=groups)
    if activation:
        expected = reference.activate(expected, activation)
    return y, expected


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_matches_the_reference(case, dtype):
    y, expected = _run(case, dtype)
    assert_close(y, expected, dtype)


@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_bias_and_activation_are_fused(activation):
    y, expected = _run(CASES[2], bias=True, activation=activation)
    assert_close(y, expected)


def test_each_expansion_is_named_by_explain():
    seen = {}
    for case in CASES[:6]:
        n, c, spatial, k, kernel, stride, padding, _, groups = case
        x = np.zeros((n, c, *spatial), np.float32)
        w = np.zeros((k, c // groups, *kernel), np.float32)
        decision = convflow.explain(x, w, stride=stride, padding=padding, groups=groups, **ALGO)
        assert decision.algorithm == "packed_gemm"
        seen[decision.variant] = case
    assert set(seen) == {algorithms.PACKED_GEMM_TAPS, algorithms.PACKED_GEMM_ROWS,
                         algorithms.PACKED_GEMM_ALL}


def test_tiles_of_images_under_a_small_workspace(monkeypatch):
    """A workspace of 1 MiB holds a few packed images at a time: several tiles, one answer."""
    monkeypatch.setenv("CONVFLOW_WORKSPACE_MB", "1")
    case = (9, 32, (24, 24), 16, (3, 3), 1, 1, 1, 1)
    per_image = algorithms.packed_gemm_bytes_per_image(
        (9, 32, 24, 24), (16, 32, 3, 3), (9, 16, 24, 24), (1, 1), (1, 1), 4)
    assert 1 < (1 << 20) // per_image < 9
    y, expected = _run(case)
    assert_close(y, expected)


def test_an_image_larger_than_the_workspace_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setenv("CONVFLOW_WORKSPACE_MB", "1")
    x = np.zeros((1, 8, 256, 256), np.float32)
    w = np.zeros((8, 8, 3, 3), np.float32)
    with pytest.raises(ParameterError, match=r"packed_gemm.*one packed image needs .* MiB, more "
                                             r"than CONVFLOW_WORKSPACE_MB=1"):
        convflow.conv2d(x, w, padding=1, **ALGO)


def test_channels_last_input_and_an_empty_batch():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 32, 12, 11)).astype(np.float32)
    w = rng.standard_normal((24, 32, 3, 3)).astype(np.float32)
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    y = convflow.conv2d(nhwc, w, padding=1, **ALGO)
    assert_close(y, reference.conv(x, w, padding=((1, 1), (1, 1))))
    empty = convflow.conv2d(x[:0], w, padding=1, **ALGO)
    assert empty.shape == (0, 24, 12, 11)


def test_inputs_are_not_modified_and_non_finite_values_stay_where_they_are():
    """Inf in the input reaches exactly the outputs that read it (the BLAS sums every
    product, as the direct loops do); the columns computed from padding are dropped."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 16, 10, 10)).astype(np.float32)
    w = rng.standard_normal((8, 16, 3, 3)).astype(np.float32)
    x[0, 2, 0, 9] = np.inf
    x_before, w_before = x.copy(), w.copy()
    y = convflow.conv2d(x, w, padding=1, **ALGO)
    direct = convflow.conv2d(x, w, padding=1, backend="numba", algorithm="direct")
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(w, w_before)
    np.testing.assert_array_equal(np.isfinite(y), np.isfinite(direct))
    finite = np.isfinite(direct)
    np.testing.assert_allclose(y[finite], direct[finite], rtol=0,
                               atol=3e-5 * np.abs(direct[finite]).max())
    assert (~finite).sum() == 8 * 4   # the 2x2 outputs whose windows hold the corner


def test_the_data_gradient_is_not_a_packed_gemm_pass():
    x = np.zeros((1, 16, 8, 8), np.float32)
    w = np.zeros((16, 16, 3, 3), np.float32)
    with pytest.raises(ParameterError, match=r"packed_gemm runs only the forward and "
                                             r"backward_weight passes"):
        convflow.conv_backward(np.ones((1, 16, 8, 8), np.float32), x, w, padding=1,
                               output_mask=(True, False, False), **ALGO)


def _weight_gradient(case, dtype="float32", rng=None):
    n, c, spatial, k, kernel, stride, padding, dilation, groups = case
    rng = rng or np.random.default_rng(abs(hash(str(case))) % 2**32)
    ndim = len(spatial)
    strides = stride if not isinstance(stride, int) else (stride,) * ndim
    pads = _pads(padding, ndim)
    x = rng.standard_normal((n, c, *spatial)).astype(dtype)
    w = rng.standard_normal((k, c // groups, *kernel)).astype(dtype)
    dy = rng.standard_normal(reference.conv(x, w, stride=strides, padding=pads,
                                            dilation=(dilation,) * ndim, groups=groups).shape)
    dy = dy.astype(dtype)
    return x, w, dy, dict(stride=stride, padding=padding, dilation=dilation, groups=groups), \
        reference.conv_backward(dy, x, w, stride=strides, padding=pads,
                                dilation=(dilation,) * ndim, groups=groups)[1]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_weight_gradient_matches_the_reference(case, dtype):
    """One GEMM per tap of dy (laid out at the packed output positions) with the packed
    input: strides, dilation, asymmetric padding, groups, 1-D and 3-D."""
    x, w, dy, kwargs, expected = _weight_gradient(case, dtype)
    _, dw, _ = convflow.conv_backward(dy, x, w, output_mask=(False, True, False), **kwargs,
                                      **ALGO)
    assert_close(dw, expected, dtype)


def test_weight_gradient_over_tiles_of_images(monkeypatch):
    monkeypatch.setenv("CONVFLOW_WORKSPACE_MB", "1")
    case = (9, 32, (24, 24), 16, (3, 3), 1, 1, 1, 1)
    assert 1 < (1 << 20) // algorithms.packed_wgrad_bytes_per_image(
        (9, 32, 24, 24), (16, 32, 3, 3), (9, 16, 24, 24), (1, 1), (1, 1), 4) < 9
    x, w, dy, kwargs, expected = _weight_gradient(case)
    _, dw, _ = convflow.conv_backward(dy, x, w, output_mask=(False, True, False), **kwargs,
                                      **ALGO)
    assert_close(dw, expected)


def test_weight_gradient_of_an_input_holding_inf_and_of_an_empty_batch():
    """The zeros between dy's rows meet real inputs; with Inf there (0 * Inf = NaN) the
    im2col pass runs, so the NaNs are exactly where the direct loops put them."""
    x, w, dy, kwargs, _ = _weight_gradient((2, 16, (10, 10), 8, (3, 3), 1, 1, 1, 1))
    x[0, 3, 0, 9] = np.inf
    mask = (False, True, False)
    _, dw, _ = convflow.conv_backward(dy, x, w, output_mask=mask, **kwargs, **ALGO)
    _, direct, _ = convflow.conv_backward(dy, x, w, output_mask=mask, **kwargs, backend="numba",
                                          algorithm="direct")
    np.testing.assert_array_equal(np.isfinite(dw), np.isfinite(direct))
    assert not np.isfinite(dw[:, 3]).all() and np.isfinite(np.delete(dw, 3, axis=1)).all()
    _, empty, _ = convflow.conv_backward(dy[:0], x[:0], w, output_mask=mask, **kwargs, **ALGO)
    np.testing.assert_array_equal(empty, np.zeros_like(w))


def test_concurrent_calls_from_threads_each_get_their_answer():
    rng = np.random.default_rng(8)
    cases = [(rng.standard_normal((2, 32, 20 + i, 18)).astype(np.float32),
              rng.standard_normal((40, 32, 3, 3)).astype(np.float32)) for i in range(4)]
    expected = [reference.conv(x, w, padding=((1, 1), (1, 1))) for x, w in cases]
    results: dict[int, np.ndarray] = {}

    def run(i):
        for _ in range(5):
            results[i] = convflow.conv2d(*cases[i], padding=1, **ALGO)

    run_in_threads(len(cases), run)
    for i, want in enumerate(expected):
        assert_close(results[i], want)


@pytest.mark.parametrize("stride,dilation", [((1, 1, 1), (1, 1, 1)), ((2, 2, 2), (1, 1, 1)),
                                             ((1, 2, 3), (2, 1, 2)), ((3, 3, 3), (2, 2, 2))])
def test_tap_offsets_split_into_kernel_rows_and_columns(stride, dilation):
    """Every tap's read offset is its kernel row's plus its column's, which the GEMM per
    kernel row relies on, for any strides and dilations."""
    kernel, out = (2, 3, 4), (3, 4, 5)
    x = tuple(o * s + (k - 1) * d + 1 for o, s, k, d in zip(out, stride, kernel, dilation))
    geometry = Geometry.of_shapes((1, 1, *x), (1, 1, *kernel), (1, 1, *out), stride,
                                  (0, 0, 0), dilation, 1)
    layout = algorithms.PackedLayout.of(kernel, out, geometry)
    for images in (1, 3):
        rows, columns = algorithms._packed_gemm_offsets(layout, kernel[-1], images)
        bases = layout.tap_phase * images * layout.plane + layout.tap_shift
        np.testing.assert_array_equal((rows[:, None] + columns[None, :]).ravel(), bases)


def test_jobs_cover_every_thread_and_keep_the_accumulator_in_cache():
    m_step, p_step = algorithms._packed_gemm_steps(600, 1, 10_000, 2)
    assert m_step <= algorithms.PACKED_GEMM_MAX_ROWS and -(-600 // m_step) * m_step >= 600
    assert m_step * p_step <= algorithms.PACKED_GEMM_ACC_FLOATS and p_step % 16 == 0
    m_step, p_step = algorithms._packed_gemm_steps(32, 1, 628, 2)
    assert -(-628 // p_step) >= 4   # two jobs per thread on a small map
