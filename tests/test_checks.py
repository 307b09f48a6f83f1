"""Every malformed call raises before any kernel runs, with a message that names the
argument, the value given and what is expected."""

from __future__ import annotations

import time

import numpy as np
import pytest

import convflow
from convflow import (
    ArgumentTypeError,
    BackendUnavailableError,
    ConvflowError,
    DTypeError,
    ParameterError,
    ShapeError,
    WorkspaceTooLargeError,
)

X = np.zeros((1, 4, 9, 9), dtype=np.float32)
W = np.zeros((6, 4, 3, 3), dtype=np.float32)


def raises(exc_type, match):
    return pytest.raises(exc_type, match=match)


@pytest.mark.parametrize("call, exc_type, match", [
    # None and non-arrays
    (lambda: convflow.conv2d(None, W), ArgumentTypeError, r"argument 'input' is None"),
    (lambda: convflow.conv2d(X, None), ArgumentTypeError, r"argument 'weight' is None"),
    (lambda: convflow.conv2d(X.tolist(), W), ArgumentTypeError,
     r"'input' must be an array .* but got list; wrap it with numpy.asarray"),
    (lambda: convflow.conv2d(np.ma.masked_array(X), W), ArgumentTypeError, r"masked array"),
    # dtypes
    (lambda: convflow.conv2d(X.astype(np.int32), W.astype(np.int32)), DTypeError,
     r"input has dtype int32, but convflow computes in float16, bfloat16, float32, float64"),
    (lambda: convflow.conv2d(X, W.astype(np.float64)), DTypeError,
     r"input has dtype float32 but weight has dtype float64; they must match"),
    (lambda: convflow.conv2d(X, W, np.zeros(6, np.float16)), DTypeError,
     r"input has dtype float32 but bias has dtype float16"),
    (lambda: convflow.conv2d(X.astype(np.complex64), W), DTypeError, r"dtype complex64"),
    (lambda: convflow.conv2d(X.astype(bool), W), DTypeError, r"dtype bool"),
    # ranks
    (lambda: convflow.conv2d(X, W[0]), ShapeError,
     r"weight must be 4-D \(out_channels, in_channels/groups, kH, kW\), but got 3-D weight of size \[4, 3, 3\]"),
    (lambda: convflow.conv2d(X[0, 0], W), ShapeError,
     r"expected input to be 3-D \(C, H, W\) or 4-D \(N, C, H, W\), but got 2-D input of size \[9, 9\]"),
    (lambda: convflow.conv1d(X, W), ShapeError, r"weight must be 3-D"),
    (lambda: convflow.conv3d(X[0], W[..., None]), ShapeError,
     r"expected input to be 4-D \(C, D, H, W\) or 5-D \(N, C, D, H, W\), but got 3-D"),
    (lambda: convflow.conv3d(X, W[..., None]), ShapeError,
     r"expected input\[1, 4, 9, 9\] \(unbatched\) to have 4 channels .* but got 1 channels instead"),
    # channels and groups
    (lambda: convflow.conv2d(np.zeros((1, 5, 9, 9), np.float32), np.zeros((6, 2, 3, 3), np.float32),
                             groups=2), ShapeError,
     r"given groups=2 and weight of size \[6, 2, 3, 3\], expected input\[1, 5, 9, 9\] to have 4 "
     r"channels \(weight dim 1 x groups = 2 x 2\), but got 5 channels instead"),
    (lambda: convflow.conv2d(X, np.zeros((5, 2, 3, 3), np.float32), groups=2), ShapeError,
     r"given groups=2, expected weight's out_channels .* to be divisible by groups, but got 5"),
    (lambda: convflow.conv2d(X, W, groups=0), ParameterError, r"groups must be a positive int, but got 0"),
    (lambda: convflow.conv2d(X, W, groups=-2), ParameterError, r"groups must be a positive int, but got -2"),
    (lambda: convflow.conv2d(X, W, groups=1.5), ArgumentTypeError, r"groups must be a positive int, but got 1.5"),
    (lambda: convflow.conv2d(X, W, groups=4), ShapeError, r"given groups=4, expected weight's out_channels .* but got 6"),
    (lambda: convflow.conv2d(X, W, groups=3), ShapeError, r"expected input\[1, 4, 9, 9\] to have 12 channels"),
    # stride and dilation
    (lambda: convflow.conv2d(X, W, stride=0), ParameterError, r"stride must be positive in every dimension, but got 0"),
    (lambda: convflow.conv2d(X, W, stride=(1, -1)), ParameterError, r"stride must be positive .* \(1, -1\)"),
    (lambda: convflow.conv2d(X, W, stride=1.5), ArgumentTypeError,
     r"stride must be an int or a tuple of 2 ints \(one per spatial dim\), but got 1.5"),
    (lambda: convflow.conv2d(X, W, stride=(1, 1, 1)), ParameterError,
     r"stride must be an int or a tuple of 2 ints .* but got 3 values \(1, 1, 1\)"),
    (lambda: convflow.conv2d(X, W, stride=True), ArgumentTypeError, r"stride must be an int"),
    (lambda: convflow.conv2d(X, W, dilation=0), ParameterError, r"dilation must be positive"),
    (lambda: convflow.conv2d(X, W, dilation="2"), ArgumentTypeError, r"dilation must be an int"),
    # padding
    (lambda: convflow.conv2d(X, W, padding=-1), ParameterError,
     r"padding must be non-negative in every dimension, but got -1"),
    (lambda: convflow.conv2d(X, W, padding=((1, -1), (0, 0))), ParameterError, r"non-negative"),
    (lambda: convflow.conv2d(X, W, padding=(1, 1, 1)), ParameterError, r"but got 3 values \(1, 1, 1\)"),
    (lambda: convflow.conv2d(X, W, padding=(0, 1, 2, 3)), ParameterError,
     r"for asymmetric padding pass pairs, e.g. \(\(0, 2\), \(1, 3\)\) for the ONNX order"),
    (lambda: convflow.conv2d(X, W, padding="sme"), ParameterError,
     r"padding must be .* but got 'sme' \(did you mean 'same'\?\)"),
    (lambda: convflow.conv2d(X, W, padding=((1, 2, 3), (0, 0))), ParameterError,
     r"entry \(1, 2, 3\) is neither an int nor a \(low, high\) pair"),
    (lambda: convflow.conv2d(X, W, padding=1.0), ArgumentTypeError, r"padding must be an int"),
    # kernel vs input
    (lambda: convflow.conv2d(X, np.zeros((6, 4, 11, 3), np.float32)), ShapeError,
     r"kernel does not fit in the padded input along dim H: the kernel's extent is 11 "
     r"\(dilation 1 x \(kernel 11 - 1\) \+ 1\) but the padded input is only 9 \(input 9 \+ padding 0 \+ 0\)"),
    (lambda: convflow.conv2d(X, W, dilation=5), ShapeError, r"extent is 11 \(dilation 5 x"),
    (lambda: convflow.conv1d(np.zeros((1, 4, 2), np.float32), np.zeros((6, 4, 3), np.float32)),
     ShapeError, r"along dim W"),
    # empty dims
    (lambda: convflow.conv2d(np.zeros((1, 4, 0, 9), np.float32), W), ShapeError,
     r"has an empty channel or spatial dimension; only the batch dimension may be 0"),
    (lambda: convflow.conv2d(np.zeros((1, 0, 9, 9), np.float32), np.zeros((6, 0, 3, 3), np.float32)),
     ShapeError, r"empty channel or spatial dimension"),
    (lambda: convflow.conv2d(X, np.zeros((0, 4, 3, 3), np.float32)), ShapeError,
     r"weight of size \[0, 4, 3, 3\] has an empty dimension"),
    # bias
    (lambda: convflow.conv2d(X, W, np.zeros(5, np.float32)), ShapeError,
     r"bias must be 1-D of size 6 \(one value per output channel\), but got bias of size \[5\]"),
    (lambda: convflow.conv2d(X, W, np.zeros((6, 1), np.float32)), ShapeError, r"bias must be 1-D of size 6"),
    # padding modes
    (lambda: convflow.conv2d(X, W, padding=1, padding_mode="reflct"), ParameterError,
     r"padding_mode must be one of 'zeros', 'reflect', 'replicate', 'circular', but got 'reflct' \(did you mean 'reflect'\?\)"),
    (lambda: convflow.conv2d(X, W, padding=1, padding_mode=None), ArgumentTypeError, r"padding_mode must be one of"),
    (lambda: convflow.conv2d(np.zeros((1, 4, 3, 9), np.float32), W, padding=3, padding_mode="reflect"),
     ParameterError, r"padding_mode='reflect' needs each padding to be smaller than the input .* padding \(3, 3\) for dim H of size 3"),
    (lambda: convflow.conv2d(np.zeros((1, 4, 3, 9), np.float32), W, padding=4, padding_mode="circular"),
     ParameterError, r"padding_mode='circular' needs each padding to be at most the input size"),
    # transposed
    (lambda: convflow.conv_transpose2d(X, W, stride=2, output_padding=2), ParameterError,
     r"output_padding must be smaller than either stride or dilation in every dimension, but got "
     r"output_padding=\(2, 2\) with stride=\(2, 2\) and dilation=\(1, 1\)"),
    (lambda: convflow.conv_transpose2d(X, W, output_padding=-1), ParameterError, r"output_padding must be >= 0"),
    (lambda: convflow.conv_transpose2d(X, W, padding="same"), ParameterError,
     r"padding for a transposed convolution must be ints or \(low, high\) pairs that crop the output, but got 'same'"),
    (lambda: convflow.conv_transpose2d(np.zeros((1, 5, 4, 4), np.float32), W), ShapeError,
     r"given transposed weight of size \[6, 4, 3, 3\] \(in_channels, out_channels/groups, \*kernel\), "
     r"expected input\[1, 5, 4, 4\] to have 6 channels, but got 5 channels instead"),
    (lambda: convflow.conv_transpose2d(np.zeros((1, 6, 1, 1), np.float32), W, padding=2), ShapeError,
     r"the output would have size -1 along dim H .* removes the whole output"),
    (lambda: convflow.conv_transpose2d(np.zeros((1, 6, 4, 4), np.float32), W, np.zeros(6, np.float32)),
     ShapeError, r"bias must be 1-D of size 4"),
    (lambda: convflow.conv_transpose2d(np.zeros((1, 6, 4, 4), np.float32), W, groups=4), ShapeError,
     r"given groups=4, expected weight's in_channels .* divisible by groups, but got 6"),
    # backends and algorithms
    (lambda: convflow.conv2d(X, W, backend="nmba"), ParameterError,
     r"conv2d: unknown backend 'nmba' \(did you mean 'numba'\?\); valid backends: numba"),
    (lambda: convflow.conv2d(X, W, algorithm="im2col"), ParameterError,
     r"algorithm='im2col' is not an algorithm of the numba backend for the forward pass \(did you mean 'im2col_gemm'\?\); "
     r"valid for this problem: fft, winograd, packed_gemm, packed_direct, im2col_gemm, direct"),
    (lambda: convflow.conv2d(X, W, algorithm="gemm_1x1"), ParameterError,
     r"algorithm='gemm_1x1' cannot run this problem: needs a 1x1 kernel"),
    (lambda: convflow.conv2d(X, W, algorithm="depthwise"), ParameterError,
     r"algorithm='depthwise' cannot run this problem: not depthwise"),
])
def test_error_messages(call, exc_type, match):
    with raises(exc_type, match):
        call()


