"""Output-size and padding arithmetic: pure functions of integers, shared by every module.

For one spatial dimension with input size ``i``, kernel size ``k``, stride ``s``,
dilation ``d`` and padding ``(lo, hi)``:

* effective kernel size:   ``ke = d * (k - 1) + 1``
* convolution output size: ``o = floor((i + lo + hi - ke) / s) + 1``
* transposed output size:  ``o = (i - 1) * s - lo - hi + ke + output_padding``
* ``"same"`` padding:      ``o = ceil(i / s)``, total ``max((o - 1) * s + ke - i, 0)``,
  split with the odd unit on the high side (ONNX ``SAME_UPPER``, TensorFlow) or, for
  ``"same_lower"``, on the low side.
"""

from __future__ import annotations

from collections.abc import Sequence


def effective_kernel_size(kernel: int, dilation: int) -> int:
    """Extent of a dilated kernel: ``dilation * (kernel - 1) + 1``."""
    return dilation * (kernel - 1) + 1


def conv_output_size(size: int, kernel: int, stride: int, pad_low: int, pad_high: int,
                     dilation: int) -> int:
    """Output length of a convolution along one dimension (may be <= 0 for invalid input)."""
    span = size + pad_low + pad_high - effective_kernel_size(kernel, dilation)
    return span // stride + 1 if span >= 0 else 0


def transposed_output_size(size: int, kernel: int, stride: int, pad_low: int, pad_high: int,
                           dilation: int, output_padding: int) -> int:
    """Output length of a transposed convolution along one dimension."""
    return ((size - 1) * stride - pad_low - pad_high + effective_kernel_size(kernel, dilation)
            + output_padding)


def same_padding(size: int, kernel: int, stride: int, dilation: int,
                 extra_on_low: bool = False) -> tuple[int, int]:
    """``(low, high)`` padding giving an output of ``ceil(size / stride)`` elements."""
    out = -(-size // stride)
    total = max((out - 1) * stride + effective_kernel_size(kernel, dilation) - size, 0)
    small, large = total // 2, total - total // 2
    return (large, small) if extra_on_low else (small, large)


def conv_output_shape(spatial: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                      padding: Sequence[tuple[int, int]], dilation: Sequence[int]) -> tuple[int, ...]:
    """Spatial output shape of a convolution."""
    return tuple(
        conv_output_size(i, k, s, lo, hi, d)
        for i, k, s, (lo, hi), d in zip(spatial, kernel, stride, padding, dilation, strict=True)
    )


def transposed_output_shape(spatial: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                            padding: Sequence[tuple[int, int]], dilation: Sequence[int],
                            output_padding: Sequence[int]) -> tuple[int, ...]:
    """Spatial output shape of a transposed convolution."""
    return tuple(
        transposed_output_size(i, k, s, lo, hi, d, op)
        for i, k, s, (lo, hi), d, op in zip(spatial, kernel, stride, padding, dilation,
                                            output_padding, strict=True)
    )


def conv_flops(batch: int, out_channels: int, in_channels_per_group: int,
               kernel: Sequence[int], out_spatial: Sequence[int]) -> int:
    """Floating-point operations (a multiply and an add each) of a direct convolution."""
    taps = 1
    for k in kernel:
        taps *= k
    positions = 1
    for o in out_spatial:
        positions *= o
    return 2 * batch * out_channels * in_channels_per_group * taps * positions
