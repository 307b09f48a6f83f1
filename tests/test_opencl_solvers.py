"""Every opencl solver, in every pass it implements, against the float64 reference.

The shared grids run each algorithm a pass's rules accept; this file adds what they cannot
reach: passes only one solver has (``direct_wrw``), the code paths that depend on sizes
(vector tails, the transposed-B GEMM for few positions, workspace tiling inside an image,
Winograd image chunks, negative padding of flipped data gradients), and determinism of
the weight gradients.
"""

from __future__ import annotations

import numpy as np
import pytest

import convflow
from convflow import config
from convflow.backends.opencl.solvers import SOLVERS
from convflow.geometry import Geometry

import reference
from conftest import assert_close, require_backend

CONV = {1: convflow.conv1d, 2: convflow.conv2d, 3: convflow.conv3d}
DIRECTIONS = (convflow.Direction.FORWARD, convflow.Direction.BACKWARD_DATA,
              convflow.Direction.BACKWARD_WEIGHT)
MASKS = {convflow.Direction.BACKWARD_DATA: (True, False, False),
         convflow.Direction.BACKWARD_WEIGHT: (False, True, False)}

# (name, x shape, w shape, conv keywords)
CASES = [
    ("3x3-pad1-odd", (2, 8, 9, 10), (12, 8, 3, 3), dict(padding=1)),
    ("3x3-wide", (2, 4, 11, 37), (5, 4, 3, 3), dict(padding=1)),
    ("3x3-pad3", (1, 3, 6, 7), (4, 3, 3, 3), dict(padding=3)),
    ("3x3-asym-valid", (1, 5, 8, 9), (3, 5, 3, 3), dict(padding=((0, 2), (2, 0)))),
    ("strided-grouped", (2, 6, 11, 9), (8, 3, 3, 3),
     dict(stride=2, padding=((1, 0), (0, 1)), groups=2)),
    ("dilated-1d", (3, 4, 23), (6, 4, 5), dict(stride=3, dilation=2, padding=4)),
    ("3d-grouped", (2, 4, 5, 6, 7), (6, 2, 3, 2, 3), dict(padding=(1, 0, 1), groups=2)),
    ("1x1-7x7", (2, 20, 7, 7), (24, 20, 1, 1), {}),
    ("1x1-14x14", (1, 16, 14, 14), (18, 16, 1, 1), {}),
    ("1x1-5x4-grouped", (3, 12, 5, 4), (6, 4, 1, 1), dict(groups=3)),
    ("1x1-strided", (2, 8, 9, 9), (16, 8, 1, 1), dict(stride=2)),
    ("depthwise-x2", (2, 6, 10, 9), (12, 1, 3, 3), dict(stride=2, padding=1, groups=6)),
    ("depthwise-3d", (1, 3, 4, 5, 6), (3, 1, 2, 3, 3), dict(padding=1, groups=3)),
]


@pytest.fixture(scope="module")
def opencl():
    require_backend("opencl")


def _reference(x, w, b, kwargs):
    nd = x.ndim - 2

    def per(v):
        return (v,) * nd if isinstance(v, int) else tuple(v)

    pad = kwargs.get("padding", 0)
    pairs = (tuple((p, p) for p in per(pad)) if not isinstance(pad, tuple) or
             isinstance(pad[0], int) else pad)
    args = (per(kwargs.get("stride", 1)), pairs, per(kwargs.get("dilation", 1)),
            kwargs.get("groups", 1))
    return args, reference.conv(x, w, b, *args)


def _runnable(solver: str, x, w, kwargs, direction) -> bool:
    from convflow.backends import get_backend

    rule = next(r for r in get_backend("opencl").algorithm_rules() if r.name == solver)
    if direction not in rule.directions:
        return False
    decision = convflow.explain(x, w, backend="opencl", direction=direction.value, **kwargs)
    return rule.can_run(decision.problem)[0]


PAIRS = [(solver, direction) for solver in SOLVERS for direction in DIRECTIONS
         if direction in SOLVERS[solver].directions]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("solver, direction", PAIRS, ids=lambda v: getattr(v, "value", v))
def test_solver_pass_against_reference(opencl, solver, direction, dtype):
    ran = 0
    for name, x_shape, w_shape, kwargs in CASES:
        rng = np.random.default_rng(len(name))
        x = rng.standard_normal(x_shape).astype(dtype)
        w = rng.standard_normal(w_shape).astype(dtype)
        if not _runnable(solver, x, w, kwargs, direction):
            continue
        ran += 1
        args, y = _reference(x, w, None, kwargs)
        saved = (x.copy(), w.copy())
        if direction == convflow.Direction.FORWARD:
            b = rng.standard_normal(w_shape[0]).astype(dtype)
            got = CONV[x.ndim - 2](x, w, b, backend="opencl", algorithm=solver, **kwargs)
            want = reference.conv(x, w, b, *args)
        else:
            dy = rng.standard_normal(y.shape).astype(dtype)
            grads = convflow.conv_backward(dy, x, w, output_mask=MASKS[direction],
                                           backend="opencl", algorithm=solver, **kwargs)
            index = 0 if direction == convflow.Direction.BACKWARD_DATA else 1
            got = grads[index]
            want = reference.conv_backward(dy, x, w, *args)[index]
        try:
            assert_close(got, want, dtype)
        except AssertionError as exc:
            raise AssertionError(f"{solver} {direction.value} on case {name}: {exc}") from None
        np.testing.assert_array_equal(x, saved[0])
        np.testing.assert_array_equal(w, saved[1])
    assert ran, f"no case exercises {solver} {direction.value}"