def test_errors_are_also_builtin_exceptions():
    with pytest.raises(ValueError):
        convflow.conv2d(X, W, stride=0)
    with pytest.raises(TypeError):
        convflow.conv2d(X, W.astype(np.float64))
    with pytest.raises(TypeError):
        convflow.conv2d(None, W)
    with pytest.raises(ConvflowError):
        convflow.conv2d(X, W, padding="bogus")


@pytest.mark.parametrize("call, match", [
    (lambda: convflow.conv_backward(np.zeros((1, 6, 7, 6), np.float32), X, W), r"grad_output has size \[1, 6, 7, 6\], but the "
     r"convolution of input\[1, 4, 9, 9\] with weight\[6, 4, 3, 3\] \(stride=\(1, 1\), padding=\(0, 0\), dilation=\(1, 1\), groups=1\) produces an output of size \[1, 6, 7, 7\]"),
    (lambda: convflow.conv_backward(np.zeros((1, 6, 7), np.float32), X, W), r"grad_output must be 4-D like the forward output"),
    (lambda: convflow.conv_backward(np.zeros((1, 6, 7, 7), np.float32), X[0], W), r"expected input to be 4-D \(N, C, H, W\), but got 3-D"),
    (lambda: convflow.conv_backward(np.zeros((1, 6, 7, 7), np.float32), X, W, output_mask=(True, True)),
     r"output_mask must be a tuple of 3 bools"),
    (lambda: convflow.conv_backward(np.zeros((1, 6, 7, 7), np.float64), X, W), r"grad_output has dtype float64 but input has dtype float32"),
    (lambda: convflow.conv_backward(np.zeros((1, 4, 11, 11), np.float32), np.zeros((1, 6, 9, 9), np.float32), W,
                                    transposed=True, stride=2), r"grad_output has size \[1, 4, 11, 11\], but the transposed convolution"),
    (lambda: convflow.conv_backward(np.zeros((1, 6, 7, 7), np.float32), X, np.zeros((6, 4, 3, 3, 3, 3), np.float32)),
     r"weight must be 3-D, 4-D or 5-D"),
])
def test_backward_error_messages(call, match):
    with pytest.raises(ConvflowError, match=match):
        call()


