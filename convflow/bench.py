"""``convflow bench``: time conv layers of real networks against other contenders.

Every layer is timed for every contender in the same process, interleaved (one call of
each contender per round, the order rotating), after warm-up calls, and summarized by the
median. Ratios are times relative to the first contender; geometric means summarize a
network and each layer class. numpy's float32 GEMM peak is measured in the same run, so
efficiency can be read against the machine's actual limit. Benchmarks measure; tests never
assert times.
"""

from __future__ import annotations

import datetime
import importlib.resources
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import hostinfo
from .errors import ParameterError, did_you_mean
from .progress import progress_bar


@dataclass(frozen=True)
class Layer:
    """One 2-D conv layer of a network: input ``(C, H, W)``, weight ``(O, C/g, kH, kW)``."""

    network: str
    index: int
    input: tuple[int, int, int]
    weight: tuple[int, int, int, int]
    stride: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    dilation: tuple[int, int]
    groups: int
    count: int = 1

    @property
    def kind(self) -> str:
        c, k = self.input[0], self.weight[2:]
        if self.groups > 1 and self.groups == c and self.weight[1] == 1:
            return "depthwise"
        if self.groups > 1:
            return "grouped"
        if k == (1, 1):
            return "1x1"
        if k == (3, 3):
            return "3x3"
        return "other"

    def output_hw(self) -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            (i + lo + hi - d * (k - 1) - 1) // s + 1
            for i, k, s, (lo, hi), d in zip(self.input[1:], self.weight[2:], self.stride,
                                            self.padding, self.dilation))

    def flops(self, batch: int) -> int:
        oh, ow = self.output_hw()
        o, cg, kh, kw = self.weight
        return 2 * batch * o * cg * kh * kw * oh * ow

    def describe(self) -> str:
        c, h, w = self.input
        o, _, kh, kw = self.weight
        text = f"{c}x{h}x{w} -> {o} k{kh}x{kw}"
        if self.stride != (1, 1):
            text += f" s{self.stride[0]}" if self.stride[0] == self.stride[1] else f" s{self.stride}"
        pads = {p for pair in self.padding for p in pair}
        if pads != {0}:
            text += f" p{self.padding[0][0]}" if len(pads) == 1 else f" p{self.padding}"
        if self.dilation != (1, 1):
            text += f" d{self.dilation[0]}"
        if self.groups > 1:
            text += f" g{self.groups}"
        return text


