"""The ``convflow`` command: ``info``, ``explain`` and ``demo``."""

from __future__ import annotations

import argparse
import ast
import platform
import shlex
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import config, hostinfo
from .errors import ConvflowError


def _shape(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return values


def _int_or_tuple(text: str) -> Any:
    """``2`` -> 2, ``2,1`` -> (2, 1), ``(1,2),(0,1)`` -> pairs, ``same`` -> 'same'."""
    stripped = text.strip()
    if stripped.replace("_", "").isalpha():
        return stripped
    try:
        value = ast.literal_eval(stripped)
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(
            f"expected an int, a comma list, pairs like '(1,2),(0,1)', or a word, got {text!r}"
        ) from None
    return value


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _cache_line() -> str:
    """Where the cache directory is and whether convflow trusts it (see cachedir.py)."""
    from . import cachedir

    try:
        decision = cachedir.trust()
    except ConvflowError as exc:
        return f"cache directory: INVALID ({exc})"
    where = str(decision.configured)
    if decision.path != decision.configured:
        where += f" -> {decision.path}"
    return f"cache directory: {where} ({decision.reason})"


def cmd_info(args: argparse.Namespace) -> int:
    from . import __version__, available_backends
    from .backends import get_backend

    print(f"convflow {__version__}")
    print(f"python {platform.python_version()} ({sys.executable}), numpy {np.__version__}")
    print(f"host: {hostinfo.cpu_name()}, {hostinfo.cpu_count()} cores, "
          f"{_gib(hostinfo.memory_total())} memory ({_gib(hostinfo.memory_available())} available)")
    print(_cache_line())
    print("backends:")
    for name, status in available_backends().items():
        state = "available" if status.available else "unavailable"
        print(f"  {name:<8} {state}: {status.reason}")
        for device in status.devices:
            print(f"           device: {device}")
        for key, value in status.details.items():
            print(f"           {key}: {value}")
        if status.available:
            names = ", ".join(rule.name for rule in get_backend(name).algorithm_rules())
            print(f"           algorithms (in rule order): {names}")
    print("opencl platforms and devices:")
    from .backends.opencl.runtime import inventory

    for line in inventory():
        print(f"  {line}")
    print("configuration:")
    for name in config.VARIABLES:
        try:
            value = config.get(name)
            shown = ",".join(value) if isinstance(value, tuple) else str(value)
        except ConvflowError as exc:
            shown = f"INVALID ({exc})"
        source = "set" if config.is_set(name) else "default"
        print(f"  {name} = {shown or '(empty)'} [{source}]")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .functional import explain

    if args.dtype == "bfloat16":
        import ml_dtypes

        dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        dtype = np.dtype(args.dtype)
    # Only shapes and dtypes matter: zero-stride views cost no memory at any size.
    x = np.broadcast_to(np.zeros((), dtype=dtype), args.input)
    w = np.broadcast_to(np.zeros((), dtype=dtype), args.weight)
    out_channels = args.weight[1] * args.groups if args.transposed else args.weight[0]
    b = np.broadcast_to(np.zeros((), dtype=dtype), (out_channels,)) if args.bias else None
    decision = explain(x, w, b, stride=args.stride, padding=args.padding, dilation=args.dilation,
                       groups=args.groups, padding_mode=args.padding_mode,
                       transposed=args.transposed, output_padding=args.output_padding,
                       layout=args.layout, activation=args.activation, backend=args.backend,
                       algorithm=args.algorithm, direction=args.direction)
    print(decision)
    return 0


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _layer_slice(text: str) -> slice:
    """``3`` -> layer 3; ``2:5``, ``:8``, ``0:23:5`` -> Python slices of the layer table."""
    try:
        parts = [int(p) if p.strip() else None for p in text.split(":")]
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 3 or (len(parts) == 1 and parts[0] is None):
        raise argparse.ArgumentTypeError(f"expected a layer index or a slice like 2:5 or 0:23:5, "
                                         f"got {text!r}")
    if len(parts) == 1:
        assert parts[0] is not None
        return slice(parts[0], parts[0] + 1)
    return slice(*parts)


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from . import bench

    tables = bench.load_networks()
    networks = [n for n in tables if n != "tiny"] if args.net == ["all"] else args.net
    contenders = [bench.convflow_contender(name) for name in args.backend]
    threads = args.threads or hostinfo.cpu_count()
    for name in args.compare:
        if name != "torch":
            raise argparse.ArgumentTypeError(f"--compare: only 'torch' is supported, got {name!r}")
        contenders.append(bench.torch_contender(threads))
    if args.first_call:
        for backend in args.backend:
            latency = bench.first_call_latency(backend)
            print(f"first call ({backend}, import + one conv per algorithm, new process): "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in latency.items()))
    result = bench.run_bench(networks, args.batch, contenders, warmup=args.warmup,
                             repeats=args.repeats, layers=args.layers,
                             progress=not args.no_progress, command=args.command_line)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)
    if args.plot:
        bench.plot(result, args.plot)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from . import bench, perfdb
    from .functional import explain

    tables = bench.load_networks()
    networks = [n for n in tables if n != "tiny"] if args.net == ["all"] else args.net
    for name in networks:
        if name not in tables:
            raise argparse.ArgumentTypeError(f"unknown network {name!r}; known: {', '.join(tables)}")
    jobs = [(name, layer, batch, direction) for name in networks for layer in tables[name]
            for batch in args.batch for direction in args.direction]
    progress = bench._Progress(len(jobs), not args.no_progress and sys.stderr.isatty())
    counts: dict[str, int] = {}
    with config.override(CONVFLOW_FIND_MODE="autotune"):
        for name, layer, batch, direction in jobs:
            x = np.broadcast_to(np.zeros((), np.dtype(args.dtype)), (batch, *layer.input))
            w = np.broadcast_to(np.zeros((), np.dtype(args.dtype)), layer.weight)
            decision = explain(x, w, None, layer.stride, layer.padding, layer.dilation,
                               layer.groups, backend=args.backend, direction=direction)
            counts[decision.source] = counts.get(decision.source, 0) + 1
            progress.step(f"{name} b{batch} #{layer.index}")
            print(f"{name:<14} b{batch:<3} #{layer.index:<3} {layer.describe():<34} {direction:<16} "
                  f"{decision.backend}/{decision.algorithm} [{decision.source}]")
    db = perfdb.current()
    print(f"tuned {len(jobs)} problems ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}); "
          f"perf-db {db.path}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from . import perfdb

    db = perfdb.current()
    if args.action == "clear":
        removed = db.clear()
        print(f"removed {removed} entries from {db.path}")
        return 0
    info = db.info()
    print(_cache_line())
    print(f"perf-db: {info['path']}" + (f" ({info['error']})" if "error" in info else ""))
    print(f"  entries: {info['entries']} ({info['bytes'] / 1024:.1f} KiB)")
    for backend, count in sorted(info["by_backend"].items()):
        print(f"    {backend}: {count}")
    for name, what in (("numba", "numba's compiled kernels"), ("pyopencl", "PyOpenCL programs"),
                       ("pocl", "PoCL kernels")):
        path = config.cache_dir() / name
        if path.is_dir():
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            print(f"{what}: {path} ({size / 2**20:.1f} MiB)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(batch=args.batch, size=args.size, backend=args.backend)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="version, backends with their status, devices and their "
                                       "limits, threads, settings")
    info.set_defaults(func=cmd_info)

    ex = sub.add_parser("explain", help="show how a convolution would be run, and why")
    ex.add_argument("--input", type=_shape, required=True, help="input shape, e.g. 8,64,56,56")
    ex.add_argument("--weight", type=_shape, required=True, help="weight shape, e.g. 64,64,3,3")
    ex.add_argument("--bias", action="store_true", help="include a bias")
    ex.add_argument("--stride", type=_int_or_tuple, default=1)
    ex.add_argument("--padding", type=_int_or_tuple, default=0,
                    help="int, comma list, pairs '(1,2),(0,1)', valid, same, same_lower")
    ex.add_argument("--dilation", type=_int_or_tuple, default=1)
    ex.add_argument("--groups", type=int, default=1)
    ex.add_argument("--padding-mode", default="zeros")
    ex.add_argument("--transposed", action="store_true")
    ex.add_argument("--output-padding", type=_int_or_tuple, default=0)
    ex.add_argument("--layout", default=None, help="NCHW (default), NHWC, NCW, NWC, NCDHW, NDHWC")
    ex.add_argument("--activation", default=None, choices=["relu", "relu6", "silu", "gelu"])
    ex.add_argument("--dtype", default="float32",
                    choices=["float16", "bfloat16", "float32", "float64"])
    ex.add_argument("--backend", default=None)
    ex.add_argument("--algorithm", default=None)
    ex.add_argument("--direction", default="forward",
                    choices=["forward", "backward_data", "backward_weight"])
    ex.set_defaults(func=cmd_explain)

    be = sub.add_parser("bench", help="time real networks' conv layers against PyTorch")
    be.add_argument("--net", type=_names, default=["resnet50"],
                    help="comma list of networks, or 'all' (see --list)")
    be.add_argument("--batch", type=lambda t: [int(v) for v in _names(t)], default=[1, 8])
    be.add_argument("--backend", type=_names, default=["numba"], help="convflow backends to time")
    be.add_argument("--compare", type=_names, default=[], help="other contenders: torch")
    be.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    be.add_argument("--repeats", type=int, default=15, help="timed rounds at most per layer")
    be.add_argument("--warmup", type=int, default=2)
    be.add_argument("--layers", type=_layer_slice, default=None, help="layer index or slice, e.g. 0:5")
    be.add_argument("--json", default=None, help="write all results as JSON to this file")
    be.add_argument("--plot", default=None, help="write a PNG plot (needs matplotlib)")
    be.add_argument("--first-call", action="store_true",
                    help="also time the first call in a new process, cold and warm numba cache")
    be.add_argument("--no-progress", action="store_true")
    be.set_defaults(func=cmd_bench)

    tune = sub.add_parser("tune", help="fill the perf-db for a network's layers ahead of time")
    tune.add_argument("--net", type=_names, default=["resnet50"], help="comma list, or 'all'")
    tune.add_argument("--batch", type=lambda t: [int(v) for v in _names(t)], default=[1])
    tune.add_argument("--backend", default=None)
    tune.add_argument("--dtype", default="float32", choices=["float16", "float32", "float64"])
    tune.add_argument("--direction", type=_names, default=["forward"],
                      help="comma list of forward, backward_data, backward_weight")
    tune.add_argument("--no-progress", action="store_true")
    tune.set_defaults(func=cmd_tune)

    cache = sub.add_parser("cache", help="show or clear the perf-db")
    cache.add_argument("action", choices=["info", "clear"])
    cache.set_defaults(func=cmd_cache)

    demo = sub.add_parser("demo", help="run and check the first layers of ResNet-50")
    demo.add_argument("--batch", type=int, default=1)
    demo.add_argument("--size", type=int, default=224, help="image height and width")
    demo.add_argument("--backend", default=None)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["convflow", *argv])
    try:
        return int(args.func(args))
    except ConvflowError as exc:
        print(f"convflow: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `convflow info | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
