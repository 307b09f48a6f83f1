"""Parameter normalization, output-size arithmetic and the named predicates."""

from __future__ import annotations

import numpy as np
import pytest

from convflow import ParameterError, shapes
from convflow.params import ConvParams, ConvProblem, Direction


def normalize(ndim=2, **kwargs):
    kwargs.setdefault("input_spatial", (10,) * ndim)
    kwargs.setdefault("kernel_spatial", (3,) * ndim)
    return ConvParams.normalize("conv", ndim, **kwargs)


@pytest.mark.parametrize("padding, pairs", [
    (1, ((1, 1), (1, 1))),
    ((1, 2), ((1, 1), (2, 2))),
    (((0, 1), (2, 3)), ((0, 1), (2, 3))),
    ([(0, 1), 2], ((0, 1), (2, 2))),
    (np.array([1, 2]), ((1, 1), (2, 2))),
    (np.int64(2), ((2, 2), (2, 2))),
    ("valid", ((0, 0), (0, 0))),
    ("VALID", ((0, 0), (0, 0))),
])
def test_padding_forms(padding, pairs):
    params = normalize(padding=padding)
    assert params.padding == pairs
    assert params.padding_low == tuple(lo for lo, _ in pairs)
    assert params.padding_high == tuple(hi for _, hi in pairs)


@pytest.mark.parametrize("size, kernel, stride, dilation, upper, lower", [
    # ONNX / TensorFlow SAME: output ceil(size / stride), odd unit on the high side
    (5, 3, 1, 1, (1, 1), (1, 1)),
    (5, 3, 2, 1, (1, 1), (1, 1)),
    (6, 3, 2, 1, (0, 1), (1, 0)),
    (7, 4, 1, 1, (1, 2), (2, 1)),
    (10, 3, 3, 1, (1, 1), (1, 1)),
    (11, 3, 3, 2, (1, 2), (2, 1)),
    (4, 1, 2, 1, (0, 0), (0, 0)),
    (3, 5, 4, 1, (1, 1), (1, 1)),
    (8, 2, 1, 3, (1, 2), (2, 1)),
])
def test_same_padding(size, kernel, stride, dilation, upper, lower):
    assert shapes.same_padding(size, kernel, stride, dilation) == upper
    assert shapes.same_padding(size, kernel, stride, dilation, extra_on_low=True) == lower
    for lo, hi in (upper, lower):
        out = shapes.conv_output_size(size, kernel, stride, lo, hi, dilation)
        assert out == -(-size // stride)


def test_same_padding_resolves_per_dimension():
    params = ConvParams.normalize("conv2d", 2, padding="same", stride=(2, 1), dilation=(1, 2),
                                  input_spatial=(6, 7), kernel_spatial=(3, 4))
    assert params.padding == ((0, 1), (3, 3))
    assert params.padding_request == "same"
    lower = ConvParams.normalize("conv2d", 2, padding="same_lower", stride=(2, 1),
                                 input_spatial=(6, 7), kernel_spatial=(3, 4))
    assert lower.padding == ((1, 0), (2, 1))
    assert ConvParams.normalize("c", 1, padding="SAME_UPPER", input_spatial=(6,),
                                kernel_spatial=(2,)).padding == ((0, 1),)


def test_int_tuples_and_defaults():
    params = normalize(ndim=3, stride=(1, 2, 3), dilation=2)
    assert params.stride == (1, 2, 3)
    assert params.dilation == (2, 2, 2)
    assert params.output_padding == (0, 0, 0)
    assert params.padding_mode == "zeros"
    assert not params.transposed


def test_predicates():
    plain = normalize()
    assert not (plain.is_strided() or plain.is_dilated() or plain.is_padded()
                or plain.is_grouped() or plain.needs_explicit_padding())
    assert plain.is_padding_symmetric()
    fancy = normalize(stride=(1, 2), dilation=(2, 1), padding=((0, 1), (1, 1)), groups=2,
                      padding_mode="reflect")
    assert fancy.is_strided() and fancy.is_dilated() and fancy.is_padded() and fancy.is_grouped()
    assert not fancy.is_padding_symmetric()
    assert fancy.needs_explicit_padding()
    assert not normalize(padding=0, padding_mode="circular").needs_explicit_padding()
    transposed = normalize(transposed=True, stride=2, output_padding=1)
    assert transposed.has_output_padding()


def test_params_are_frozen_and_hashable():
    params = normalize(padding="same")
    with pytest.raises(AttributeError):
        params.groups = 2  # type: ignore[misc]
    assert hash(params) == hash(normalize(padding="same"))


def test_describe_mentions_every_non_default():
    text = normalize(stride=2, padding="same", padding_mode="circular").describe()
    assert "stride=(2, 2)" in text and "(from 'same')" in text and "circular" in text
    assert "output_padding=(1, 1)" in normalize(transposed=True, stride=2, output_padding=1).describe()


@pytest.mark.parametrize("size, kernel, stride, lo, hi, dilation, expected", [
    (7, 3, 1, 0, 0, 1, 5), (7, 3, 2, 1, 1, 1, 4), (7, 3, 2, 0, 0, 2, 2), (5, 5, 1, 0, 0, 1, 1),
    (4, 5, 1, 0, 0, 1, 0), (1, 1, 3, 0, 0, 1, 1), (10, 3, 3, 2, 0, 1, 4),
])
def test_conv_output_size(size, kernel, stride, lo, hi, dilation, expected):
    assert shapes.conv_output_size(size, kernel, stride, lo, hi, dilation) == expected


@pytest.mark.parametrize("size, kernel, stride, lo, hi, dilation, out_pad, expected", [
    (3, 3, 1, 0, 0, 1, 0, 5), (3, 3, 2, 0, 0, 1, 1, 8), (3, 3, 3, 1, 2, 1, 0, 6),
    (3, 2, 1, 0, 0, 2, 0, 5), (4, 1, 2, 0, 0, 1, 1, 8),
])
def test_transposed_output_size(size, kernel, stride, lo, hi, dilation, out_pad, expected):
    assert shapes.transposed_output_size(size, kernel, stride, lo, hi, dilation, out_pad) == expected


def test_problem_predicates_and_sizes():
    def problem(x, w, y, groups=1, padding=((0, 0), (0, 0)), stride=(1, 1)):
        return ConvProblem(Direction.FORWARD, x, w, y, "float32", stride, padding, (1, 1), groups)

    depthwise = problem((2, 8, 5, 5), (16, 1, 3, 3), (2, 16, 3, 3), groups=8)
    assert depthwise.is_depthwise() and depthwise.is_grouped() and not depthwise.is_pointwise()
    assert depthwise.out_channels_per_group == 2 and depthwise.reduction_size == 9
    pointwise = problem((2, 8, 5, 5), (4, 8, 1, 1), (2, 4, 3, 3), stride=(2, 2))
    assert pointwise.is_pointwise() and pointwise.is_strided() and not pointwise.is_depthwise()
    assert not problem((1, 8, 5, 5), (4, 8, 1, 1), (1, 4, 7, 7), padding=((1, 1), (1, 1))).is_pointwise()
    assert not problem((1, 1, 5, 5), (4, 1, 3, 3), (1, 4, 3, 3)).is_depthwise()
    assert pointwise.flops == 2 * 2 * 4 * 8 * 9
    assert problem((0, 8, 5, 5), (4, 8, 1, 1), (0, 4, 5, 5)).is_empty()


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name, value, expected", [
    ("stride", (2,), 2), ("dilation", [3], 3), ("padding", (1,), (1, 1)),
])
def test_one_element_tuples_apply_to_every_dimension(ndim, name, value, expected):
    # As torch accepts F.conv2d(x, w, stride=(2,)): code written for torch runs unchanged.
    params = ConvParams.normalize("conv", ndim, **{name: value})
    assert getattr(params, name) == (expected,) * ndim