TINY = Layer("tiny", 0, (8, 16, 16), (8, 8, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1)


def load_networks() -> dict[str, list[Layer]]:
    """The layer tables stored in ``convflow/data/networks.json`` (plus the ``tiny`` conv)."""
    text = importlib.resources.files("convflow").joinpath("data/networks.json").read_text("utf-8")
    networks: dict[str, list[Layer]] = {}
    for name, layers in json.loads(text)["networks"].items():
        networks[name] = [
            Layer(name, i, tuple(d["input"]), tuple(d["weight"]), tuple(d["stride"]),  # type: ignore[arg-type]
                  tuple(tuple(p) for p in d["padding"]), tuple(d["dilation"]),  # type: ignore[arg-type]
                  d["groups"], d["count"])
            for i, d in enumerate(layers)]
    networks["tiny"] = [TINY]
    return networks


# --------------------------------------------------------------------------------------
# Contenders

Runner = Callable[[], Any]


@dataclass
class Contender:
    name: str
    prepare: Callable[[np.ndarray, np.ndarray, Layer], Runner]
    version: str = ""


def convflow_contender(spec: str) -> Contender:
    """A convflow backend, ``name`` or ``name:algorithm`` (forcing that algorithm)."""
    from . import functional
    from .backends import backend_status, validate_backend_name

    backend, _, algorithm = spec.partition(":")
    name = validate_backend_name(backend, "convflow bench: --backend")
    status = backend_status(name)
    if not status.available:
        raise ParameterError(f"convflow bench: backend {name!r} is unavailable: {status.reason}")
    if algorithm:
        from .backends import get_backend

        known = [rule.name for rule in get_backend(name).algorithm_rules()]
        if algorithm not in known:
            raise ParameterError(f"convflow bench: --backend {spec}: {algorithm!r} is not an "
                                 f"algorithm of the {name} backend{did_you_mean(algorithm, known)}; "
                                 f"its algorithms: {', '.join(known)}")

    def prepare(x: np.ndarray, w: np.ndarray, layer: Layer) -> Runner:
        if name == "numba":
            def run() -> Any:
                return functional.conv2d(x, w, None, layer.stride, layer.padding,
                                         layer.dilation, layer.groups, backend=name,
                                         algorithm=algorithm or None)

            return run
        # Device backends: data resident on the device; each timed call waits until the
        # device has finished (their calls return once the work is queued).
        from .backends import get_backend
        from .tensor import Device, tensor

        device = Device.parse(status.devices[0].split(" ")[0] if status.devices else None)
        x_dev, w_dev = tensor(x, device=device), tensor(w, device=device)
        backend = get_backend(name)

        def run_on_device() -> Any:
            y = functional.conv2d(x_dev, w_dev, None, layer.stride, layer.padding,
                                  layer.dilation, layer.groups, backend=name,
                                  algorithm=algorithm or None)
            backend.synchronize(device)
            return y

        return run_on_device

    return Contender(spec, prepare, status.version)


def torch_contender(threads: int) -> Contender:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as exc:
        raise ParameterError(f"convflow bench: --compare torch needs PyTorch ({exc}); install it "
                             f"with pip install torch==2.13.0 (CPU build)") from None
    torch.set_num_threads(threads)

    def prepare(x: np.ndarray, w: np.ndarray, layer: Layer) -> Runner:
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        (top, bottom), (left, right) = layer.padding
        symmetric = top == bottom and left == right

        def run() -> Any:
            with torch.no_grad():
                if symmetric:
                    return F.conv2d(tx, tw, None, layer.stride, (top, left), layer.dilation,
                                    layer.groups)
                # torch has no asymmetric padding: it pads explicitly, as a user would.
                padded = F.pad(tx, (left, right, top, bottom))
                return F.conv2d(padded, tw, None, layer.stride, 0, layer.dilation, layer.groups)

        return run

    return Contender("torch", prepare, torch.__version__)


# --------------------------------------------------------------------------------------
# Measurement


def sgemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    """numpy's float32 matrix-product speed on this machine, now (GFLOP/s)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty_like(a)
    np.matmul(a, b, out=out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


@dataclass
class Measurement:
    median_ms: float
    gflops: float
    times_ms: list[float] = field(default_factory=list)


def measure_layer(layer: Layer, batch: int, contenders: Sequence[Contender], warmup: int,
                  repeats: int, min_seconds: float) -> dict[str, Measurement]:
    rng = np.random.default_rng(layer.index)
    x = rng.standard_normal((batch, *layer.input), dtype=np.float32)
    w = (rng.standard_normal(layer.weight, dtype=np.float32)
         / math.sqrt(layer.weight[1] * layer.weight[2] * layer.weight[3]))
    runners = [c.prepare(x, w, layer) for c in contenders]
    first_call = []
    for run in runners:
        start = time.perf_counter()
        run()
        first_call.append(time.perf_counter() - start)
        for _ in range(warmup - 1):
            run()
    rounds = max(3, min(repeats, math.ceil(min_seconds / max(max(first_call), 1e-6))))
    times: list[list[float]] = [[] for _ in runners]
    for r in range(rounds):
        order = list(range(len(runners)))
        order = order[r % len(order):] + order[:r % len(order)]
        for i in order:
            start = time.perf_counter()
            runners[i]()
            times[i].append((time.perf_counter() - start) * 1e3)
    flops = layer.flops(batch)
    return {c.name: Measurement(statistics.median(t), flops / statistics.median(t) / 1e6, t)
            for c, t in zip(contenders, times)}


def first_call_latency(backend: str) -> dict[str, float]:
    """Seconds for import + the first conv of each numba algorithm in a new process, with a
    cold numba cache and then with the cache the first process wrote."""
    code = (
        "import time; t = time.perf_counter(); import numpy as np, convflow\n"
        "x = np.ones((1, 16, 12, 12), np.float32)\n"
        "for w, kw in ((np.ones((16, 16, 3, 3), np.float32), dict(padding=1)),\n"
        "              (np.ones((16, 16, 1, 1), np.float32), {}),\n"
        "              (np.ones((16, 1, 3, 3), np.float32), dict(groups=16, padding=1)),\n"
        "              (np.ones((2, 16, 3, 3), np.float32), dict(algorithm='direct'))):\n"
        f"    convflow.conv2d(x, w, backend={backend!r}, **kw)\n"
        "print(time.perf_counter() - t)\n")
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("cold cache", "warm cache"):
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 env=env, timeout=900)
            if out.returncode != 0:
                raise RuntimeError(out.stderr)
            results[label] = float(out.stdout.strip().splitlines()[-1])
    return results


# --------------------------------------------------------------------------------------
# Reporting


def geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def run_bench(networks: Sequence[str], batches: Sequence[int], contenders: Sequence[Contender],
              *, warmup: int = 2, repeats: int = 15, min_seconds: float = 0.25,
              layers: slice | None = None, progress: bool = True, command: str = "",
              out: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark, print the tables, and return everything as a JSON-able dict."""
    tables = load_networks()
    for name in networks:
        if name not in tables:
            raise ParameterError(f"convflow bench: unknown network {name!r}"
                                 f"{did_you_mean(name, tables)}; known: {', '.join(tables)}")
    selected = {n: tables[n][layers] if layers else tables[n] for n in networks}
    empty = [name for name, chosen in selected.items() if not chosen]
    if empty:
        raise ParameterError(f"convflow bench: the layer selection {layers} leaves no layer of "
                             f"{', '.join(empty)}")
    if not batches or min(batches) < 1 or repeats < 1:
        raise ParameterError(f"convflow bench: batches must be >= 1 and repeats >= 1, but got "
                             f"batches {list(batches)} and repeats {repeats}")
    threads = int(os.environ.get("NUMBA_NUM_THREADS", hostinfo.cpu_count()))
    peak = sgemm_gflops()
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": f"{hostinfo.cpu_name()}, {hostinfo.cpu_count()} cores",
        "python": platform.python_version(), "numpy": np.__version__,
        "contenders": {c.name: c.version for c in contenders},
        "threads": threads, "sgemm_gflops": round(peak, 1), "dtype": "float32",
        "command": command,
    }
    out(f"convflow bench, {meta['date']}: {meta['host']}, float32, {threads} threads; numpy "
        f"sgemm peak {peak:.0f} GFLOP/s measured now")
    out("contenders: " + ", ".join(f"{c.name} {c.version}" for c in contenders))
    rows: list[dict[str, Any]] = []
    first = contenders[0].name
    if len(contenders) > 1:
        out(f"time ratios are {first}/other everywhere (per layer and in the summaries): below "
            f"1 means {first} is faster")
    with progress_bar(sum(len(v) for v in selected.values()) * len(batches), progress) as bar:
        for name in networks:
            for batch in batches:
                out("")
                out(f"{name}, batch {batch}")
                header = f"{'#':>3} {'layer':<34} {'kind':<9}"
                for c in contenders:
                    header += f" {c.name + ' ms':>11} {'GF/s':>6}"
                    if c.name != first:
                        header += f" {first + '/' + c.name:>{max(8, len(first + c.name) + 1)}}"
                out(header)
                for layer in selected[name]:
                    bar.working_on(f"{name} b{batch} #{layer.index}")
                    result = measure_layer(layer, batch, contenders, warmup, repeats, min_seconds)
                    bar.advance()
                    line = f"{layer.index:>3} {layer.describe():<34} {layer.kind:<9}"
                    for c in contenders:
                        m = result[c.name]
                        line += f" {m.median_ms:>11.3f} {m.gflops:>6.0f}"
                        if c.name != first:
                            ratio = result[first].median_ms / m.median_ms
                            line += f" {ratio:>{max(8, len(first + c.name) + 1)}.2f}"
                    out(line)
                    rows.append({"network": name, "batch": batch, "layer": layer.index,
                                 "describe": layer.describe(), "kind": layer.kind,
                                 "flops": layer.flops(batch), "count": layer.count,
                                 "results": {k: asdict(v) for k, v in result.items()}})
                _summary(rows, name, batch, contenders, peak, out)
    summary = _overall(rows, contenders, peak, out)
    return {"meta": meta, "rows": rows, "summary": summary}


