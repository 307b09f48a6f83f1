"""``convflow bench``: time conv layers of real networks against other contenders.

Measured as users run each library: every contender runs in a worker process of its own
(``_bench_worker.py``), a fresh interpreter that imports only that contender's library,
with that library's own default settings. This process only orchestrates: it imports no
backend and no torch, and for each network, batch and pass asks each worker in turn to
measure a layer (warm-up calls, then timed calls, the median kept), over a JSON-lines pipe.
``--in-process`` keeps the old way (all contenders in one process, interleaved) as an
explicit option. Ratios are times relative to the first contender; geometric means
summarize a network and each layer class. numpy's float32 GEMM peak is measured in the same
run (in a process of its own), so efficiency can be read against the machine's actual
limit. Benchmarks measure; tests never assert times.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.resources
import json
import math
import os
import pathlib
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from . import hostinfo
from .errors import ConvflowError, ParameterError, did_you_mean
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
# Worker processes

PASSES = ("forward", "backward-data", "backward-weight", "backward")
KINDS = ("1x1", "3x3", "depthwise", "grouped", "other")
WORKER_SCRIPT = pathlib.Path(__file__).with_name("_bench_worker.py")
# The worker runs by path (see _bench_worker.py): a torch worker imports torch, not convflow.
_BOOT = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
# An unrelated CPU-bound process (--busy-core): a pure-Python loop that stops by itself when
# its parent is gone, so not even a killed `convflow bench` leaves it running.
_BUSY_LOOP = ("import os, signal\n"
              "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
              "parent = os.getppid()\n"
              "while os.getppid() == parent:\n"
              "    for _ in range(1_000_000):\n"
              "        pass\n")


class WorkerError(ConvflowError, RuntimeError):
    """A worker process died, hung or failed: one line naming the contender and why."""


@dataclass(frozen=True)
class ContenderSpec:
    """A contender as the parent knows it: its name and which worker code runs it
    (``convflow``, ``torch``, ``scipy-fft`` or ``scipy-oa``)."""

    name: str
    kind: str


class WorkerProcess:
    """One worker (``python _bench_worker.py``) and its JSON-lines pipe. Every answer is
    awaited at most *timeout* seconds; a worker that dies, hangs or fails raises a
    WorkerError naming its contenders and the tail of its stderr."""

    def __init__(self, label: str, timeout: float) -> None:
        self.label, self.timeout = label, timeout
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(WORKER_SCRIPT)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr, text=True, encoding="utf-8")
        self._answers: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._answers.put(line)
        self._answers.put(None)

    def stderr_tail(self, lines: int = 3, width: int = 400) -> str:
        """The last lines the worker wrote to stderr, as one line."""
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace")
        tail = " | ".join([line.strip() for line in text.splitlines() if line.strip()][-lines:])
        if len(tail) > width:
            tail = "..." + tail[-width:]
        return tail or "(nothing on stderr)"

    def request(self, message: dict[str, Any], what: str) -> dict[str, Any]:
        """Send one request and return its answer; *what* names it in errors."""
        name = f"{self.label} (worker pid {self.process.pid})"
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
            line = self._answers.get(timeout=self.timeout)
        except queue.Empty:
            self.kill()
            raise WorkerError(f"{name} gave no answer within {self.timeout:g} s while {what} "
                              f"(--timeout {self.timeout:g}); stopped it; its stderr: "
                              f"{self.stderr_tail()}") from None
        except (BrokenPipeError, OSError):
            line = None
        if line is None:
            status = self.process.wait()
            raise WorkerError(f"{name} exited with status {status} while {what}; its stderr: "
                              f"{self.stderr_tail()}")
        answer = json.loads(line)
        if not answer["ok"]:
            if answer.get("parameter"):
                raise ParameterError(answer["error"])
            raise WorkerError(f"{name} failed while {what}: {answer['error']}")
        return dict(answer)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def close(self) -> None:
        """End of input: the worker exits; killed if it does not within a few seconds."""
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()
        self._stderr.close()


def _cpu_seconds(pid: int) -> float | None:
    """CPU time a process has used so far (Linux /proc), or None where unknown."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, IndexError, ValueError):
        return None


@contextlib.contextmanager
def busy_core(enabled: bool) -> Iterator[dict[str, Any] | None]:
    """While the block runs, an unrelated CPU-bound process (one pure-Python busy loop),
    killed at the end whatever happens (an error, Ctrl-C). Yields its record for the JSON:
    pid, and the CPU seconds it used (filled in at the end)."""
    if not enabled:
        yield None
        return
    process = subprocess.Popen([sys.executable, "-c", _BUSY_LOOP], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record: dict[str, Any] = {"pid": process.pid, "what": "a pure-Python busy loop, one process"}
    started = time.perf_counter()
    try:
        yield record
    finally:
        record["cpu_seconds"] = _cpu_seconds(process.pid)
        record["wall_seconds"] = round(time.perf_counter() - started, 2)
        process.kill()
        process.wait()


def measure_sgemm(timeout: float) -> float:
    """numpy's float32 GEMM peak, measured in a worker process of its own (numpy alone)."""
    worker = WorkerProcess("the sgemm peak", timeout)
    try:
        worker.request({"op": "start", "contenders": []}, "starting")
        return float(worker.request({"op": "sgemm"}, "measuring the sgemm peak")["gflops"])
    finally:
        worker.close()

def first_call_latency(backend: str) -> dict[str, float]:
    """Seconds from a new process's start (``import numpy, convflow``) to the result of its
    first conv (a 3x3 layer, the rules' choice), and to the results of one conv per numba
    kernel family (3x3, 1x1, depthwise, and the direct loops forced), with a cold numba
    cache and then with the cache the first process wrote. A process's exit waits for the
    kernels it started compiling in the background, so the second one finds them cached."""
    code = (
        "import time; t = time.perf_counter(); import numpy as np, convflow\n"
        "x = np.ones((1, 16, 12, 12), np.float32)\n"
        "for i, (w, kw) in enumerate(((np.ones((16, 16, 3, 3), np.float32), dict(padding=1)),\n"
        "              (np.ones((16, 16, 1, 1), np.float32), {}),\n"
        "              (np.ones((16, 1, 3, 3), np.float32), dict(groups=16, padding=1)),\n"
        "              (np.ones((2, 16, 3, 3), np.float32), dict(algorithm='direct')))):\n"
        f"    convflow.conv2d(x, w, backend={backend!r}, **kw)\n"
        "    if i == 0: print(time.perf_counter() - t)\n"
        "print(time.perf_counter() - t)\n")
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("cold cache", "warm cache"):
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 env=env, timeout=900)
            if out.returncode != 0:
                raise RuntimeError(out.stderr)
            first, every = (float(line) for line in out.stdout.strip().splitlines()[-2:])
            results[f"first conv, {label}"] = first
            results[f"one conv per kernel family, {label}"] = every
    return results


# --------------------------------------------------------------------------------------
# Running and reporting


def geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def pass_flops(layer: Layer, batch: int, kind: str) -> int:
    """Arithmetic of a pass: each of forward, backward-data and backward-weight does the
    forward's multiply-adds; backward (both gradients) twice that."""
    return layer.flops(batch) * (2 if kind == "backward" else 1)


def layer_spec(layer: Layer) -> dict[str, Any]:
    """What a worker needs to know of a layer (it builds its operands from it)."""
    return {"index": layer.index, "input": layer.input, "weight": layer.weight,
            "stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation,
            "groups": layer.groups, "output": layer.output_hw()}


@dataclass(frozen=True)
class Mode:
    """How the contenders run. ``in_process``: all in one process, interleaved (the old
    way, kept as an option); otherwise each in its own worker process. ``torch_first``:
    convflow's process imports torch and runs one torch conv before importing convflow.
    ``busy_core``: an unrelated busy loop runs during the measurement."""

    in_process: bool = False
    torch_first: bool = False
    busy_core: bool = False

    @property
    def label(self) -> str:
        parts = ["in-process" if self.in_process else "isolated"]
        parts += [name for name, on in (("torch-first", self.torch_first),
                                        ("busy-core", self.busy_core)) if on]
        return "+".join(parts)

    def describe(self) -> str:
        text = ("IN-PROCESS: all contenders in one process, interleaved (each library's threads "
                "and settings act on the others)" if self.in_process else
                "isolated: each contender in its own worker process, with its library's own "
                "settings")
        if self.torch_first:
            text += "; torch-first: torch imported and one torch conv run before convflow"
        if self.busy_core:
            text += "; busy-core: an unrelated busy loop runs meanwhile"
        return text


def _start_workers(contenders: Sequence[ContenderSpec], mode: Mode, threads: int | None,
                   timeout: float) -> list[tuple[WorkerProcess, list[str], dict[str, Any]]]:
    """The workers (one per contender, or one for all in-process), each started: its
    libraries imported and its settings reported. A worker that cannot start stops them all."""
    groups = [list(contenders)] if mode.in_process else [[c] for c in contenders]
    started: list[tuple[WorkerProcess, list[str], dict[str, Any]]] = []
    try:
        for group in groups:
            names = [c.name for c in group]
            worker = WorkerProcess(", ".join(names), timeout)
            started.append((worker, names, {}))
            info = worker.request({"op": "start", "threads": threads,
                                   "torch_first": mode.torch_first,
                                   "contenders": [asdict(c) for c in group]}, "starting")
            started[-1][2].update(info)
    except BaseException:
        for worker, _, _ in started:
            worker.close()
        raise
    return started


def run_bench(networks: Sequence[str], batches: Sequence[int],
              contenders: Sequence[ContenderSpec], *, passes: Sequence[str] = ("forward",),
              mode: Mode = Mode(), sequence: bool = False, threads: int | None = None,
              warmup: int = 2, repeats: int = 15, min_seconds: float = 0.25,
              settle: float = 0.25, timeout: float = 600.0, layers: slice | None = None,
              progress: bool = True, command: str = "", out: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark, print the tables, and return everything as a JSON-able dict.

    This process only orchestrates: the contenders run in worker processes (see *mode*),
    layer by layer, each worker measuring the layer in turn (warm-up calls, then up to
    *repeats* timed calls, the median kept), the order of the workers rotating from layer
    to layer, with a pause of *settle* seconds between workers (see Settle). *threads* sets
    torch's thread count (None: torch's default, no call)."""
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
    for kind in passes:
        if kind not in PASSES:
            raise ParameterError(f"convflow bench: unknown pass {kind!r}; passes: "
                                 f"{', '.join(PASSES)}")
    workers = _start_workers(contenders, mode, threads, timeout)
    try:
        peak = measure_sgemm(timeout)
        with busy_core(mode.busy_core) as busy:
            meta = _meta(contenders, workers, mode, passes, sequence, peak, busy, command,
                         dict(warmup=warmup, repeats=repeats, min_seconds=min_seconds,
                              settle_seconds=settle, timeout=timeout))
            _print_header(meta, out)
            rows, sequences = _measure_all(selected, batches, passes, workers, sequence,
                                           [c.name for c in contenders], peak, warmup,
                                           repeats, min_seconds, Settle(settle), progress,
                                           out)
    finally:
        for worker, _, _ in workers:
            worker.close()
    summary = _overall(rows, sequences, [c.name for c in contenders], passes, peak, out)
    return {"meta": meta, "rows": rows, "sequences": sequences, "summary": summary}


_ENVIRONMENT = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NUMBA_NUM_THREADS",
                "NUMBA_THREADING_LAYER", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
                "OPENBLAS_L2_SIZE", "MKL_NUM_THREADS", "CONVFLOW_NUM_THREADS")


def _meta(contenders: Sequence[ContenderSpec],
          workers: Sequence[tuple[WorkerProcess, list[str], dict[str, Any]]], mode: Mode,
          passes: Sequence[str], sequence: bool, peak: float, busy: dict[str, Any] | None,
          command: str, settings: dict[str, Any]) -> dict[str, Any]:
    by_name = {name: info for _, names, info in workers for name in names}
    return {
        "format": 2,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": f"{hostinfo.cpu_name()}, {hostinfo.cpu_count()} cores",
        "python": platform.python_version(), "numpy": np.__version__, "dtype": "float32",
        "command": command,
        "mode": {"processes": "in-process" if mode.in_process else "isolated",
                 "torch_first": mode.torch_first, "busy_core": mode.busy_core},
        "mode_label": mode.label, "mode_description": mode.describe(),
        "passes": list(passes), "sequence": sequence,
        "contenders": {c.name: by_name[c.name]["versions"][c.name] for c in contenders},
        "workers": {c.name: {"pid": by_name[c.name]["pid"],
                             "shared_with": [n for n in names if n != c.name],
                             "modules": by_name[c.name]["modules"],
                             # Its own, and those of a library imported before it.
                             "settings": {key: value for key, value
                                          in by_name[c.name]["settings"].items()
                                          if key == c.name or key not in by_name}}
                    for c in contenders for _, names, _ in workers if c.name in names},
        "sgemm_gflops": round(peak, 1),
        "sgemm": {"gflops": round(peak, 1),
                  "how": "numpy float32 2048x2048 matmul, median of 5, in a worker of its own"},
        "environment": {k: os.environ[k] for k in _ENVIRONMENT if k in os.environ},
        "busy_core": busy,
        **settings,
    }


def _print_header(meta: dict[str, Any], out: Callable[[str], None]) -> None:
    out(f"convflow bench, {meta['date']}: {meta['host']}, float32; numpy sgemm peak "
        f"{meta['sgemm_gflops']:.0f} GFLOP/s measured now (a process of its own)")
    out(f"mode: {meta['mode_description']}")
    if meta["busy_core"]:
        out(f"busy core: {meta['busy_core']['what']}, pid {meta['busy_core']['pid']}")
    out("passes: " + ", ".join(meta["passes"]) + ("; and each network back to back (--sequence)"
                                                  if meta["sequence"] else ""))
    for name, worker in meta["workers"].items():
        settings = "; ".join(
            f"{key}: " + (", ".join(f"{k}={v}" for k, v in value.items())
                          if isinstance(value, dict) else str(value))
            for key, value in worker["settings"].items())
        shared = f", shared with {', '.join(worker['shared_with'])}" if worker["shared_with"] else ""
        out(f"  {name} {meta['contenders'][name]} (pid {worker['pid']}{shared}): {settings}")


def _measure_all(selected: dict[str, list[Layer]], batches: Sequence[int],
                 passes: Sequence[str],
                 workers: Sequence[tuple[WorkerProcess, list[str], dict[str, Any]]],
                 sequence: bool, names: list[str], peak: float, warmup: int, repeats: int,
                 min_seconds: float, settle: Settle, progress: bool,
                 out: Callable[[str], None]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    sequences: list[dict[str, Any]] = []
    first = names[0]
    if len(names) > 1:
        out(f"time ratios are {first}/other everywhere (per layer and in the summaries): below "
            f"1 means {first} is faster")
    steps = sum(len(v) for v in selected.values()) * len(batches) * len(passes)
    with progress_bar(steps * (2 if sequence else 1), progress) as bar:
        for name in selected:
            for batch in batches:
                for kind in passes:
                    out("")
                    out(f"{name}, batch {batch}, {kind}")
                    out(_header(names))
                    table = []
                    for position, layer in enumerate(selected[name]):
                        where = f"{name} batch {batch} {kind} layer #{layer.index}"
                        bar.working_on(f"{name} b{batch} {kind[:10]} #{layer.index}")
                        times: dict[str, Any] = {}
                        for worker, group, _ in _rotated(workers, position):
                            settle.before(worker)
                            answer = worker.request(
                                {"op": "measure", "contenders": group, "layer": layer_spec(layer),
                                 "batch": batch, "pass": kind, "warmup": warmup,
                                 "repeats": repeats, "min_seconds": min_seconds},
                                f"measuring {where}")
                            times.update(answer["times_ms"])
                        bar.advance()
                        flops = pass_flops(layer, batch, kind)
                        result = {n: _measurement(times[n], flops) for n in names
                                  if times.get(n) is not None}
                        out(_line(f"{layer.index:>3} {layer.describe():<34} {layer.kind:<9}",
                                  names, result))
                        table.append({"network": name, "batch": batch, "pass": kind,
                                      "layer": layer.index, "describe": layer.describe(),
                                      "kind": layer.kind, "flops": flops, "count": layer.count,
                                      "results": result})
                    rows.extend(table)
                    if sequence:
                        entry = _sequence(name, batch, kind, selected[name], workers, names,
                                          warmup, repeats, settle, bar)
                        sequences.append(entry)
                        out(_line(f"{'':>3} {_sequence_label(entry):<34} {'sequence':<9}", names,
                                  entry["results"]))
                    for other in names[1:]:
                        ratios = _ratios(table, first, other)
                        out(f"    geomean time {first}/{other}: " + (
                            f"{geomean(ratios):.2f}" if ratios else "n/a (no layer both ran)"))
    return rows, sequences


class Settle:
    """A pause before a worker measures when another worker measured last: threads the
    other library left spinning after its calls (OpenBLAS's, OpenMP's) must have gone to
    sleep, or they take a core from the next contender. (Measured on the 2-core machine:
    after one 512x512 numpy matmul, OpenBLAS's threads used 0.1 CPU-seconds in the next 0.3 s
    with the caller asleep.)"""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last: WorkerProcess | None = None

    def before(self, worker: WorkerProcess) -> None:
        if self._last is not None and self._last is not worker:
            time.sleep(self.seconds)
        self._last = worker


def _rotated(items: Sequence[Any], position: int) -> list[Any]:
    """*items* starting at *position* (mod its length): no contender always goes first."""
    shift = position % len(items)
    return [*items[shift:], *items[:shift]]


def _measurement(times_ms: list[float], flops: int) -> dict[str, Any]:
    median = statistics.median(times_ms)
    return {"median_ms": median, "gflops": flops / median / 1e6, "times_ms": times_ms}


def _width(first: str, other: str) -> int:
    return max(8, len(first + other) + 1)


def _header(names: list[str]) -> str:
    header = f"{'#':>3} {'layer':<34} {'kind':<9}"
    for name in names:
        header += f" {name + ' ms':>11} {'GF/s':>6}"
        if name != names[0]:
            header += f" {names[0] + '/' + name:>{_width(names[0], name)}}"
    return header


def _line(start: str, names: list[str], result: dict[str, Any]) -> str:
    """One table row: each contender's median and GFLOP/s, and the ratio first/other (n/a
    where a contender cannot compute the layer)."""
    first, line = names[0], start
    for name in names:
        width = _width(first, name)
        m = result.get(name)
        line += f" {'n/a':>11} {'':>6}" if m is None else f" {m['median_ms']:>11.3f} {m['gflops']:>6.0f}"
        if name != first:
            ratio = (f"{result[first]['median_ms'] / m['median_ms']:>{width}.2f}"
                     if m is not None and first in result else f"{'':>{width}}")
            line += f" {ratio}"
    return line


def _sequence_label(entry: dict[str, Any]) -> str:
    return f"back to back: {entry['layers']} layers, {entry['convs']} convs"


def _sequence(network: str, batch: int, kind: str, layers: list[Layer],
              workers: Sequence[tuple[WorkerProcess, list[str], dict[str, Any]]],
              names: list[str], warmup: int, repeats: int, settle: Settle,
              bar: Any) -> dict[str, Any]:
    """A network's layers back to back, as inference runs them: each round runs every layer
    once, in order; a round's time is the sum of its calls weighted by how often the
    network has each layer (its ``count``); the median over rounds is reported. A contender
    that cannot run one of the layers has no total."""
    where = f"{network} batch {batch} {kind} back to back"
    owner = {name: worker for worker, group, _ in workers for name in group}
    available = dict.fromkeys(names, True)
    for layer in layers:
        bar.working_on(f"{network} b{batch} {kind[:10]} seq #{layer.index}")
        for name in names:
            answer = owner[name].request(
                {"op": "sequence_add", "contender": name, "layer": layer_spec(layer),
                 "batch": batch, "pass": kind, "warmup": warmup},
                f"preparing layer #{layer.index} of {where}")
            available[name] = available[name] and answer["available"]
        bar.advance()
    counts = [layer.count for layer in layers]
    totals: dict[str, list[float]] = {name: [] for name in names if available[name]}
    for r in range(max(1, repeats)):
        for name in _rotated(list(totals), r) if totals else []:
            settle.before(owner[name])
            calls = owner[name].request({"op": "sequence_round", "contender": name},
                                        f"running round {r + 1} of {where}")["times_ms"]
            totals[name].append(sum(c * t for c, t in zip(counts, calls)))
    for worker, _, _ in workers:
        worker.request({"op": "sequence_clear"}, f"ending {where}")
    flops = sum(pass_flops(layer, batch, kind) * layer.count for layer in layers)
    return {"network": network, "batch": batch, "pass": kind, "layers": len(layers),
            "convs": sum(counts), "flops": flops, "weighted_by": "count",
            "results": {name: {**_measurement(t, flops), "rounds_ms": t}
                        for name, t in totals.items()}}


def _ratios(rows: Sequence[dict[str, Any]], a: str, b: str) -> list[float]:
    """Time ratios a/b over the rows where both ran."""
    return [r["results"][a]["median_ms"] / r["results"][b]["median_ms"] for r in rows
            if a in r["results"] and b in r["results"]]


def _overall(rows: list[dict[str, Any]], sequences: list[dict[str, Any]], names: list[str],
             passes: Sequence[str], peak: float, out: Callable[[str], None]) -> dict[str, Any]:
    """Per pass: the geomean time ratio first/other overall and per layer class, the 3x3
    layers' speed against the sgemm peak, and the back-to-back totals' ratios."""
    first = names[0]
    summary: dict[str, Any] = {}
    for kind in passes:
        mine = [r for r in rows if r["pass"] == kind]
        entry: dict[str, Any] = {"ratios": {}, "three_by_three": {}, "sequence": {}}
        out("")
        out(f"summary, {kind}, over {len(mine)} layer runs (time ratio {first}/other; below 1 "
            f"means {first} is faster)")
        for other in names[1:]:
            if not _ratios(mine, first, other):
                out(f"  {first}/{other}: n/a (no layer both ran)")
                continue
            overall = geomean(_ratios(mine, first, other))
            per_kind = {}
            for layer_kind in KINDS:
                subset = [r for r in mine if r["kind"] == layer_kind]
                ratios = _ratios(subset, first, other)
                if ratios:
                    per_kind[layer_kind] = round(geomean(ratios), 3)
            entry["ratios"][f"{first}/{other}"] = {"geomean": round(overall, 3),
                                                   "per_kind": per_kind}
            kinds = ", ".join(f"{k} {v:.2f}" for k, v in per_kind.items())
            out(f"  {first}/{other}: geomean {overall:.2f}  ({kinds})")
        for name in names:
            three = [r["results"][name]["gflops"] for r in mine
                     if r["kind"] == "3x3" and name in r["results"]]
            if three:
                best, median = max(three), statistics.median(three)
                out(f"  {name}: 3x3 layers at {median:.0f} GFLOP/s median, {best:.0f} best = "
                    f"{100 * best / peak:.0f}% of the sgemm peak")
                entry["three_by_three"][name] = {"median_gflops": round(median, 1),
                                                 "best_gflops": round(best, 1),
                                                 "best_percent_of_sgemm": round(100 * best / peak, 1)}
        for seq in (s for s in sequences if s["pass"] == kind):
            key = f"{seq['network']} batch {seq['batch']}"
            results = seq["results"]
            for other in names[1:]:
                if first in results and other in results:
                    ratio = results[first]["median_ms"] / results[other]["median_ms"]
                    entry["sequence"].setdefault(f"{first}/{other}", {})[key] = round(ratio, 3)
                    out(f"  back to back, {key}: {first} {results[first]['median_ms']:.2f} ms, "
                        f"{other} {results[other]['median_ms']:.2f} ms, {first}/{other} "
                        f"{ratio:.2f}")
        summary[kind] = entry
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
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["network"], row["batch"], row.get("pass", "forward")),
                          []).append(row)
    widest = max(len(g) for g in groups.values())
    fig, axes = plt.subplots(len(groups), 1, squeeze=False,
                             figsize=(max(8.0, widest * 0.45 * len(contenders)), 4.5 * len(groups)))
    width = 0.8 / len(contenders)
    for ax, ((network, batch, kind), group) in zip(axes[:, 0], groups.items()):
        positions = np.arange(len(group))
        for i, name in enumerate(contenders):
            # No bar where a contender cannot compute the layer (n/a in the table).
            ax.bar(positions + (i - (len(contenders) - 1) / 2) * width,
                   [r["results"][name]["median_ms"] if name in r["results"] else math.nan
                    for r in group], width, label=name)
        ax.set_xticks(positions)
        ax.set_xticklabels([f"#{r['layer']} {r['describe']}" for r in group], rotation=60,
                           ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("median time, ms (lower is better)")
        ax.set_title(f"{network}, batch {batch}" + (f", {kind}" if kind != "forward" else ""))
        ax.legend()
    mode = result["meta"].get("mode_label", "in-process")
    fig.suptitle(f"convflow bench {result['meta']['date']} ({result['meta']['host']}; {mode})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig
