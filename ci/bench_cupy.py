"""Benchmark the cupy backend against torch.nn.functional.conv2d on one GPU.

The layers are ResNet-50's convolutions, read from the ``light_resnet50.onnx`` model the
onnx package ships (shapes only), each distinct layer once, at the given batch size. For
every layer, dtype and pass (forward, the data gradient and the weight gradient), in one
process on the same GPU:

* torch: ``torch.nn.functional.conv2d`` / ``torch.nn.grad.conv2d_input`` /
  ``torch.nn.grad.conv2d_weight`` (cuDNN, ``torch.backends.cudnn.benchmark`` off);
* cudnn: ``convflow.conv2d`` / ``convflow.conv_backward`` with ``algorithm="cudnn"`` on CuPy
  arrays;
* own: convflow's own kernels, the algorithm its rules pick after cuDNN.

TF32 follows CONVFLOW_ALLOW_TF32 on both sides (off unless set; torch's default is on). For
the forward pass also conv + bias + relu: convflow's fused cuDNN graph, convflow's convolution
followed by the bias and relu as separate CuPy operations, and torch's conv2d with bias then
relu. Each result is compared with torch's (``max_rel_diff``: largest difference over the
largest torch magnitude), so a fast wrong kernel shows.

Times are milliseconds per call, from CUDA events around back-to-back calls (so they include
each library's Python overhead when the GPU is faster than the dispatch). The issue's
targets: cudnn within 1.1x of torch (geomean over the layers), own kernels at least 30% of
cudnn's throughput, the fused epilogue faster than the separate operations.

    python ci/bench_cupy.py --batch 32 --dtypes float32,float16 --json bench.json

Without a GPU:

* ``--plan`` lists what a run would time (layers, passes, GFLOP, the own algorithm each pass
  gets) from the shapes alone: needs onnx and convflow, neither CuPy nor torch;
* ``--torch-cpu`` runs the torch side of the benchmark on the CPU, on the first ``--layers``
  layers, next to convflow on its CPU backend, with the same calls, comparison and JSON as
  on a GPU (a check that a GPU run does not fail on a typo; the times mean nothing for it).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

CUDNN_TARGET = 1.1   # cudnn time / torch time, geomean over the layers
OWN_TARGET = 0.30    # cudnn time / own time (throughput ratio)
PASSES = ("forward", "backward_data", "backward_weight")
# Largest torch-vs-convflow difference, relative to torch's largest magnitude, that still
# counts as the same result (the test suite's tolerances against the float64 reference).
AGREEMENT = {"float32": 1e-4, "float16": 4e-3}


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

    def shapes(self, batch: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """Input, weight and output shapes at *batch*."""
        out = tuple((size + lo + hi - k) // s + 1 for size, (lo, hi), k, s in
                    zip(self.size, self.padding, self.kernel, self.stride))
        return ((batch, self.in_channels, *self.size),
                (self.out_channels, self.in_channels, *self.kernel),
                (batch, self.out_channels, *out))

    @property
    def symmetric_padding(self) -> tuple[int, int]:
        assert all(lo == hi for lo, hi in self.padding), self
        return tuple(lo for lo, _ in self.padding)  # type: ignore[return-value]


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


def pass_problem(layer: Layer, batch: int, dtype: str, direction: str) -> Any:
    """convflow's ConvProblem for one pass of *layer*, planned from shapes alone."""
    import numpy as np

    import convflow

    x_shape, w_shape, _ = layer.shapes(batch)
    x = np.broadcast_to(np.zeros((), dtype), x_shape)
    w = np.broadcast_to(np.zeros((), dtype), w_shape)
    return convflow.explain(x, w, stride=layer.stride, padding=layer.padding,
                            direction=direction).problem


def own_algorithm(problem: Any) -> str:
    """The own CUDA algorithm the cupy backend's rules pick for *problem* after cuDNN."""
    from convflow.backends.cupy import OWN_RULES

    return next(rule.name for rule in OWN_RULES
                if problem.direction in rule.directions and rule.applies(problem)[0])


def configurations(layers: list[Layer], batch: int, dtypes: list[str]) -> list[dict[str, Any]]:
    """Every (layer, dtype, pass) the benchmark times, layer by layer (a run cut short by its
    time budget still has every pass and dtype of the layers it reached)."""
    configs = []
    for layer in layers:
        for dtype in dtypes:
            for direction in PASSES:
                problem = pass_problem(layer, batch, dtype, direction)
                configs.append(dict(layer=layer.name, occurrences=layer.count, dtype=dtype,
                                    direction=direction, batch=batch,
                                    gflop=problem.flops / 1e9,
                                    own_algorithm=own_algorithm(problem),
                                    layer_spec=asdict(layer)))
    return configs


