"""The ``convflow`` command: info, explain, demo, bench, tune and cache (see ``--help``)."""

from __future__ import annotations

import argparse
import ast
import os
import pathlib
import platform
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import numpy as np

from . import config, hostinfo
from .errors import ConvflowError, ParameterError, did_you_mean

DTYPES = ("float16", "bfloat16", "float32", "float64")
DIRECTIONS = ("forward", "backward_data", "backward_weight")
COMPARE = ("torch", "scipy")


DESCRIPTION = """\
convflow: convolutions with host-side checks, a rule-based backend selector and
numba / OpenCL / CuPy backends, from the command line.

Every bad argument is a one-line error with exit status 2; 'convflow COMMAND --help'
shows a command's options and their defaults."""


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except for flags and options without one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if (action.default is None or action.default is False or action.default == []
                or action.default is argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the message and where to read the options."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _shape(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return values


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _ints_at_least(minimum: int) -> Callable[[str], list[int]]:
    """``1,8`` -> [1, 8], each at least *minimum*."""
    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in _names(text)]
        except ValueError:
            values = []
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers >= {minimum}, e.g. 1,8, got {text!r}")
        return values

    return parse


def _names_from(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """A comma list of names, each one of *choices*."""
    def parse(text: str) -> list[str]:
        names = _names(text)
        for name in names:
            if name not in choices:
                raise argparse.ArgumentTypeError(
                    f"{name!r} is not one of {', '.join(choices)}{did_you_mean(name, choices)}")
        if not names:
            raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(choices)}")
        return names

    return parse


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