def test_unavailable_forced_backend_is_an_error(monkeypatch):
    from convflow.backends import BackendStatus, _instances

    backend = _instances.get("numba") or convflow.backends.get_backend("numba")
    monkeypatch.setattr(backend, "status", lambda: BackendStatus("numba", False, "pretend failure", "cpu"))
    with pytest.raises(BackendUnavailableError, match=r"backend='numba' was requested, but numba is unavailable: pretend failure"):
        convflow.conv2d(X, W, backend="numba")
    with pytest.raises(BackendUnavailableError, match=r"no backend can run this call: numba is unavailable: pretend failure"):
        convflow.conv2d(X, W)


def test_huge_broadcast_view_fails_fast_with_a_memory_error():
    huge = np.broadcast_to(np.float32(1), (100_000, 64, 512, 512))
    start = time.perf_counter()
    with pytest.raises(WorkspaceTooLargeError, match=r"conv2d: this call needs .* TiB on cpu \(output .*, contiguous copy of input .*\), but only .* is available"):
        convflow.conv2d(huge, np.zeros((64, 64, 3, 3), np.float32), padding=1)
    assert time.perf_counter() - start < 1.0
    with pytest.raises(MemoryError):
        convflow.conv_transpose2d(huge, np.zeros((64, 64, 3, 3), np.float32))
    with pytest.raises(MemoryError):
        convflow.conv_backward(huge, huge, np.zeros((64, 64, 1, 1), np.float32))