def set_torch_tf32(torch: Any, allow: bool) -> dict[str, str]:
    """TF32 for torch's cuDNN convolutions and matmuls as *allow* says; returns the settings
    read back. Uses the fp32_precision API where torch has it (torch objects to a mix of it
    and the legacy allow_tf32 flags), else the allow_tf32 flags."""
    torch.backends.cudnn.benchmark = False
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        precision = "tf32" if allow else "ieee"
        conv.fp32_precision = precision
        torch.backends.cuda.matmul.fp32_precision = precision
        return {"torch.backends.cudnn.conv.fp32_precision": str(conv.fp32_precision),
                "torch.backends.cuda.matmul.fp32_precision":
                    str(torch.backends.cuda.matmul.fp32_precision),
                "torch.backends.cudnn.benchmark": str(torch.backends.cudnn.benchmark)}
    torch.backends.cudnn.allow_tf32 = allow
    torch.backends.cuda.matmul.allow_tf32 = allow
    return {"torch.backends.cudnn.allow_tf32": str(torch.backends.cudnn.allow_tf32),
            "torch.backends.cuda.matmul.allow_tf32": str(torch.backends.cuda.matmul.allow_tf32),
            "torch.backends.cudnn.benchmark": str(torch.backends.cudnn.benchmark)}


def torch_call(torch: Any, direction: str, layer: Layer, x: Any, w: Any, dy: Any) -> Callable[[], Any]:
    """The torch call computing *direction* of *layer* on (x, w, dy)."""
    options = dict(stride=layer.stride, padding=layer.symmetric_padding)
    if direction == "forward":
        return functools.partial(torch.nn.functional.conv2d, x, w, **options)
    if direction == "backward_data":
        return functools.partial(torch.nn.grad.conv2d_input, tuple(x.shape), w, dy, **options)
    return functools.partial(torch.nn.grad.conv2d_weight, x, tuple(w.shape), dy, **options)


def convflow_call(direction: str, layer: Layer, x: Any, w: Any, dy: Any,
                  algorithm: str | None) -> Callable[[], Any]:
    """The convflow call computing *direction* of *layer*, forcing *algorithm* (None: the
    rules decide)."""
    import convflow

    options = dict(stride=layer.stride, padding=layer.padding, algorithm=algorithm)
    if direction == "forward":
        return functools.partial(convflow.conv2d, x, w, **options)
    index = 0 if direction == "backward_data" else 1
    mask = (index == 0, index == 1, False)

    def backward() -> Any:
        return convflow.conv_backward(dy, x, w, output_mask=mask, **options)[index]
    return backward


def max_rel_diff(actual: Any, expected: Any, xp: Any = None) -> float:
    """Largest |actual - expected| over the largest |expected| (at least 1), in float64 with
    the array module *xp* (numpy by default; CuPy keeps a GPU's results on the GPU)."""
    if xp is None:
        import numpy as xp
    a = xp.asarray(actual, dtype=xp.float64)
    e = xp.asarray(expected, dtype=xp.float64)
    if a.shape != e.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    return float(xp.abs(a - e).max() / max(1.0, float(xp.abs(e).max())))


def geomean(values: list[float]) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


class Clock:
    """Milliseconds per call: CUDA events of the library that launches the work on a GPU,
    ``time.perf_counter`` on the CPU."""

    def __init__(self, events: Callable[[], tuple[Any, Any]] | None, elapsed: Callable[[Any, Any], float] | None):
        self.events = events
        self.elapsed = elapsed

    def time(self, run: Callable[[], Any], iterations: int, warmup: int) -> float:
        for _ in range(warmup):
            run()
        if self.events is None or self.elapsed is None:
            start_s = time.perf_counter()
            for _ in range(iterations):
                run()
            return (time.perf_counter() - start_s) * 1e3 / iterations
        start, stop = self.events()
        start.record()
        for _ in range(iterations):
            run()
        stop.record()
        stop.synchronize()
        return float(self.elapsed(start, stop)) / iterations


Compare = Callable[[Any, Any], float]


