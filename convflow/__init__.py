"""convflow: convolutions the way PyTorch runs them, as a library.

Parameters are normalized and checked on the host, a rule-based selector picks a backend
and an algorithm (``explain()`` shows why), and the backend runs the convolution.
"""

import logging as _logging
import warnings as _warnings

from . import config, signal
from .backends import available_backends
from .backends.base import BackendStatus
from .errors import (
    ArgumentTypeError,
    BackendUnavailableError,
    ConfigError,
    ConvflowError,
    DeviceError,
    DTypeError,
    KernelBuildError,
    ParameterError,
    ShapeError,
    SolverFallbackWarning,
    WorkspaceTooLargeError,
)
from .functional import (
    conv1d,
    conv2d,
    conv3d,
    conv_backward,
    conv_transpose1d,
    conv_transpose2d,
    conv_transpose3d,
    explain,
    finish_warmup,
)
from .params import ConvParams, ConvProblem, Direction
from .selector import Decision, RuleOutcome
from .tensor import Device, Tensor, tensor

__version__ = "0.1.0"

__all__ = [
    "ArgumentTypeError",
    "BackendStatus",
    "BackendUnavailableError",
    "ConfigError",
    "ConvParams",
    "ConvProblem",
    "ConvflowError",
    "DTypeError",
    "Decision",
    "Device",
    "DeviceError",
    "Direction",
    "KernelBuildError",
    "ParameterError",
    "RuleOutcome",
    "ShapeError",
    "SolverFallbackWarning",
    "Tensor",
    "WorkspaceTooLargeError",
    "available_backends",
    "config",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_backward",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "explain",
    "finish_warmup",
    "signal",
    "tensor",
]


def _configure_logging() -> None:
    logger = _logging.getLogger("convflow")
    try:
        level = config.get("CONVFLOW_LOG")
    except ConfigError as exc:
        _warnings.warn(f"{exc}; using the default level 'warning'", stacklevel=2)
        return
    if config.is_set("CONVFLOW_LOG"):
        logger.setLevel(level.upper())
        if not logger.handlers:
            handler = _logging.StreamHandler()
            handler.setFormatter(_logging.Formatter("convflow %(levelname)s: %(message)s"))
            logger.addHandler(handler)


_configure_logging()
