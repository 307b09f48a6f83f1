"""Canonical convolution parameters and problems.

Every accepted spelling of an argument (an int, a tuple per dimension, ``(low, high)`` pairs,
``"same"``, ...) is normalized here, once, into the frozen :class:`ConvParams`; everything
downstream (checks, selector, backends) sees only that canonical form. :class:`ConvProblem`
describes one pass (forward, backward-data or backward-weight) of a plain convolution in
the geometry cuDNN uses: the convolution's input ``x``, weight ``w`` and output ``y``. A
transposed convolution is the backward-data pass of the convolution it transposes, so
backends implement three passes and nothing else.
"""

from __future__ import annotations

import enum
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import shapes
from .errors import ArgumentTypeError, ParameterError, did_you_mean

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
LAYOUTS = {1: ("NCW", "NWC"), 2: ("NCHW", "NHWC"), 3: ("NCDHW", "NDHWC")}
ACTIVATIONS = ("relu", "relu6", "silu", "gelu")
PADDING_STRINGS = ("valid", "same", "same_upper", "same_lower")
SPATIAL_NAMES = {1: ("W",), 2: ("H", "W"), 3: ("D", "H", "W")}


# The largest stride, padding, dilation, output_padding or groups accepted: kernels take
# geometry as 32-bit ints on every device (as cuDNN and MIOpen do), and anything larger
# describes an output no machine can hold.
MAX_GEOMETRY = 2**31 - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_at_most(op: str, name: str, value: Any, values: Sequence[int]) -> None:
    if any(v > MAX_GEOMETRY for v in values):
        raise ParameterError(f"{op}: {name} must be at most {MAX_GEOMETRY} (2**31 - 1) in every "
                             f"dimension, but got {value!r}")


def _as_sequence(value: Any) -> Sequence[Any] | None:
    if isinstance(value, (tuple, list)):
        return value
    if hasattr(value, "ndim") and hasattr(value, "tolist") and getattr(value, "ndim", None) == 1:
        return list(value.tolist())
    return None


def normalize_int_tuple(op: str, name: str, value: Any, ndim: int, minimum: int) -> tuple[int, ...]:
    """``value`` as a tuple of ``ndim`` ints, each ``>= minimum``; a ParameterError otherwise."""
    per_dim = f"an int or a tuple of {ndim} int{'s' if ndim > 1 else ''} (one per spatial dim)"
    if _is_int(value):
        values = (int(value),) * ndim
    else:
        seq = _as_sequence(value)
        if seq is None or not all(_is_int(v) for v in seq):
            raise ArgumentTypeError(f"{op}: {name} must be {per_dim}, but got {value!r}")
        if len(seq) == 1:  # as PyTorch: stride=(2,) means 2 in every dimension
            seq = list(seq) * ndim
        if len(seq) != ndim:
            raise ParameterError(
                f"{op}: {name} must be {per_dim}, but got {len(seq)} values {tuple(seq)!r}"
            )
        values = tuple(int(v) for v in seq)
    if any(v < minimum for v in values):
        bound = "positive" if minimum == 1 else f">= {minimum}"
        raise ParameterError(f"{op}: {name} must be {bound} in every dimension, but got {value!r}")
    _check_at_most(op, name, value, values)
    return values