def _ratios(rows: Sequence[dict[str, Any]], a: str, b: str) -> list[float]:
    return [r["results"][a]["median_ms"] / r["results"][b]["median_ms"] for r in rows]


def _summary(rows: list[dict[str, Any]], name: str, batch: int, contenders: Sequence[Contender],
             peak: float, out: Callable[[str], None]) -> None:
    mine = [r for r in rows if r["network"] == name and r["batch"] == batch]
    first = contenders[0].name
    for c in contenders[1:]:
        out(f"    geomean time {first}/{c.name}: {geomean(_ratios(mine, first, c.name)):.2f}")


def _overall(rows: list[dict[str, Any]], contenders: Sequence[Contender], peak: float,
             out: Callable[[str], None]) -> dict[str, Any]:
    first = contenders[0].name
    summary: dict[str, Any] = {}
    out("")
    out(f"summary over {len(rows)} layer runs (time ratio {first}/other; below 1 means {first} is faster)")
    for c in contenders[1:]:
        overall = geomean(_ratios(rows, first, c.name))
        per_kind = {}
        for kind in ("1x1", "3x3", "depthwise", "grouped", "other"):
            subset = [r for r in rows if r["kind"] == kind]
            if subset:
                per_kind[kind] = round(geomean(_ratios(subset, first, c.name)), 3)
        summary[f"{first}/{c.name}"] = {"geomean": round(overall, 3), "per_kind": per_kind}
        kinds = ", ".join(f"{k} {v:.2f}" for k, v in per_kind.items())
        out(f"  {first}/{c.name}: geomean {overall:.2f}  ({kinds})")
    for c in contenders:
        three = [r["results"][c.name]["gflops"] for r in rows if r["kind"] == "3x3"]
        if three:
            best = max(three)
            out(f"  {c.name}: 3x3 layers at {statistics.median(three):.0f} GFLOP/s median, "
                f"{best:.0f} best = {100 * best / peak:.0f}% of the sgemm peak")
            summary.setdefault("three_by_three_gflops", {})[c.name] = {
                "median": round(statistics.median(three), 1), "best": round(best, 1)}
    return summary


