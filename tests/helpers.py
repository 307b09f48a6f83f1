"""Running one test case through convflow and through the reference."""

from __future__ import annotations

import zlib

import numpy as np

import convflow
from convflow.backends import get_backend

import reference
from cases import Case

CONV = {1: convflow.conv1d, 2: convflow.conv2d, 3: convflow.conv3d}
CONV_TRANSPOSE = {1: convflow.conv_transpose1d, 2: convflow.conv_transpose2d,
                  3: convflow.conv_transpose3d}


def rng_for(case: Case, salt: str = "") -> np.random.Generator:
    return np.random.default_rng(zlib.crc32((case.id + salt).encode()))


def runnable_algorithms(backend: str, decision: convflow.Decision) -> list[str]:
    """Every algorithm of *backend* able to run the decision's problem."""
    problem = decision.problem
    return [rule.name for rule in get_backend(backend).algorithm_rules()
            if problem.direction in rule.directions and rule.can_run(problem)[0]]


def forward_operands(case: Case, dtype: str, transposed: bool = False):
    rng = rng_for(case, dtype)
    x = rng.standard_normal((case.batch, case.in_channels, *case.spatial)).astype(dtype)
    w = rng.standard_normal(case.weight_shape(transposed)).astype(dtype)
    b = rng.standard_normal(case.out_channels).astype(dtype)
    return x, w, b


def conv_kwargs(case: Case) -> dict:
    return dict(stride=case.stride, padding=case.padding, dilation=case.dilation,
                groups=case.groups, padding_mode=case.padding_mode)


def transpose_kwargs(case: Case) -> dict:
    return dict(stride=case.stride, padding=case.padding, dilation=case.dilation,
                groups=case.groups, output_padding=case.output_padding)


def reference_forward(case: Case, x, w, b):
    return reference.conv(x, w, b, case.per_dim(case.stride), case.padding_pairs(),
                          case.per_dim(case.dilation), case.groups, case.padding_mode)


def reference_transposed(case: Case, x, w, b):
    return reference.conv_transpose(x, w, b, case.per_dim(case.stride), case.padding_pairs(),
                                    case.per_dim(case.output_padding), case.groups,
                                    case.per_dim(case.dilation))


def assert_matches_finite_differences(forward, x, w, grad_x, grad_w, g, eps=1e-6, tol=1e-4):
    """Check ``grad_x`` and ``grad_w`` of ``<forward(x, w), g>`` against forward differences,
    element by element (an independent check of a gradient's definition; tiny problems only)."""
    base = np.vdot(forward(x, w), g)
    for array, grad in ((x, grad_x), (w, grad_w)):
        for index in np.ndindex(array.shape):
            bumped = array.copy()
            bumped[index] += eps
            args = (bumped, w) if array is x else (x, bumped)
            numeric = (np.vdot(forward(*args), g) - base) / eps
            assert abs(numeric - grad[index]) < tol, (index, numeric, grad[index])


def run_in_threads(count: int, target) -> None:
    """Run ``target(i)`` for ``i < count`` on as many threads at once, and wait for them."""
    import threading

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
