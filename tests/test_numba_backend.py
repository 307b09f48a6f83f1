"""numba backend internals: im2col tiling, the workspace bound, threads and determinism."""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest

import convflow
from convflow import config
from convflow.errors import ParameterError
from convflow.geometry import plan_tiles

import reference
from conftest import assert_close


@pytest.mark.parametrize("n_images, rows, out_w, per_column, budget", [
    (4, 6, 5, 100, 10_000),       # several images per tile
    (2, 50, 40, 100, 50_000),     # whole rows, within one image
    (2, 3, 1000, 100, 20_000),    # rows wider than the budget: column chunks
    (1, 1, 1, 10**9, 1),          # nothing fits: one column at a time
    (3, 7, 3, 8, 8 * 21 * 3),     # exactly three images
])
def test_tiles_cover_every_output_once_within_budget(n_images, rows, out_w, per_column, budget):
    tiles = plan_tiles(n_images, rows * out_w, per_column, budget, row_length=out_w)
    covered = np.zeros((n_images * rows, out_w), dtype=int)
    for tile in tiles:
        assert tile.columns >= 1
        assert tile.columns * per_column <= max(budget, per_column)
        span = tile.row_span(rows * out_w, out_w)
        covered[span.row0:span.row0 + span.n_rows, span.w0:span.w0 + span.w_count] += 1
        if span.n_rows > 1:
            assert span.w_count == out_w
    assert (covered == 1).all()


@pytest.mark.parametrize("direction", ["forward", "backward_data", "backward_weight"])
def test_im2col_tiling_is_exact_with_a_tiny_workspace(direction):
    """A 1 MiB workspace forces row tiles, column chunks and multi-image tiles."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 64, 5, 700))
    w = rng.standard_normal((32, 32, 3, 3))
    kwargs = dict(stride=(1, 2), padding=((1, 2), (1, 0)), groups=2)
    pads = ((1, 2), (1, 0))
    y_ref = reference.conv(x, w, None, (1, 2), pads, (1, 1), 2)
    with config.override(CONVFLOW_WORKSPACE_MB=1):
        if direction == "forward":
            assert_close(convflow.conv2d(x, w, algorithm="im2col_gemm", **kwargs), y_ref, "float64")
        else:
            dy = rng.standard_normal(y_ref.shape)
            expected = reference.conv_backward(dy, x, w, (1, 2), pads, (1, 1), 2)
            mask = (direction == "backward_data", direction == "backward_weight", False)
            grads = convflow.conv_backward(dy, x, w, algorithm="im2col_gemm", output_mask=mask, **kwargs)
            index = 0 if direction == "backward_data" else 1
            assert_close(grads[index], expected[index], "float64")


def test_im2col_scratch_stays_within_the_workspace_limit():
    """Untiled, this layer's im2col matrix would need 288 MiB; the limit is 4 MiB."""
    x = np.ones((4, 128, 64, 64), dtype=np.float32)
    w = np.ones((64, 128, 3, 3), dtype=np.float32)
    output_bytes = 4 * 64 * 64 * 64 * 4
    with config.override(CONVFLOW_WORKSPACE_MB=4):
        # Compile every kernel the call runs outside the measurement (numba's compiler
        # allocates hundreds of MiB of Python objects).
        convflow.conv2d(x, w, padding=1, algorithm="im2col_gemm")
        tracemalloc.start()
        y = convflow.conv2d(x, w, padding=1, algorithm="im2col_gemm")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert y[0, 0, 10, 10] == 128 * 9
    scratch = peak - output_bytes
    assert scratch <= 4 * 2**20 + 256 * 1024, f"scratch {scratch / 2**20:.1f} MiB"


