"""Regenerate convflow/data/networks.json: the conv layers of real networks for `convflow bench`.

Layers come from the Conv nodes of the light models the onnx package ships
(onnx/backend/test/data/light/light_*.onnx), with shapes from ONNX shape inference, plus
MobileNetV2's depthwise layers generated from the architecture table of its paper
(Sandler et al., 2018, table 2), and the ``large-kernels`` set: image filters and the large
depthwise kernels of RepLKNet-31B, SLaK and ConvNeXt (their papers' stage tables). Each network keeps its unique layers in order of first
appearance, with how often each occurs. Needs the onnx package (a test extra); the JSON is
committed so `convflow bench` needs no onnx at run time. Usage: ``python ci/extract_layers.py
[--check]``.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

OUT = pathlib.Path(__file__).resolve().parent.parent / "convflow" / "data" / "networks.json"

LIGHT_MODELS = {
    "resnet50": "light_resnet50.onnx",
    "vgg19": "light_vgg19.onnx",
    "densenet121": "light_densenet121.onnx",
    "inception_v1": "light_inception_v1.onnx",
    "inception_v2": "light_inception_v2.onnx",
    "shufflenet": "light_shufflenet.onnx",
    "squeezenet": "light_squeezenet.onnx",
    "alexnet": "light_bvlc_alexnet.onnx",
    "zfnet512": "light_zfnet512.onnx",
}

# MobileNetV2: (expansion t, output channels c, repeats n, first stride s), input 224x224.
MOBILENET_V2_BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _layer(c: int, h: int, w: int, weight: list[int], stride: list[int], pads: list[int],
           dilation: list[int], groups: int) -> dict[str, Any]:
    return {"input": [c, h, w], "weight": weight, "stride": stride,
            "padding": [[pads[0], pads[2]], [pads[1], pads[3]]], "dilation": dilation,
            "groups": groups}


def onnx_layers(path: pathlib.Path) -> list[dict[str, Any]]:
    import onnx
    from onnx import shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*graph.value_info, *graph.input, *graph.output]}
    weights = {t.name: list(t.dims) for t in graph.initializer}
    layers = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"), attrs
        _, c, h, w = shapes[node.input[0]]
        weight = weights.get(node.input[1]) or shapes[node.input[1]]
        layers.append(_layer(c, h, w, weight, attrs.get("strides", [1, 1]),
                             attrs.get("pads", [0, 0, 0, 0]), attrs.get("dilations", [1, 1]),
                             attrs.get("group", 1)))
    return layers


def mobilenet_v2_depthwise() -> list[dict[str, Any]]:
    layers = []
    size, channels = 112, 32  # after the stride-2 stem
    for t, c, n, s in MOBILENET_V2_BLOCKS:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = channels * t
            layers.append(_layer(hidden, size, size, [hidden, 1, 3, 3], [stride, stride],
                                 [1, 1, 1, 1], [1, 1], hidden))
            size = (size + 2 - 3) // stride + 1
            channels = c
    return layers


# RepLKNet-31B (Ding et al., 2022): stage channels and kernel sizes at 56, 28, 14, 7 pixels.
REPLKNET_31B = [(128, 56, 31), (256, 28, 29), (512, 14, 27), (1024, 7, 13)]
# ConvNeXt-T (Liu et al., 2022): 7x7 depthwise at each stage.
CONVNEXT_T = [(96, 56), (192, 28), (384, 14), (768, 7)]
# SLaK-T (Liu et al., 2023), stage 1: a 51x51 kernel, and the 51x5 and 5x51 pair it runs.
SLAK_T = [(96, 56, 51, 51), (96, 56, 51, 5), (96, 56, 5, 51)]


def _depthwise(c: int, size: int, kh: int, kw: int) -> dict[str, Any]:
    return _layer(c, size, size, [c, 1, kh, kw], [1, 1], [kh // 2, kw // 2, kh // 2, kw // 2],
                  [1, 1], c)


def large_kernels() -> list[dict[str, Any]]:
    """Image filters ('same' padding; 3 channels filtered each on its own), then the
    networks' large depthwise layers."""
    layers = []
    for size in (1024, 2048):
        for channels in (1, 3):
            for k in (15, 31, 63, 127):
                p = k // 2
                layers.append(_layer(channels, size, size, [channels, 1, k, k], [1, 1],
                                     [p, p, p, p], [1, 1], channels))
    layers += [_depthwise(c, size, k, k) for c, size, k in REPLKNET_31B]
    layers += [_depthwise(c, size, kh, kw) for c, size, kh, kw in SLAK_T]
    layers += [_depthwise(c, size, 7, 7) for c, size in CONVNEXT_T]
    return layers


def unique(layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for layer in layers:
        key = json.dumps(layer, sort_keys=True)
        if key in seen:
            seen[key]["count"] += 1
        else:
            seen[key] = {**layer, "count": 1}
    return list(seen.values())


def build() -> dict[str, Any]:
    import onnx

    light = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    networks = {name: unique(onnx_layers(light / file)) for name, file in LIGHT_MODELS.items()}
    networks["mobilenet_v2_depthwise"] = unique(mobilenet_v2_depthwise())
    networks["large-kernels"] = unique(large_kernels())
    return {"source": "ci/extract_layers.py (onnx light models; MobileNetV2 paper table 2; "
                      "RepLKNet-31B, SLaK-T and ConvNeXt-T stage tables; image filters)",
            "networks": networks}


def main() -> int:
    text = json.dumps(build(), indent=1) + "\n"
    if "--check" in sys.argv:
        return 0 if OUT.read_text(encoding="utf-8") == text else 1
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