def _measure(row: dict[str, Any], key: str, clock: Clock, run: Callable[[], Any],
             args: argparse.Namespace, reference: Any = None,
             compare: Compare | None = None) -> Any:
    """Time *run* into ``row[key + '_ms']``; ``compare(result, reference)`` goes into
    ``row[key + '_max_rel_diff']``; an exception is recorded as ``row[key + '_error']``."""
    try:
        result = run()
        row[f"{key}_ms"] = clock.time(run, args.iterations, args.warmup)
        if reference is not None and compare is not None:
            row[f"{key}_max_rel_diff"] = compare(result, reference)
        return result
    except Exception as exc:  # a first GPU run: record what breaks and time the rest
        row[f"{key}_ms"] = None
        row[f"{key}_error"] = f"{type(exc).__name__}: {exc}"[:500]
        return None


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Geomeans and counts against the issue's targets, per dtype and pass and overall."""
    def ratio(rows, num, den):
        return [r[num] / r[den] for r in rows if r.get(num) and r.get(den)]

    groups: dict[str, list[dict[str, Any]]] = {"all": results}
    for r in results:
        groups.setdefault(r["dtype"], []).append(r)
        groups.setdefault(f"{r['dtype']} {r['direction']}", []).append(r)
    summary: dict[str, Any] = {}
    for name, rows in groups.items():
        cudnn_vs_torch = ratio(rows, "cudnn_ms", "torch_ms")
        own_vs_cudnn = ratio(rows, "cudnn_ms", "own_ms")
        fused_vs_separate = ratio(rows, "fused_ms", "separate_ms")
        summary[name] = dict(
            rows=len(rows),
            cudnn_vs_torch_geomean=geomean(cudnn_vs_torch),
            cudnn_within_target=sum(v <= CUDNN_TARGET for v in cudnn_vs_torch),
            cudnn_measured=len(cudnn_vs_torch),
            own_vs_cudnn_geomean=geomean(own_vs_cudnn),
            own_within_target=sum(v >= OWN_TARGET for v in own_vs_cudnn),
            own_measured=len(own_vs_cudnn),
            fused_vs_separate_geomean=geomean(fused_vs_separate),
            fused_faster=sum(v < 1 for v in fused_vs_separate),
            fused_measured=len(fused_vs_separate),
            convflow_vs_torch_geomean=geomean(ratio(rows, "convflow_ms", "torch_ms")))
    disagree = [f"{r['layer']} {r['dtype']} {r['direction']}: {key} {r[key]:.2g}"
                for r in results for key in sorted(r) if key.endswith("_max_rel_diff")
                and r[key] > AGREEMENT.get(r["dtype"], 0.0)]
    errors = [f"{r['layer']} {r['dtype']} {r['direction']}: {key} {r[key]}"
              for r in results for key in sorted(r) if key.endswith("_error")]
    summary["disagreements"] = disagree
    summary["errors"] = errors
    summary["targets"] = dict(cudnn_vs_torch=CUDNN_TARGET, own_vs_cudnn=OWN_TARGET,
                              agreement=AGREEMENT)
    return summary


def _fmt(value: Any, width: int, digits: int = 3) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"


GPU_COLUMNS = ("torch", "cudnn", "own", "fused", "separate")
CPU_COLUMNS = ("torch", "convflow")


def print_row(row: dict[str, Any], first: bool, columns: tuple[str, ...]) -> None:
    """One line of the table: milliseconds per contender and the worst disagreement with
    torch (ratios are in the summary)."""
    if first:
        header = (f"{'layer':<28} {'dtype':<7} {'pass':<15} {'own alg':<11} "
                  + " ".join(f"{name + ' ms':>11}" for name in columns) + f" {'max diff':>9}")
        print(header)
        print("-" * len(header))
    diffs = [value for key, value in row.items() if key.endswith("_max_rel_diff")]
    worst = max(diffs) if diffs else None
    print(f"{row['layer']:<28} {row['dtype']:<7} {row['direction']:<15} "
          f"{row['own_algorithm']:<11} "
          + " ".join(_fmt(row.get(f"{name}_ms"), 11) for name in columns)
          + f" {'-' if worst is None else f'{worst:.1e}':>9}", flush=True)