def _normalize_explicit_padding(op: str, value: Any, ndim: int,
                                transposed: bool) -> tuple[tuple[int, int], ...]:
    what = "cropping of the output" if transposed else "padding"
    forms = (f"an int, a tuple of {ndim} int{'s' if ndim > 1 else ''}, or a tuple of {ndim} "
             f"(low, high) pair{'s' if ndim > 1 else ''}")
    if not transposed:
        forms += ", or one of 'valid', 'same', 'same_lower'"
    if _is_int(value):
        pairs = ((int(value), int(value)),) * ndim
    else:
        seq = _as_sequence(value)
        if seq is None:
            raise ArgumentTypeError(f"{op}: padding must be {forms}, but got {value!r}")
        if len(seq) == 1 and _is_int(seq[0]):  # as PyTorch: padding=(1,) pads every dimension
            seq = list(seq) * ndim
        if len(seq) != ndim:
            hint = ""
            if len(seq) == 2 * ndim and all(_is_int(v) for v in seq):
                hint = (f"; for asymmetric padding pass pairs, e.g. "
                        f"{tuple((seq[i], seq[i + ndim]) for i in range(ndim))!r} for the ONNX "
                        f"order (begins then ends)")
            raise ParameterError(
                f"{op}: padding must be {forms}, but got {len(seq)} values {tuple(seq)!r}{hint}"
            )
        result = []
        for item in seq:
            if _is_int(item):
                result.append((int(item), int(item)))
                continue
            pair = _as_sequence(item)
            if pair is None or len(pair) != 2 or not all(_is_int(v) for v in pair):
                raise ParameterError(
                    f"{op}: padding must be {forms}, but got {value!r} (entry {item!r} is "
                    f"neither an int nor a (low, high) pair of ints)"
                )
            result.append((int(pair[0]), int(pair[1])))
        pairs = tuple(result)
    if any(lo < 0 or hi < 0 for lo, hi in pairs):
        raise ParameterError(
            f"{op}: {what} must be non-negative in every dimension, but got {value!r}"
        )
    _check_at_most(op, "padding", value, [v for pair in pairs for v in pair])
    return pairs


def normalize_layout(op: str, ndim: int, layout: Any) -> bool:
    """Whether *layout* (``None`` = channels-first) puts the channels last."""
    if layout is None:
        return False
    first, last = LAYOUTS[ndim]
    if not isinstance(layout, str) or layout.upper() not in (first, last):
        raise (ParameterError if isinstance(layout, str) else ArgumentTypeError)(
            f"{op}: layout must be {first!r} (channels first, the default) or {last!r} "
            f"(channels last), but got {layout!r}"
            f"{did_you_mean(str(layout).upper(), (first, last)) if isinstance(layout, str) else ''}")
    return layout.upper() == last


def normalize_activation(op: str, activation: Any) -> str:
    """The activation's canonical name, ``""`` for none."""
    if activation is None:
        return ""
    if not isinstance(activation, str) or activation.lower() not in ACTIVATIONS:
        raise (ParameterError if isinstance(activation, str) else ArgumentTypeError)(
            f"{op}: activation must be one of {', '.join(map(repr, ACTIVATIONS))} or None, but got "
            f"{activation!r}{did_you_mean(str(activation), ACTIVATIONS) if isinstance(activation, str) else ''}")
    return activation.lower()