def test_checks_run_before_any_kernel(monkeypatch):
    """A malformed call never reaches the backend."""
    from convflow.backends.numba import NumbaBackend

    def fail(*args, **kwargs):
        raise AssertionError("a kernel ran")

    for name in ("forward", "backward_data", "backward_weight", "pad"):
        monkeypatch.setattr(NumbaBackend, name, fail)
    with pytest.raises(ShapeError):
        convflow.conv2d(X, W, np.zeros(5, np.float32))
    with pytest.raises(ParameterError):
        convflow.conv2d(X, W, padding=9, padding_mode="reflect")
    with pytest.raises(ShapeError):
        convflow.conv_backward(np.zeros((1, 6, 8, 8), np.float32), X, W)


def test_channels_last_errors_show_the_input_as_passed():
    x = np.zeros((8, 56, 56, 32), np.float32)
    w = np.zeros((64, 16, 3, 3), np.float32)
    with pytest.raises(ShapeError, match=r"expected input\[8, 56, 56, 32\] \(layout NHWC\) to have 16 "
                                         r"channels \(weight dim 1 x groups = 16 x 1\), but got 32"):
        convflow.conv2d(x, w, layout="NHWC")
    with pytest.raises(ShapeError, match=r"expected input\[56, 56, 32\] \(unbatched, layout NHWC\)"):
        convflow.conv2d(x[0], w, layout="nhwc")
    with pytest.raises(ShapeError, match=r"conv_backward: .* expected input\[8, 56, 56, 32\] \(layout NHWC\)"):
        convflow.conv_backward(np.zeros((8, 54, 54, 64), np.float32), x, w, layout="NHWC")
    wt = np.zeros((16, 4, 3, 3), np.float32)
    with pytest.raises(ShapeError, match=r"expected input\[2, 5, 5, 32\] \(layout NHWC\) to have 16 channels"):
        convflow.conv_transpose2d(np.zeros((2, 5, 5, 32), np.float32), wt, layout="NHWC")


