"""Host-side validation of every call, before any kernel runs.

Pure functions of shapes, dtypes and :class:`~convflow.params.ConvParams`: this module
imports numpy, params, shapes and errors only, never a backend. Each failure raises a
:class:`~convflow.errors.ConvflowError` whose message names the argument, the value given,
what was expected and, where one exists, the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import shapes
from .errors import (
    ArgumentTypeError,
    DTypeError,
    ParameterError,
    ShapeError,
    WorkspaceTooLargeError,
)
from .params import SPATIAL_NAMES, ConvParams

SUPPORTED_DTYPES = ("float16", "bfloat16", "float32", "float64")

Shape = tuple[int, ...]


def _dims_text(ndim: int) -> str:
    return ", ".join(SPATIAL_NAMES[ndim])


def _fmt_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    raise AssertionError("unreachable")


# How each array library converts a dtype, for the advice in dtype errors (numpy's spelling
# for every library not listed).
_CONVERSIONS = {
    "torch": ("{name}.to(torch.float32)", "{name}.to({first}.dtype)"),
    "numpy": ("{name}.astype(numpy.float32)", "{name}.astype({first}.dtype)"),
}


def check_dtypes(op: str, dtypes: Sequence[tuple[str, np.dtype[Any] | None]],
                 library: str = "numpy") -> np.dtype[Any]:
    """All given dtypes supported and equal; return the common dtype. *library* is the
    top-level module of the caller's arrays (``"torch"``, ...), for the suggested fix."""
    to_float32, to_match = _CONVERSIONS.get(library, _CONVERSIONS["numpy"])
    present = [(name, dt) for name, dt in dtypes if dt is not None]
    for name, dt in present:
        if dt.name not in SUPPORTED_DTYPES:
            raise DTypeError(
                f"{op}: {name} has dtype {dt.name}, but convflow computes in "
                f"{', '.join(SUPPORTED_DTYPES)}; convert it first, e.g. "
                f"{to_float32.format(name=name)}"
            )
    # Byte order is how the numbers are stored, not which numbers they are: '>f4' and
    # '<f4' are both float32 (computed after a conversion to native order).
    present = [(name, dt.newbyteorder("=")) for name, dt in present]
    first_name, first = present[0]
    for name, dt in present[1:]:
        if dt != first:
            raise DTypeError(
                f"{op}: {first_name} has dtype {first.name} but {name} has dtype {dt.name}; "
                f"they must match: convert one of them, e.g. "
                f"{to_match.format(name=name, first=first_name)}"
            )
    return first


def check_operand_ranks(op: str, ndim: int, input_shape: Shape, weight_shape: Shape,
                        transposed: bool, allow_unbatched: bool = True) -> bool:
    """Check the ranks of input and weight; return True when the input is unbatched."""
    dims = _dims_text(ndim)
    weight_layout = ("(in_channels, out_channels/groups, " if transposed
                     else "(out_channels, in_channels/groups, ") + ", ".join(f"k{d}" for d in dims.split(", ")) + ")"
    if len(weight_shape) != ndim + 2:
        raise ShapeError(
            f"{op}: weight must be {ndim + 2}-D {weight_layout}, but got {len(weight_shape)}-D "
            f"weight of size {list(weight_shape)}"
        )
    batched = ndim + 2
    if len(input_shape) == batched:
        unbatched = False
    elif len(input_shape) == batched - 1 and allow_unbatched:
        unbatched = True
    else:
        expected = (f"{batched - 1}-D (C, {dims}) or {batched}-D (N, C, {dims})" if allow_unbatched
                    else f"{batched}-D (N, C, {dims})")
        raise ShapeError(
            f"{op}: expected input to be {expected}, but got {len(input_shape)}-D input of size "
            f"{list(input_shape)}"
        )
    spatial = input_shape[-ndim:]
    if any(s == 0 for s in spatial) or input_shape[-ndim - 1] == 0:
        raise ShapeError(
            f"{op}: input of size {list(input_shape)} has an empty channel or spatial dimension; "
            f"only the batch dimension may be 0"
        )
    if any(s == 0 for s in weight_shape):
        raise ShapeError(f"{op}: weight of size {list(weight_shape)} has an empty dimension; "
                         f"every dimension of the weight must be positive")
    return unbatched


def _check_bias(op: str, bias_shape: Shape | None, channels: int, what: str) -> None:
    if bias_shape is not None and tuple(bias_shape) != (channels,):
        raise ShapeError(
            f"{op}: bias must be 1-D of size {channels} (one value per {what}), but got bias of "
            f"size {list(bias_shape)}"
        )


def _check_padding_mode(op: str, params: ConvParams, spatial: Shape) -> None:
    if params.padding_mode not in ("reflect", "circular"):
        return
    for name, size, (lo, hi) in zip(SPATIAL_NAMES[params.ndim], spatial, params.padding):
        if params.padding_mode == "reflect" and max(lo, hi) >= size:
            raise ParameterError(
                f"{op}: padding_mode='reflect' needs each padding to be smaller than the input "
                f"along that dimension, but got padding {(lo, hi)} for dim {name} of size {size}; "
                f"use 'replicate' or a smaller padding"
            )
        if params.padding_mode == "circular" and max(lo, hi) > size:
            raise ParameterError(
                f"{op}: padding_mode='circular' needs each padding to be at most the input size "
                f"along that dimension, but got padding {(lo, hi)} for dim {name} of size {size}"
            )