# Tiles of output rows (first global row, rows) of small problems; the first six are as wide
# as the input at unit stride (im2col's and col2im's run-per-image paths).
IM2COL_TILES = [
    ((2, 3, 1, 7, 7), (1, 3, 3), (1, 1, 1), (0, 1, 1), (1, 1, 1), (0, 14)),     # whole images
    ((2, 3, 1, 7, 7), (1, 3, 3), (1, 1, 1), (0, 1, 1), (1, 1, 1), (3, 9)),      # mid-image
    ((1, 2, 1, 9, 6), (1, 5, 5), (1, 1, 1), (0, 2, 2), (1, 1, 1), (1, 7)),      # 5x5, 'same'
    ((1, 2, 1, 8, 8), (1, 3, 3), (1, 1, 1), (0, 2, 2), (1, 2, 2), (0, 8)),      # dilated
    ((1, 2, 1, 6, 5), (1, 3, 5), (1, 1, 1), (0, 4, 2), (1, 1, 1), (0, 10)),     # padding > taps
    ((2, 2, 4, 5, 5), (3, 3, 3), (2, 1, 1), (1, 1, 1), (1, 1, 1), (4, 11)),     # 3-D, depth stride
    ((1, 2, 1, 6, 6), (1, 3, 3), (1, 2, 1), (0, 1, 1), (1, 1, 1), (0, 3)),      # row stride: per row
]


def _output_size(x_shape, kernel, stride, pad_low, dilation):
    return tuple((n + 2 * p - (k - 1) * d - 1) // s + 1 for n, p, k, d, s in
                 zip(x_shape[2:], pad_low, kernel, dilation, stride))


def _im2col_reference(x, kernel, stride, pad_low, dilation, out, row0, n_rows):
    """im2col's matrix for output rows ``row0 .. row0 + n_rows`` (a row is one (n, od, oh)),
    from an explicitly zero-padded float64 copy of ``x``."""
    (kd_, kh_, kw_), (sd, sh, sw), (dd, dh, dw) = kernel, stride, dilation
    out_d, out_h, out_w = out
    high = [max(0, (o - 1) * s + (k - 1) * d + 1 - p - n)
            for o, s, k, d, p, n in zip(out, stride, kernel, dilation, pad_low, x.shape[2:])]
    padded = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(max(p, 0), h) for p, h in
                                                              zip(pad_low, high)])
    crop = [max(-p, 0) for p in pad_low]
    padded = padded[:, :, crop[0]:, crop[1]:, crop[2]:]
    rows = []
    for c in range(x.shape[1]):
        for a in range(kd_):
            for b in range(kh_):
                for e in range(kw_):
                    values = []
                    for g in range(row0, row0 + n_rows):
                        n, rest = divmod(g, out_d * out_h)
                        od, oh = divmod(rest, out_h)
                        values.append(padded[n, c, od * sd + a * dd, oh * sh + b * dh,
                                             e * dw:e * dw + (out_w - 1) * sw + 1:sw])
                    rows.append(np.concatenate(values))
    return np.array(rows)


@pytest.mark.parametrize("x_shape, kernel, stride, pad_low, dilation, rows", IM2COL_TILES)
def test_im2col_matches_an_explicitly_padded_reference(x_shape, kernel, stride, pad_low, dilation,
                                                       rows):
    """im2col's copies, including the run-per-image path of tiles whose rows are as wide as
    the input at unit stride (the first six cases), on tiles that start and end mid-image."""
    from convflow.backends.numba import kernels

    rng = np.random.default_rng(12)
    x = rng.standard_normal(x_shape).astype(np.float32)
    out = _output_size(x_shape, kernel, stride, pad_low, dilation)
    row0, n_rows = rows
    col = np.full((x_shape[1] * int(np.prod(kernel)), n_rows * out[2]), np.nan, np.float32)
    kernels.im2col(x, 0, col, row0, n_rows, 0, out[2], out[0], out[1], *kernel, *stride,
                   *pad_low, *dilation)
    expected = _im2col_reference(x, kernel, stride, pad_low, dilation, out, row0, n_rows)
    np.testing.assert_array_equal(col, expected.astype(np.float32))