def pyplot() -> Any:
    """matplotlib's pyplot on a file-only backend, or a ParameterError saying how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ParameterError(f"convflow bench: --plot needs matplotlib ({exc}); pip install "
                             f"'convflow[plot]' (or pip install matplotlib)") from None
    return plt


def plot(result: dict[str, Any], path: str) -> Any:
    """Write a PNG of the median time of every layer run: one panel per network and batch,
    one bar per contender and layer (named on the axis), log scale, lower is better.
    Returns the (closed) matplotlib figure."""
    plt = pyplot()
    contenders = list(result["meta"]["contenders"])
    rows = result["rows"]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["network"], row["batch"]), []).append(row)
    widest = max(len(g) for g in groups.values())
    fig, axes = plt.subplots(len(groups), 1, squeeze=False,
                             figsize=(max(8.0, widest * 0.45 * len(contenders)), 4.5 * len(groups)))
    width = 0.8 / len(contenders)
    for ax, ((network, batch), group) in zip(axes[:, 0], groups.items()):
        positions = np.arange(len(group))
        for i, name in enumerate(contenders):
            ax.bar(positions + (i - (len(contenders) - 1) / 2) * width,
                   [r["results"][name]["median_ms"] for r in group], width, label=name)
        ax.set_xticks(positions)
        ax.set_xticklabels([f"#{r['layer']} {r['describe']}" for r in group], rotation=60,
                           ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("median time, ms (lower is better)")
        ax.set_title(f"{network}, batch {batch}")
        ax.legend()
    fig.suptitle(f"convflow bench {result['meta']['date']} ({result['meta']['host']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig
