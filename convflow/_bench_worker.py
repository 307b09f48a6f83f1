"""The process ``convflow bench`` measures a contender in.

``convflow bench`` starts one of these per contender (or one for all of them with
``--in-process``) and talks to it in JSON lines: one request on stdin, one answer on stdout.
The file is run by path (``python -c 'import runpy; runpy.run_path(...)'``), not as
``convflow._bench_worker``, so that a torch or scipy worker imports that library and numpy
only: not convflow, whose import would be the first thing in the process. It uses the
standard library and numpy, and imports a contender's library when asked to start it.

Requests (``op``), each answered ``{"ok": true, ...}`` or ``{"ok": false, "error": "...",
"parameter": bool}`` (``parameter``: the user's argument is at fault, e.g. an unknown
algorithm, a library that is not installed):

- ``start``: ``contenders`` ([{"name", "kind"}]), ``threads`` (torch's, or null: torch's own
  default), ``torch_first`` (import torch and run one conv before convflow). Answers the
  versions and thread settings each library reports.
- ``measure``: ``contenders`` (names), ``layer``, ``batch``, ``pass``, ``warmup``,
  ``repeats``, ``min_seconds``. Answers ``times_ms`` per contender (null where it cannot
  compute the layer). Several contenders are timed interleaved, one call each per round.
- ``sequence_add`` (``contender``, ``layer``, ``batch``, ``pass``, ``warmup``): prepare and
  warm up one layer of a back-to-back sequence; ``sequence_round`` (``contender``): run the
  prepared layers once each, in order, answering each call's time; ``sequence_clear``.
- ``sgemm``: numpy's float32 matrix-product speed (GFLOP/s), in a worker without contenders.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

Runner = Callable[[], Any]
Prepare = Callable[[np.ndarray, np.ndarray, np.ndarray, dict[str, Any], str], "Runner | None"]
PASSES = ("forward", "backward-data", "backward-weight", "backward")
# conv_backward's / aten.convolution_backward's output_mask for each backward pass.
OUTPUT_MASKS = {"backward-data": (True, False, False), "backward-weight": (False, True, False),
                "backward": (True, True, False)}
# The passes convflow's explain() names for the directions a pass runs.
DIRECTIONS = {"forward": ("forward",), "backward-data": ("backward_data",),
              "backward-weight": ("backward_weight",),
              "backward": ("backward_data", "backward_weight")}


class ArgumentProblem(Exception):
    """The user's argument cannot be run (reported as a bad argument, not a crash)."""


class Contender:
    """``prepare(x, w, dy, layer, pass)`` returns the call to time, or None where the
    contender cannot compute that layer in that pass."""

    def __init__(self, name: str, prepare: Prepare, version: str,
                 settings: dict[str, Any]) -> None:
        self.name, self.prepare, self.version, self.settings = name, prepare, version, settings


def _geometry(layer: dict[str, Any]) -> tuple[tuple[int, int], Any, tuple[int, int], int]:
    return (tuple(layer["stride"]), tuple(tuple(p) for p in layer["padding"]),  # type: ignore[return-value]
            tuple(layer["dilation"]), int(layer["groups"]))


def start_torch(threads: int | None) -> tuple[Any, dict[str, Any]]:
    """Import torch as its users do; set its thread count only when the user asked."""
    try:
        import torch
    except ImportError as exc:
        raise ArgumentProblem(f"--compare torch needs PyTorch ({exc}); install it with pip "
                              f"install torch==2.13.0 (CPU build)") from None
    if threads:
        torch.set_num_threads(threads)
    settings = {"torch.get_num_threads()": torch.get_num_threads(),
                "torch.get_num_interop_threads()": torch.get_num_interop_threads(),
                "torch.set_num_threads": threads if threads else "not called (torch's default)"}
    return torch, settings


def torch_contender(threads: int | None) -> Contender:
    torch, settings = start_torch(threads)
    import torch.nn.functional as F

    def prepare(x: np.ndarray, w: np.ndarray, dy: np.ndarray, layer: dict[str, Any],
                kind: str) -> Runner:
        stride, padding, dilation, groups = _geometry(layer)
        tx, tw, tdy = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(dy)
        (top, bottom), (left, right) = padding
        symmetric = top == bottom and left == right
        # torch has no asymmetric padding: a user pads explicitly, as done here.
        pads = (left, right, top, bottom)
        conv_padding = [top, left] if symmetric else [0, 0]
        if kind == "forward":
            def forward() -> Any:
                with torch.no_grad():
                    tin = tx if symmetric else F.pad(tx, pads)
                    return F.conv2d(tin, tw, None, stride, conv_padding, dilation, groups)

            return forward
        # The backward of an explicitly padded forward: autograd saved the padded input, and
        # the data gradient of the pad crops the padded input's gradient.
        saved = tx if symmetric else F.pad(tx, pads)
        mask = list(OUTPUT_MASKS[kind])
        crop = tuple(-p for p in pads)

        def backward() -> Any:
            with torch.no_grad():
                grads = torch.ops.aten.convolution_backward(
                    tdy, saved, tw, None, list(stride), conv_padding, list(dilation), False,
                    [0, 0], groups, mask)
                if mask[0] and not symmetric:
                    return F.pad(grads[0], crop), grads[1]
                return grads

        return backward

    return Contender("torch", prepare, torch.__version__, settings)


def convflow_contender(spec: str) -> Contender:
    """A convflow backend, ``name`` or ``name:algorithm`` (forcing that algorithm)."""
    import convflow
    from convflow import functional
    from convflow.backends import backend_status, get_backend, validate_backend_name
    from convflow.errors import ConvflowError, did_you_mean

    backend, _, algorithm = spec.partition(":")
    try:
        name = validate_backend_name(backend, "--backend")
    except ConvflowError as exc:
        raise ArgumentProblem(str(exc)) from None
    status = backend_status(name)
    if not status.available:
        raise ArgumentProblem(f"backend {name!r} is unavailable: {status.reason}")
    if algorithm:
        known = [rule.name for rule in get_backend(name).algorithm_rules()]
        if algorithm not in known:
            raise ArgumentProblem(f"--backend {spec}: {algorithm!r} is not an algorithm of the "
                                  f"{name} backend{did_you_mean(algorithm, known)}; its "
                                  f"algorithms: {', '.join(known)}")
    settings = {"convflow": convflow.__version__, **status.details}
    device_backend = get_backend(name) if name != "numba" else None
    from convflow.tensor import Device

    device = Device.parse(status.devices[0].split(" ")[0] if status.devices else None)

    def prepare(x: np.ndarray, w: np.ndarray, dy: np.ndarray, layer: dict[str, Any],
                kind: str) -> Runner | None:
        stride, padding, dilation, groups = _geometry(layer)
        if algorithm:
            # A forced algorithm that cannot compute the layer (e.g. depthwise on a dense
            # layer) is left out of that row.
            for direction in DIRECTIONS[kind]:
                decision = functional.explain(x, w, None, stride, padding, dilation, groups,
                                              backend=name, direction=direction)
                if algorithm not in decision.candidates:
                    return None
        forced = algorithm or None
        if device_backend is not None:
            # Device backends: data resident on the device; each timed call waits until the
            # device has finished (their calls return once the work is queued).
            from convflow.tensor import tensor

            x, w, dy = (tensor(a, device=device) for a in (x, w, dy))  # type: ignore[assignment]
        if kind == "forward":
            def call() -> Any:
                return functional.conv2d(x, w, None, stride, padding, dilation, groups,
                                         backend=name, algorithm=forced)
        else:
            mask = OUTPUT_MASKS[kind]

            def call() -> Any:
                return functional.conv_backward(dy, x, w, stride=stride, padding=padding,
                                                dilation=dilation, groups=groups,
                                                output_mask=mask, backend=name,
                                                algorithm=forced)
        if device_backend is None:
            # A process's first call of a layer may run numpy_taps while the chosen
            # algorithm's kernels compile in the background (CONVFLOW_NUMBA_WARMUP); the
            # bench times the steady state, so it waits for them before the warm-up calls.
            call()
            functional.finish_warmup()
            return call

        def on_device() -> Any:
            result = call()
            device_backend.synchronize(device)
            return result

        return on_device

    return Contender(spec, prepare, status.version, settings)


