"""Benchmark the cupy backend against torch.nn.functional.conv2d on one GPU.

The layers are ResNet-50's convolutions, read from the ``light_resnet50.onnx`` model the
onnx package ships (shapes only), each distinct layer once, at the given batch size. For
every layer and dtype, in one process on the same GPU:

* torch: ``torch.nn.functional.conv2d`` (cuDNN, ``torch.backends.cudnn.benchmark`` off, TF32
  for convolutions as CONVFLOW_ALLOW_TF32 says, so both sides follow one policy);
* cudnn: ``convflow.conv2d(..., algorithm="cudnn")`` on CuPy arrays;
* own: convflow's own kernels, the algorithm its rules pick after cuDNN.

Times are milliseconds per call, from CUDA events around back-to-back calls (so they include
each library's Python overhead when the GPU is faster than the dispatch). The issue's
targets: cudnn within 1.1x of torch; own kernels at least 30% of cudnn's throughput.

    python ci/bench_cupy.py --batch 32 --dtypes float32,float16 --json bench.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys
from dataclasses import asdict, dataclass

CUDNN_TARGET = 1.1   # cudnn time / torch time
OWN_TARGET = 0.30    # cudnn time / own time (throughput ratio)


@dataclass(frozen=True)
class Layer:
    in_channels: int
    size: tuple[int, int]
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    count: int

    @property
    def name(self) -> str:
        k = "x".join(map(str, self.kernel))
        return (f"{self.in_channels}x{self.size[0]}x{self.size[1]} -> {self.out_channels} "
                f"k{k} s{self.stride[0]}")


def resnet50_layers() -> list[Layer]:
    """ResNet-50's distinct convolutions with how often each occurs, from onnx's test model."""
    import onnx
    from onnx import shape_inference

    path = (pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
            / "light_resnet50.onnx")
    model = shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*graph.value_info, *graph.input, *graph.output]}
    shapes.update({t.name: list(t.dims) for t in graph.initializer})
    found: dict[tuple, int] = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        x, w = shapes[node.input[0]], shapes[node.input[1]]
        pads = attrs.get("pads", [0, 0, 0, 0])
        key = (x[1], (x[2], x[3]), w[0], (w[2], w[3]), tuple(attrs.get("strides", [1, 1])),
               ((pads[0], pads[2]), (pads[1], pads[3])))
        assert attrs.get("group", 1) == 1 and w[1] == x[1], node.name
        found[key] = found.get(key, 0) + 1
    return [Layer(*key, count) for key, count in found.items()]


def _time(record, run, iterations: int, warmup: int) -> float:
    """Milliseconds per call of *run*, measured with *record* (start, stop) events."""
    for _ in range(warmup):
        run()
    start, stop = record()
    start.record()
    for _ in range(iterations):
        run()
    stop.record()
    stop.synchronize()
    return float(start.elapsed_time(stop) if hasattr(start, "elapsed_time")
                 else _cupy_elapsed(start, stop)) / iterations


def _cupy_elapsed(start, stop) -> float:
    import cupy

    return cupy.cuda.get_elapsed_time(start, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtypes", default="float32,float16")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=pathlib.Path, help="write the results here")
    parser.add_argument("--enforce", action="store_true",
                        help="exit 1 when a layer misses the issue's targets")
    args = parser.parse_args(argv)

    import cupy
    import torch

    import convflow
    from convflow import config
    from convflow.backends import get_backend

    backend = get_backend("cupy")
    allow_tf32 = bool(config.get("CONVFLOW_ALLOW_TF32"))
    torch.backends.cudnn.allow_tf32 = allow_tf32
    torch.backends.cudnn.benchmark = False
    has_cudnn = any(rule.name == "cudnn" for rule in backend.algorithm_rules())
    device = torch.cuda.get_device_name(0)
    print(f"device: {device}; torch {torch.__version__} (cuDNN {torch.backends.cudnn.version()}); "
          f"{convflow.available_backends()['cupy'].reason}")
    print(f"batch {args.batch}, TF32 {'on' if allow_tf32 else 'off'} on both sides, "
          f"CONVFLOW_WORKSPACE_MB={config.get('CONVFLOW_WORKSPACE_MB')}, {args.iterations} timed "
          f"calls after {args.warmup} warm-up calls\n")

    def torch_events():
        return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def cupy_events():
        return cupy.cuda.Event(), cupy.cuda.Event()

    results = []
    header = (f"{'layer':<30} {'dtype':<8} {'torch ms':>9} {'cudnn ms':>9} {'/torch':>7} "
              f"{'own alg':<12} {'own ms':>9} {'cudnn/own':>9}")
    print(header)
    print("-" * len(header))
    for dtype in args.dtypes.split(","):
        for layer in resnet50_layers():
            shape = (args.batch, layer.in_channels, *layer.size)
            weight = (layer.out_channels, layer.in_channels, *layer.kernel)
            x = cupy.random.standard_normal(shape, dtype=cupy.float32).astype(dtype)
            w = cupy.random.standard_normal(weight, dtype=cupy.float32).astype(dtype)
            xt, wt = torch.from_dlpack(x.copy()), torch.from_dlpack(w.copy())
            sym = tuple(lo for lo, _ in layer.padding)
            kwargs = dict(stride=layer.stride, padding=layer.padding)
            assert all(lo == hi for lo, hi in layer.padding), layer
            torch_ms = _time(torch_events, functools.partial(
                torch.nn.functional.conv2d, xt, wt, stride=layer.stride, padding=sym),
                args.iterations, args.warmup)
            problem = convflow.explain(x, w, **kwargs).problem
            own = next(rule.name for rule in backend.algorithm_rules()
                       if rule.name != "cudnn" and rule.applies(problem)[0])
            own_ms = _time(cupy_events, functools.partial(convflow.conv2d, x, w, algorithm=own,
                                                          **kwargs),
                           args.iterations, args.warmup)
            cudnn_ms = None
            if has_cudnn and backend.algorithm_rules()[0].can_run(problem)[0]:
                cudnn_ms = _time(cupy_events, functools.partial(
                    convflow.conv2d, x, w, algorithm="cudnn", **kwargs), args.iterations,
                    args.warmup)
            row = dict(layer=layer.name, occurrences=layer.count, dtype=dtype,
                       batch=args.batch, gflop=problem.flops / 1e9, torch_ms=torch_ms,
                       cudnn_ms=cudnn_ms, own_algorithm=own, own_ms=own_ms,
                       layer_spec=asdict(layer))
            row["cudnn_vs_torch"] = None if cudnn_ms is None else cudnn_ms / torch_ms
            row["own_vs_cudnn"] = None if cudnn_ms is None else cudnn_ms / own_ms
            results.append(row)
            cudnn_text = "-" if cudnn_ms is None else f"{cudnn_ms:9.3f}"
            ratio = "-" if cudnn_ms is None else f"{row['cudnn_vs_torch']:7.2f}"
            own_ratio = "-" if cudnn_ms is None else f"{row['own_vs_cudnn']:9.2f}"
            print(f"{layer.name:<30} {dtype:<8} {torch_ms:9.3f} {cudnn_text:>9} {ratio:>7} "
                  f"{own:<12} {own_ms:9.3f} {own_ratio:>9}")

    measured = [r for r in results if r["cudnn_ms"] is not None]
    cudnn_ok = [r for r in measured if r["cudnn_vs_torch"] <= CUDNN_TARGET]
    own_ok = [r for r in measured if r["own_vs_cudnn"] >= OWN_TARGET]
    print(f"\ncudnn within {CUDNN_TARGET}x of torch: {len(cudnn_ok)}/{len(measured)} layers")
    print(f"own kernels >= {OWN_TARGET:.0%} of cudnn's throughput: {len(own_ok)}/{len(measured)} "
          f"layers")
    if not has_cudnn:
        print("the cuDNN frontend is not installed: only the own kernels were timed")
    if args.json:
        args.json.write_text(json.dumps(dict(device=device, torch=torch.__version__,
                                             allow_tf32=allow_tf32, results=results), indent=2))
        print(f"results written to {args.json}")
    missed = len(measured) - min(len(cudnn_ok), len(own_ok)) if measured else 1
    return 1 if args.enforce and missed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    os.environ.setdefault("CONVFLOW_LOG", "warning")
    sys.exit(main())
