"""convflow.signal against scipy.signal on a parametrized grid, on the CPU and on OpenCL
arrays, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

import convflow
import convflow.signal as cs
from convflow.errors import ArgumentTypeError, ParameterError, ShapeError

from conftest import require_backend

SHAPES = [
    # (in1, in2, axes): 1-, 2-, 3-D, kernels larger than the input, even and odd sizes,
    # batched axes (in2 of size 1), paired axes, broadcast in1, singleton correlated axes
    ((30,), (7,), None),
    ((5,), (9,), None),
    ((20, 21), (5, 4), None),
    ((20, 21), (25, 24), None),
    ((64, 60), (31, 31), None),
    ((6, 7, 8), (3, 2, 5), None),
    ((1, 40, 1), (1, 6, 1), None),
    ((3, 20, 21), (1, 5, 4), (1, 2)),
    ((3, 20, 21), (3, 5, 4), (-2, -1)),
    ((1, 20, 21), (4, 5, 4), (1, 2)),
    ((2, 3, 40, 1), (1, 3, 6, 1), (2, 3)),
    ((4, 30), (1, 9), 1),
]
MODES = ["full", "same", "valid"]


def _scipy(name: str, a: np.ndarray, b: np.ndarray, mode: str, axes):
    if axes is None:
        return getattr(scipy.signal, name)(a, b, mode)
    if name == "correlate":
        axes_t = [axes] if isinstance(axes, int) else [x % a.ndim for x in axes]
        b = b[tuple(slice(None, None, -1) if i in axes_t else slice(None) for i in range(b.ndim))]
    return scipy.signal.fftconvolve(a, b, mode, axes=axes)


def _valid_possible(a_shape, b_shape, axes):
    axes_t = range(len(a_shape)) if axes is None else (
        [axes] if isinstance(axes, int) else [x % len(a_shape) for x in axes])
    return (all(a_shape[i] >= b_shape[i] for i in axes_t)
            or all(b_shape[i] >= a_shape[i] for i in axes_t))


@pytest.mark.parametrize("name", ["correlate", "convolve"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shapes", SHAPES, ids=lambda s: f"{s[0]}*{s[1]}@{s[2]}")
def test_matches_scipy_on_the_cpu(shapes, mode, name):
    a_shape, b_shape, axes = shapes
    if mode == "valid" and not _valid_possible(a_shape, b_shape, axes):
        pytest.skip("no valid overlap for these shapes")
    rng = np.random.default_rng(len(a_shape) * 100 + sum(b_shape))
    a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
    try:
        expected = _scipy(name, a, b, mode, axes)
    except ValueError as exc:
        with pytest.raises(ShapeError):
            getattr(cs, name)(a, b, mode, axes)
        pytest.skip(f"scipy refuses it too ({exc})")
    got = getattr(cs, name)(a, b, mode, axes)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    got32 = getattr(cs, name)(a.astype(np.float32), b.astype(np.float32), mode, axes)
    assert got32.dtype == np.float32
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(got32 - expected).max()) <= 3e-5 * scale


@pytest.mark.parametrize("algorithm", ["fft", "direct"])
def test_a_large_image_filter_by_either_algorithm(algorithm):
    rng = np.random.default_rng(1)
    image, kernel = rng.standard_normal((300, 280)), rng.standard_normal((63, 63))
    expected = scipy.signal.fftconvolve(image, kernel, "same")
    got = cs.convolve(image.astype(np.float32), kernel.astype(np.float32), "same",
                      algorithm=algorithm)
    assert float(np.abs(got - expected).max()) <= 3e-5 * float(np.abs(expected).max())


def test_the_rules_pick_fft_for_a_large_filter():
    image, kernel = np.zeros((1, 1, 1024, 1024), np.float32), np.zeros((1, 1, 63, 63),
                                                                      np.float32)
    decision = convflow.explain(image, kernel, padding=((31, 31), (31, 31)))
    assert decision.algorithm == "fft"


@pytest.mark.parametrize("name", ["correlate", "convolve"])
@pytest.mark.parametrize("mode", MODES)
def test_opencl_arrays_are_computed_on_opencl(name, mode):
    require_backend("opencl")
    import pyopencl.array as cl_array

    from convflow.backends import get_backend

    state = get_backend("opencl").state(convflow.Device("opencl", 0))
    rng = np.random.default_rng(2)
    for a_shape, b_shape, axes in [((40, 38), (9, 7), None), ((3, 30, 31), (3, 25, 31), (1, 2)),
                                   ((2, 50), (1, 15), 1)]:
        a = rng.standard_normal(a_shape).astype(np.float32)
        b = rng.standard_normal(b_shape).astype(np.float32)
        expected = _scipy(name, a.astype(np.float64), b.astype(np.float64), mode, axes)
        got = getattr(cs, name)(cl_array.to_device(state.queue, a),
                                cl_array.to_device(state.queue, b), mode, axes)
        assert isinstance(got, cl_array.Array)
        host = got.get()
        assert host.shape == expected.shape
        scale = max(1.0, float(np.abs(expected).max()))
        assert float(np.abs(host - expected).max()) <= 3e-5 * scale


def test_bad_arguments_name_the_argument():
    a, b = np.ones((10, 10)), np.ones((3, 3))
    with pytest.raises(ParameterError, match=r"mode must be one of 'full', 'same', 'valid', but "
                                             r"got 'vaild' \(did you mean 'valid'\?\)"):
        cs.correlate(a, b, "vaild")
    with pytest.raises(ShapeError, match=r"same number of dimensions, but in1 has shape "
                                         r"\(10, 10\) and in2 \(3,\)"):
        cs.correlate(a, np.ones(3))
    with pytest.raises(ArgumentTypeError, match=r"in2 must hold real floating-point values .* "
                                                r"but got int64"):
        cs.convolve(a, np.ones((3, 3), dtype=np.int64))
    with pytest.raises(ArgumentTypeError, match=r"in1 must hold .* but got complex"):
        cs.convolve(a.astype(np.complex128), b)
    with pytest.raises(ParameterError, match=r"axes \(0, 2\) are out of range"):
        cs.convolve(a, b, axes=(0, 2))
    with pytest.raises(ParameterError, match=r"axes must not repeat an axis"):
        cs.convolve(a, b, axes=(0, -2))
    with pytest.raises(ShapeError, match=r"axis 0 is not correlated, so in1 and in2 must have "
                                         r"the same size there or one of them 1"):
        cs.convolve(np.ones((3, 10)), np.ones((2, 4)), axes=1)
    with pytest.raises(ShapeError, match=r"for mode='valid' one input must be at least as "
                                         r"large as the other on every correlated axis"):
        cs.correlate(np.ones((10, 3)), np.ones((3, 10)), "valid")
    with pytest.raises(ParameterError, match=r"at most 3 axes of size > 1 can be correlated"):
        cs.correlate(np.ones((3, 3, 3, 3)), np.ones((2, 2, 2, 2)))
    with pytest.raises(ShapeError, match=r"must be non-empty"):
        cs.correlate(np.ones((0, 3)), b)


def test_inputs_are_not_modified_and_mixed_dtypes_promote():
    a = np.arange(50, dtype=np.float32).reshape(5, 10)
    b = np.ones((3, 3), dtype=np.float64)
    a_copy, b_copy = a.copy(), b.copy()
    got = cs.correlate(a, b, "same")
    assert got.dtype == np.float64
    np.testing.assert_array_equal(a, a_copy)
    np.testing.assert_array_equal(b, b_copy)
    np.testing.assert_allclose(got, scipy.signal.correlate(a.astype(np.float64), b, "same"))