def scipy_contender(name: str) -> Contender:
    """scipy.signal's ``fftconvolve`` (``scipy-fft``) or ``oaconvolve`` (``scipy-oa``), run as
    an image user runs them (one call over the channel axis with ``axes``, scipy.fft's
    default of one thread). They apply where a forward layer is a per-channel filter of one
    image: batch 1, stride 1, dilation 1, one channel or depthwise without a multiplier."""
    try:
        import scipy
        import scipy.signal
    except ImportError as exc:
        raise ArgumentProblem(f"--compare scipy needs scipy ({exc}); pip install scipy") from None
    function = {"scipy-fft": scipy.signal.fftconvolve, "scipy-oa": scipy.signal.oaconvolve}[name]

    def prepare(x: np.ndarray, w: np.ndarray, dy: np.ndarray, layer: dict[str, Any],
                kind: str) -> Runner | None:
        channels, outputs = layer["input"][0], layer["weight"][0]
        per_channel = layer["groups"] == channels == outputs and layer["weight"][1] == 1
        if not (kind == "forward" and x.shape[0] == 1 and per_channel
                and tuple(layer["stride"]) == (1, 1) and tuple(layer["dilation"]) == (1, 1)):
            return None
        image = x[0]
        # A convolution layer correlates: scipy convolves with the flipped kernel.
        kernel = np.ascontiguousarray(w[:, 0, ::-1, ::-1])
        (top, _), (left, _) = layer["padding"]
        kh, kw = layer["weight"][2:]
        oh, ow = layer["output"]
        rows = slice(kh - 1 - top, kh - 1 - top + oh)
        cols = slice(kw - 1 - left, kw - 1 - left + ow)

        def run() -> Any:
            return function(image, kernel, mode="full", axes=(1, 2))[:, rows, cols]

        return run

    return Contender(name, prepare, scipy.__version__, {"scipy.fft workers": "1 (its default)"})


