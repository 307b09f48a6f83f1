"""The exceptions convflow raises.

Every error is a :class:`ConvflowError`, and also the builtin exception a caller would
naturally catch (``ValueError`` for a bad value or shape, ``TypeError`` for a wrong type or
dtype, ``RuntimeError`` for a backend that cannot run, ``MemoryError`` for a request that
cannot fit). Messages follow one pattern: what is wrong, the value given, what is expected,
and how to fix it where a fix exists.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConvflowError(Exception):
    """Base class of every error convflow raises on purpose."""


class ArgumentTypeError(ConvflowError, TypeError):
    """An argument has the wrong Python type (e.g. ``None`` or a list where an array goes)."""


class DTypeError(ConvflowError, TypeError):
    """An array has an unsupported dtype, or the arrays' dtypes disagree."""


class ShapeError(ConvflowError, ValueError):
    """Array shapes are inconsistent with each other or with the convolution parameters."""


class ParameterError(ConvflowError, ValueError):
    """A convolution parameter (stride, padding, dilation, groups, ...) is invalid."""


class ConfigError(ParameterError):
    """A ``CONVFLOW_*`` environment variable or an override has an invalid value.

    A :class:`ParameterError` (and so a ``ValueError``) too: an unknown name in
    ``CONVFLOW_BACKEND``, ``CONVFLOW_ALGO`` or ``CONVFLOW_DISABLE_ALGOS`` used to raise
    ``ParameterError``, and code that catches that keeps working."""


class DeviceError(ConvflowError, ValueError):
    """Arrays live on devices that cannot be combined, or a device name is invalid."""


class BackendUnavailableError(ConvflowError, RuntimeError):
    """A backend was requested (or is required by the data's device) but cannot run."""


class KernelBuildError(ConvflowError, RuntimeError):
    """A device kernel failed to compile; the message carries the build log."""


class WorkspaceTooLargeError(ConvflowError, MemoryError):
    """The output or scratch memory a call needs can never fit on the device."""


class CacheError(ConvflowError, RuntimeError):
    """An explicit cache command (``convflow cache clear``) could not change the cache."""


class CacheWarning(RuntimeWarning):
    """An on-disk cache was skipped, repaired or could not be written (the cache directory
    is not private, a file in it is damaged, the disk is full); the call itself goes on."""


class SolverFallbackWarning(UserWarning):
    """A backend could not run the chosen algorithm here (its kernel failed to build, or it
    exceeds the device's work-group or local-memory limits) and used the next one."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` if none is close."""
    close = difflib.get_close_matches(str(value).lower(), [c.lower() for c in choices], n=1)
    if not close:
        return ""
    original = {c.lower(): c for c in choices}[close[0]]
    return f" (did you mean {original!r}?)"
