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
import pathlib
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


# Integer variables are counts, sizes and times: anything past this is a typo, and Python's
# unbounded ints would overflow later, far from the variable.
_MAX_INT = 2**31 - 1


def _parse_int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        digits = text.strip()
        expected = f"expected an integer >= {minimum} (at most {_MAX_INT}, in ASCII digits)"
        # int() also reads other scripts' digits ('١٢') and underscores ('1_0'): refused, so
        # a value means the same to every tool that reads it.
        body = digits[1:] if digits[:1] in "+-" else digits
        if not (body.isascii() and body.isdigit()) or len(body) > 10:
            raise ValueError(expected)
        value = int(digits)
        if not minimum <= value <= _MAX_INT:
            raise ValueError(expected)
        return value

    return parse


def _parse_name_list(text: str) -> tuple[str, ...]:
    names = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    for name in names:
        if not name.replace("_", "").isalnum():
            raise ValueError("expected a comma-separated list of names")
    return names


def _parse_name(text: str) -> str:
    name = text.strip().lower()
    if name and not name.replace("_", "").isalnum():
        raise ValueError("expected one algorithm name (letters, digits, underscores)")
    return name


# Linux's limits (NAME_MAX, PATH_MAX): a longer name fails every file call with ENAMETOOLONG.
_NAME_MAX = 255
_PATH_MAX = 4096