def operands(layer: dict[str, Any], batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The layer's input, weight and output gradient: the same in every worker (seeded by
    the layer's index, drawn in one order whatever the pass)."""
    rng = np.random.default_rng(layer["index"])
    x = rng.standard_normal((batch, *layer["input"]), dtype=np.float32)
    weight = layer["weight"]
    w = (rng.standard_normal(weight, dtype=np.float32)
         / np.float32(math.sqrt(weight[1] * weight[2] * weight[3])))
    dy = rng.standard_normal((batch, weight[0], *layer["output"]), dtype=np.float32)
    return x, w, dy


# Warm-up goes on past the calls asked for until two calls in a row agree within STEADY: a
# new layer's first calls in a process pay for fresh memory (a large output is mapped and
# page-faulted anew until the allocator reuses it), for both libraries and over several calls
# (e.g. 24, 8, 5, then 1.4 ms for a 12.8 MB output), and timing those would measure the
# allocator rather than the convolution. Bounded by WARMUP_MAX_CALLS and WARMUP_MAX_SECONDS.
STEADY = 1.25
WARMUP_MAX_CALLS = 20
WARMUP_MAX_SECONDS = 2.0


def warm_up(run: Runner, calls: int) -> float:
    """At least *calls* calls of *run*, then more until steady (see STEADY); returns the
    last call's seconds."""
    previous, elapsed, spent, done = math.inf, math.inf, 0.0, 0
    while done < calls or (max(elapsed, previous) > STEADY * min(elapsed, previous)
                           and done < WARMUP_MAX_CALLS and spent < WARMUP_MAX_SECONDS):
        start = time.perf_counter()
        run()
        previous, elapsed = elapsed, time.perf_counter() - start
        spent, done = spent + elapsed, done + 1
    return elapsed


def measure(contenders: list[Contender], request: dict[str, Any]) -> dict[str, Any]:
    """Warm-up calls, then rounds of one timed call per contender (the order rotating)."""
    x, w, dy = operands(request["layer"], request["batch"])
    prepared = [(c, c.prepare(x, w, dy, request["layer"], request["pass"])) for c in contenders]
    runners = [(c.name, run) for c, run in prepared if run is not None]
    warm = 0.0
    for _, run in runners:
        warm = max(warm, warm_up(run, request["warmup"]))
    # Enough rounds for min_seconds of the slowest contender, within [min(3, repeats), repeats].
    repeats = request["repeats"]
    wanted = math.ceil(request["min_seconds"] / max(warm, 1e-6))
    rounds = min(repeats, max(3, wanted))
    times: list[list[float]] = [[] for _ in runners]
    for r in range(rounds):
        order = list(range(len(runners)))
        order = order[r % len(order):] + order[:r % len(order)] if order else order
        for i in order:
            start = time.perf_counter()
            runners[i][1]()
            times[i].append((time.perf_counter() - start) * 1e3)
    measured: dict[str, Any] = {c.name: None for c in contenders}
    measured.update({name: t for (name, _), t in zip(runners, times)})
    return {"times_ms": measured}


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


class Worker:
    """The state of one worker process: its contenders and its prepared sequences."""

    def __init__(self) -> None:
        self.contenders: dict[str, Contender] = {}
        self.sequences: dict[str, list[Runner | None]] = {}

    def start(self, request: dict[str, Any]) -> dict[str, Any]:
        settings: dict[str, Any] = {}
        threads = request.get("threads")
        specs = request["contenders"]
        if request.get("torch_first") and any(s["kind"] == "convflow" for s in specs):
            # As someone using both libraries runs convflow: torch first, its thread pool
            # started by one small conv, then convflow.
            torch, torch_settings = start_torch(threads)
            torch.nn.functional.conv2d(torch.ones(1, 8, 16, 16), torch.ones(8, 8, 3, 3))
            settings["torch (imported first)"] = {"version": torch.__version__, **torch_settings}
        for spec in specs:
            if spec["kind"] == "convflow":
                try:
                    contender = convflow_contender(spec["name"])
                except Exception as exc:
                    if type(exc).__module__.startswith("convflow."):  # e.g. a bad CONVFLOW_*
                        raise ArgumentProblem(str(exc)) from None
                    raise
            elif spec["kind"] == "torch":
                contender = torch_contender(threads)
            else:
                contender = scipy_contender(spec["kind"])
            self.contenders[spec["name"]] = contender
            settings[spec["name"]] = contender.settings
        return {"pid": os.getpid(), "python": platform.python_version(),
                "numpy": np.__version__,
                "versions": {name: c.version for name, c in self.contenders.items()},
                "settings": settings,
                "modules": sorted(m for m in ("convflow", "numba", "torch", "scipy")
                                  if m in sys.modules)}

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "start":
            return self.start(request)
        if op == "measure":
            return measure([self.contenders[n] for n in request["contenders"]], request)
        if op == "sequence_add":
            contender = self.contenders[request["contender"]]
            x, w, dy = operands(request["layer"], request["batch"])
            run = contender.prepare(x, w, dy, request["layer"], request["pass"])
            if run is not None:
                warm_up(run, request["warmup"])
            self.sequences.setdefault(contender.name, []).append(run)
            return {"available": run is not None}
        if op == "sequence_round":
            times: list[float | None] = []
            for run in self.sequences[request["contender"]]:
                if run is None:
                    times.append(None)
                    continue
                start = time.perf_counter()
                run()
                times.append((time.perf_counter() - start) * 1e3)
            return {"times_ms": times}
        if op == "sequence_clear":
            self.sequences.clear()
            return {}
        if op == "sgemm":
            return {"gflops": sgemm_gflops()}
        raise ValueError(f"unknown request {op!r}")


def main() -> int:
    # The parent drives this process and stops it (end of input, or kill): Ctrl-C at the
    # terminal is the parent's to handle, so a worker does not die half-way through an answer.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Answers go to a private copy of stdout; anything a library prints goes to stderr, which
    # the parent keeps to report when this process fails.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    worker = Worker()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"ok": True, **worker.handle(request)}
        except ArgumentProblem as exc:
            reply = {"ok": False, "parameter": True, "error": str(exc)}
        except Exception as exc:
            traceback.print_exc()
            sys.stderr.flush()
            reply = {"ok": False, "parameter": False, "error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(reply) + "\n")
        answers.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