def print_summary(summary: dict[str, Any]) -> None:
    for name, s in summary.items():
        if not isinstance(s, dict) or "rows" not in s:
            continue
        parts = [f"{name}: {s['rows']} rows"]
        if s["cudnn_measured"]:
            parts.append(f"cudnn/torch geomean {s['cudnn_vs_torch_geomean']:.2f} "
                         f"({s['cudnn_within_target']}/{s['cudnn_measured']} within "
                         f"{CUDNN_TARGET}x)")
        if s["own_measured"]:
            parts.append(f"own throughput vs cudnn geomean {s['own_vs_cudnn_geomean']:.2f} "
                         f"({s['own_within_target']}/{s['own_measured']} >= {OWN_TARGET:.0%})")
        if s["fused_measured"]:
            parts.append(f"fused/separate geomean {s['fused_vs_separate_geomean']:.2f} "
                         f"({s['fused_faster']}/{s['fused_measured']} faster)")
        if s["convflow_vs_torch_geomean"] is not None:
            parts.append(f"convflow/torch geomean {s['convflow_vs_torch_geomean']:.2f}")
        print("; ".join(parts))
    for kind in ("disagreements", "errors"):
        for line in summary[kind][:20]:
            print(f"{kind[:-1]}: {line}")
        if len(summary[kind]) > 20:
            print(f"... {len(summary[kind]) - 20} more {kind} in the JSON")


class Report:
    """The JSON the run writes, rewritten after every row so a run cut short keeps its rows."""

    def __init__(self, path: pathlib.Path | None, header: dict[str, Any]):
        self.path = path
        self.data: dict[str, Any] = dict(header, complete=False, results=[], not_run=[])
        self.started = time.monotonic()

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.data["summary"] = summarize(self.data["results"])
        if self.path is not None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.data, indent=2))
            tmp.replace(self.path)


def run_plan(args: argparse.Namespace, layers: list[Layer]) -> int:
    configs = configurations(layers, args.batch, args.dtypes)
    report = Report(args.json, dict(mode="plan", batch=args.batch, dtypes=args.dtypes,
                                    layers=len(layers), configurations=len(configs),
                                    timed_calls_per_contender=args.iterations + args.warmup))
    report.data["plan"] = configs
    report.data["complete"] = True
    report.write()
    print(f"plan: {len(layers)} layers x {len(args.dtypes)} dtypes x {len(PASSES)} passes = "
          f"{len(configs)} configurations, batch {args.batch}; torch, cudnn and own each "
          f"{args.warmup} warm-up + {args.iterations} timed calls; forward also fused and "
          f"separate conv+bias+relu")
    for config in configs:
        print(f"  {config['layer']:<28} {config['dtype']:<8} {config['direction']:<15} "
              f"{config['gflop']:8.2f} GFLOP  own: {config['own_algorithm']}")
    return 0


def run_torch_cpu(args: argparse.Namespace, layers: list[Layer]) -> int:
    """The torch side on the CPU, next to convflow's CPU backend, with the GPU run's calls."""
    import numpy as np
    import torch

    from convflow import config

    tf32 = set_torch_tf32(torch, bool(config.get("CONVFLOW_ALLOW_TF32")))
    report = Report(args.json, dict(mode="torch-cpu", torch=torch.__version__, batch=args.batch,
                                    dtypes=args.dtypes, torch_settings=tf32))
    clock = Clock(None, None)
    rng = np.random.default_rng(0)
    by_name = {layer.name: layer for layer in layers}
    for config_row in configurations(layers, args.batch, args.dtypes):
        layer = by_name[config_row["layer"]]
        x_shape, w_shape, y_shape = layer.shapes(args.batch)
        dtype = config_row["dtype"]
        x, w, dy = (rng.standard_normal(s).astype(dtype) for s in (x_shape, w_shape, y_shape))
        row = dict(config_row)
        direction = row["direction"]
        expected = _measure(row, "torch", clock, torch_call(
            torch, direction, layer, *(torch.from_numpy(a) for a in (x, w, dy))), args)
        _measure(row, "convflow", clock, convflow_call(direction, layer, x, w, dy, None), args,
                 expected, lambda result, reference: max_rel_diff(result, reference.numpy()))
        report.data["results"].append(row)
        report.write()
        print_row(row, len(report.data["results"]) == 1, CPU_COLUMNS)
    report.data["complete"] = True
    report.write()
    print_summary(report.data["summary"])
    return 0