@dataclass(frozen=True)
class ConvParams:
    """The canonical, user-level parameters of one convolution call.

    ``padding`` holds resolved ``(low, high)`` pairs per spatial dimension (for a transposed
    convolution: how much is cropped from each end of the output). ``padding_request``
    remembers how it was asked for (``"explicit"``, ``"valid"``, ``"same"``, ``"same_lower"``).
    """

    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int = 1
    transposed: bool = False
    output_padding: tuple[int, ...] = ()
    padding_mode: str = "zeros"
    padding_request: str = "explicit"

    @classmethod
    def normalize(cls, op: str, ndim: int, *, stride: Any = 1, padding: Any = 0,
                  dilation: Any = 1, groups: Any = 1, transposed: bool = False,
                  output_padding: Any = 0, padding_mode: Any = "zeros",
                  input_spatial: Sequence[int] | None = None,
                  kernel_spatial: Sequence[int] | None = None) -> ConvParams:
        """Normalize every accepted form of the arguments; raise on malformed ones.

        ``input_spatial`` and ``kernel_spatial`` are needed only to resolve ``"same"``.
        """
        stride_t = normalize_int_tuple(op, "stride", stride, ndim, 1)
        dilation_t = normalize_int_tuple(op, "dilation", dilation, ndim, 1)
        if not _is_int(groups):
            raise ArgumentTypeError(f"{op}: groups must be a positive int, but got {groups!r}")
        if groups < 1:
            raise ParameterError(f"{op}: groups must be a positive int, but got {groups}")
        if groups > MAX_GEOMETRY:
            raise ParameterError(f"{op}: groups must be at most {MAX_GEOMETRY} (2**31 - 1), but "
                                 f"got {groups}")
        if not isinstance(padding_mode, str):
            raise ArgumentTypeError(
                f"{op}: padding_mode must be one of {', '.join(map(repr, PADDING_MODES))}, "
                f"but got {padding_mode!r}"
            )
        if padding_mode not in PADDING_MODES:
            raise ParameterError(
                f"{op}: padding_mode must be one of {', '.join(map(repr, PADDING_MODES))}, but "
                f"got {padding_mode!r}{did_you_mean(padding_mode, PADDING_MODES)}"
            )
        if transposed:
            if padding_mode != "zeros":
                raise ParameterError(
                    f"{op}: transposed convolutions only support padding_mode='zeros', but got "
                    f"{padding_mode!r}"
                )
            output_padding_t = normalize_int_tuple(op, "output_padding", output_padding, ndim, 0)
            if any(op_ >= max(s, d) for op_, s, d in zip(output_padding_t, stride_t, dilation_t)):
                raise ParameterError(
                    f"{op}: output_padding must be smaller than either stride or dilation in every "
                    f"dimension, but got output_padding={output_padding_t} with stride={stride_t} "
                    f"and dilation={dilation_t}"
                )
        else:
            output_padding_t = (0,) * ndim
            if not (_is_int(output_padding) and output_padding == 0) and normalize_int_tuple(
                    op, "output_padding", output_padding, ndim, 0) != output_padding_t:
                raise ParameterError(
                    f"{op}: output_padding applies only to transposed convolutions, but got "
                    f"output_padding={output_padding!r} with transposed=False; pass "
                    f"transposed=True or drop output_padding"
                )

        request = "explicit"
        if isinstance(padding, str):
            if transposed:
                raise ParameterError(
                    f"{op}: padding for a transposed convolution must be ints or (low, high) "
                    f"pairs that crop the output, but got {padding!r}; string padding applies "
                    f"to forward convolutions only"
                )
            request = padding.lower()
            if request not in PADDING_STRINGS:
                raise ParameterError(
                    f"{op}: padding must be an int, a tuple, (low, high) pairs, or one of "
                    f"'valid', 'same', 'same_lower', but got {padding!r}"
                    f"{did_you_mean(request, PADDING_STRINGS)}"
                )
            if request == "same_upper":
                request = "same"
            if request == "valid":
                pairs: tuple[tuple[int, int], ...] = ((0, 0),) * ndim
            else:
                if input_spatial is None or kernel_spatial is None:
                    raise ValueError("resolving 'same' padding needs input and kernel sizes")
                pairs = tuple(
                    shapes.same_padding(i, k, s, d, extra_on_low=request == "same_lower")
                    for i, k, s, d in zip(input_spatial, kernel_spatial, stride_t, dilation_t)
                )
        else:
            pairs = _normalize_explicit_padding(op, padding, ndim, transposed)
        return cls(stride_t, pairs, dilation_t, int(groups), bool(transposed), output_padding_t,
                   padding_mode, request)

    @property
    def ndim(self) -> int:
        return len(self.stride)

    @property
    def padding_low(self) -> tuple[int, ...]:
        return tuple(lo for lo, _ in self.padding)

    @property
    def padding_high(self) -> tuple[int, ...]:
        return tuple(hi for _, hi in self.padding)

    def is_strided(self) -> bool:
        return any(s != 1 for s in self.stride)

    def is_dilated(self) -> bool:
        return any(d != 1 for d in self.dilation)

    def is_padded(self) -> bool:
        return any(lo or hi for lo, hi in self.padding)

    def is_padding_symmetric(self) -> bool:
        return all(lo == hi for lo, hi in self.padding)

    def is_grouped(self) -> bool:
        return self.groups > 1

    def has_output_padding(self) -> bool:
        return any(self.output_padding)

    def needs_explicit_padding(self) -> bool:
        """Whether the input must be padded with a non-zero mode before the convolution."""
        return self.padding_mode != "zeros" and self.is_padded()

    def describe(self) -> str:
        padding = (str(self.padding_low) if self.is_padding_symmetric()
                   else str(self.padding))
        if self.padding_request != "explicit":
            padding += f" (from {self.padding_request!r})"
        text = (f"stride={self.stride}, padding={padding}, dilation={self.dilation}, "
                f"groups={self.groups}")
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode!r}"
        if self.transposed:
            text += f", output_padding={self.output_padding}"
        return text


