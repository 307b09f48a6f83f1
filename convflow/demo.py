"""The main job of ``make run``: the first layers of ResNet-50 on a random image.

Runs the stem (7x7 stride-2 convolution, ReLU, 3x3 max-pool) and the three bottleneck
blocks of ``layer1`` with He-initialized random weights, printing for every convolution the
backend and algorithm the selector chose, its time, and its error against the same layer
recomputed in float64 by the ``direct`` algorithm (a different code path).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import functional
from .backends import available_backends

# float32 results against a float64 recomputation: rounding grows like sqrt(reduction).
_TOLERANCE = 1e-4


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
    def __init__(self, backend: str | None, rng: np.random.Generator) -> None:
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
        decision = functional.explain(x, w, b, **kwargs)
        functional.conv2d(x, w, b, **kwargs)  # first call: compiles kernels if needed
        start = time.perf_counter()
        y = functional.conv2d(x, w, b, **kwargs)
        elapsed = (time.perf_counter() - start) * 1e3
        check = functional.conv2d(x.astype(np.float64), w.astype(np.float64),
                                  b.astype(np.float64), stride=layer.stride,
                                  padding=layer.padding, algorithm="direct")
        error = float(np.abs(y - check).max() / max(np.abs(check).max(), 1e-30))
        ok = error < _TOLERANCE
        self.failures += not ok
        flop = decision.problem.flops
        self.total_ms += elapsed
        self.total_flop += flop
        print(f"{layer.name:<20} {list(x.shape)!s:<18} {list(w.shape)!s:<18} "
              f"{decision.backend:<6} {decision.algorithm:<12} {elapsed:8.2f} ms "
              f"{flop / elapsed / 1e6:7.1f} GFLOP/s  rel.err {error:.1e} {'ok' if ok else 'FAIL'}")
        return y


def run_demo(batch: int = 1, size: int = 224, backend: str | None = None) -> int:
    """Run the demonstration; return the process exit code (0 when every check passes)."""
    rng = np.random.default_rng(2024)
    statuses = available_backends()
    print("convflow demo: ResNet-50 stem and layer1, random weights, float32")
    for status in statuses.values():
        print(f"  backend {status}")
    image = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    runner = _Runner(backend, rng)
    print(f"{'layer':<20} {'input':<18} {'weight':<18} {'backend/algorithm':<19} "
          f"{'time':>11} {'speed':>15}  check vs float64 direct")
    x = _relu(runner.conv(Layer("conv1", 3, 64, 7, 2, 3), image))
    x = _max_pool_3x3_s2(x)
    for block in range(3):
        in_channels = 64 if block == 0 else 256
        layers = _bottleneck(f"layer1.{block}", in_channels, downsample=block == 0)
        h = _relu(runner.conv(layers[0], x))
        h = _relu(runner.conv(layers[1], h))
        h = runner.conv(layers[2], h)
        shortcut = runner.conv(layers[3], x) if block == 0 else x
        x = _relu(h + shortcut)
    print(f"total: {runner.total_ms:.1f} ms for {runner.total_flop / 1e9:.2f} GFLOP "
          f"({runner.total_flop / runner.total_ms / 1e6:.1f} GFLOP/s); output {list(x.shape)}, "
          f"mean activation {float(x.mean()):.4f}")
    if runner.failures:
        print(f"FAILED: {runner.failures} layer(s) disagree with the float64 check")
        return 1
    print("all layers agree with the float64 check")
    return 0
