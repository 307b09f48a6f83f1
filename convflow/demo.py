"""The main job of ``make run``: the dispatch, and ResNet-50's first layers on every backend.

First the backends this machine has, each with why it can or cannot run, and where a call
without ``backend=`` goes (the selector's backend rules). Then, on each available backend
in turn, the stem (7x7 stride-2 convolution, ReLU, 3x3 max-pool) and the three bottleneck
blocks of ``layer1`` with He-initialized random weights, printing for every convolution the
algorithm the backend's rules chose, its time, and its error against the same layer
recomputed in float64 by numba's ``direct`` algorithm (a different code path).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import functional, hostinfo
from .backends import available_backends, validate_backend_name
from .errors import ParameterError

# float32 results against a float64 recomputation: rounding grows like sqrt(reduction).
_TOLERANCE = 1e-4

# Bytes the demo holds at its peak per image pixel: the largest activations (64 x H/2 x W/2
# after the stem, 256 x H/4 x W/4 in layer1, about 16 values per pixel each), about six of
# them in float32 and two float64 copies for the check, rounded up.
_BYTES_PER_PIXEL = 640


@dataclass(frozen=True)
class Layer:
    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0


def _bottleneck(prefix: str, in_channels: int, downsample: bool) -> list[Layer]:
    layers = [Layer(f"{prefix}.conv1", in_channels, 64, 1),
              Layer(f"{prefix}.conv2", 64, 64, 3, 1, 1),
              Layer(f"{prefix}.conv3", 64, 256, 1)]
    if downsample:
        layers.append(Layer(f"{prefix}.downsample", in_channels, 256, 1))
    return layers


def _max_pool_3x3_s2(x: np.ndarray) -> np.ndarray:
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
    return windows[:, :, ::2, ::2].max(axis=(-2, -1))


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0, out=x)


class _Runner:
    def __init__(self, backend: str, rng: np.random.Generator) -> None:
        self.backend = backend
        self.rng = rng
        self.failures = 0
        self.total_ms = 0.0
        self.total_flop = 0

    def conv(self, layer: Layer, x: np.ndarray) -> np.ndarray:
        fan_in = layer.in_channels * layer.kernel**2
        w = (self.rng.standard_normal((layer.out_channels, layer.in_channels, layer.kernel,
                                       layer.kernel)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (self.rng.standard_normal(layer.out_channels) * 0.01).astype(np.float32)
        kwargs: dict[str, Any] = dict(stride=layer.stride, padding=layer.padding,
                                      backend=self.backend)
        # The first call compiles the kernels if needed (on numba, in the background while
        # the call runs numpy_taps); the timed call runs the algorithm the rules chose.
        functional.conv2d(x, w, b, **kwargs)
        functional.finish_warmup()
        decision = functional.explain(x, w, b, **kwargs)
        start = time.perf_counter()
        y = functional.conv2d(x, w, b, **kwargs)
        elapsed = (time.perf_counter() - start) * 1e3
        check = functional.conv2d(x.astype(np.float64), w.astype(np.float64),
                                  b.astype(np.float64), stride=layer.stride,
                                  padding=layer.padding, backend="numba", algorithm="direct")
        scale = max(float(np.abs(check).max(initial=0.0)), 1e-30)
        error = float(np.abs(y - check).max(initial=0.0)) / scale
        ok = error < _TOLERANCE and y.shape == check.shape
        self.failures += not ok
        flop = decision.problem.flops
        self.total_ms += elapsed
        self.total_flop += flop
        speed = f"{flop / elapsed / 1e6:7.1f} GFLOP/s" if flop else f"{'-':>7} GFLOP/s"
        print(f"{layer.name:<20} {list(x.shape)!s:<18} {list(w.shape)!s:<18} "
              f"{decision.algorithm:<16} {elapsed:8.2f} ms {speed}  rel.err {error:.1e} "
              f"{'ok' if ok else 'FAIL'}")
        return y


def _resnet_start(runner: _Runner, image: np.ndarray) -> np.ndarray:
    """ResNet-50's stem and layer1 (11 convolutions), every one through *runner*."""
    x = _relu(runner.conv(Layer("conv1", 3, 64, 7, 2, 3), image))
    x = _max_pool_3x3_s2(x) if x.shape[0] else x[:, :, ::2, ::2]
    for block in range(3):
        in_channels = 64 if block == 0 else 256
        layers = _bottleneck(f"layer1.{block}", in_channels, downsample=block == 0)
        h = _relu(runner.conv(layers[0], x))
        h = _relu(runner.conv(layers[1], h))
        h = runner.conv(layers[2], h)
        shortcut = runner.conv(layers[3], x) if block == 0 else x
        x = _relu(h + shortcut)
    return x