@pytest.mark.parametrize("x_shape, kernel, stride, pad_low, dilation, rows", IM2COL_TILES)
def test_col2im_and_the_output_copies_are_im2col_s_adjoint_and_inverse(x_shape, kernel, stride,
                                                                       pad_low, dilation, rows):
    """col2im adds each column entry where im2col read it from (padding entries nowhere);
    output_to_rows and rows_to_output copy a tile of output rows out of y and back."""
    from convflow.backends.numba import kernels

    rng = np.random.default_rng(13)
    out = _output_size(x_shape, kernel, stride, pad_low, dilation)
    row0, n_rows = rows
    # Where im2col reads each entry from: x holds 1 + its flat index, padding reads 0.
    source = _im2col_reference(np.arange(1, np.prod(x_shape) + 1, dtype=np.float64)
                               .reshape(x_shape), kernel, stride, pad_low, dilation, out, row0,
                               n_rows).astype(np.int64)
    col = rng.standard_normal(source.shape)
    expected = np.bincount(source[source > 0] - 1, weights=col[source > 0],
                           minlength=int(np.prod(x_shape))).reshape(x_shape)
    dx = np.zeros(x_shape)
    kernels.col2im(col.copy(), dx, 0, row0, n_rows, 0, out[2], out[0], out[1], *kernel,
                   *stride, *pad_low, *dilation)
    np.testing.assert_allclose(dx, expected, rtol=1e-12, atol=1e-12)

    y = rng.standard_normal((x_shape[0], 5, *out))
    tile = np.empty((3, n_rows * out[2]))
    kernels.output_to_rows(y, tile, 2, row0, n_rows, 0, out[2], out[0], out[1])
    flat_rows = y[:, 2:5].transpose(1, 0, 2, 3, 4).reshape(3, -1, out[2])
    np.testing.assert_array_equal(tile, flat_rows[:, row0:row0 + n_rows].reshape(3, -1))
    back = np.zeros_like(y)
    kernels.rows_to_output(tile, back, 2, row0, n_rows, 0, out[2], out[0], out[1])
    mask = np.zeros(y.shape, dtype=bool)
    for g in range(row0, row0 + n_rows):
        n, rest = divmod(g, out[0] * out[1])
        mask[n, 2:5, rest // out[1], rest % out[1]] = True
    np.testing.assert_array_equal(back[mask], y[mask])
    assert not back[~mask].any()


@pytest.mark.parametrize("algorithm", ["direct", "im2col_gemm", "depthwise", "gemm_1x1"])
def test_results_do_not_depend_on_the_thread_count(algorithm):
    rng = np.random.default_rng(2)
    groups = 8 if algorithm == "depthwise" else 1
    k = 1 if algorithm == "gemm_1x1" else 3
    x = rng.standard_normal((2, 8, 33, 17)).astype(np.float32)
    w = rng.standard_normal((16, 8 // groups, k, k)).astype(np.float32)
    padding = 0 if algorithm == "gemm_1x1" else 1
    results = []
    for threads in (1, 2):
        with config.override(CONVFLOW_NUM_THREADS=threads):
            y = convflow.conv2d(x, w, padding=padding, groups=groups, algorithm=algorithm)
            grads = convflow.conv_backward(np.ones_like(y), x, w, padding=padding, groups=groups,
                                           algorithm=algorithm)
            results.append((y, *grads))
    for first, second in zip(*results):
        np.testing.assert_array_equal(first, second)


def test_concurrent_calls_from_threads_match_serial_calls():
    rng = np.random.default_rng(4)
    problems = []
    for i in range(8):
        c = 4 + 4 * (i % 3)
        x = rng.standard_normal((2, c, 20 + i, 18)).astype(np.float32)
        w = rng.standard_normal((8, c // (1 + i % 2), 3, 1 + i % 3)).astype(np.float32)
        problems.append((x, w, dict(padding=1, groups=1 + i % 2)))
    serial = [convflow.conv2d(x, w, **kw) for x, w, kw in problems]
    results: dict[int, np.ndarray] = {}

    def work(index):
        for _ in range(5):
            x, w, kw = problems[index]
            results[index] = convflow.conv2d(x, w, **kw)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(problems))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(not t.is_alive() for t in threads)
    for index, expected in enumerate(serial):
        np.testing.assert_array_equal(results[index], expected)


def test_status_reports_the_threading_layer():
    status = convflow.available_backends()["numba"]
    assert status.available
    assert status.details["threading_layer"] in ("tbb", "omp", "workqueue")
    assert int(status.details["threads"]) >= 1
    if status.details["threading_layer"] == "workqueue":
        assert status.details["serialized_launches"] == "True"


@pytest.mark.parametrize("shape, groups, stride, padding, dilation", [
    ((2, 40, 7, 9), 40, 1, 1, 1),            # channels-last depthwise (many channels, small)
    ((1, 200, 6, 5), 200, 2, ((0, 2), (1, 0)), (1, 2)),
    ((2, 160, 8, 7), 160, 1, 1, 1),          # two channel blocks of channels-last
    ((2, 33, 15, 16), 33, 1, 1, 1),          # per-plane: 15x16 outputs
    ((2, 8, 40, 36), 8, (2, 1), 2, 2),       # per-plane depthwise (large planes)
    ((3, 7, 21, 19), 7, 1, 1, 1),            # 21 planes over the pool's jobs: uneven runs
])
def test_depthwise_forward_paths(shape, groups, stride, padding, dilation):
    from convflow.backends.numba.algorithms import (
        DEPTHWISE_CHANNELS_LAST_MAX_POSITIONS,
        DEPTHWISE_CHANNELS_LAST_MIN_CHANNELS,
        depthwise_channels_last_applies,
    )

    rng = np.random.default_rng(8)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((shape[1], 1, 3, 3))
    pads = padding if isinstance(padding, tuple) else ((padding, padding),) * 2
    stride2 = stride if isinstance(stride, tuple) else (stride, stride)
    dil2 = (dilation, dilation) if isinstance(dilation, int) else dilation
    y = convflow.conv2d(x, w, None, stride2, pads, dil2, groups, algorithm="depthwise")
    assert_close(y, reference.conv(x, w, None, stride2, pads, dil2, groups), "float64")
    lifted = lambda s: (s[0], s[1], 1, *s[2:])  # noqa: E731
    expected_channels_last = (shape[1] >= DEPTHWISE_CHANNELS_LAST_MIN_CHANNELS and
                              y.shape[2] * y.shape[3] <= DEPTHWISE_CHANNELS_LAST_MAX_POSITIONS)
    assert depthwise_channels_last_applies(lifted(x.shape), lifted(w.shape), lifted(y.shape)) \
        == expected_channels_last


@pytest.mark.parametrize("workspace_mb, batch", [(1, 5), (64, 5), (64, 1)])
def test_packed_direct_large_problems_and_image_tiles(workspace_mb, batch):
    """Problems big enough for the parallel kernels; a 1 MiB workspace packs few images at once."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((batch, 24, 31, 45)).astype(np.float32)
    w = rng.standard_normal((20, 24, 3, 5)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    kwargs = dict(stride=(1, 2), padding=((2, 1), (0, 3)), dilation=(2, 1))
    with config.override(CONVFLOW_WORKSPACE_MB=workspace_mb):
        y = convflow.conv2d(x, w, b, algorithm="packed_direct", **kwargs)
    expected = reference.conv(x, w, b, (1, 2), ((2, 1), (0, 3)), (2, 1), 1)
    assert_close(y, expected, "float32")


@pytest.mark.parametrize("channels, kernel", [(4, (3, 3)), (5, (3, 3)), (3, (5, 5)), (7, (2, 2))])
def test_packed_direct_whole_chunks_of_six_pairs_and_the_rest(channels, kernel):
    """Whole chunks run six pairs per pass (a trip count known when compiled), the chunk's
    last run and an odd step three, the last pairs one at a time: 36, 45, 75 and 28 pairs
    over several chunks of 768 positions and a shorter last one."""
    from convflow.backends.numba import kernels

    rng = np.random.default_rng(14)
    x = rng.standard_normal((3, channels, 40, 37)).astype(np.float32)
    w = rng.standard_normal((9, channels, *kernel)).astype(np.float32)
    b = rng.standard_normal(9).astype(np.float32)
    assert 3 * 40 * 37 > 2 * kernels.PACKED_CHUNK
    kwargs = dict(padding=1, activation="relu", algorithm="packed_direct")
    expected = reference.activate(reference.conv(x, w, b, padding=((1, 1), (1, 1))), "relu")
    assert_close(convflow.conv2d(x, w, b, **kwargs), expected, "float32")
    x[1, 0, 20, 20] = np.inf   # inside a whole chunk: the six-pair sums keep IEEE semantics
    y = convflow.conv2d(x, w, b, **kwargs)
    direct = convflow.conv2d(x, w, b, **{**kwargs, "algorithm": "direct"})
    np.testing.assert_array_equal(np.isnan(y), np.isnan(direct))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(direct))
    assert np.isinf(y).any()


@pytest.mark.parametrize("shape, padding, dilation, groups", [
    ((2, 12, 11, 10, 8, 3, 3), 1, 1, 1),
    ((3, 8, 9, 9, 12, 3, 3), 0, 1, 2),
    ((1, 6, 14, 12, 10, 5, 3), ((2, 1), (0, 2)), 1, 1),
    ((2, 5, 13, 13, 7, 3, 3), 2, 2, 1),
])
def test_packed_direct_data_gradient_as_the_flipped_forward_pass(shape, padding, dilation,
                                                                  groups):
    n, c, h, w_, k, kh, kw = shape
    rng = np.random.default_rng(15)
    x = rng.standard_normal((n, c, h, w_))
    w = rng.standard_normal((k, c // groups, kh, kw))
    pads = ((padding, padding),) * 2 if isinstance(padding, int) else padding
    dy = rng.standard_normal(reference.conv(x, w, padding=pads, dilation=(dilation,) * 2,
                                            groups=groups).shape)
    kwargs = dict(padding=padding, dilation=dilation, groups=groups,
                  output_mask=(True, False, False))
    dx, _, _ = convflow.conv_backward(dy, x, w, algorithm="packed_direct", **kwargs)
    expected = reference.conv_backward(dy, x, w, padding=pads, dilation=(dilation,) * 2,
                                       groups=groups)[0]
    assert_close(dx, expected, "float64")
    w[0, 0, 0, 0] = np.inf     # the flipped forward pass would multiply padding zeros by it
    dx, _, _ = convflow.conv_backward(dy, x, w, algorithm="packed_direct", **kwargs)
    direct, _, _ = convflow.conv_backward(dy, x, w, algorithm="direct", **kwargs)
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(direct))
    np.testing.assert_array_equal(np.isinf(dx), np.isinf(direct))


def test_packed_direct_data_gradient_needs_stride_1_and_no_cropping():
    x = np.zeros((1, 4, 8, 8), np.float32)
    w = np.zeros((4, 4, 3, 3), np.float32)
    for kwargs, dy_shape in ((dict(stride=2, padding=1), (1, 4, 4, 4)),
                             (dict(padding=3), (1, 4, 12, 12))):
        with pytest.raises(ParameterError, match=r"packed_direct.*needs stride 1 and padding "
                                                 r"<= dilation \* \(kernel - 1\)"):
            convflow.conv_backward(np.zeros(dy_shape, np.float32), x, w,
                                   output_mask=(True, False, False), algorithm="packed_direct",
                                   **kwargs)


def test_packed_direct_reads_unpadded_1x1_inputs_in_place():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, 70, 13, 11)).astype(np.float32)
    w = rng.standard_normal((10, 35, 1, 1)).astype(np.float32)
    y = convflow.conv2d(x, w, groups=2, algorithm="packed_direct")
    assert_close(y, reference.conv(x, w, groups=2), "float32")


def test_packed_direct_keeps_inf_where_padding_pairs_would_make_nan():
    x = np.ones((1, 1, 8, 8), dtype=np.float32)   # 1 channel x 4 taps = 4 pairs: 3 + 1
    x[0, 0, 5, 5] = np.inf
    w = np.ones((4, 1, 2, 2), dtype=np.float32)
    y = convflow.conv2d(x, w, algorithm="packed_direct")
    assert np.isposinf(y[0, :, 4:6, 4:6]).all()
    assert np.isfinite(y[0, :, :4, :4]).all() and not np.isnan(y).any()


def _depthwise_operands(seed, shape, multiplier, stride, padding, dilation):
    """float32 x, w, dy of a depthwise 3x3 pass and its keyword arguments."""
    rng = np.random.default_rng(seed)
    channels = shape[1]
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((channels * multiplier, 1, 3, 3)).astype(np.float32)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=channels)
    y = reference.conv(x, w, None, stride, padding, dilation, channels)
    return x, w, rng.standard_normal(y.shape).astype(np.float32), kwargs


@pytest.mark.parametrize("shape, multiplier, stride, padding, dilation", [
    ((8, 12, 7, 7), 1, (1, 1), ((1, 1), (1, 1)), (1, 1)),      # small maps, whole batch per dot
    ((3, 5, 14, 13), 2, (2, 2), ((1, 1), (1, 1)), (1, 1)),     # stride phases, multiplier 2
    ((2, 4, 17, 19), 1, (2, 3), ((2, 0), (1, 3)), (2, 1)),     # asymmetric, dilated, strided
    ((2, 6, 12, 12), 1, (1, 1), ((0, 2), (2, 0)), (2, 2)),     # one-sided padding, dilated
])
def test_depthwise_weight_gradient_batched(shape, multiplier, stride, padding, dilation):
    """The weight gradient with the batch in one packed run, against the float64 reference;
    a channel holding Inf goes image by image, its neighbours stay batched."""
    x, w, dy, kwargs = _depthwise_operands(21, shape, multiplier, stride, padding, dilation)
    channels = shape[1]
    _, expected, _ = reference.conv_backward(dy, x, w, stride, padding, dilation, channels)
    _, dw, _ = convflow.conv_backward(dy, x, w, output_mask=(False, True, False),
                                      algorithm="depthwise", **kwargs)
    assert_close(dw, expected, "float32")
    x[1, 2, 3, 3] = np.inf
    _, expected, _ = reference.conv_backward(dy, x, w, stride, padding, dilation, channels)
    _, dw, _ = convflow.conv_backward(dy, x, w, output_mask=(False, True, False),
                                      algorithm="depthwise", **kwargs)
    np.testing.assert_array_equal(np.isfinite(dw), np.isfinite(expected))
    finite = np.isfinite(expected)
    assert_close(np.where(finite, dw, 0), np.where(finite, expected, 0), "float32")


@pytest.mark.parametrize("padding, dilation", [(((1, 1), (1, 1)), (1, 1)),
                                               (((2, 2), (0, 4)), (2, 2))])
@pytest.mark.parametrize("where", ["x interior", "x left column", "x right column",
                                   "dy top row", "dy left column"])
def test_depthwise_weight_gradient_reading_planes_as_they_lie_keeps_ieee_values(padding, dilation,
                                                                               where):
    """The same-size 3x3 weight gradient (no copy of the input, the columns its shifts wrap
    zeroed in a copy of dy) gives the reference's NaN and Inf: an Inf in a wrapped column
    of x meets only those zeros, and a NaN in dy's border meets the padding (0 * NaN)."""
    from ieee_cases import assert_ieee_equal

    x, w, dy, kwargs = _depthwise_operands(23, (3, 5, 9, 10), 1, (1, 1), padding, dilation)
    assert dy.shape == x.shape
    places = {"x interior": (x, (1, 2, 4, 5), np.inf), "x left column": (x, (2, 3, 6, 0), np.inf),
              "x right column": (x, (0, 1, 2, 9), -np.inf),
              "dy top row": (dy, (1, 4, 0, 3), np.nan), "dy left column": (dy, (2, 0, 5, 0), np.inf)}
    array, index, value = places[where]
    array[index] = value
    _, expected, _ = reference.conv_backward(dy, x, w, (1, 1), padding, dilation, 5)
    _, dw, _ = convflow.conv_backward(dy, x, w, output_mask=(False, True, False),
                                      algorithm="depthwise", **kwargs)
    assert_ieee_equal(dw, expected, where)


@pytest.mark.parametrize("shape, stride, padding, dilation, layout", [
    ((3, 40, 7, 7), (1, 1), ((1, 1), (1, 1)), (1, 1), "NCHW"),     # 7x7: both gradients
    ((2, 130, 14, 13), (2, 2), ((1, 1), (1, 1)), (1, 1), "NCHW"),  # two channel blocks, strided
    ((2, 33, 12, 11), (2, 3), ((2, 0), (1, 3)), (2, 1), "NCHW"),   # asymmetric, dilated
    ((2, 48, 9, 9), (1, 1), ((0, 2), (2, 0)), (1, 2), "NHWC"),     # channels-last data
])
def test_depthwise_gradients_with_channels_in_lanes(shape, stride, padding, dilation, layout):
    """Small maps with many channels: both gradients vectorized over channels, against the
    float64 reference, Inf in x (weight gradient) and in w (data gradient) included."""
    from convflow.backends.numba.algorithms import CHANNELS_IN_LANES

    x, w, dy, kwargs = _depthwise_operands(24, shape, 1, stride, padding, dilation)
    channels = shape[1]
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        dy = np.ascontiguousarray(dy.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    for direction, mask, index in (("backward_data", (True, False, False), 0),
                                   ("backward_weight", (False, True, False), 1)):
        decision = convflow.explain(x, w, direction=direction, algorithm="depthwise", **kwargs)
        assert decision.variant == CHANNELS_IN_LANES
        for poisoned in (False, True):
            xs, ws = x.copy(), w.copy()
            if poisoned and index == 1:   # an input that output (1, 1) reads at its center tap
                xs[1, 2, stride[0] - padding[0][0] + dilation[0],
                   stride[1] - padding[1][0] + dilation[1]] = np.inf
            elif poisoned:
                ws[5, 0, 1, 2] = -np.inf
            want = reference.conv_backward(dy, xs, ws, stride, padding, dilation, channels)[index]
            got = convflow.conv_backward(dy, xs, ws, output_mask=mask, algorithm="depthwise",
                                         **kwargs)[index]
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
            finite = np.isfinite(want)
            assert poisoned == (not finite.all())
            assert_close(np.where(finite, got, 0), np.where(finite, want, 0), "float32")


def test_depthwise_gradient_kernels_follow_the_map_size():
    """The channels-in-lanes strided data gradient takes 14x14 dy, the weight gradient and the
    unit-stride data gradient (whose flipped forward kernel is faster at 14x14) 7x7; larger
    maps keep the per-plane kernels."""
    from convflow.backends.numba.algorithms import (
        BATCH_PACKED,
        CHANNELS_IN_LANES,
        FLIPPED_FORWARD,
        SCATTER,
    )

    def variant(shape, stride, direction):
        x = np.ones(shape, np.float32)
        w = np.ones((shape[1], 1, 3, 3), np.float32)
        return convflow.explain(x, w, stride=stride, padding=1, groups=shape[1],
                                direction=direction).variant

    assert variant((8, 960, 7, 7), 1, "backward_weight") == CHANNELS_IN_LANES
    assert variant((8, 576, 14, 14), 2, "backward_weight") == CHANNELS_IN_LANES   # 7x7 dy
    assert variant((8, 576, 14, 14), 1, "backward_weight") == BATCH_PACKED
    assert variant((8, 192, 28, 28), 1, "backward_weight") == BATCH_PACKED
    assert variant((8, 192, 28, 28), 2, "backward_data") == CHANNELS_IN_LANES
    assert variant((8, 144, 56, 56), 2, "backward_data") == SCATTER
    assert variant((8, 960, 7, 7), 1, "backward_data") == CHANNELS_IN_LANES
    assert variant((8, 576, 14, 14), 1, "backward_data").startswith(FLIPPED_FORWARD)
    assert variant((8, 16, 7, 7), 1, "backward_weight") == BATCH_PACKED   # few channels


@pytest.mark.parametrize("padding, flipped", [(((1, 1), (1, 1)), True), (((2, 2), (0, 2)), True),
                                              (((0, 3), (1, 0)), False), (((3, 1), (0, 0)), False)])
def test_depthwise_data_gradient_runs_what_explain_names(padding, flipped):
    """The flipped forward kernel takes the unit-stride data gradient only while no padding
    reaches past ``dilation * (kernel - 1)`` on either side; explain() says which runs."""
    from convflow.backends.numba.algorithms import FLIPPED_FORWARD, SCATTER

    x, w, dy, kwargs = _depthwise_operands(25, (2, 8, 12, 11), 1, (1, 1), padding, (1, 1))
    decision = convflow.explain(x, w, direction="backward_data", algorithm="depthwise", **kwargs)
    assert decision.variant.startswith(FLIPPED_FORWARD) == flipped
    assert flipped or decision.variant == SCATTER
    dx = convflow.conv_backward(dy, x, w, output_mask=(True, False, False), algorithm="depthwise",
                                **kwargs)[0]
    want = reference.conv_backward(dy, x, w, (1, 1), padding, (1, 1), 8)[0]
    assert_close(dx, want, "float32")


@pytest.mark.parametrize("batch, groups, dtype", [(1, 1, "float32"), (5, 1, "float32"),
                                                  (4, 2, "float32"), (3, 1, "float64")])
def test_pointwise_on_single_pixels(batch, groups, dtype):
    """1x1 convolutions of 1x1 maps (classifier heads, squeeze-and-excitation): one product
    over the batch, or a matrix-vector product for one image, in every pass."""
    rng = np.random.default_rng(22)
    x = rng.standard_normal((batch, 48, 1, 1)).astype(dtype)
    w = rng.standard_normal((40, 48 // groups, 1, 1)).astype(dtype)
    dy = rng.standard_normal((batch, 40, 1, 1)).astype(dtype)
    from convflow.backends.numba.algorithms import IN_PLACE_GEMM, ONE_PIXEL_GEMM

    for direction in ("forward", "backward_data", "backward_weight"):
        decision = convflow.explain(x, w, groups=groups, direction=direction)
        assert (decision.algorithm, decision.variant) == (
            "gemm_1x1", ONE_PIXEL_GEMM if batch > 1 else IN_PLACE_GEMM)
    y = convflow.conv2d(x, w, groups=groups, algorithm="gemm_1x1")
    assert_close(y, reference.conv(x, w, None, None, None, None, groups), dtype)
    dx, dw, _ = convflow.conv_backward(dy, x, w, groups=groups, algorithm="gemm_1x1",
                                       output_mask=(True, True, False))
    want_dx, want_dw, _ = reference.conv_backward(dy, x, w, groups=groups)
    assert_close(dx, want_dx, dtype)
    assert_close(dw, want_dw, dtype)


@pytest.mark.parametrize("shape, multiplier, stride, padding, dilation", [
    ((2, 5, 14, 13), 1, (2, 2), ((1, 1), (1, 1)), (1, 1)),
    ((3, 4, 17, 19), 2, (2, 3), ((2, 0), (1, 3)), (2, 1)),     # phases of 3 columns
    ((2, 3, 9, 11), 1, (3, 2), ((0, 2), (2, 2)), (1, 2)),      # padding past the reads
])
def test_depthwise_data_gradient_scatter(shape, multiplier, stride, padding, dilation):
    """The scatter kernel (strided passes, a channel multiplier, Inf weights), whose plane
    keeps its columns split by stride phase, against the float64 reference."""
    x, w, dy, kwargs = _depthwise_operands(23, shape, multiplier, stride, padding, dilation)
    channels = shape[1]
    for weights in (w, np.where(np.arange(w.size).reshape(w.shape) == 4, np.inf, w)):
        want, _, _ = reference.conv_backward(dy, x, weights, stride, padding, dilation, channels)
        dx, _, _ = convflow.conv_backward(dy, x, weights.astype(np.float32),
                                          output_mask=(True, False, False),
                                          algorithm="depthwise", **kwargs)
        np.testing.assert_array_equal(np.isnan(dx), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(dx), np.isinf(want))
        finite = np.isfinite(want)
        assert_close(np.where(finite, dx, 0), np.where(finite, want, 0), "float32")