class Direction(str, enum.Enum):
    """The three passes of a convolution, as cuDNN names them fprop, dgrad and wgrad."""

    FORWARD = "forward"
    BACKWARD_DATA = "backward_data"
    BACKWARD_WEIGHT = "backward_weight"


@dataclass(frozen=True)
class ConvProblem:
    """One pass of a plain (not transposed) convolution with zero padding.

    Shapes: ``x_shape = (N, C_in, *spatial_in)``, ``w_shape = (C_out, C_in / groups, *kernel)``,
    ``y_shape = (N, C_out, *spatial_out)``. ``spatial_out`` may be smaller than the
    convolution of ``x`` would give (a transposed convolution's ``output_padding``, cropped
    backward passes): only the listed outputs exist. ``dtype`` is the storage dtype's name.
    """

    direction: Direction
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    y_shape: tuple[int, ...]
    dtype: str
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int
    # Memory layout of the activations (x and y); shapes above are always channels-first.
    channels_last: bool = False
    # Applied with the bias to the output of a forward / backward-data pass ("" = none).
    activation: str = ""

    @property
    def ndim(self) -> int:
        return len(self.x_shape) - 2

    @property
    def batch(self) -> int:
        return self.x_shape[0]

    @property
    def in_channels(self) -> int:
        return self.x_shape[1]

    @property
    def out_channels(self) -> int:
        return self.w_shape[0]

    @property
    def in_channels_per_group(self) -> int:
        return self.w_shape[1]

    @property
    def out_channels_per_group(self) -> int:
        return self.w_shape[0] // self.groups

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return self.w_shape[2:]

    @property
    def x_spatial(self) -> tuple[int, ...]:
        return self.x_shape[2:]

    @property
    def y_spatial(self) -> tuple[int, ...]:
        return self.y_shape[2:]

    @property
    def taps(self) -> int:
        return math.prod(self.kernel_size)

    @property
    def reduction_size(self) -> int:
        """Products summed into each forward output: ``C_in / groups * prod(kernel)``."""
        return self.in_channels_per_group * self.taps

    @property
    def output_positions(self) -> int:
        return math.prod(self.y_spatial)

    @property
    def flops(self) -> int:
        return shapes.conv_flops(self.batch, self.out_channels, self.in_channels_per_group,
                                 self.kernel_size, self.y_spatial)

    def is_depthwise(self) -> bool:
        """Each input channel convolved on its own (``groups == C_in > 1``), with any channel
        multiplier (``C_out`` a multiple of ``C_in``)."""
        return self.groups > 1 and self.groups == self.in_channels and self.in_channels_per_group == 1

    def is_pointwise(self) -> bool:
        """A 1x1 (x1) kernel without padding: a matrix product per image."""
        return all(k == 1 for k in self.kernel_size) and not self.is_padded()

    def is_strided(self) -> bool:
        return any(s != 1 for s in self.stride)

    def is_dilated(self) -> bool:
        return any(d != 1 for d in self.dilation)

    def is_padded(self) -> bool:
        return any(lo or hi for lo, hi in self.padding)

    def is_grouped(self) -> bool:
        return self.groups > 1

    def is_empty(self) -> bool:
        return self.batch == 0 or self.out_channels == 0

    def describe(self) -> str:
        text = (f"{self.direction.value}: x{list(self.x_shape)} * w{list(self.w_shape)} -> "
                f"y{list(self.y_shape)} {self.dtype}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}")
        if self.channels_last:
            text += ", channels-last"
        if self.activation:
            text += f", then {self.activation}"
        return text