def _show_dispatch(image: np.ndarray) -> None:
    """Where a call without ``backend=`` goes, rule by rule, for numpy data."""
    w = np.zeros((64, 3, 7, 7), np.float32)
    decision = functional.explain(image, w, stride=2, padding=3)
    print(f"dispatch: a numpy call without backend= runs on {decision.backend} (the backend "
          f"rules, first match wins):")
    for i, outcome in enumerate(decision.backend_rules, 1):
        print(f"  {i}. {outcome.rule:<17} {'-> ' if outcome.matched else '   '}{outcome.detail}")
    print("  data on an OpenCL or CUDA device runs on that device's backend; backend= or "
          "CONVFLOW_BACKEND picks one (below: each available backend in turn)")


def run_demo(batch: int = 1, size: int = 224, backend: str | None = None) -> int:
    """Show the backends and the dispatch, then run ResNet-50's first layers on each
    available backend (or only *backend*), checking every layer against float64.

    Returns
    -------
    int
        The process exit code: 0 when every layer on every backend passes its check.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
        raise ParameterError(f"demo: batch must be an integer >= 0, but got {batch!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ParameterError(f"demo: size must be an integer >= 1, but got {size!r}")
    needed, available = _BYTES_PER_PIXEL * batch * size * size, hostinfo.memory_available()
    if needed > available:
        raise ParameterError(
            f"demo: batch {batch} of {size}x{size} images needs about {needed / 2**30:.1f} GiB, "
            f"but {available / 2**30:.1f} GiB is available; use a smaller size or batch")
    statuses = available_backends()
    names = ([validate_backend_name(backend, "demo")] if backend is not None
             else [name for name, status in statuses.items() if status.available])
    print(f"convflow demo: ResNet-50 stem and layer1, batch {batch} of {size}x{size} images, "
          f"random weights, float32")
    print("backends on this machine:")
    for status in statuses.values():
        state = "available  " if status.available else "unavailable"
        print(f"  {status.name:<7} {state} {status.reason}")
    rng = np.random.default_rng(2024)
    image = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    _show_dispatch(image)
    failed: list[str] = []
    for name in names:
        status = statuses[name]
        print()
        if not status.available:
            print(f"== {name}: unavailable, not run: {status.reason}")
            failed.append(name)
            continue
        where = ("numpy in and out, computed in place" if status.device_type == "cpu" else
                 "numpy in and out: the times include the copies to the device and back")
        print(f"== on {name} ({where})")
        runner = _Runner(name, np.random.default_rng(2024))
        print(f"{'layer':<20} {'input':<18} {'weight':<18} {'algorithm':<16} {'time':>11} "
              f"{'speed':>15}  check vs float64 direct")
        x = _resnet_start(runner, image)
        rate = (f"{runner.total_flop / runner.total_ms / 1e6:.1f} GFLOP/s"
                if runner.total_flop else "an empty batch")
        print(f"{name} total: {runner.total_ms:.1f} ms for {runner.total_flop / 1e9:.2f} GFLOP "
              f"({rate}); output {list(x.shape)}, mean activation "
              f"{float(x.mean()) if x.size else 0.0:.4f}")
        if runner.failures:
            print(f"FAILED on {name}: {runner.failures} layer(s) disagree with the float64 check")
            failed.append(name)
    print()
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    print(f"all layers agree with the float64 check on {', '.join(names)}")
    return 0