def test_output_padding_without_transposed_is_refused_everywhere():
    x = np.zeros((1, 4, 8, 8), np.float32)
    w = np.zeros((4, 4, 3, 3), np.float32)
    match = r"output_padding applies only to transposed convolutions"
    with pytest.raises(ParameterError, match=r"conv2d: " + match):
        convflow.explain(x, w, output_padding=1)
    with pytest.raises(ParameterError, match=r"conv_backward: " + match):
        convflow.conv_backward(np.zeros((1, 4, 6, 6), np.float32), x, w, output_padding=1)


def test_dtype_advice_for_torch_tensors_uses_torch():
    torch = pytest.importorskip("torch", reason="optional: the advice in torch's own terms")
    x = torch.ones(1, 4, 8, 8)
    with pytest.raises(DTypeError, match=r"input has dtype float32 but weight has dtype float64; they "
                                         r"must match: convert one of them, e.g. weight\.to\(input\.dtype\)$"):
        convflow.conv2d(x, torch.ones(4, 4, 3, 3, dtype=torch.float64))
    with pytest.raises(DTypeError, match=r"e\.g\. input\.to\(torch\.float32\)$"):
        convflow.conv2d(x.to(torch.int32), torch.ones(4, 4, 3, 3))
    with pytest.raises(DTypeError, match=r"e\.g\. weight\.to\(grad_output\.dtype\)$"):
        convflow.conv_backward(torch.ones(1, 4, 6, 6), x, torch.ones(4, 4, 3, 3, dtype=torch.float64))
    with pytest.raises(DTypeError, match=r"e\.g\. weight\.astype\(input\.dtype\)$"):
        convflow.conv2d(np.ones((1, 4, 8, 8), np.float32), np.ones((4, 4, 3, 3)))
# The one validation step forward, backward and dask planning share ----------------------------

F32 = np.dtype(np.float32)


def test_check_call_gives_canonical_shapes():
    """An unbatched channels-last input is checked as the batched channels-first problem."""
    from convflow.checks import check_call

    checked = check_call("conv2d", 2, (9, 10, 3), (4, 3, 3, 3), (4,),
                         [("input", F32), ("weight", F32), ("bias", F32)], stride=1,
                         padding=1, dilation=1, groups=1, transposed=False, layout="nhwc",
                         activation="ReLU")
    assert (checked.x_shape, checked.out_shape) == ((1, 3, 9, 10), (1, 4, 9, 10))
    assert checked.unbatched and checked.channels_last and checked.activation == "relu"
    assert checked.params.padding == ((1, 1), (1, 1)) and checked.dtype == F32


def test_check_call_for_a_backward_pass_checks_the_output_gradient():
    from convflow.checks import check_call

    def call(x_shape, dy_shape, transposed=False, layout=None):
        return check_call("conv_backward", 2, x_shape, (6, 4, 3, 3), None,
                          [("grad_output", F32), ("input", F32), ("weight", F32)], stride=1,
                          padding=0, dilation=1, groups=1, transposed=transposed,
                          layout=layout, grad_output_shape=dy_shape)

    checked = call((2, 9, 9, 4), (2, 7, 7, 6), layout="NHWC")
    assert checked.grad_output_shape == (2, 6, 7, 7) and not checked.unbatched
    with pytest.raises(ShapeError, match=r"expected input to be 4-D \(N, C, H, W\), but got 3-D"):
        call((4, 9, 9), (2, 6, 7, 7))
    with pytest.raises(ShapeError, match="grad_output must be 4-D like the forward output"):
        call((2, 4, 9, 9), (6, 7, 7))
    with pytest.raises(ArgumentTypeError, match="transposed must be a bool, but got 'no'"):
        call((2, 4, 9, 9), (2, 6, 7, 7), transposed="no")