def describe_input(shape: Shape, layout: str | None = None, unbatched: bool = False) -> str:
    """The input as the user passed it, for messages: ``input[8, 56, 56, 32] (layout NHWC)``,
    ``input[3, 9, 9] (unbatched)``."""
    notes = (["unbatched"] if unbatched else []) + ([f"layout {layout}"] if layout else [])
    return f"input{list(shape)}" + (f" ({', '.join(notes)})" if notes else "")


def check_forward(op: str, input_shape: Shape, weight_shape: Shape, bias_shape: Shape | None,
                  params: ConvParams, given_input: str | None = None) -> Shape:
    """Validate a (batched, channels-first) forward convolution; return the output shape.

    *given_input* describes the input as the user passed it (its own shape and layout, see
    :func:`describe_input`); by default, *input_shape*."""
    n, c = input_shape[0], input_shape[1]
    c_out, c_in_per_group = weight_shape[0], weight_shape[1]
    g = params.groups
    if c_out % g != 0:
        raise ShapeError(
            f"{op}: given groups={g}, expected weight's out_channels (dim 0 of weight of size "
            f"{list(weight_shape)}) to be divisible by groups, but got {c_out}"
        )
    if c != c_in_per_group * g:
        raise ShapeError(
            f"{op}: given groups={g} and weight of size {list(weight_shape)}, expected "
            f"{given_input or describe_input(input_shape)} to have {c_in_per_group * g} channels "
            f"(weight dim 1 x groups = {c_in_per_group} x {g}), but got {c} channels instead; "
            f"check groups or the weight's in_channels/groups dimension"
        )
    _check_bias(op, bias_shape, c_out, "output channel")
    spatial = input_shape[2:]
    kernel = weight_shape[2:]
    for name, size, k, d, (lo, hi) in zip(SPATIAL_NAMES[params.ndim], spatial, kernel,
                                          params.dilation, params.padding):
        extent = shapes.effective_kernel_size(k, d)
        if size + lo + hi < extent:
            raise ShapeError(
                f"{op}: the kernel does not fit in the padded input along dim {name}: the "
                f"kernel's extent is {extent} (dilation {d} x (kernel {k} - 1) + 1) but the "
                f"padded input is only {size + lo + hi} (input {size} + padding {lo} + {hi}); "
                f"use a smaller kernel or dilation, or more padding"
            )
    _check_padding_mode(op, params, spatial)
    out = shapes.conv_output_shape(spatial, kernel, params.stride, params.padding, params.dilation)
    return (n, c_out, *out)


def check_transposed(op: str, input_shape: Shape, weight_shape: Shape, bias_shape: Shape | None,
                     params: ConvParams, given_input: str | None = None) -> Shape:
    """Validate a (batched, channels-first) transposed convolution; return the output shape
    (*given_input* as for :func:`check_forward`)."""
    n, c = input_shape[0], input_shape[1]
    c_in, c_out_per_group = weight_shape[0], weight_shape[1]
    g = params.groups
    if c_in % g != 0:
        raise ShapeError(
            f"{op}: given groups={g}, expected weight's in_channels (dim 0 of weight of size "
            f"{list(weight_shape)}) to be divisible by groups, but got {c_in}"
        )
    if c != c_in:
        raise ShapeError(
            f"{op}: given transposed weight of size {list(weight_shape)} (in_channels, "
            f"out_channels/groups, *kernel), expected {given_input or describe_input(input_shape)} "
            f"to have {c_in} "
            f"channels, but got {c} channels instead"
        )
    _check_bias(op, bias_shape, c_out_per_group * g, "output channel")
    out = shapes.transposed_output_shape(input_shape[2:], weight_shape[2:], params.stride,
                                         params.padding, params.dilation, params.output_padding)
    for name, size, o, (lo, hi) in zip(SPATIAL_NAMES[params.ndim], input_shape[2:], out,
                                       params.padding):
        if o <= 0:
            raise ShapeError(
                f"{op}: the output would have size {o} along dim {name} (input {size}); the "
                f"cropping padding={(lo, hi)} removes the whole output; use less padding"
            )
    return (n, c_out_per_group * g, *out)


def check_output_mask(op: str, output_mask: Any) -> tuple[bool, bool, bool]:
    if (not isinstance(output_mask, (tuple, list)) or len(output_mask) != 3
            or not all(isinstance(m, (bool, np.bool_)) for m in output_mask)):
        raise ArgumentTypeError(
            f"{op}: output_mask must be a tuple of 3 bools (grad_input, grad_weight, grad_bias), "
            f"but got {output_mask!r}"
        )
    return (bool(output_mask[0]), bool(output_mask[1]), bool(output_mask[2]))


def check_grad_output(op: str, grad_output_shape: Shape, expected: Shape, input_shape: Shape,
                      weight_shape: Shape, params: ConvParams) -> None:
    if tuple(grad_output_shape) != tuple(expected):
        kind = "transposed convolution" if params.transposed else "convolution"
        raise ShapeError(
            f"{op}: grad_output has size {list(grad_output_shape)}, but the {kind} of "
            f"input{list(input_shape)} with weight{list(weight_shape)} ({params.describe()}) "
            f"produces an output of size {list(expected)}"
        )


def check_memory(op: str, device: str, needs: Sequence[tuple[str, int]], available: int) -> None:
    """Fail fast when the memory a call must allocate can never fit on the device."""
    total = sum(nbytes for _, nbytes in needs)
    if total > available:
        detail = ", ".join(f"{what} {_fmt_bytes(nbytes)}" for what, nbytes in needs if nbytes)
        raise WorkspaceTooLargeError(
            f"{op}: this call needs {_fmt_bytes(total)} on {device} ({detail}), but only "
            f"{_fmt_bytes(available)} is available; split the batch into smaller calls, or use "
            f"convflow.dask for data larger than memory"
        )
