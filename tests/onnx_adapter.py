"""Translate ONNX Conv / ConvTranspose nodes into convflow calls (test-side only).

ONNX attributes (opset 11+): ``auto_pad`` (NOTSET, SAME_UPPER, SAME_LOWER, VALID), ``pads``
(all begins, then all ends), ``strides``, ``dilations``, ``group``, ``kernel_shape`` and,
for ConvTranspose, ``output_padding`` and ``output_shape``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import convflow

CONV = {1: convflow.conv1d, 2: convflow.conv2d, 3: convflow.conv3d}
CONV_TRANSPOSE = {1: convflow.conv_transpose1d, 2: convflow.conv_transpose2d,
                  3: convflow.conv_transpose3d}


def _attributes(node: Any) -> dict[str, Any]:
    import onnx

    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if isinstance(values.get("auto_pad"), bytes):
        values["auto_pad"] = values["auto_pad"].decode()
    return values


def _pairs(pads: list[int], nd: int) -> tuple[tuple[int, int], ...]:
    return tuple((pads[i], pads[i + nd]) for i in range(nd))


def run_node(node: Any, inputs: list[np.ndarray], backend: str) -> np.ndarray:
    attrs = _attributes(node)
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    nd = x.ndim - 2
    if "kernel_shape" in attrs:
        assert tuple(attrs["kernel_shape"]) == w.shape[2:]
    strides = tuple(attrs.get("strides", [1] * nd))
    dilations = tuple(attrs.get("dilations", [1] * nd))
    group = attrs.get("group", 1)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if node.op_type == "Conv":
        padding: Any = {"SAME_UPPER": "same", "SAME_LOWER": "same_lower", "VALID": "valid"}.get(
            auto_pad, _pairs(attrs.get("pads", [0] * 2 * nd), nd))
        return CONV[nd](x, w, b, stride=strides, padding=padding, dilation=dilations,
                        groups=group, backend=backend)
    assert node.op_type == "ConvTranspose", node.op_type
    output_padding = list(attrs.get("output_padding", [0] * nd))
    output_shape = attrs.get("output_shape")
    if output_shape is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        output_shape = [size * s for size, s in zip(x.shape[2:], strides)]
    if output_shape is not None:
        begins, ends = [], []
        for i in range(nd):
            total = (strides[i] * (x.shape[2 + i] - 1) + output_padding[i]
                     + (w.shape[2 + i] - 1) * dilations[i] + 1 - output_shape[i])
            if auto_pad == "SAME_UPPER":
                begins.append(total // 2)
                ends.append(total - total // 2)
            else:
                begins.append(total - total // 2)
                ends.append(total // 2)
        pads = begins + ends
    else:
        pads = list(attrs.get("pads", [0] * 2 * nd))
    pairs = []
    for i, (lo, hi) in enumerate(_pairs(pads, nd)):
        # A negative end pad extends the output: that is output_padding in convflow's terms.
        if hi < 0:
            output_padding[i] += -hi
            hi = 0
        assert lo >= 0, "a negative begin pad has no convflow equivalent"
        pairs.append((lo, hi))
    return CONV_TRANSPOSE[nd](x, w, b, stride=strides, padding=tuple(pairs),
                              output_padding=tuple(output_padding), groups=group,
                              dilation=dilations, backend=backend)