def run_gpu(args: argparse.Namespace, layers: list[Layer]) -> int:
    import convflow
    from convflow import config

    status = convflow.available_backends()["cupy"]
    if not status.available:
        print(f"bench_cupy: the cupy backend cannot run here: {status.reason}", file=sys.stderr)
        Report(args.json, dict(mode="gpu", error=status.reason)).write()
        return 1
    import cupy
    import torch

    from convflow.backends import get_backend

    backend = get_backend("cupy")
    allow_tf32 = bool(config.get("CONVFLOW_ALLOW_TF32"))
    tf32 = set_torch_tf32(torch, allow_tf32)
    has_cudnn = any(rule.name == "cudnn" for rule in backend.algorithm_rules())
    cudnn_rule = next((r for r in backend.algorithm_rules() if r.name == "cudnn"), None)
    device = torch.cuda.get_device_name(0)
    report = Report(args.json, dict(
        mode="gpu", device=device, torch=torch.__version__, torch_cuda=torch.version.cuda,
        torch_cudnn=torch.backends.cudnn.version(), cupy=cupy.__version__,
        convflow_cupy=status.reason, allow_tf32=allow_tf32, torch_settings=tf32,
        workspace_mb=config.get("CONVFLOW_WORKSPACE_MB"), batch=args.batch,
        dtypes=args.dtypes, iterations=args.iterations, warmup=args.warmup,
        time_budget_s=args.time_budget))
    print(f"device: {device}; torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
          f"{torch.backends.cudnn.version()}); convflow cupy: {status.reason}")
    print(f"batch {args.batch}, TF32 {'on' if allow_tf32 else 'off'} on both sides {tf32}, "
          f"CONVFLOW_WORKSPACE_MB={config.get('CONVFLOW_WORKSPACE_MB')}, {args.iterations} "
          f"timed calls after {args.warmup} warm-up calls\n", flush=True)
    if not has_cudnn:
        print("the cuDNN frontend is not available: only the own kernels are timed")

    torch_clock = Clock(lambda: (torch.cuda.Event(enable_timing=True),
                                 torch.cuda.Event(enable_timing=True)),
                        lambda start, stop: start.elapsed_time(stop))
    cupy_clock = Clock(lambda: (cupy.cuda.Event(), cupy.cuda.Event()),
                       cupy.cuda.get_elapsed_time)

    def compare(result: Any, reference: Any) -> float:
        """On the GPU: torch's result seen through DLPack, no copy to the host."""
        return max_rel_diff(result, cupy.from_dlpack(reference.detach()), cupy)

    configs = configurations(layers, args.batch, args.dtypes)
    by_name = {layer.name: layer for layer in layers}
    operands: dict[tuple[str, str], tuple[Any, ...]] = {}
    try:
        for index, config_row in enumerate(configs):
            if args.time_budget and time.monotonic() - report.started > args.time_budget:
                report.data["not_run"] = [f"{c['layer']} {c['dtype']} {c['direction']}"
                                          for c in configs[index:]]
                print(f"time budget of {args.time_budget} s spent: {len(configs) - index} of "
                      f"{len(configs)} configurations not run")
                break
            layer = by_name[config_row["layer"]]
            row = dict(config_row)
            try:
                key = (layer.name, row["dtype"])
                if key not in operands:          # one set of operands per layer and dtype
                    operands.clear()
                    operands[key] = _gpu_operands(cupy, torch, layer, args.batch, row["dtype"])
                _gpu_row(row, args, layer, operands[key], cupy, torch, cudnn_rule,
                         torch_clock, cupy_clock, compare)
            except Exception as exc:  # setting up the row failed: record it, go on
                row["setup_error"] = f"{type(exc).__name__}: {exc}"[:500]
            report.data["results"].append(row)
            report.write()
            print_row(row, index == 0, GPU_COLUMNS)
        else:
            report.data["complete"] = True
    except KeyboardInterrupt:  # the step's timeout: keep what was measured
        report.data["interrupted"] = True
        report.write()
        print("interrupted: the rows measured so far are in the JSON")
        return 130
    report.write()
    print()
    print_summary(report.data["summary"])
    if args.json:
        print(f"results written to {args.json}")
    s = report.data["summary"]["all"]
    missed = (s["cudnn_vs_torch_geomean"] is None or s["cudnn_vs_torch_geomean"] > CUDNN_TARGET
              or s["own_within_target"] < s["own_measured"])
    return 1 if args.enforce and missed else 0


def _gpu_operands(cupy: Any, torch: Any, layer: Layer, batch: int, dtype: str) -> tuple[Any, ...]:
    """Random x, w, dy as CuPy arrays and the same memory as torch tensors (DLPack)."""
    arrays = [cupy.random.standard_normal(shape, dtype=cupy.float32).astype(dtype)
              for shape in layer.shapes(batch)]
    return (*arrays, *(torch.from_dlpack(a) for a in arrays))


