"""Convolution passes (ConvProblem) for the cupy backend's host tests, their operands, and
their values from the float64 reference, computed from each pass's definition."""

from __future__ import annotations

import zlib

import ml_dtypes  # noqa: F401  (registers the dtype name "bfloat16")
import numpy as np

import convflow
from convflow.params import ConvProblem, Direction

import reference
from cases import forward_cases, random_cases, transposed_cases
from helpers import conv_kwargs, transpose_kwargs


def all_passes() -> list[tuple[str, ConvProblem]]:
    """Every pass of the shared grids, as the numba backend's planning produces them."""
    found: dict[ConvProblem, str] = {}

    def add(name, decision):
        found.setdefault(decision.problem, name)

    for case in forward_cases() + random_cases(seed=21, count=20):
        x = np.zeros((case.batch, case.in_channels, *case.spatial))
        w = np.zeros(case.weight_shape())
        kwargs = conv_kwargs(case)
        directions = ["forward"]
        if case.padding_mode == "zeros":
            directions += ["backward_data", "backward_weight"]
        for direction in directions:
            add(f"{case.id}-{direction}",
                convflow.explain(x, w, backend="numba", direction=direction, **kwargs))
    for case in transposed_cases() + random_cases(seed=22, count=20, transposed=True):
        x = np.zeros((case.batch, case.in_channels, *case.spatial))
        w = np.zeros(case.weight_shape(transposed=True))
        for direction in ("forward", "backward_data", "backward_weight"):
            add(f"T{case.id}-{direction}",
                convflow.explain(x, w, transposed=True, backend="numba", direction=direction,
                                 **transpose_kwargs(case)))
    return [(name, problem) for problem, name in found.items()]


PROBLEMS = all_passes()


def pass_operands(problem: ConvProblem, dtype: str, seed: str):
    rng = np.random.default_rng(zlib.crc32(seed.encode()))
    shapes = {Direction.FORWARD: (problem.x_shape, problem.w_shape, problem.out_channels),
              Direction.BACKWARD_DATA: (problem.y_shape, problem.w_shape, problem.in_channels),
              Direction.BACKWARD_WEIGHT: (problem.x_shape, problem.y_shape, None)}
    a_shape, b_shape, bias_size = shapes[problem.direction]
    a = rng.standard_normal(a_shape).astype(dtype)
    b = rng.standard_normal(b_shape).astype(dtype)  # "bfloat16" is known once ml_dtypes is
    bias = None if bias_size is None else rng.standard_normal(bias_size).astype(dtype)
    return a, b, bias


def expected_pass(problem: ConvProblem, a, b, bias):
    """The pass computed from its definition with the float64 reference (forward and
    data-gradient passes end with the bias and ``problem.activation``)."""
    out = _expected_linear(problem, a, b, bias)
    if problem.direction == Direction.BACKWARD_WEIGHT or not problem.activation:
        return out
    return reference.activate(out, problem.activation)


def _expected_linear(problem: ConvProblem, a, b, bias):
    args = (problem.stride, problem.padding, problem.dilation, problem.groups)
    listed = (slice(None), slice(None), *(slice(0, s) for s in problem.y_spatial))
    full_y = reference.conv(np.zeros((1, *problem.x_shape[1:])), np.zeros(problem.w_shape),
                            None, *args).shape[2:]
    bias_shape = (1, -1) + (1,) * problem.ndim
    if problem.direction == Direction.FORWARD:
        out = reference.conv(a, b, None, *args)[listed]
    else:
        grad = np.zeros((problem.batch, problem.out_channels, *full_y))
        if problem.direction == Direction.BACKWARD_DATA:
            grad[listed] = a
            return (reference.conv_backward(grad, np.zeros(problem.x_shape), b, *args)[0]
                    + (0 if bias is None else bias.astype(np.float64).reshape(bias_shape)))
        grad[listed] = b
        return reference.conv_backward(grad, a, np.zeros(problem.w_shape), *args)[1]
    return out + (0 if bias is None else bias.astype(np.float64).reshape(bias_shape))
