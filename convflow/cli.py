"""The ``convflow`` command: ``info``, ``explain`` and ``demo``."""

from __future__ import annotations

import argparse
import ast
import platform
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import config, hostinfo
from .errors import ConvflowError


def _shape(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
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


def cmd_info(args: argparse.Namespace) -> int:
    from . import __version__, available_backends
    from .backends import get_backend

    print(f"convflow {__version__}")
    print(f"python {platform.python_version()} ({sys.executable}), numpy {np.__version__}")
    print(f"host: {hostinfo.cpu_name()}, {hostinfo.cpu_count()} cores, "
          f"{_gib(hostinfo.memory_total())} memory ({_gib(hostinfo.memory_available())} available)")
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

    dtype = np.dtype(args.dtype)
    # Only shapes and dtypes matter: zero-stride views cost no memory at any size.
    x = np.broadcast_to(np.zeros((), dtype=dtype), args.input)
    w = np.broadcast_to(np.zeros((), dtype=dtype), args.weight)
    out_channels = args.weight[1] * args.groups if args.transposed else args.weight[0]
    b = np.broadcast_to(np.zeros((), dtype=dtype), (out_channels,)) if args.bias else None
    decision = explain(x, w, b, stride=args.stride, padding=args.padding, dilation=args.dilation,
                       groups=args.groups, padding_mode=args.padding_mode,
                       transposed=args.transposed, output_padding=args.output_padding,
                       backend=args.backend, algorithm=args.algorithm, direction=args.direction)
    print(decision)
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
    ex.add_argument("--dtype", default="float32", choices=["float16", "float32", "float64"])
    ex.add_argument("--backend", default=None)
    ex.add_argument("--algorithm", default=None)
    ex.add_argument("--direction", default="forward",
                    choices=["forward", "backward_data", "backward_weight"])
    ex.set_defaults(func=cmd_explain)

    demo = sub.add_parser("demo", help="run and check the first layers of ResNet-50")
    demo.add_argument("--batch", type=int, default=1)
    demo.add_argument("--size", type=int, default=224, help="image height and width")
    demo.add_argument("--backend", default=None)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConvflowError as exc:
        print(f"convflow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