def _numpy_dtype(name: str) -> np.dtype[Any]:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _writable_file(option: str, path: str | None) -> None:
    """Fail before a long run when *path* could not be written at its end."""
    if path is None:
        return
    target = pathlib.Path(path)
    folder = target.parent
    if target.is_dir():
        raise ParameterError(f"{option} {path}: is a directory; give a file name")
    if not folder.is_dir():
        raise ParameterError(f"{option} {path}: the directory {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise ParameterError(f"{option} {path}: the directory {str(folder)!r} is not writable")


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


def _setting_problem(name: str, value: Any) -> str:
    """Why a parsed setting still cannot be used (an unknown backend or algorithm name), or ""."""
    from .backends import validate_backend_name
    from .selector import known_algorithm_names

    try:
        if name == "CONVFLOW_BACKEND":
            for backend in value:
                validate_backend_name(backend, f"{name}={','.join(value)!r}")
        elif name in ("CONVFLOW_ALGO", "CONVFLOW_DISABLE_ALGOS") and value:
            known = known_algorithm_names()
            for algorithm in (value,) if isinstance(value, str) else value:
                if algorithm not in known:
                    return (f"unknown algorithm {algorithm!r}{did_you_mean(algorithm, known)}; "
                            f"known algorithms: {', '.join(sorted(known))}")
    except ConvflowError as exc:
        return str(exc)
    return ""


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
            problem = _setting_problem(name, value)
            if problem:
                shown = f"{shown} INVALID ({problem})"
        except ConvflowError as exc:
            shown = f"INVALID ({exc})"
        source = "set" if config.is_set(name) else "default"
        print(f"  {name} = {shown or '(empty)'} [{source}]")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .functional import explain

    dtype = _numpy_dtype(args.dtype)
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
    if not 1 <= len(parts) <= 3 or (len(parts) == 1 and parts[0] is None) or (
            len(parts) == 3 and parts[2] is not None and parts[2] <= 0):
        raise argparse.ArgumentTypeError(f"expected a layer index or a slice like 2:5 or 0:23:5 "
                                         f"(positive step), got {text!r}")
    if len(parts) == 1:
        assert parts[0] is not None
        return slice(parts[0], parts[0] + 1 if parts[0] != -1 else None)
    return slice(*parts)


def _slice_text(selection: slice) -> str:
    parts = (selection.start, selection.stop, selection.step)
    return ":".join("" if p is None else str(p) for p in parts).rstrip(":")


def _networks(requested: list[str], tables: dict[str, Any]) -> list[str]:
    """The networks ``--net`` names (``all``: every one but the tiny test layer)."""
    if requested == ["all"]:
        return [name for name in tables if name != "tiny"]
    for name in requested:
        if name not in tables:
            raise ParameterError(f"--net: unknown network {name!r}{did_you_mean(name, tables)}; "
                                 f"known: {', '.join(tables)}, all")
    return requested


def _list_networks() -> int:
    from . import bench

    for name, layers in bench.load_networks().items():
        kinds = sorted({layer.kind for layer in layers})
        print(f"{name:<24} {len(layers):>3} distinct conv layers ({sum(la.count for la in layers)} "
              f"in the network): {', '.join(kinds)}")
    return 0


def _contenders(args: argparse.Namespace) -> list[Any]:
    """The contenders ``--backend`` and ``--compare`` name, checked without importing them
    (each is imported by its worker process)."""
    import importlib.util

    from . import bench
    from .backends import validate_backend_name

    contenders = []
    for spec in args.backend:
        backend, _, _ = spec.partition(":")
        validate_backend_name(backend, "--backend")
        contenders.append(bench.ContenderSpec(spec, "convflow"))
    for name in args.compare:
        module = {"torch": "torch", "scipy": "scipy"}[name]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            install = ("install it with pip install torch==2.13.0 (CPU build)" if name == "torch"
                       else "pip install scipy")
            raise ParameterError(f"--compare {name} needs {'PyTorch' if name == 'torch' else 'scipy'}"
                                 f" (no module named {module!r}); {install}")
        if name == "torch":
            contenders.append(bench.ContenderSpec("torch", "torch"))
        else:
            contenders += [bench.ContenderSpec(n, n) for n in ("scipy-fft", "scipy-oa")]
    if not contenders:
        raise ParameterError("--backend / --compare: no contender to benchmark; give a backend "
                             "(e.g. --backend numba) or --compare torch")
    names = [c.name for c in contenders]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ParameterError(f"--backend / --compare: {', '.join(twice)} named twice; name each "
                             f"contender once")
    return contenders


def _passes(text: str) -> list[str]:
    """``forward,backward`` -> the passes to time; ``all`` -> every pass."""
    from .bench import PASSES

    if text.strip() == "all":
        return list(PASSES)
    return _names_from(PASSES)(text)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _seconds(text: str) -> float:
    value = _number(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _seconds_or_zero(text: str) -> float:
    value = _number(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from . import bench

    if args.list:
        return _list_networks()
    tables = bench.load_networks()
    networks = _networks(args.net, tables)
    # Everything that could fail after the run is checked before it.
    _writable_file("--json", args.json)
    _writable_file("--plot", args.plot)
    if args.plot:
        bench.pyplot()
    if args.layers is not None:
        for name in networks:
            if not tables[name][args.layers]:
                raise ParameterError(f"--layers {_slice_text(args.layers)}: selects no layer of {name}, "
                                     f"which has layers 0 to {len(tables[name]) - 1}")
    contenders = _contenders(args)
    if args.torch_first and not any(c.kind == "convflow" for c in contenders):
        raise ParameterError("--torch-first: imports torch before convflow in convflow's process, "
                             "but no convflow backend is benchmarked; give --backend")
    mode = bench.Mode(in_process=args.in_process, torch_first=args.torch_first,
                      busy_core=args.busy_core)
    try:
        latencies = {}
        if args.first_call:
            for backend in args.backend:
                latency = bench.first_call_latency(backend)
                latencies[backend] = latency
                print(f"first call ({backend}, a new process from its imports): "
                      + ", ".join(f"{k} {v:.2f} s" for k, v in latency.items()))
        result = bench.run_bench(networks, args.batch, contenders, passes=args.pass_,
                                 mode=mode, sequence=args.sequence, threads=args.threads or None,
                                 warmup=args.warmup, repeats=args.repeats,
                                 settle=args.settle, timeout=args.timeout, layers=args.layers,
                                 progress=not args.no_progress, command=args.command_line)
    except bench.WorkerError as exc:
        print(f"convflow bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("convflow bench: interrupted; every worker and the busy process are stopped",
              file=sys.stderr)
        return 130
    if latencies:
        result["meta"]["first_call"] = latencies
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)
    if args.plot:
        bench.plot(result, args.plot)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from . import bench, perfdb
    from .functional import explain
    from .progress import progress_bar

    tables = bench.load_networks()
    networks = _networks(args.net, tables)
    dtype = _numpy_dtype(args.dtype)
    jobs = [(name, layer, batch, direction) for name in networks for layer in tables[name]
            for batch in args.batch for direction in args.direction]
    counts: dict[str, int] = {}
    with config.override(CONVFLOW_FIND_MODE="autotune"), \
            progress_bar(len(jobs), not args.no_progress) as bar:
        for name, layer, batch, direction in jobs:
            bar.working_on(f"{name} b{batch} #{layer.index}")
            x = np.broadcast_to(np.zeros((), dtype), (batch, *layer.input))
            w = np.broadcast_to(np.zeros((), dtype), layer.weight)
            decision = explain(x, w, None, layer.stride, layer.padding, layer.dilation,
                               layer.groups, backend=args.backend, direction=direction)
            counts[decision.source] = counts.get(decision.source, 0) + 1
            bar.advance()
            print(f"{name:<14} b{batch:<3} #{layer.index:<3} {layer.describe():<34} {direction:<16} "
                  f"{decision.backend}/{decision.algorithm} [{decision.source}]")
    db = perfdb.current()
    print(f"tuned {len(jobs)} problems ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}); "
          f"perf-db {db.path}")
    return 0


# The compiler caches convflow points below its cache directory (see config.cache_dir).
COMPILER_CACHES = (("numba", "numba's compiled kernels"), ("pyopencl", "PyOpenCL programs"),
                   ("pocl", "PoCL kernels"))


def _folder_size(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def cmd_cache(args: argparse.Namespace) -> int:
    from . import cachedir, perfdb

    db = perfdb.current()
    # The physical directory (links resolved by the trust decision), and never through a
    # link in place of one of the caches.
    caches = [(cachedir.trust().path / name, what) for name, what in COMPILER_CACHES]
    if args.action == "clear":
        removed = db.clear()
        print(f"removed {removed} entries from {db.path}")
        for path, what in caches:
            if path.is_dir() and not path.is_symlink():
                size = _folder_size(path)
                shutil.rmtree(path)
                print(f"removed {what}: {path} ({size / 2**20:.1f} MiB)")
        return 0
    info = db.info()
    print(_cache_line())
    print(f"perf-db: {info['path']}" + (f" ({info['error']})" if "error" in info else ""))
    print(f"  entries: {info['entries']} ({info['bytes'] / 1024:.1f} KiB)")
    for backend, count in sorted(info["by_backend"].items()):
        print(f"    {backend}: {count}")
    for path, what in caches:
        if path.is_dir():
            print(f"{what}: {path} ({_folder_size(path) / 2**20:.1f} MiB)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(batch=args.batch, size=args.size, backend=args.backend)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    formatter = _Help
    parser = _Parser(prog="convflow", description=DESCRIPTION,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"convflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", formatter_class=formatter,
                          help="version, backends with their status, devices and their limits, "
                               "threads, settings")
    info.set_defaults(func=cmd_info)

    ex = sub.add_parser("explain", formatter_class=formatter,
                        help="show how a convolution would be run, and why")
    ex.add_argument("--input", type=_shape, required=True, help="input shape, e.g. 8,64,56,56")
    ex.add_argument("--weight", type=_shape, required=True, help="weight shape, e.g. 64,64,3,3")
    ex.add_argument("--bias", action="store_true", help="include a bias")
    ex.add_argument("--stride", type=_int_or_tuple, default=1, help="int or comma list")
    ex.add_argument("--padding", type=_int_or_tuple, default=0,
                    help="int, comma list, pairs '(1,2),(0,1)', valid, same, same_lower")
    ex.add_argument("--dilation", type=_int_or_tuple, default=1, help="int or comma list")
    ex.add_argument("--groups", type=int, default=1, help="channel groups")
    ex.add_argument("--padding-mode", default="zeros", help="zeros, reflect, replicate, circular")
    ex.add_argument("--transposed", action="store_true", help="a transposed convolution")
    ex.add_argument("--output-padding", type=_int_or_tuple, default=0,
                    help="extra output size of a transposed convolution")
    ex.add_argument("--layout", default=None, help="NCHW (default), NHWC, NCW, NWC, NCDHW, NDHWC")
    ex.add_argument("--activation", default=None, choices=["relu", "relu6", "silu", "gelu"],
                    help="applied after the bias")
    ex.add_argument("--dtype", default="float32", choices=DTYPES, help="the operands' dtype")
    ex.add_argument("--backend", default=None,
                    help="force a backend: numba, opencl, cupy (or cpu, cuda)")
    ex.add_argument("--algorithm", default=None, help="force an algorithm of the backend")
    ex.add_argument("--direction", default="forward", choices=DIRECTIONS, help="the pass to explain")
    ex.set_defaults(func=cmd_explain)

    demo = sub.add_parser("demo", formatter_class=formatter,
                          help="the backends here, and ResNet-50's first layers run and checked "
                               "on each available one")
    demo.add_argument("--batch", type=_int_at_least(0), default=1, help="images (0: an empty batch)")
    demo.add_argument("--size", type=_int_at_least(1), default=224, help="image height and width")
    demo.add_argument("--backend", default=None,
                      help="run on this backend only (default: every available one)")
    demo.set_defaults(func=cmd_demo)

    be = sub.add_parser("bench", formatter_class=formatter,
                        help="time real networks' conv layers against PyTorch or other algorithms")
    be.add_argument("--net", type=_names, default="resnet50",
                    help="comma list of networks, or 'all' (see --list)")
    be.add_argument("--list", action="store_true", help="list the networks and exit")
    be.add_argument("--batch", type=_ints_at_least(1), default="1,8", help="comma list of batch sizes")
    be.add_argument("--backend", type=_names, default="numba",
                    help="convflow contenders: backend or backend:algorithm, comma list")
    be.add_argument("--compare", type=_names_from(COMPARE), default=[],
                    help="other contenders: torch (needs PyTorch), scipy (scipy.signal, where it applies)")
    be.add_argument("--pass", dest="pass_", metavar="PASS", type=_passes, default="forward",
                    help="comma list of passes to time: forward, backward-data, backward-weight, "
                         "backward (both gradients, one call), or all; torch runs "
                         "aten.convolution_backward")
    be.add_argument("--sequence", action="store_true",
                    help="also run each network's layers back to back, as inference does "
                         "(each layer once per round, weighted by its count): a total per network")
    be.add_argument("--threads", type=_int_at_least(0), default=0,
                    help="torch threads (0: torch's own default; torch.set_num_threads is not called)")
    be.add_argument("--torch-first", action="store_true",
                    help="convflow's worker imports torch and runs one torch conv before importing "
                         "convflow, as in a process that uses both")
    be.add_argument("--in-process", action="store_true",
                    help="the old way: all contenders in one process, interleaved (their thread "
                         "pools and settings then act on each other)")
    be.add_argument("--busy-core", action="store_true",
                    help="run an unrelated CPU-bound process (a busy loop) while measuring")
    be.add_argument("--settle", type=_seconds_or_zero, default=0.25,
                    help="seconds to wait before a worker measures after another did, so threads "
                         "the other library left spinning are asleep")
    be.add_argument("--timeout", type=_seconds, default=600.0,
                    help="seconds a worker may take to start or to measure one layer")
    be.add_argument("--repeats", type=_int_at_least(1), default=15,
                    help="timed rounds at most per layer (back to back: rounds)")
    be.add_argument("--warmup", type=_int_at_least(1), default=2,
                    help="calls per contender before timing, at least (the first compiles); "
                         "more follow until a call runs within 25%% of the fastest so far (at "
                         "most 20 calls or 2 s), so a new layer's first calls, which fault "
                         "in fresh memory, are not timed")
    be.add_argument("--layers", type=_layer_slice, default=None,
                    help="layer index or slice of each network's table, e.g. 0:5 or 0:23:3")
    be.add_argument("--json", default=None, help="write all results as JSON to this file")
    be.add_argument("--plot", default=None, help="write a PNG plot to this file (needs matplotlib)")
    be.add_argument("--first-call", action="store_true",
                    help="also time the first call in a new process, cold and warm numba cache")
    be.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    be.set_defaults(func=cmd_bench)

    tune = sub.add_parser("tune", formatter_class=formatter,
                          help="fill the perf-db for a network's layers ahead of time")
    tune.add_argument("--net", type=_names, default="resnet50",
                      help="comma list of networks, or 'all' (see convflow bench --list)")
    tune.add_argument("--batch", type=_ints_at_least(1), default="1", help="comma list of batch sizes")
    tune.add_argument("--backend", default=None, help="tune this backend (default: the rules' choice)")
    tune.add_argument("--dtype", default="float32", choices=DTYPES, help="the operands' dtype")
    tune.add_argument("--direction", type=_names_from(DIRECTIONS), default="forward",
                      help="comma list of " + ", ".join(DIRECTIONS))
    tune.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    tune.set_defaults(func=cmd_tune)

    cache = sub.add_parser("cache", formatter_class=formatter,
                           help="show or clear the perf-db and the compiler caches")
    cache.add_argument("action", choices=["info", "clear"],
                       help="info: where they are and their sizes; clear: remove them")
    cache.set_defaults(func=cmd_cache)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["convflow", *argv])
    try:
        return int(args.func(args))
    except ConvflowError as exc:
        message = str(exc)
        # Library messages that already name the command ("demo: ...", "convflow bench: ...").
        for prefix in (f"convflow {args.command}: ", f"{args.command}: "):
            message = message[len(prefix):] if message.startswith(prefix) else message
        print(f"convflow {args.command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `convflow info | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