def test_one_element_output_padding_of_a_transposed_convolution():
    params = ConvParams.normalize("conv_transpose2d", 2, stride=(2,), output_padding=(1,),
                                  transposed=True)
    assert params.output_padding == (1, 1) and params.stride == (2, 2)


def test_tuples_of_other_lengths_are_still_errors():
    with pytest.raises(ParameterError, match=r"conv: stride must be an int or a tuple of 3 ints "
                                             r"\(one per spatial dim\), but got 2 values \(2, 2\)"):
        ConvParams.normalize("conv", 3, stride=(2, 2))
    with pytest.raises(ParameterError, match=r"padding must be .* but got 3 values"):
        ConvParams.normalize("conv", 2, padding=(1, 1, 1))


@pytest.mark.parametrize("output_padding", [1, (1,), (0, 1)])
def test_output_padding_needs_a_transposed_convolution(output_padding):
    with pytest.raises(ParameterError, match=r"conv2d: output_padding applies only to transposed "
                                             r"convolutions, but got output_padding=.* with "
                                             r"transposed=False; pass transposed=True or drop output_padding"):
        ConvParams.normalize("conv2d", 2, output_padding=output_padding)
    assert ConvParams.normalize("conv2d", 2, output_padding=(0, 0)).output_padding == (0, 0)


def test_one_element_tuples_in_calls_match_torch():
    import convflow

    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 9, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3, 3)).astype(np.float32)
    y = convflow.conv3d(x, w, stride=(2,), padding=(1,), dilation=(1,))
    np.testing.assert_array_equal(y, convflow.conv3d(x, w, stride=2, padding=1, dilation=1))
    import reference
    from conftest import assert_close

    assert_close(y, reference.conv(x, w, stride=(2, 2, 2), padding=((1, 1),) * 3))
    xt = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    wt = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    yt = convflow.conv_transpose2d(xt, wt, stride=(2,), padding=(1,), output_padding=(1,))
    assert yt.shape == (1, 2, 10, 10)
    try:
        import torch
    except ImportError:
        return  # the comparison with torch itself needs torch, a test-only extra
    expected = torch.nn.functional.conv_transpose2d(torch.from_numpy(xt), torch.from_numpy(wt), stride=(2,),
                                                    padding=(1,), output_padding=(1,))
    np.testing.assert_allclose(yt, expected.numpy(), rtol=1e-4, atol=1e-4)
    expected3 = torch.nn.functional.conv3d(torch.from_numpy(x), torch.from_numpy(w), stride=(2,), padding=(1,))
    np.testing.assert_allclose(y, expected3.numpy(), rtol=1e-4, atol=1e-4)
