"""The activations convflow can fuse into a convolution's write-back, on host arrays.

Backends with a fused epilogue apply the same functions inside their kernels; this module
is the host implementation (used where a backend has none) and the definition, evaluated in
IEEE arithmetic as PyTorch does: NaN stays NaN, ``relu(-inf) = 0``, ``silu(x) = x *
sigmoid(x)`` and ``gelu(x) = x * (1 + erf(x / sqrt(2))) / 2`` (the exact form), so
``silu(-inf)`` and ``gelu(-inf)`` are ``-inf * 0 = NaN``.
"""

from __future__ import annotations

import math

import numpy as np

ACTIVATION_CODES = {"": 0, "relu": 1, "relu6": 2, "silu": 3, "gelu": 4}


def apply_activation(y: np.ndarray, activation: str) -> np.ndarray:
    """Apply *activation* to *y* in place (floating arrays) and return it."""
    if not activation:
        return y
    if activation == "relu":
        np.copyto(y, 0, where=y < 0)
    elif activation == "relu6":
        np.copyto(y, 0, where=y < 0)
        np.copyto(y, 6, where=y > 6)
    elif activation == "silu":
        with np.errstate(over="ignore", invalid="ignore"):
            wide = y.astype(np.float64)
            y[...] = wide * (1 / (1 + np.exp(-wide)))
    elif activation == "gelu":
        erf = np.vectorize(math.erf, otypes=[np.float64])
        with np.errstate(invalid="ignore"):
            wide = y.astype(np.float64)
            y[...] = 0.5 * wide * (1 + erf(wide / math.sqrt(2)))
    else:
        raise ValueError(activation)
    return y
