"""Property-based differential tests: random problems on every available backend against the
float64 reference. CI runs a bounded number of examples per test (derandomized, so runs are
repeatable); ``CONVFLOW_SOAK=1 make test`` runs thousands of fresh ones. Failures hypothesis
shrinks become regression tests in the parametrized grids (tests/cases.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis drives the property tests")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import convflow  # noqa: E402
from convflow import config  # noqa: E402

import reference  # noqa: E402
from conftest import assert_close  # noqa: E402

SOAK = bool(config.get("CONVFLOW_SOAK"))
SETTINGS = settings(max_examples=2000 if SOAK else 30, deadline=None, derandomize=not SOAK,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])
CONV = {1: convflow.conv1d, 2: convflow.conv2d, 3: convflow.conv3d}
CONV_T = {1: convflow.conv_transpose1d, 2: convflow.conv_transpose2d, 3: convflow.conv_transpose3d}
LAYOUTS = ("c", "fortran", "negative", "sliced", "readonly")


@st.composite
def problems(draw, transposed: bool = False):
    nd = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    in_channels = groups * draw(st.integers(1, 3))
    out_channels = groups * draw(st.integers(1, 3))
    if draw(st.integers(0, 4)) == 0:  # depthwise, with a channel multiplier
        groups = in_channels = draw(st.integers(2, 4))
        out_channels = in_channels * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    spatial = tuple(draw(st.integers(1, 7 if nd < 3 else 5)) for _ in range(nd))
    batch = draw(st.integers(0, 3) if draw(st.integers(0, 9)) == 0 else st.integers(1, 3))
    pairs = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(nd))
    form = draw(st.sampled_from(["int", "tuple", "pairs", "valid", "same", "same_lower"]
                                if not transposed else ["int", "tuple", "pairs"]))
    if form == "int":
        pairs = ((pairs[0][0], pairs[0][0]),) * nd
        padding: object = pairs[0][0]
    elif form == "tuple":
        pairs = tuple((lo, lo) for lo, _ in pairs)
        padding = tuple(lo for lo, _ in pairs)
    elif form == "pairs":
        padding = pairs
    elif form == "valid":
        pairs, padding = ((0, 0),) * nd, "valid"
    else:
        padding = form
        pairs = []
        for i, k, s, d in zip(spatial, kernel, stride, dilation):
            out = math.ceil(i / s)
            total = max(0, (out - 1) * s + d * (k - 1) + 1 - i)
            small, large = total // 2, total - total // 2
            pairs.append((large, small) if form == "same_lower" else (small, large))
        pairs = tuple(pairs)
    case = dict(nd=nd, groups=groups, in_channels=in_channels, out_channels=out_channels,
                kernel=kernel, stride=stride, dilation=dilation, spatial=spatial, batch=batch,
                padding=padding, pairs=pairs,
                dtype=draw(st.sampled_from(["float64", "float32", "float32", "float16"])),
                layout=draw(st.sampled_from(LAYOUTS)), seed=draw(st.integers(0, 2**31)))
    if transposed:
        case["output_padding"] = tuple(draw(st.integers(0, max(s, d) - 1))
                                       for s, d in zip(stride, dilation))
        full = [(i - 1) * s + d * (k - 1) + 1 + op for i, s, d, k, op
                in zip(spatial, stride, dilation, kernel, case["output_padding"])]
        hypothesis.assume(all(f - lo - hi > 0 for f, (lo, hi) in zip(full, pairs)))
    else:
        hypothesis.assume(all(i + lo + hi >= d * (k - 1) + 1
                              for i, (lo, hi), d, k in zip(spatial, pairs, dilation, kernel)))
        mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
        if mode == "reflect" and any(max(p) >= i for p, i in zip(pairs, spatial)):
            mode = "zeros"
        if mode == "circular" and any(max(p) > i for p, i in zip(pairs, spatial)):
            mode = "zeros"
        case["padding_mode"] = mode
    return case


def arrays(case: dict, transposed: bool = False):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["batch"], case["in_channels"], *case["spatial"]))
    w_shape = ((case["in_channels"], case["out_channels"] // case["groups"]) if transposed
               else (case["out_channels"], case["in_channels"] // case["groups"]))
    w = rng.standard_normal((*w_shape, *case["kernel"]))
    b = rng.standard_normal(case["out_channels"])
    dtype = case["dtype"]
    x, w, b = (a.astype(dtype) for a in (x, w, b))
    return _layout(x, case["layout"]), _layout(w, case["layout"]), b


def _layout(a: np.ndarray, layout: str) -> np.ndarray:
    """The same values in another memory order (the reference sees the values only)."""
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "negative":
        flipped = np.ascontiguousarray(a[..., ::-1])
        return flipped[..., ::-1]
    if layout == "sliced":
        big = np.zeros(tuple(2 * s for s in a.shape), dtype=a.dtype)
        big[tuple(slice(None, None, 2) for _ in a.shape)] = a
        return big[tuple(slice(None, None, 2) for _ in a.shape)]
    if layout == "readonly":
        a = a.copy()
        a.flags.writeable = False
    return a


@SETTINGS
@given(case=problems())
def test_forward_matches_reference(backend, case):
    x, w, b = arrays(case)
    expected = reference.conv(x, w, b, case["stride"], case["pairs"], case["dilation"],
                              case["groups"], case["padding_mode"])
    y = CONV[case["nd"]](x, w, b, case["stride"], case["padding"], case["dilation"],
                         case["groups"], padding_mode=case["padding_mode"], backend=backend)
    assert_close(y, expected, case["dtype"])


@SETTINGS
@given(case=problems(transposed=True))
def test_transposed_matches_reference(backend, case):
    x, w, b = arrays(case, transposed=True)
    expected = reference.conv_transpose(x, w, b, case["stride"], case["pairs"],
                                        case["output_padding"], case["groups"], case["dilation"])
    y = CONV_T[case["nd"]](x, w, b, case["stride"], case["padding"], case["output_padding"],
                           case["groups"], case["dilation"], backend=backend)
    assert_close(y, expected, case["dtype"])


@SETTINGS
@given(case=problems(), transposed=st.booleans(), mask=st.tuples(st.booleans(), st.booleans(),
                                                                   st.booleans()))
def test_backward_matches_reference(backend, case, transposed, mask):
    if transposed:
        case = {**case, "padding": case["pairs"], "output_padding": (0,) * case["nd"]}
        full = [(i - 1) * s + d * (k - 1) + 1 for i, s, d, k
                in zip(case["spatial"], case["stride"], case["dilation"], case["kernel"])]
        hypothesis.assume(all(f - lo - hi > 0 for f, (lo, hi) in zip(full, case["pairs"])))
    x, w, _ = arrays(case, transposed)
    if transposed:
        y = reference.conv_transpose(x, w, None, case["stride"], case["pairs"], None,
                                     case["groups"], case["dilation"])
    else:
        y = reference.conv(x, w, None, case["stride"], case["pairs"], case["dilation"],
                           case["groups"])
    dy = np.random.default_rng(case["seed"] + 1).standard_normal(y.shape).astype(case["dtype"])
    expected = reference.conv_backward(dy, x, w, case["stride"], case["pairs"], case["dilation"],
                                       case["groups"], transposed, None)
    grads = convflow.conv_backward(dy, x, w, stride=case["stride"], padding=case["padding"],
                                   dilation=case["dilation"], groups=case["groups"],
                                   transposed=transposed, output_mask=mask, backend=backend)
    for wanted, got, want in zip(mask, grads, expected):
        if wanted:
            assert_close(got, want, case["dtype"])
        else:
            assert got is None