@pytest.mark.parametrize("solver", ["im2col_gemm", "vec_im2col_gemm", "winograd",
                                    "vec_winograd", "gemm_1x1", "vec_gemm_1x1"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_workspace_tiling(opencl, solver, dtype):
    """A 1 MiB workspace splits im2col inside an image (tiles not aligned to output rows)
    and runs Winograd one image at a time; gradients accumulate across tiles."""
    rng = np.random.default_rng(7)
    if solver.endswith("gemm_1x1"):
        x_shape, w_shape, kwargs = (2, 256, 80, 81), (8, 256, 1, 1), dict(stride=2)
    else:
        x_shape, w_shape, kwargs = (2, 32, 48, 47), (16, 32, 3, 3), dict(padding=1)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    args, y = _reference(x, w, None, kwargs)
    dy = rng.standard_normal(y.shape).astype(dtype)
    expected = reference.conv_backward(dy, x, w, *args)
    with config.override(CONVFLOW_WORKSPACE_MB=1):
        assert_close(convflow.conv2d(x, w, backend="opencl", algorithm=solver, **kwargs), y,
                     dtype)
        mask = (True, not solver.endswith("winograd"), False)
        grads = convflow.conv_backward(dy, x, w, output_mask=mask, backend="opencl",
                                       algorithm=solver, **kwargs)
    for wanted, got, want in zip(mask, grads, expected):
        if wanted:
            assert_close(got, want, dtype)


def test_tiles_split_inside_images():
    from convflow.geometry import plan_tiles

    tiles = plan_tiles(2, 2256, 288 * 4, 1 << 20, min_columns=16)
    assert all(t.count == 1 for t in tiles) and len(tiles) > 4
    assert sum(t.width for t in tiles) == 2 * 2256
    assert any(t.p0 % 47 for t in tiles)        # not aligned to output rows of 47
    grouped = plan_tiles(5, 64, 16, 1 << 20, min_columns=16)
    assert len(grouped) == 1 and grouped[0].count == 5


@pytest.mark.parametrize("solver", ["naive", "direct_wrw", "depthwise", "gemm_1x1",
                                    "vec_gemm_1x1", "im2col_gemm", "vec_im2col_gemm"])
def test_weight_gradients_are_deterministic(opencl, solver):
    rng = np.random.default_rng(3)
    groups = 8 if solver == "depthwise" else 2
    k = 1 if solver.endswith("gemm_1x1") else 3
    x = rng.standard_normal((4, 8, 33, 31)).astype(np.float32)
    w = rng.standard_normal((16, 8 // groups, k, k)).astype(np.float32)
    dy = rng.standard_normal((4, 16, 33 - k + 1, 31 - k + 1)).astype(np.float32)
    runs = [convflow.conv_backward(dy, x, w, groups=groups, output_mask=(False, True, True),
                                   backend="opencl", algorithm=solver) for _ in range(3)]
    for other in runs[1:]:
        np.testing.assert_array_equal(runs[0][1], other[1])
        np.testing.assert_array_equal(runs[0][2], other[2])


def test_flipped_geometry_is_the_data_gradient():
    problem = convflow.ConvProblem(convflow.Direction.BACKWARD_DATA, (2, 6, 9, 10),
                                   (8, 3, 3, 3), (2, 8, 9, 8), "float32", (1, 1),
                                   ((3, 0), (1, 2)), (1, 2), 2)
    flipped = Geometry.from_problem(problem).flipped()
    assert flipped.x == (2, 8, 1, 9, 8) and flipped.y == (2, 6, 1, 9, 10)
    assert flipped.w == (6, 4, 1, 3, 3)
    assert flipped.pad_low == (0, 2 - 3, 2 * 2 - 1)


def test_winograd_keeps_inf_and_nan_exact(opencl):
    """Winograd transforms subtract values; tiles with non-finite data are recomputed
    directly, so Inf stays Inf and only NaN-reachable outputs are NaN."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 16, 12, 20)).astype(np.float32)
    w = np.abs(rng.standard_normal((16, 16, 3, 3))).astype(np.float32)
    x[0, 3, 5, 17] = np.inf
    x[0, 7, 1, 2] = np.nan
    expected = reference.conv(np.nan_to_num(x, nan=0.0, posinf=0.0), w, None, (1, 1),
                              ((1, 1), (1, 1)), (1, 1), 1)
    for solver in ("winograd", "vec_winograd"):
        y = convflow.conv2d(x, w, padding=1, backend="opencl", algorithm=solver)
        assert np.isposinf(y[0, :, 4:7, 16:19]).all(), solver
        assert np.isnan(y[0, :, 0:3, 1:4]).all(), solver
        finite = np.isfinite(y)
        assert finite.sum() == 16 * (12 * 20 - 9 - 9)
        np.testing.assert_allclose(y[finite], expected[finite], rtol=1e-4, atol=1e-3)
