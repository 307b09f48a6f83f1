"""Every ``CONVFLOW_*`` environment variable, declared once: name, type, default and help.

Values are read from the environment at the moment they are needed (so a test or a user
can change ``os.environ`` between calls), validated, and may be overridden for a block of
code, per thread and per asyncio task, with :func:`override`::

    with convflow.config.override(CONVFLOW_BACKEND="numba", CONVFLOW_WORKSPACE_MB=16):
        y = convflow.conv2d(x, w)

The README's table of variables is generated from :data:`VARIABLES` by
``python -m convflow.config``; a test keeps the two in sync.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, did_you_mean

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected one of 1, 0, true, false, yes, no, on, off")


def _parse_int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected an integer >= {minimum}") from None
        if value < minimum:
            raise ValueError(f"expected an integer >= {minimum}")
        return value

    return parse


def _parse_name_list(text: str) -> tuple[str, ...]:
    names = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    for name in names:
        if not name.replace("_", "").isalnum():
            raise ValueError("expected a comma-separated list of names")
    return names


def _parse_text(text: str) -> str:
    return text.strip()


def _parse_choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        lowered = text.strip().lower()
        if lowered not in choices:
            raise ValueError("expected one of " + ", ".join(choices) + did_you_mean(lowered, choices))
        return lowered

    return parse


@dataclass(frozen=True)
class Variable:
    """One environment variable: how to parse it, its default, and what it does."""

    name: str
    type: str
    default: Any
    help: str
    parse: Callable[[str], Any]

    def default_text(self) -> str:
        if isinstance(self.default, bool):
            return "1" if self.default else "0"
        if isinstance(self.default, tuple):
            return ",".join(self.default) or "(empty)"
        return str(self.default)


_LOG_LEVELS = ("debug", "info", "warning", "error")

VARIABLES: Mapping[str, Variable] = {
    v.name: v
    for v in (
        Variable(
            "CONVFLOW_BACKEND",
            "list of names",
            (),
            "Backends to use, in order of preference (e.g. `numba` or `opencl,numba`). The first "
            "available one that can run the problem is used; if none can, the call fails with "
            "`BackendUnavailableError` instead of falling back. Empty: choose by where the data "
            "lives, then the CPU.",
            _parse_name_list,
        ),
        Variable(
            "CONVFLOW_LOG",
            "one of " + "/".join(_LOG_LEVELS),
            "warning",
            "Level of the `convflow` logger; `debug` logs every backend and algorithm decision "
            "to stderr.",
            _parse_choice(_LOG_LEVELS),
        ),
        Variable(
            "CONVFLOW_WORKSPACE_MB",
            "integer >= 1",
            64,
            "Upper bound, in MiB, on the scratch memory one call may use (e.g. the im2col "
            "buffer); larger problems are processed in tiles.",
            _parse_int_at_least(1),
        ),
        Variable(
            "CONVFLOW_NUM_THREADS",
            "integer >= 0",
            0,
            "Threads the numba backend's parallel kernels use; 0 means all of numba's threads "
            "(`NUMBA_NUM_THREADS`, by default one per core).",
            _parse_int_at_least(0),
        ),
        Variable(
            "CONVFLOW_NUMBA_CACHE",
            "boolean",
            True,
            "Cache compiled numba kernels on disk (numba's `cache=True`) so later processes "
            "skip the first-call compile. Read once, when the numba kernels are first imported.",
            _parse_bool,
        ),
        Variable(
            "CONVFLOW_OPENCL_DEVICE",
            "text",
            "",
            "OpenCL devices the opencl backend uses, as in `PYOPENCL_CTX`: `P` (every device of "
            "platform `P`), `P:D` (one device) or `:D` (device `D` of any platform), where `P` "
            "and `D` are an index or a case-insensitive name substring (e.g. `0:0`, `pocl`, "
            "`:gfx`). The first match is `opencl:0`. Empty: every device, GPUs first, then "
            "CPUs. Read when the backend first starts.",
            _parse_text,
        ),
        Variable(
            "CONVFLOW_OPENCL_DISABLE",
            "list of names",
            (),
            "opencl solvers the selector must not use (e.g. `winograd,tiled_direct`); forcing a "
            "disabled one with `algorithm=` is an error. `naive` cannot be disabled.",
            _parse_name_list,
        ),
        Variable(
            "CONVFLOW_TEST_REQUIRE",
            "list of names",
            (),
            "For the test suite: backends that must be available. A listed backend that cannot "
            "run makes its tests fail instead of being skipped (CI sets it).",
            _parse_name_list,
        ),
    )
}

_overrides: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "convflow_config_overrides", default=types.MappingProxyType({})
)


def _variable(name: str) -> Variable:
    try:
        return VARIABLES[name]
    except KeyError:
        raise ConfigError(
            f"unknown configuration variable {name!r}{did_you_mean(name, VARIABLES)}; "
            f"known variables: {', '.join(VARIABLES)}"
        ) from None


def _parse(variable: Variable, text: str, source: str) -> Any:
    try:
        return variable.parse(text)
    except ValueError as exc:
        raise ConfigError(f"{source} {variable.name}={text!r} is invalid: {exc}") from None


def get(name: str) -> Any:
    """Return the current value of variable *name*: an override, else the environment, else
    the default. Raises :class:`ConfigError` naming the variable if its value is invalid."""
    variable = _variable(name)
    overrides = _overrides.get()
    if name in overrides:
        return overrides[name]
    text = os.environ.get(name)
    if text is None:
        return variable.default
    return _parse(variable, text, "environment variable")


def is_set(name: str) -> bool:
    """Whether *name* was given explicitly (an override or the environment), not defaulted."""
    _variable(name)
    return name in _overrides.get() or name in os.environ


@contextlib.contextmanager
def override(**values: Any) -> Iterator[None]:
    """Override variables for the enclosed block (this thread / task only).

    Values may be given as strings (parsed as if they came from the environment) or as
    already-typed values (validated by round-tripping through the parser).
    """
    parsed = dict(_overrides.get())
    for name, value in values.items():
        variable = _variable(name)
        if isinstance(value, (list, tuple)):
            text = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            text = "1" if value else "0"
        else:
            text = str(value)
        parsed[name] = _parse(variable, text, "override")
    token = _overrides.set(parsed)
    try:
        yield
    finally:
        _overrides.reset(token)


def markdown_table() -> str:
    """The README's table of environment variables."""
    rows = ["| Variable | Type | Default | Meaning |", "| --- | --- | --- | --- |"]
    for variable in VARIABLES.values():
        rows.append(
            f"| `{variable.name}` | {variable.type} | `{variable.default_text()}` | {variable.help} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