def _gpu_row(row: dict[str, Any], args: argparse.Namespace, layer: Layer,
             operands: tuple[Any, ...], cupy: Any, torch: Any, cudnn_rule: Any,
             torch_clock: Clock, cupy_clock: Clock, compare: Compare) -> None:
    """torch, cudnn and the own algorithm on one pass of *layer* (and, forward, the epilogue)."""
    x, w, dy, xt, wt, dyt = operands
    direction = row["direction"]
    expected = _measure(row, "torch", torch_clock,
                        torch_call(torch, direction, layer, xt, wt, dyt), args)
    problem = pass_problem(layer, args.batch, row["dtype"], direction)
    runs, why = (False, "the cuDNN frontend is not available") if cudnn_rule is None else \
        cudnn_rule.can_run(problem)
    if runs:
        _measure(row, "cudnn", cupy_clock, convflow_call(direction, layer, x, w, dy, "cudnn"),
                 args, expected, compare)
    else:
        row["cudnn_ms"] = None
        row["cudnn_not_run"] = why
    _measure(row, "own", cupy_clock,
             convflow_call(direction, layer, x, w, dy, row["own_algorithm"]), args, expected,
             compare)
    if direction == "forward" and row.get("cudnn_ms") is not None:
        _time_epilogue(row, args, layer, x, w, cupy, torch, torch_clock, cupy_clock, compare)


def _time_epilogue(row: dict[str, Any], args: argparse.Namespace, layer: Layer, x: Any, w: Any,
                   cupy: Any, torch: Any, torch_clock: Clock, cupy_clock: Clock,
                   compare: Compare) -> None:
    """conv + bias + relu: convflow's fused cuDNN graph, convflow's convolution then the bias
    and relu as separate CuPy operations, and torch's conv2d with bias then relu."""
    import convflow

    bias = cupy.random.standard_normal(layer.out_channels, dtype=cupy.float32).astype(x.dtype)
    options = dict(stride=layer.stride, padding=layer.padding, algorithm="cudnn")

    def separate() -> Any:
        y = convflow.conv2d(x, w, **options)
        y += bias[:, None, None]
        return cupy.maximum(y, 0, out=y)

    xt, wt, bt = (torch.from_dlpack(a) for a in (x, w, bias))
    expected = _measure(row, "torch_bias_relu", torch_clock, lambda: torch.relu_(
        torch.nn.functional.conv2d(xt, wt, bt, stride=layer.stride,
                                   padding=layer.symmetric_padding)), args)
    _measure(row, "fused", cupy_clock, functools.partial(
        convflow.conv2d, x, w, bias, activation="relu", **options), args, expected, compare)
    _measure(row, "separate", cupy_clock, separate, args, expected, compare)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=_positive, default=32)
    parser.add_argument("--dtypes", type=_dtypes, default=["float32", "float16"],
                        help="comma-separated: float32, float16 (default both)")
    parser.add_argument("--iterations", type=_positive, default=10)
    parser.add_argument("--warmup", type=_non_negative, default=3)
    parser.add_argument("--layers", type=_positive,
                        help="only the first N distinct layers (default: all 23)")
    parser.add_argument("--time-budget", type=_non_negative, default=0,
                        help="seconds after which no further configuration starts (0: none)")
    parser.add_argument("--json", type=pathlib.Path, help="write the results here")
    parser.add_argument("--enforce", action="store_true",
                        help="exit 1 when the issue's targets are missed")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--plan", action="store_true",
                      help="list what a run would time, from shapes alone (no CuPy, no torch)")
    mode.add_argument("--torch-cpu", action="store_true",
                      help="run only the torch side (and convflow's CPU backend) on the CPU")
    args = parser.parse_args(argv)
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json {args.json}: the folder {args.json.parent} does not exist")
    return args


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def _dtypes(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    wrong = [name for name in names if name not in AGREEMENT]
    if not names or wrong:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of "
                                         f"{', '.join(AGREEMENT)}, got {text!r}")
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layers = resnet50_layers()[:args.layers]
    if args.plan:
        return run_plan(args, layers)
    if args.torch_cpu:
        return run_torch_cpu(args, layers)
    return run_gpu(args, layers)


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    os.environ.setdefault("CONVFLOW_LOG", "warning")
    sys.exit(main())
