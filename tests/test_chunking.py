"""The chunk arithmetic of convflow.dask (convflow/chunking.py), without dask: each output
chunk's plan, carried out with numpy slices and the in-memory convflow call, must give that
chunk of the whole array's result."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

import convflow
from convflow import chunking
from convflow.chunking import OutputChunk, Piece


def run_forward_plan(x, w, b, chunks, stride, padding, dilation, mode):
    """Each output chunk from its window alone (1-D)."""
    plan = chunking.plan_forward(chunks, w.shape[2], stride, dilation, padding, mode)
    return plan, [chunk_result(x, chunks, chunk, w, b, stride, dilation) for chunk in plan]


def window_of(x, chunks, chunk: OutputChunk):
    bounds = chunking.boundaries(chunks)
    parts = []
    for p in chunk.pieces:
        part = x[..., bounds[p.block] + p.start:bounds[p.block] + p.stop]
        parts.append(np.repeat(part[..., ::-1] if p.reverse else part, p.repeat, axis=2))
    return np.concatenate(parts, axis=2)


def chunk_result(x, chunks, chunk: OutputChunk, w, b, stride, dilation, transposed=False):
    if not chunk.reads_input:
        return np.broadcast_to(b.reshape(1, -1, 1), (x.shape[0], b.size, chunk.size))
    window = window_of(x, chunks, chunk)
    if transposed:
        return convflow.conv_transpose1d(window, w, b, stride, [chunk.padding],
                                         chunk.output_padding, 1, dilation)
    return convflow.conv1d(window, w, b, stride, [chunk.padding], dilation)


def random_chunks(rng: random.Random, size: int) -> tuple[int, ...]:
    cuts = sorted({rng.randint(1, size - 1) for _ in range(rng.randint(0, 4))} if size > 1 else ())
    edges = [0, *cuts, size]
    return tuple(b - a for a, b in itertools.pairwise(edges))


@pytest.mark.parametrize("seed", range(4))
def test_forward_plans_reproduce_the_whole_result(seed):
    rng = random.Random(seed)
    checked = 0
    while checked < 150:
        size, k = rng.randint(1, 14), rng.randint(1, 4)
        stride, dilation = rng.randint(1, 4), rng.randint(1, 3)
        mode = rng.choice(["zeros", "zeros", "reflect", "replicate", "circular"])
        padding = (rng.randint(0, 5), rng.randint(0, 5))
        x = np.random.default_rng(seed).standard_normal((2, 2, size))
        w = np.random.default_rng(seed + 1).standard_normal((3, 2, k))
        b = np.arange(3.0)
        try:
            whole = convflow.conv1d(x, w, b, stride, [padding], dilation, padding_mode=mode)
        except convflow.ConvflowError:
            continue
        chunks = random_chunks(rng, size)
        plan, parts = run_forward_plan(x, w, b, chunks, stride, padding, dilation, mode)
        assert [c.start for c in plan] == [0, *(c.stop for c in plan[:-1])]
        assert plan[-1].stop == whole.shape[2] and all(c.size > 0 for c in plan)
        np.testing.assert_allclose(np.concatenate(parts, axis=2), whole, rtol=1e-12, atol=1e-12,
                                   err_msg=f"{size=} {k=} {stride=} {dilation=} {padding=} "
                                           f"{mode=} {chunks=}")
        checked += 1


@pytest.mark.parametrize("seed", range(3))
def test_transposed_plans_reproduce_the_whole_result(seed):
    rng = random.Random(100 + seed)
    checked = 0
    while checked < 150:
        size, k = rng.randint(1, 12), rng.randint(1, 4)
        stride, dilation = rng.randint(1, 4), rng.randint(1, 3)
        crop = (rng.randint(0, 4), rng.randint(0, 4))
        output_padding = rng.randint(0, max(stride, dilation) - 1)
        x = np.random.default_rng(seed).standard_normal((2, 2, size))
        w = np.random.default_rng(seed + 1).standard_normal((2, 3, k))
        b = np.arange(3.0)
        try:
            whole = convflow.conv_transpose1d(x, w, b, stride, [crop], output_padding, 1, dilation)
        except convflow.ConvflowError:
            continue
        chunks = random_chunks(rng, size)
        plan = chunking.plan_transposed(chunks, k, stride, dilation, crop, output_padding)
        parts = [chunk_result(x, chunks, c, w, b, stride, dilation, transposed=True)
                 for c in plan]
        assert plan[-1].stop == whole.shape[2] and all(c.size > 0 for c in plan)
        np.testing.assert_allclose(np.concatenate(parts, axis=2), whole, rtol=1e-12, atol=1e-12,
                                   err_msg=f"{size=} {k=} {stride=} {dilation=} {crop=} "
                                           f"{output_padding=} {chunks=}")
        checked += 1


def test_halo_is_the_kernel_extent_and_output_chunks_follow_the_input():
    # 3-tap kernel, 'same' padding (1, 1): each chunk reads one neighbour position per side.
    plan = chunking.plan_forward((4, 4, 4), 3, 1, 1, (1, 1))
    assert [(c.start, c.stop) for c in plan] == [(0, 4), (4, 8), (8, 12)]
    assert plan[0].pieces == (Piece(0, 0, 4, True), Piece(1, 0, 1, False))
    assert plan[0].padding == (1, 0)
    assert plan[1].pieces == (Piece(0, 3, 4, False), Piece(1, 0, 4, True), Piece(2, 0, 1, False))
    assert plan[1].padding == (0, 0)
    assert plan[2].padding == (0, 1)


def test_chunks_smaller_than_the_halo_and_not_multiples_of_the_stride():
    # Chunks of 1 with a dilated 3-tap kernel (extent 5) and stride 2: each output reads
    # from five chunks; output chunks hold the outputs centred in each input chunk.
    plan = chunking.plan_forward((1,) * 9, 3, 2, 2, (2, 2))
    assert [c.size for c in plan] == [1] * 5
    assert [len(c.pieces) for c in plan] == [3, 5, 5, 5, 3]
    assert all(p.whole for c in plan for p in c.pieces)


def test_outputs_wholly_in_the_padding_read_no_input():
    # 1-tap kernel, stride 5, padding 4 on the low side: output 0 reads position -4 only.
    plan = chunking.plan_forward((1, 1, 1), 1, 5, 1, (4, 0))
    assert [(c.start, c.stop, c.reads_input) for c in plan] == [(0, 1, False), (1, 2, True)]
    # Outputs at padded positions 0 and 2 of a single input: the window spans the input.
    (only,) = chunking.plan_forward((1,), 1, 2, 1, (1, 1))
    assert (only.size, only.padding, only.reads_input) == (2, (1, 1), True)


def test_transposed_outputs_no_input_reaches():
    # Stride 4, 1-tap kernel, 2 cropped: full positions 2 and 3 lie between contributions.
    plan = chunking.plan_transposed((1, 1), 1, 4, 1, (2, 0), 0)
    assert [(c.start, c.stop, c.reads_input) for c in plan] == [(0, 2, False), (2, 3, True)]


def test_transposed_output_padding_beyond_every_contribution():
    # dilation 3 > stride 1: output_padding 2 adds outputs no input reaches; the chunk with
    # the last input computes them with a local output_padding.
    plan = chunking.plan_transposed((1, 1), 1, 1, 3, (0, 0), 2)
    assert [(c.start, c.stop, c.output_padding) for c in plan] == [(0, 1, 0), (1, 4, 2)]


def test_boundaries_and_pieces():
    assert chunking.boundaries((3, 4, 2)) == [0, 3, 7, 9]
    assert chunking.pieces((3, 4, 2), 2, 8) == (Piece(0, 2, 3, False), Piece(1, 0, 4, True),
                                                Piece(2, 0, 1, False))
    assert chunking.pieces((3, 4, 2), 2, 8, reverse=True) == (
        Piece(2, 0, 1, False, True), Piece(1, 0, 4, True, True), Piece(0, 2, 3, False, True))


@pytest.mark.parametrize("mode, expected", [
    ("reflect", [3, 2, 1, 0, 1, 2, 3, 4, 5, 6, 5, 4]),
    ("replicate", [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 6, 6]),
    ("circular", [4, 5, 6, 0, 1, 2, 3, 4, 5, 6, 0, 1]),
])
def test_padded_windows_read_the_padding_from_the_input(mode, expected):
    """Positions -3 .. 8 of positions 0 .. 6 chunked (2, 3, 2), padded with each mode, and
    the same positions in numpy.pad."""
    x = np.arange(7.0).reshape(1, 1, 7)
    chunk = OutputChunk(0, 12, chunking.padded_pieces((2, 3, 2), -3, 9, mode), (0, 0))
    assert window_of(x, (2, 3, 2), chunk).ravel().tolist() == expected
    numpy_mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode]
    assert np.pad(x.ravel(), 3, mode=numpy_mode)[:12].tolist() == expected