def _parse_path(text: str) -> str:
    path = text.strip()
    if "\x00" in path:
        raise ValueError("expected a directory path")
    path = os.path.expanduser(path) if path else ""
    encoded = os.fsencode(path)
    longest = max((len(part) for part in encoded.split(b"/")), default=0)
    if longest > _NAME_MAX:
        raise ValueError(f"one of its names is {longest} bytes long; the file system allows "
                         f"{_NAME_MAX} per name")
    if len(encoded) >= _PATH_MAX - 256:
        raise ValueError(f"it is {len(encoded)} bytes long; paths must stay under "
                         f"{_PATH_MAX - 256} bytes (room for the files convflow keeps below it)")
    return path


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
    # Whether the variable can change which backend or algorithm a call gets (and so must
    # be part of the key of any cache of decisions).
    decides: bool = False

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
            decides=True,
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
            "buffer, cuDNN's workspace); larger problems are processed in tiles, and cuDNN "
            "engines that need more are not considered.",
            _parse_int_at_least(1),
            decides=True,
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
            "CONVFLOW_NUMBA_WARMUP",
            "one of background/wait",
            "background",
            "`background`: while the kernels a call needs are not compiled yet in this process "
            "(or loaded from the disk cache), they compile on a background thread and the call "
            "runs `numpy_taps` (numpy products, no compiled code), so the first call of a new "
            "process takes milliseconds; `explain()` says so, and `convflow.finish_warmup()` "
            "waits for the kernels. Calls numpy_taps would take over 0.5 s to run wait, and so "
            "do new problems once a warm-up found its kernels in the disk cache. A process exits "
            "once the kernels it started are compiled and cached. Forced algorithms, find mode "
            "and `CONVFLOW_DETERMINISTIC` always wait. `wait`: every call runs its chosen "
            "algorithm, compiling it first.",
            _parse_choice(("background", "wait")),
            decides=True,
        ),
        Variable(
            "CONVFLOW_ALLOW_TF32",
            "boolean",
            False,
            "cupy backend: let float32 convolutions use TF32 tensor cores (cuDNN engines and "
            "cuBLAS GEMMs), which round inputs to 10-bit mantissas. Off by default, so float32 "
            "means float32 (PyTorch enables it for cuDNN); `explain()` shows the setting.",
            _parse_bool,
            decides=True,
        ),
        Variable(
            "CONVFLOW_DETERMINISTIC",
            "boolean",
            False,
            "Run only algorithms whose results are bitwise reproducible across runs and thread "
            "counts (numba: not the BLAS-based `gemm_1x1` and `im2col_gemm`; cupy: only cuDNN "
            "engines without the non-deterministic note, e.g. atomics in weight gradients). A "
            "problem no deterministic algorithm can run is an error.",
            _parse_bool,
            decides=True,
        ),
        Variable(
            "CONVFLOW_FIND_MODE",
            "one of heuristic/autotune",
            "heuristic",
            "`heuristic`: algorithms are chosen by the rules alone, nothing is timed. `autotune`: "
            "the first time a problem is seen, every applicable algorithm of the chosen backend "
            "is timed on the real shapes and the fastest recorded in the perf-db; later calls, "
            "in any process, reuse the record without timing anything.",
            _parse_choice(("heuristic", "autotune")),
            decides=True,
        ),
        Variable(
            "CONVFLOW_ALGO",
            "algorithm name",
            "",
            "Force one algorithm (as the `algorithm=` keyword does) for every call; an unknown "
            "or inapplicable name is an error listing the valid names for the problem.",
            _parse_name,
            decides=True,
        ),
        Variable(
            "CONVFLOW_DISABLE_ALGOS",
            "list of names",
            (),
            "Algorithms never to consider (e.g. `im2col_gemm,winograd`), for rules and autotune.",
            _parse_name_list,
            decides=True,
        ),
        Variable(
            "CONVFLOW_CACHE_DIR",
            "directory",
            "",
            "Where the perf-db (autotune results) and the compiler caches (numba, PyOpenCL, PoCL) "
            "live. Empty: the user cache directory (platformdirs), e.g. `~/.cache/convflow` on "
            "Linux; a relative path is taken from the working directory. It must be private "
            "(see Trust model): otherwise every cache is skipped with one warning. convflow "
            "writes nothing outside it, except PoCL's temporary build directory (removed at "
            "exit) when it is not usable.",
            _parse_path,
            decides=True,
        ),
        Variable(
            "CONVFLOW_TUNE_BUDGET_MS",
            "integer >= 1",
            3000,
            "Time budget, in milliseconds, for autotuning one problem (first-call compiles "
            "included); candidates not reached in time are skipped, the rules' choice first.",
            _parse_int_at_least(1),
        ),
        Variable(
            "CONVFLOW_SOAK",
            "boolean",
            False,
            "For the test suite: run the property-based differential tests with thousands of "
            "examples instead of CI's bounded number (`CONVFLOW_SOAK=1 make test`).",
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


# Reading a variable sits on every call's hot path, where os.environ.get costs about a
# microsecond. os.environ keeps its entries in an encoded dict that os.environ writes through
# (and that putenv-level changes never reach os.environ anyway), so reading that dict sees
# exactly what os.environ.get would, for a fraction of the cost. Fallback: os.environ.get.
_ENVIRON_DATA: Any = getattr(os.environ, "_data", None)
_ENCODE: Any = getattr(os.environ, "encodekey", None)
_DECODE: Any = getattr(os.environ, "decodevalue", None)
_ENCODED_NAMES: dict[str, Any] = {}


def _raw(name: str) -> str | None:
    if _ENVIRON_DATA is None or _ENCODE is None or _DECODE is None:
        return os.environ.get(name)
    key = _ENCODED_NAMES.get(name)
    if key is None:
        key = _ENCODED_NAMES[name] = _ENCODE(name)
    value = _ENVIRON_DATA.get(key)
    return None if value is None else _DECODE(value)


# Parsed values, by (variable, text): parsing is pure.
_PARSED: dict[tuple[str, str], Any] = {}


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
    overrides = _overrides.get()
    if overrides and name in overrides:
        return overrides[name]
    text = _raw(name)
    if text is None:
        return _variable(name).default
    parsed = _PARSED.get((name, text), _PARSED)
    if parsed is _PARSED:
        parsed = _parse(_variable(name), text, "environment variable")
        if len(_PARSED) < 4096:
            _PARSED[(name, text)] = parsed
    return parsed


def is_set(name: str) -> bool:
    """Whether *name* was given explicitly (an override or the environment), not defaulted."""
    _variable(name)
    return name in _overrides.get() or _raw(name) is not None


_DECIDING = tuple(v.name for v in VARIABLES.values() if v.decides)


def fingerprint() -> tuple[Any, ...]:
    """A hashable summary of the current text and override of every variable that can change
    a decision: equal fingerprints mean equal decisions (used to key caches of them)."""
    overrides = _overrides.get()
    return (tuple([_raw(name) for name in _DECIDING]),
            tuple(sorted((k, repr(v)) for k, v in overrides.items() if k in _DECIDING))
            if overrides else ())


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


def cache_dir() -> pathlib.Path:
    """convflow's cache directory as configured, absolute: CONVFLOW_CACHE_DIR (a relative
    path taken from the working directory), else the user cache directory (platformdirs).
    Everything convflow and the libraries it drives write to disk goes below it: the
    perf-db, numba's compiled kernels, PyOpenCL's and PoCL's program caches. Whether it is
    used, and where it physically is, is :func:`convflow.cachedir.trust`'s decision."""
    configured = get("CONVFLOW_CACHE_DIR")
    if configured:
        # Absolute, so no library ever sees a path that looks like an option ("-1").
        return pathlib.Path(os.path.abspath(configured))
    import platformdirs

    return pathlib.Path(os.path.abspath(platformdirs.user_cache_dir("convflow", appauthor=False)))


@contextlib.contextmanager
def environment_default(name: str, value: str) -> Iterator[bool]:
    """Set the (non-convflow) environment variable *name* to *value* for the enclosed block
    unless the user set it, then remove it again: for libraries that read their settings
    once, when they start. Yields whether it was applied."""
    if name in os.environ:
        yield False
        return
    os.environ[name] = value
    try:
        yield True
    finally:
        os.environ.pop(name, None)


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
