"""Host logic of the cupy backend, tested without CuPy, CUDA or a GPU.

Descriptors (channels-first and channels-last strides), the mapping of padding onto cuDNN's
pre/post padding, plan-cache keys, launch geometry and tiles, the status reasons, the
algorithm rules (with cuDNN refusing), the use of the cuDNN frontend's graph API (against a
stand-in module that records every call and computes with the float64 reference), fused
bias-activation graphs and their fallback, bfloat16 graphs, the extras, and imports.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest

import convflow
from convflow import backends as registry
from convflow import cli, selector
from convflow.backends.cupy import OWN_RULES, CupyBackend, describe_policy
from convflow.backends.cupy import cudnn_plans as plans_module
from convflow.backends.cupy import status as status_module
from convflow.backends.cupy.cudnn_plans import CudnnPlans, Policy, Resolution, excluded_notes
from convflow.backends.cupy.geometry import (
    MAX_ELEMENT_BLOCKS,
    CudnnMapping,
    PlanKey,
    channels_last_strides,
    cudnn_mapping,
    descriptor,
    elementwise_launch,
    kernel_args,
    packed_strides,
    plan_key,
    reduction_launch,
)
from convflow.errors import BackendUnavailableError
from convflow.geometry import Geometry, Tile, plan_tiles
from convflow.params import ConvProblem, Direction
from convflow.tensor import Device, as_tensor

import reference
from conftest import TOLERANCE
from cupy_cases import PROBLEMS, expected_pass, pass_operands

ROOT = pathlib.Path(__file__).resolve().parent.parent
POLICY = Policy(allow_tf32=False, deterministic=False, workspace_limit=64 << 20)


def problem(direction=Direction.FORWARD, x=(2, 4, 9, 9), w=(6, 4, 3, 3), y=(2, 6, 9, 9),
            dtype="float32", stride=(1, 1), padding=((1, 1), (1, 1)), dilation=(1, 1),
            groups=1) -> ConvProblem:
    return ConvProblem(direction, x, w, y, dtype, stride, padding, dilation, groups)


# Descriptors and kernel geometry -------------------------------------------------------------

def test_descriptors_are_packed_nchw_and_lift_1d():
    assert descriptor((2, 3, 5)) == ((2, 3, 1, 5), (15, 5, 5, 1))
    assert descriptor((2, 3, 4, 5)) == ((2, 3, 4, 5), (60, 20, 5, 1))
    assert descriptor((2, 3, 4, 5, 6)) == ((2, 3, 4, 5, 6), (360, 120, 30, 6, 1))
    assert packed_strides((8, 0, 3)) == (3, 3, 1)


def test_kernel_geometry_lifts_to_three_dims():
    p = ConvProblem(Direction.FORWARD, (2, 4, 11), (6, 2, 3), (2, 6, 5), "float32", (2,),
                    ((1, 0),), (2,), 2)
    g = Geometry.from_problem(p)
    assert kernel_args(g) == (2, 4, 1, 1, 11, 6, 1, 1, 5, 1, 1, 3, 1, 1, 2, 0, 0, 1, 1, 1, 2, 2)
    assert (g.taps, g.rows, g.group_rows, g.in_per_group, g.out_per_group) == (3, 12, 6, 2, 3)
    p3 = problem(x=(1, 2, 4, 5, 6), w=(3, 2, 1, 2, 3), y=(1, 3, 4, 4, 4), stride=(1, 1, 1),
                 padding=((0, 0), (0, 0), (0, 0)), dilation=(1, 1, 1))
    assert kernel_args(Geometry.from_problem(p3))[:12] == (1, 2, 4, 5, 6, 3, 4, 4, 4, 1, 2, 3)
    with pytest.raises(OverflowError):
        kernel_args(Geometry.from_problem(problem(x=(2**31, 4, 9, 9))))


# Launch geometry and tiles -------------------------------------------------------------------

def test_elementwise_launch():
    assert elementwise_launch(0).grid == 1
    assert elementwise_launch(1000) == elementwise_launch(1000, 256)
    assert (elementwise_launch(1000).grid, elementwise_launch(1000).block) == (4, 256)
    assert elementwise_launch(10**12).grid == MAX_ELEMENT_BLOCKS  # grid-stride covers the rest
    with pytest.raises(ValueError):
        elementwise_launch(-1)


def test_reduction_launch():
    assert reduction_launch(5).grid == 5 and reduction_launch(5).block == 256
    assert reduction_launch(0).grid == 1
    for bad in (100, 16, 2048):
        with pytest.raises(ValueError):
            reduction_launch(10, bad)


@pytest.mark.parametrize(("images", "positions", "per_column", "budget"),
                         [(32, 3136, 576 * 4, 64 << 20), (3, 50, 10, 1000), (2, 63, 4, 8),
                          (4, 7, 100, 1), (1, 1, 1, 1 << 30), (5, 12, 8, 8 * 24)])
def test_tiles_cover_every_column_once_within_the_budget(images, positions, per_column, budget):
    tiles = plan_tiles(images, positions, per_column, budget)
    covered = [(n, p) for t in tiles for n in range(t.n0, t.n0 + t.count)
               for p in range(t.p0, t.p0 + t.width)]
    assert sorted(covered) == list(itertools.product(range(images), range(positions)))
    assert all(t.columns * per_column <= max(budget, per_column) for t in tiles)
    # position tiles of one image are consecutive and start at 0 (col2im accumulates on p0 > 0)
    for first, second in itertools.pairwise(tiles):
        if second.n0 == first.n0:
            assert second.p0 == first.p0 + first.width
        else:
            assert second.p0 == 0


def test_tiles_group_whole_images_when_they_fit():
    tiles = plan_tiles(32, 3136, 576 * 4, 64 << 20)
    assert all(t.covers_whole_images(3136) for t in tiles) and tiles[0].count == 9
    assert plan_tiles(0, 10, 1, 100) == [] and plan_tiles(2, 0, 1, 100) == []
    assert plan_tiles(1, 5, 4, 8) == [Tile(0, 1, 0, 2), Tile(0, 1, 2, 2), Tile(0, 1, 4, 1)]


# Padding -> cuDNN pre/post padding -----------------------------------------------------------

def test_symmetric_padding_is_kept():
    mapping = cudnn_mapping(problem(), symmetric=False)
    assert mapping == CudnnMapping((9, 9), ((0, 0), (0, 0)), (1, 1), (1, 1), False)
    assert not mapping.is_asymmetric() and not mapping.needs_input_copy((9, 9))


def test_resnet_stem_stays_symmetric():
    """7x7 stride 2 padding 3 on 224: any post padding in [2, 3] gives 112 outputs; 3 is kept."""
    p = problem(x=(1, 3, 224, 224), w=(64, 3, 7, 7), y=(1, 64, 112, 112), stride=(2, 2),
                padding=((3, 3), (3, 3)))
    mapping = cudnn_mapping(p, symmetric=False)
    assert (mapping.pre_padding, mapping.post_padding) == ((3, 3), (3, 3))


def test_same_padding_with_stride_is_asymmetric_or_explicit():
    p = problem(x=(1, 2, 8, 8), y=(1, 6, 4, 4), stride=(2, 2), padding=((0, 1), (0, 1)))
    asym = cudnn_mapping(p, symmetric=False)
    assert (asym.pre_padding, asym.post_padding) == ((0, 0), (1, 1)) and asym.is_asymmetric()
    sym = cudnn_mapping(p, symmetric=True)
    assert (sym.pre_padding, sym.post_padding) == ((0, 0), (0, 0))
    assert sym.explicit_padding == ((0, 1), (0, 1)) and sym.cudnn_x_spatial() == (9, 9)
    assert sym.needs_input_copy((8, 8))


def test_extra_high_padding_that_no_output_reads_is_dropped():
    """Padding (1, 3) with stride 2 on 8: the outputs need only post padding 1 or 2."""
    p = problem(x=(1, 2, 8, 8), y=(1, 6, 4, 4), stride=(2, 2), padding=((1, 3), (1, 3)))
    mapping = cudnn_mapping(p, symmetric=False)
    assert (mapping.pre_padding, mapping.post_padding) == ((1, 1), (1, 1))


def test_cropped_outputs_crop_the_input():
    """Only 2 of the 7 outputs are listed: cuDNN gets the first 4 input elements."""
    p = problem(x=(1, 2, 9, 9), y=(1, 6, 2, 7), padding=((0, 0), (0, 0)))
    mapping = cudnn_mapping(p, symmetric=False)
    assert mapping.x_extent == (4, 9) and mapping.post_padding == (0, 0)
    assert mapping.needs_input_copy((9, 9))


def test_outputs_that_read_only_padding_cannot_be_expressed():
    p = problem(x=(1, 2, 9, 9), y=(1, 6, 1, 7), padding=((5, 0), (0, 0)))
    reason = cudnn_mapping(p, symmetric=False)
    assert isinstance(reason, str) and "only zero padding" in reason and "dim H" in reason


@pytest.mark.parametrize("symmetric", [False, True])
def test_mapping_reproduces_every_pass(symmetric):
    """cuDNN's semantics (input padded by pre/post, outputs by the formula) applied to the
    mapped operands give each pass of the shared grids exactly."""
    for name, p in PROBLEMS[::3]:
        mapping = cudnn_mapping(p, symmetric)
        if isinstance(mapping, str):
            continue
        assert not (symmetric and mapping.is_asymmetric())
        pads = list(zip(mapping.pre_padding, mapping.post_padding))
        args = (p.stride, pads, p.dilation, p.groups)
        a, b, _ = pass_operands(p, "float64", name)
        want = expected_pass(p, a, b, None)
        if p.direction == Direction.FORWARD:
            got = reference.conv(plans_module.mapped_input(np, a, mapping), b, None, *args)
        elif p.direction == Direction.BACKWARD_DATA:
            x_shape = (*p.x_shape[:2], *mapping.cudnn_x_spatial())
            grad = reference.conv_backward(a, np.zeros(x_shape), b, *args)[0]
            got = plans_module.unmapped_gradient(np, grad, mapping, p.x_shape)
        else:
            x = plans_module.mapped_input(np, a, mapping)
            got = reference.conv_backward(b, x, np.zeros(p.w_shape), *args)[1]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name)


def test_mapped_input_copies_only_when_needed():
    x = np.arange(2 * 2 * 8 * 8, dtype=np.float64).reshape(2, 2, 8, 8)
    same = cudnn_mapping(problem(x=x.shape, y=(2, 6, 8, 8)), symmetric=False)
    assert plans_module.mapped_input(np, x, same) is x
    cropped = cudnn_mapping(problem(x=x.shape, y=(2, 6, 2, 6), padding=((0, 0), (0, 0))), False)
    out = plans_module.mapped_input(np, x, cropped)
    assert out.flags.c_contiguous and not np.shares_memory(out, x)
    np.testing.assert_array_equal(out, x[:, :, :4, :8])


# Plan-cache keys -----------------------------------------------------------------------------

def _key(p: ConvProblem, device=0, **policy) -> PlanKey:
    settings = dict(deterministic=False, allow_tf32=False, workspace_limit=64 << 20) | policy
    mapping = cudnn_mapping(p, symmetric=False)
    assert not isinstance(mapping, str)
    return plan_key(p, mapping, device, **settings)


def test_equal_problems_share_a_key():
    assert _key(problem()) == _key(problem()) and hash(_key(problem())) == hash(_key(problem()))


def test_every_field_that_changes_a_plan_changes_the_key():
    base = _key(problem())
    variants = {
        "device": _key(problem(), device=1),
        "direction": _key(problem(Direction.BACKWARD_DATA)),
        "weight direction": _key(problem(Direction.BACKWARD_WEIGHT)),
        "dtype": _key(problem(dtype="float16")),
        "batch": _key(problem(x=(3, 4, 9, 9), y=(3, 6, 9, 9))),
        "input size": _key(problem(x=(2, 4, 10, 9), y=(2, 6, 10, 9))),
        "channels": _key(problem(x=(2, 8, 9, 9), w=(6, 8, 3, 3))),
        "kernel": _key(problem(w=(6, 4, 3, 1), padding=((1, 1), (0, 0)))),
        "output channels": _key(problem(w=(8, 4, 3, 3), y=(2, 8, 9, 9))),
        "stride": _key(problem(y=(2, 6, 5, 5), stride=(2, 2))),
        "padding": _key(problem(y=(2, 6, 11, 11), padding=((2, 2), (2, 2)))),
        "asymmetric padding": _key(problem(y=(2, 6, 10, 10), padding=((2, 1), (2, 1)))),
        "dilation": _key(problem(y=(2, 6, 7, 7), dilation=(2, 2))),
        "groups": _key(problem(w=(6, 2, 3, 3), groups=2)),
        "deterministic": _key(problem(), deterministic=True),
        "tf32": _key(problem(), allow_tf32=True),
        "workspace": _key(problem(), workspace_limit=1 << 20),
        "channels last": _key(dataclasses.replace(problem(), channels_last=True)),
        "epilogue": _key(problem(), fused=True),
    }
    keys = [base, *variants.values()]
    assert len(set(keys)) == len(keys), "two different plans share a key"
    fields = {f.name for f in dataclasses.fields(PlanKey)}
    changed = {f for key in variants.values() for f in fields
               if getattr(key, f) != getattr(base, f)}
    assert changed == fields, f"never varied: {fields - changed}"
    assert variants["direction"].transposed and not base.transposed


def test_tf32_is_part_of_the_key_only_for_float32():
    half = problem(dtype="float16")
    assert _key(half, allow_tf32=True) == _key(half, allow_tf32=False)
    assert _key(problem(), allow_tf32=True) != _key(problem(), allow_tf32=False)


def test_excluded_notes_follow_the_policy():
    assert "TENSOR_CORE" in excluded_notes("float32", POLICY)
    assert "TENSOR_CORE" not in excluded_notes("float32", dataclasses.replace(POLICY,
                                                                              allow_tf32=True))
    assert "TENSOR_CORE" not in excluded_notes("float16", POLICY)
    assert "REDUCED_PRECISION_REDUCTION" in excluded_notes("float16", POLICY)
    assert "NONDETERMINISTIC" in excluded_notes("float64", dataclasses.replace(
        POLICY, deterministic=True))
    assert "NONDETERMINISTIC" not in excluded_notes("float64", POLICY)


def test_policy_is_described_for_explain():
    text = describe_policy(problem(), POLICY)
    assert "no TF32 (CONVFLOW_ALLOW_TF32=0)" in text and "CONVFLOW_DETERMINISTIC=0" in text
    assert "TF32" not in describe_policy(problem(dtype="float64"), POLICY)


# A stand-in for the cuDNN frontend -----------------------------------------------------------

class FakeTensor:
    def __init__(self, name, dims=None, strides=None, data_type=None):
        self.name, self.dims, self.strides, self.data_type = name, dims, strides, data_type
        self.is_output = False

    def set_output(self, value):
        self.is_output = value
        return self

    def set_data_type(self, value):
        self.data_type = value
        return self

    def set_dim(self, dims):
        self.dims = list(dims)
        return self

    def set_stride(self, strides):
        self.strides = list(strides)
        return self


class FakeGraph:
    """Records the calls; check_support refuses what the module's ``refuse`` says; execute
    computes with the float64 reference under cuDNN's semantics (pre/post padding)."""

    def __init__(self, module, **kwargs):
        self.module, self.kwargs, self.calls, self.op = module, kwargs, [], None
        self.tensors, self.epilogue, self.output = [], [], None
        module.graphs.append(self)

    def tensor(self, name, dim, stride, data_type):
        dim = tuple(dim)
        assert list(stride) in (list(packed_strides(dim)), list(channels_last_strides(dim))), (
            name, dim, stride)
        tensor = FakeTensor(name, list(dim), list(stride), data_type)
        self.tensors.append(tensor)
        return tensor

    def _conv(self, kind, a, b, name, pre_padding, post_padding, stride, dilation,
              compute_data_type):
        assert len(pre_padding) == len(post_padding) == len(stride) == len(a.dims) - 2
        self.op = dict(kind=kind, a=a, b=b, pre=pre_padding, post=post_padding, stride=stride,
                       dilation=dilation, compute=compute_data_type, out=FakeTensor(name))
        return self.op["out"]

    def conv_fprop(self, image, weight, **kwargs):
        return self._conv("fprop", image, weight, **kwargs)

    def conv_dgrad(self, loss, filter, **kwargs):
        return self._conv("dgrad", loss, filter, **kwargs)

    def conv_wgrad(self, image, loss, **kwargs):
        return self._conv("wgrad", image, loss, **kwargs)

    def _pointwise(self, kind, value, **attributes):
        out = FakeTensor(attributes.get("name", kind))
        self.epilogue.append((kind, value, out, attributes))
        return out

    def bias(self, input, bias, **attributes):
        assert input is (self.epilogue[-1][2] if self.epilogue else self.op["out"])
        return self._pointwise("bias", input, bias=bias, **attributes)

    def relu(self, input, **attributes):
        return self._pointwise("relu", input, **attributes)

    def swish(self, input, **attributes):
        return self._pointwise("swish", input, **attributes)

    def gelu(self, input, **attributes):
        return self._pointwise("gelu", input, **attributes)

    def __getattr__(self, name):
        if name in ("validate", "build_operation_graph", "create_execution_plans",
                    "deselect_numeric_notes", "deselect_workspace_greater_than", "build_plans"):
            return lambda *args: self.calls.append((name, *args))
        raise AttributeError(name)

    def check_support(self):
        self.calls.append(("check_support",))
        reason = self.module.refuse(dict(self.op, epilogue=[k for k, *_ in self.epilogue]))
        if reason:
            raise RuntimeError(f"{reason}\nsecond line of the frontend's message")

    def get_workspace_size(self):
        return 4096

    def execute(self, variant_pack, workspace, handle):
        self.module.executed.append((self, handle, workspace.size))
        self.module.packs.append(variant_pack)
        op = self.op
        final = self.epilogue[-1][2] if self.epilogue else op["out"]
        a, b, out = variant_pack[op["a"]], variant_pack[op["b"]], variant_pack[final]
        for tensor in (op["a"], op["b"], final):  # every buffer as its descriptor says
            array = variant_pack[tensor]
            assert list(array.shape) == tensor.dims, (tensor.name, array.shape, tensor.dims)
            strides = [s // array.itemsize for s in array.strides]
            assert all(got == want for got, want, size in zip(strides, tensor.strides,
                                                              tensor.dims) if size > 1), (
                tensor.name, strides, tensor.strides)
        assert final.is_output and not (self.epilogue and op["out"].is_output)
        self._convolve(op, a, b, out)
        for kind, _, _, attributes in self.epilogue:
            if kind == "bias":
                bias = variant_pack[attributes["bias"]]
                assert list(bias.shape) == attributes["bias"].dims
                out[...] = out + bias
            elif kind == "relu":
                assert attributes["lower_clip"] == 0.0
                upper = attributes.get("upper_clip")
                out[...] = reference.activate(out, "relu6" if upper == 6.0 else "relu")
                assert upper in (None, 6.0)
            else:
                out[...] = reference.activate(out, {"swish": "silu", "gelu": "gelu"}[kind])

    def _convolve(self, op, a, b, out):
        pads = list(zip(op["pre"], op["post"]))
        if op["kind"] == "fprop":
            groups = a.shape[1] // b.shape[1]
            out[...] = reference.conv(a, b, None, op["stride"], pads, op["dilation"], groups)
        elif op["kind"] == "dgrad":
            groups = out.shape[1] // b.shape[1]
            x = np.zeros(out.shape)
            assert reference.conv(x, b, None, op["stride"], pads, op["dilation"],
                                  groups).shape == a.shape
            out[...] = reference.conv_backward(a, x, b, op["stride"], pads, op["dilation"],
                                               groups)[0]
        else:
            groups = a.shape[1] // out.shape[1]
            out[...] = reference.conv_backward(b, a, np.zeros(out.shape), op["stride"], pads,
                                               op["dilation"], groups)[1]


def fake_cudnn(refuse=lambda op: ""):
    module = types.SimpleNamespace(graphs=[], executed=[], streams=[], packs=[], refuse=refuse)
    module.pygraph = lambda **kwargs: FakeGraph(module, **kwargs)
    module.data_type = types.SimpleNamespace(HALF="HALF", BFLOAT16="BFLOAT16", FLOAT="FLOAT",
                                             DOUBLE="DOUBLE")
    module.heur_mode = types.SimpleNamespace(A="A", B="B", FALLBACK="FALLBACK")
    module.numerical_note = types.SimpleNamespace(**{n: n for n in (
        "TENSOR_CORE", "DOWN_CONVERT_INPUTS", "REDUCED_PRECISION_REDUCTION", "NONDETERMINISTIC",
        "FFT", "WINOGRAD")})
    module.create_handle = lambda: "handle"
    module.set_stream = lambda handle, stream: module.streams.append((handle, stream))
    return module


class _Device:
    def __init__(self, index):
        self.index = index

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def fake_cupy():
    stream = types.SimpleNamespace(ptr=1234)
    cuda = types.SimpleNamespace(Device=_Device, get_current_stream=lambda: stream,
                                 runtime=types.SimpleNamespace(getDevice=lambda: 0))
    return types.SimpleNamespace(cuda=cuda, empty=np.empty, uint8=np.uint8)


def test_graphs_are_built_as_the_frontend_samples_do():
    cudnn = fake_cudnn()
    plans = CudnnPlans(fake_cupy(), cudnn)
    p = problem()
    key = _key(p)
    plan = plans.plan(key, POLICY)
    assert not isinstance(plan, str)
    graph = cudnn.graphs[0]
    assert graph.kwargs == dict(io_data_type="FLOAT", intermediate_data_type="FLOAT",
                                compute_data_type="FLOAT", handle="handle")
    assert [c[0] for c in graph.calls] == [
        "validate", "build_operation_graph", "create_execution_plans", "deselect_numeric_notes",
        "deselect_workspace_greater_than", "check_support", "build_plans"]
    assert graph.calls[2] == ("create_execution_plans", ["A", "FALLBACK"])
    assert graph.calls[3] == ("deselect_numeric_notes",
                              ["DOWN_CONVERT_INPUTS", "REDUCED_PRECISION_REDUCTION",
                               "TENSOR_CORE"])
    assert graph.calls[4] == ("deselect_workspace_greater_than", 64 << 20)
    op = graph.op
    assert op["kind"] == "fprop" and op["a"].dims == [2, 4, 9, 9] and op["b"].dims == [6, 4, 3, 3]
    assert (op["pre"], op["post"], op["stride"], op["dilation"]) == ([1, 1], [1, 1], [1, 1],
                                                                     [1, 1])
    assert op["out"].is_output and op["out"].dims == [2, 6, 9, 9]
    assert op["out"].strides == [486, 81, 9, 1] and op["out"].data_type == "FLOAT"
    assert plan.workspace_size == 4096


def test_half_and_double_graphs():
    cudnn = fake_cudnn()
    plans = CudnnPlans(fake_cupy(), cudnn)
    plans.plan(_key(problem(dtype="float16")), POLICY)
    plans.plan(_key(problem(dtype="float64", direction=Direction.BACKWARD_WEIGHT)),
               dataclasses.replace(POLICY, deterministic=True))
    half, double = cudnn.graphs
    assert half.kwargs["io_data_type"] == "HALF" and half.kwargs["compute_data_type"] == "FLOAT"
    assert "TENSOR_CORE" not in half.calls[3][1]
    assert double.kwargs["io_data_type"] == "DOUBLE" and "NONDETERMINISTIC" in double.calls[3][1]
    assert double.op["kind"] == "wgrad" and double.op["out"].dims == [6, 4, 3, 3]


def test_plans_and_refusals_are_cached():
    cudnn = fake_cudnn(refuse=lambda op: "no engine" if op["stride"] == [2, 2] else "")
    plans = CudnnPlans(fake_cupy(), cudnn)
    key = _key(problem())
    first = plans.plan(key, POLICY)
    assert plans.plan(key, POLICY) is first and len(cudnn.graphs) == 1
    assert (plans.hits, plans.misses) == (1, 1)
    strided = _key(problem(y=(2, 6, 5, 5), stride=(2, 2)))
    refusal = plans.plan(strided, POLICY)
    assert refusal == "RuntimeError: no engine"
    assert plans.plan(strided, POLICY) == refusal and len(cudnn.graphs) == 2


def test_asymmetric_padding_refused_falls_back_to_symmetric_padding():
    cudnn = fake_cudnn(refuse=lambda op: "asymmetric padding" if op["pre"] != op["post"] else "")
    plans = CudnnPlans(fake_cupy(), cudnn)
    p = problem(x=(1, 2, 8, 8), w=(6, 2, 3, 3), y=(1, 6, 4, 4), stride=(2, 2),
                padding=((0, 1), (0, 1)))
    resolution = plans.resolve(p, 0, POLICY)
    assert resolution.supported and resolution.mapping.explicit_padding == ((0, 1), (0, 1))
    assert [g.op["pre"] for g in cudnn.graphs] == [[0, 0], [0, 0]]
    assert [g.op["post"] for g in cudnn.graphs] == [[1, 1], [0, 0]]
    assert plans.resolve(p, 0, POLICY) is resolution  # memoized


def test_a_refusal_names_every_attempt():
    plans = CudnnPlans(fake_cupy(), fake_cudnn(refuse=lambda op: "not supported"))
    p = problem(x=(1, 2, 8, 8), w=(6, 2, 3, 3), y=(1, 6, 4, 4), stride=(2, 2),
                padding=((0, 1), (0, 1)))
    resolution = plans.resolve(p, 0, POLICY)
    assert not resolution.supported
    assert resolution.reason.count("RuntimeError: not supported") == 2
    assert "post_padding=(1, 1)" in resolution.reason and "explicitly" in resolution.reason


@pytest.mark.parametrize("refuse_asymmetric", [False, True])
def test_every_pass_through_the_stand_in_cudnn_matches_the_reference(refuse_asymmetric):
    """The cuDNN path end to end (mapping, descriptors, variant pack, crop and unpad) with the
    stand-in computing each graph by its definition."""
    refuse = (lambda op: "asymmetric" if op["pre"] != op["post"] else "") if refuse_asymmetric \
        else (lambda op: "")
    cudnn = fake_cudnn(refuse)
    plans = CudnnPlans(fake_cupy(), cudnn)
    for name, p in PROBLEMS[::2]:
        resolution = plans.resolve(p, 0, POLICY)
        if not resolution.supported:
            assert "only zero padding" in resolution.reason
            continue
        a, b, _ = pass_operands(p, "float64", name)
        copies = (a.copy(), b.copy())
        got = plans_module.run_pass(
            np, p, resolution.mapping, resolution.plan.key,
            lambda first, second, out, bias, plan=resolution.plan: plans.execute(
                plan, first, second, out, bias), a, b)
        want = expected_pass(p, a, b, None)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE["float64"] * max(
            1, np.abs(want).max()), err_msg=f"{name}: {p.describe()}")
        np.testing.assert_array_equal(a, copies[0])
        np.testing.assert_array_equal(b, copies[1])
    assert cudnn.streams and all(s == ("handle", 1234) for s in cudnn.streams)
    assert all(handle == "handle" and size == 4096 for _, handle, size in cudnn.executed)


@pytest.mark.parametrize("direction", list(Direction))
def test_the_installed_cudnn_frontend_accepts_the_graph_description(direction):
    """Where the frontend is installed (gpu-check installs it), its graph API takes the calls
    convflow makes, up to building (which needs a GPU); the stand-in above mirrors them."""
    cudnn = pytest.importorskip("cudnn", reason="the cuDNN frontend is not installed here")
    p = problem(direction, x=(2, 4, 9, 9), w=(6, 2, 3, 3), y=(2, 6, 5, 9), dtype="float16",
                stride=(2, 1), padding=((1, 0), (1, 1)), groups=2)
    key = _key(p)
    graph, a, b, out, bias = plans_module.describe_graph(cudnn, key, None)
    assert bias is None
    assert all(hasattr(graph, step) for step in (
        "validate", "build_operation_graph", "create_execution_plans", "deselect_numeric_notes",
        "deselect_workspace_greater_than", "check_support", "build_plans",
        "get_workspace_size", "execute"))
    assert a is not None and b is not None and out is not None
    for name in ("A", "FALLBACK"):
        assert hasattr(cudnn.heur_mode, name)
    for name in excluded_notes("float32", dataclasses.replace(POLICY, deterministic=True)):
        assert hasattr(cudnn.numerical_note, name)
    assert callable(cudnn.create_handle) and callable(cudnn.set_stream)


# Layouts, bfloat16 and the fused epilogue ----------------------------------------------------

def test_channels_last_descriptors_keep_cudnn_dims_and_describe_the_memory():
    assert descriptor((2, 3, 4, 5), channels_last=True) == ((2, 3, 4, 5), (60, 1, 15, 3))
    assert descriptor((2, 3, 5), channels_last=True) == ((2, 3, 1, 5), (15, 1, 15, 3))
    assert descriptor((2, 3, 4, 5, 6), True) == ((2, 3, 4, 5, 6), (360, 1, 90, 18, 3))
    assert descriptor((6, 4, 3, 3), True) == ((6, 4, 3, 3), (36, 1, 12, 4))  # KRSC weights
    x = np.zeros((2, 4, 5, 3)).transpose(0, 3, 1, 2)          # NHWC memory, NCHW axes
    assert [s // 8 for s in x.strides] == list(channels_last_strides(x.shape))
    cl = dataclasses.replace(problem(), channels_last=True)
    key = _key(cl)
    assert key.channels_last and key.x_strides == (324, 1, 36, 4)
    assert key.w_strides == (36, 1, 12, 4) and key.y_strides == (486, 1, 54, 6)


ACTIVATION_NODES = {"relu": ("relu", {"lower_clip": 0.0}),
                    "relu6": ("relu", {"lower_clip": 0.0, "upper_clip": 6.0}),
                    "silu": ("swish", {}), "gelu": ("gelu", {})}


@pytest.mark.parametrize("activation", [None, "relu", "relu6", "silu", "gelu"])
@pytest.mark.parametrize("direction", [Direction.FORWARD, Direction.BACKWARD_DATA])
def test_fused_graphs_are_conv_bias_activation(activation, direction):
    """As the frontend's conv-bias-relu samples: the convolution's (virtual) result feeds
    bias, then the activation's pointwise node, whose result is the only output."""
    p = dataclasses.replace(problem(direction), activation=activation or "")
    key = _key(p, fused=True)
    assert key.epilogue == (f"bias+{activation}" if activation else "bias")
    cudnn = fake_cudnn()
    *_, out, bias = plans_module.describe_graph(cudnn, key, "handle")
    graph = cudnn.graphs[0]
    kinds = [kind for kind, *_ in graph.epilogue]
    expected = ["bias"] + ([ACTIVATION_NODES[activation][0]] if activation else [])
    assert kinds == expected
    channels = 6 if direction == Direction.FORWARD else 4
    assert bias.dims == [1, channels, 1, 1] and bias.strides == [channels, 1, 1, 1]
    assert graph.epilogue[0][1] is graph.op["out"] and not graph.op["out"].is_output
    assert out is graph.epilogue[-1][2] and out.is_output
    if activation:
        attributes = graph.epilogue[-1][3]
        assert attributes["compute_data_type"] == "FLOAT"
        for name, value in ACTIVATION_NODES[activation][1].items():
            assert attributes[name] == value
    assert _key(p) != key and not _key(p).epilogue


def test_bfloat16_graphs_compute_in_float32():
    cudnn = fake_cudnn()
    plans = CudnnPlans(fake_cupy(), cudnn)
    plan = plans.plan(_key(problem(dtype="bfloat16")), POLICY)
    assert not isinstance(plan, str)
    graph = cudnn.graphs[0]
    assert graph.kwargs["io_data_type"] == "BFLOAT16"
    assert graph.kwargs["compute_data_type"] == "FLOAT"
    assert graph.op["compute"] == "FLOAT" and graph.op["out"].data_type == "BFLOAT16"
    assert "REDUCED_PRECISION_REDUCTION" in graph.calls[3][1]
    assert "TENSOR_CORE" not in graph.calls[3][1]
    assert "float32 accumulation" in describe_policy(problem(dtype="bfloat16"), POLICY)


def test_a_data_gradient_that_is_cropped_after_cudnn_is_not_fused():
    cropped = problem(Direction.BACKWARD_DATA, x=(1, 2, 9, 9), y=(1, 6, 2, 7),
                      padding=((0, 0), (0, 0)))
    mapping = cudnn_mapping(cropped, symmetric=False)
    assert "epilogue runs after" in plans_module.fuses_into(cropped, mapping)
    assert plans_module.fuses_into(dataclasses.replace(cropped, direction=Direction.FORWARD),
                                   mapping) == ""
    resolution = CudnnPlans(fake_cupy(), fake_cudnn()).resolve(cropped, 0, POLICY, fused=True)
    assert resolution.supported and not resolution.fused
    assert "epilogue runs after" in resolution.fusion


def _numpy_epilogue(calls):
    def epilogue(out, bias, activation, channels_last):
        calls.append((out.shape, activation, channels_last))
        if bias is not None:
            out += bias.reshape((1,) * (out.ndim - 1) + (-1,) if channels_last
                                else (1, -1) + (1,) * (out.ndim - 2))
        if activation:
            out[...] = reference.activate(out, activation)
    return epilogue


def _channels_last(a):
    """A channels-first view of packed channels-last memory holding *a*."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)).transpose(0, a.ndim - 1,
                                                                  *range(1, a.ndim - 1))


@pytest.mark.parametrize("refuse_fused", [False, True])
def test_channels_last_fused_passes_through_the_stand_in_cudnn(refuse_fused):
    """Every pass in channels-last with bias and activation: the operands reach cuDNN where
    they lie (no copy unless the padding mapping needs one), the result lies channels-last,
    and the epilogue is in the graph or, where cuDNN refuses fused graphs, one pass after."""
    cudnn = fake_cudnn(refuse=lambda op: "no fused engine" if refuse_fused and op["epilogue"]
                       else "")
    plans = CudnnPlans(fake_cupy(), cudnn)
    activations = itertools.cycle(["relu", "relu6", "silu", "gelu", ""])
    ran = set()
    for name, base in PROBLEMS[::5]:
        weight = base.direction == Direction.BACKWARD_WEIGHT
        p = dataclasses.replace(base, channels_last=True,
                                activation="" if weight else next(activations))
        resolution = plans.resolve(p, 0, POLICY, fused=not weight)
        if not resolution.supported:
            assert "only zero padding" in resolution.reason
            continue
        a, b, bias = pass_operands(p, "float64", name)
        a_cl = _channels_last(a)
        b_cl = _channels_last(b) if weight else b
        calls: list = []
        cudnn.packs.clear()
        got = plans_module.run_cudnn(np, plans, resolution, p, a_cl, b_cl, bias,
                                     _numpy_epilogue(calls))
        want = expected_pass(p, a, b, bias)
        np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE["float64"] * max(
            1, np.abs(want).max()), err_msg=f"{name}: {p.describe()}")
        if not weight:
            assert plans_module.lies_channels_last(got), name
            wanted_fused = not refuse_fused and not plans_module.fuses_into(p, resolution.mapping)
            assert resolution.fused == wanted_fused, (name, resolution)
            assert len(calls) == (0 if resolution.fused else 1), name
        else:
            assert got.flags.c_contiguous and not calls
        pack = cudnn.packs[0]
        first = pack[resolution.plan.inputs[0]]
        if not resolution.mapping.needs_input_copy(p.x_spatial) or p.direction == (
                Direction.BACKWARD_DATA):
            assert np.shares_memory(first, a_cl), f"{name}: the input was copied"
        ran.add((p.direction, resolution.fused))
    assert {d for d, _ in ran} == set(Direction)
    assert any(fused for _, fused in ran) != refuse_fused


def _cupy_on_numpy():
    """numpy standing in for the CuPy calls CupyBackend._run makes."""
    fake = fake_cupy()
    for name in ("ascontiguousarray", "zeros", "pad", "float32", "dtype", "matmul"):
        setattr(fake, name, getattr(np, name))
    fake.cuda.runtime.getDeviceCount = lambda: 1
    return fake


class _NumpyKernels:
    def __init__(self):
        self.calls = []

    def bias_activation(self, y, bias, activation, channels_last=False):
        names = {0: "", 1: "relu", 2: "relu6", 3: "silu", 4: "gelu"}
        _numpy_epilogue(self.calls)(y, bias, names[activation], channels_last)


@pytest.mark.parametrize("refuse_fused", [False, True])
def test_the_backend_runs_cudnn_in_channels_last_with_its_epilogue(refuse_fused):
    cudnn = fake_cudnn(refuse=lambda op: "no fused engine" if refuse_fused and op["epilogue"]
                       else "")
    backend = CupyBackend()
    backend._probe = status_module.Probe(True, "stub", ("cuda:0",), "14.0.0", {"cudnn": "9.7.0"},
                                         _cupy_on_numpy(), cudnn)
    backend._plans = CudnnPlans(backend._probe.cupy, cudnn)
    backend._kernels = _NumpyKernels()
    assert backend.fuses_activation
    rules = {r.name: r.channels_last for r in backend.algorithm_rules()}
    assert rules == {"cudnn": True, "fft": False, "depthwise": False, "gemm_1x1": False,
                     "im2col_gemm": False, "direct": False}
    p = dataclasses.replace(problem(), channels_last=True, activation="silu")
    ok, reason = backend.algorithm_rules()[0].applies(p)
    assert ok and "channels-last descriptors" in reason
    assert ("bias and silu fused into the graph" in reason) != refuse_fused
    assert ("in one pass after the plan" in reason) == refuse_fused
    rng = np.random.default_rng(4)
    x = rng.standard_normal(p.x_shape)
    w = rng.standard_normal(p.w_shape)
    b = rng.standard_normal(6)
    cuda = Device("cuda", 0)
    got = backend.forward(convflow.Tensor(_channels_last(x), cuda), convflow.Tensor(w, cuda),
                          convflow.Tensor(b, cuda), p, "cudnn").data
    want = reference.activate(reference.conv(x, w, b, (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
                              "silu")
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert plans_module.lies_channels_last(got)
    assert len(backend._kernels.calls) == (1 if refuse_fused else 0)


def test_bfloat16_needs_a_cupy_that_holds_it():
    import ml_dtypes

    backend = CupyBackend()
    cupy = _cupy_on_numpy()
    backend._probe = status_module.Probe(True, "stub", ("cuda:0",), "13.6.0", cupy=cupy)
    bf16 = problem(dtype="bfloat16")

    def no_bfloat16(shape, dtype=None):
        if np.dtype(dtype) == np.dtype(ml_dtypes.bfloat16):
            raise TypeError("Unsupported dtype bfloat16")
        return np.empty(shape, dtype)

    cupy.empty = no_bfloat16
    reason = backend.unsupported_reason(bf16, Device("cuda", 0))
    assert reason and "CuPy 13.6.0 cannot hold bfloat16 arrays" in reason
    assert backend.unsupported_reason(problem(), Device("cuda", 0)) is None
    cupy.empty = np.empty
    assert backend.unsupported_reason(bf16, Device("cuda", 0)) is None


def test_bfloat16_gemms_accumulate_in_float32():
    import ml_dtypes

    from convflow.backends.cupy import algorithms

    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 40)).astype(ml_dtypes.bfloat16)
    b = rng.standard_normal((40, 5)).astype(ml_dtypes.bfloat16)
    seen = []

    def matmul(x, y, out=None):
        seen.append(x.dtype)
        return np.matmul(x, y, out=out)

    out = np.empty((3, 5), ml_dtypes.bfloat16)
    algorithms.matmul_wide(np, matmul)(a, b, out=out)
    assert seen == [np.float32]
    exact = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_array_equal(out, exact.astype(np.float32).astype(ml_dtypes.bfloat16))


# Status --------------------------------------------------------------------------------------

def _importer(modules: dict[str, object]):
    def import_module(name):
        value = modules.get(name)
        if value is None or isinstance(value, BaseException):
            raise value if isinstance(value, BaseException) else ImportError(
                f"No module named {name!r}")
        return value
    return import_module


def _fake_cupy_module(driver=12040, count=1, count_error=None):
    def get_count():
        if count_error:
            raise count_error
        return count
    runtime = types.SimpleNamespace(
        runtimeGetVersion=lambda: 12060, driverGetVersion=lambda: driver,
        getDeviceCount=get_count,
        getDeviceProperties=lambda i: {"name": b"NVIDIA H100", "major": 9, "minor": 0,
                                       "totalGlobalMem": 80 * 2**30})
    return types.SimpleNamespace(__version__="14.0.0", cuda=types.SimpleNamespace(runtime=runtime))


NVRTC = types.SimpleNamespace(getVersion=lambda: (12, 6))


def test_status_without_cupy():
    result = status_module.probe(_importer({}))
    assert not result.available
    assert "CuPy is not installed" in result.reason and "convflow[cuda12]" in result.reason


def test_status_without_a_driver():
    result = status_module.probe(_importer({"cupy": _fake_cupy_module(driver=0)}))
    assert not result.available and "no NVIDIA driver" in result.reason


def test_status_with_an_unusable_device():
    error = RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    result = status_module.probe(_importer({"cupy": _fake_cupy_module(count_error=error)}))
    assert not result.available and "cannot use a CUDA device" in result.reason
    assert "InsufficientDriver" in result.reason
    result = status_module.probe(_importer({"cupy": _fake_cupy_module(count=0)}))
    assert not result.available and "no CUDA device" in result.reason


def test_status_without_nvrtc():
    result = status_module.probe(_importer({"cupy": _fake_cupy_module()}))
    assert not result.available and "NVRTC" in result.reason and result.devices


def test_status_without_the_cudnn_frontend():
    result = status_module.probe(_importer({"cupy": _fake_cupy_module(),
                                            "cupy_backends.cuda.libs.nvrtc": NVRTC}))
    assert result.available and result.cudnn is None
    assert "cuDNN frontend not installed" in result.reason
    assert "only convflow's own CUDA kernels" in result.reason
    assert result.devices == ("cuda:0 (NVIDIA H100, sm_90, 80.0 GiB)",)
    assert result.details["cuda_runtime"] == "12.6" and result.details["cuda_driver"] == "12.4"


def test_status_with_a_broken_cudnn():
    def fail():
        raise OSError("libcudnn.so.9: cannot open shared object file")
    cudnn = types.SimpleNamespace(__version__="1.9.0", backend_version=fail)
    result = status_module.probe(_importer({"cupy": _fake_cupy_module(), "cudnn": cudnn,
                                            "cupy_backends.cuda.libs.nvrtc": NVRTC}))
    assert result.available and result.cudnn is None and "libcudnn" in result.reason


def test_status_with_everything():
    cudnn = types.SimpleNamespace(__version__="1.9.0", backend_version=lambda: 90700)
    result = status_module.probe(_importer({"cupy": _fake_cupy_module(), "cudnn": cudnn,
                                            "cupy_backends.cuda.libs.nvrtc": NVRTC}))
    assert result.available and result.cudnn is cudnn
    assert "cuDNN 9.7.0 through cuDNN frontend 1.9.0" in result.reason
    assert status_module.format_cudnn_version(8902) == "8.9.2"


def test_the_real_status_names_its_reason():
    status = convflow.available_backends()["cupy"]
    assert status.device_type == "cuda" and status.reason
    if not status.available:
        out = subprocess.run([sys.executable, "-m", "convflow", "info"], capture_output=True,
                             text=True, check=True).stdout
        assert f"cupy     unavailable: {status.reason}" in out


# Rules and selection -------------------------------------------------------------------------

class _StubPlans:
    def __init__(self, resolution):
        self.resolution = resolution
        self.asked = []

    def resolve(self, p, device, policy, fused=False):
        self.asked.append((p, device, policy, fused))
        return self.resolution


def _backend_with(resolution) -> tuple[CupyBackend, _StubPlans]:
    backend = CupyBackend()
    backend._probe = status_module.Probe(True, "stub", ("cuda:0",), "14.0.0",
                                         {"cudnn": "9.7.0"}, fake_cupy(), object())
    stub = _StubPlans(resolution)
    backend._plans = stub  # type: ignore[assignment]
    return backend, stub


def test_rules_without_the_frontend_are_the_own_kernels():
    backend = CupyBackend()
    backend._probe = status_module.Probe(True, "stub", ("cuda:0",), cupy=fake_cupy())
    assert [r.name for r in backend.algorithm_rules()] == [r.name for r in OWN_RULES]


def test_cudnn_is_preferred_when_it_has_a_plan():
    key = _key(problem())
    mapping = cudnn_mapping(problem(), False)
    plan = plans_module.CudnnPlan(key, None, (None, None), None, 2 << 20)
    backend, stub = _backend_with(Resolution(plan, mapping, ""))
    choice = selector.select_algorithm("conv2d", backend, problem(), None)
    rule, reason, source = choice.rule, choice.reason, choice.source
    assert rule.name == "cudnn" and source == "heuristic"
    assert "built a plan" in reason and "no TF32" in reason and "2.0 MiB" in reason
    assert stub.asked[0][1] == 0 and stub.asked[0][2] == POLICY


def test_a_cudnn_refusal_falls_back_with_its_reason():
    backend, _ = _backend_with(Resolution(None, None, "cuDNN refused it (no engine)"))
    choice = selector.select_algorithm("conv2d", backend, problem(), None)
    rule, outcomes = choice.rule, choice.outcomes
    assert rule.name == "im2col_gemm"
    assert outcomes[0].rule == "cudnn" and not outcomes[0].matched
    assert "cuDNN refused it (no engine)" in outcomes[0].detail
    assert "own kernels" in outcomes[0].detail
    with pytest.raises(convflow.ParameterError, match="cannot run this problem"):
        selector.select_algorithm("conv2d", backend, problem(), "cudnn")


def test_own_rule_order():
    depthwise = problem(x=(2, 4, 9, 9), w=(8, 1, 3, 3), y=(2, 8, 9, 9), groups=4)
    pointwise = problem(w=(6, 4, 1, 1), padding=((0, 0), (0, 0)))
    tiny = problem(x=(2, 1, 9, 9), w=(2, 1, 3, 3), y=(2, 2, 9, 9))
    backend = CupyBackend()
    backend._probe = status_module.Probe(True, "stub", cupy=fake_cupy())
    picks = [selector.select_algorithm("conv2d", backend, p, None).rule.name
             for p in (depthwise, pointwise, problem(), tiny)]
    assert picks == ["depthwise", "gemm_1x1", "im2col_gemm", "direct"]


def test_host_data_stays_on_the_cpu_and_device_data_goes_to_cupy(monkeypatch):
    """Compute where the data lives: numpy input is not moved to a GPU unless forced."""
    backend = CupyBackend()
    backend._probe = status_module.Probe(True, "stub", ("cuda:0",), cupy=fake_cupy())
    backend._probe.cupy.cuda.runtime.getDeviceCount = lambda: 1
    real_status, real_get = registry.backend_status, registry.get_backend
    monkeypatch.setattr(registry, "backend_status",
                        lambda name: backend.status() if name == "cupy" else real_status(name))
    monkeypatch.setattr(registry, "get_backend",
                        lambda name: backend if name == "cupy" else real_get(name))
    monkeypatch.setattr(registry, "backend_for_device",
                        lambda device: backend if device.type == "cuda" else real_get("numba"))
    chosen, device, _ = selector.select_backend("conv2d", problem(), Device("cpu"), None)
    assert chosen.name == "numba" and device == Device("cpu")
    chosen, device, _ = selector.select_backend("conv2d", problem(), Device("cuda", 0), None)
    assert chosen is backend and device == Device("cuda", 0)
    chosen, device, _ = selector.select_backend("conv2d", problem(), Device("cpu"), "cupy")
    assert chosen is backend and device == Device("cuda", 0)
    assert backend.unsupported_reason(problem(), Device("cuda", 3)) == (
        "cuda:3 does not exist: this machine has 1 CUDA device")


def test_cuda_dlpack_input_needs_the_cupy_backend():
    class CudaTensor:
        def __dlpack__(self, stream=None):
            raise AssertionError("must not be read when the backend is unavailable")

        def __dlpack_device__(self):
            return (2, 0)

    if convflow.available_backends()["cupy"].available:
        pytest.skip("this machine has a GPU; the routing is tested in test_cupy_gpu.py")
    with pytest.raises(BackendUnavailableError, match="needs the cupy backend"):
        as_tensor(CudaTensor(), "conv2d", "input")
    with pytest.raises(BackendUnavailableError, match="cupy"):
        convflow.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 1, 1)), backend="cupy")


# Packaging -----------------------------------------------------------------------------------

def test_extras_pull_cupy_cudnn_and_the_frontend():
    tomllib = pytest.importorskip("tomllib", reason="tomllib (Python 3.11+) reads pyproject.toml")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for cuda, wheel in (("cuda12", "cupy-cuda12x"), ("cuda13", "cupy-cuda13x")):
        names = [req.split("[")[0].split(">")[0].split("=")[0].strip() for req in extras[cuda]]
        assert names == [wheel, f"nvidia-cudnn-cu{cuda[-2:]}", "nvidia-cudnn-frontend"]
        assert any("[ctk]" in req for req in extras[cuda])  # NVRTC and cuBLAS as wheels
    assert not any("cupy" in dep or "cudnn" in dep for dep in project["dependencies"])
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"]["markers"]
    assert any(m.startswith("gpu:") for m in markers)


def test_import_convflow_imports_neither_cupy_nor_cudnn():
    """CuPy is imported when the cupy backend's status is first asked for (by a call's
    decision trace, available_backends(), ...), never by the import."""
    code = ("import sys, convflow, convflow.backends.cupy, convflow.cli; "
            "print(sorted(m for m in ('cupy', 'cudnn', 'cupy_backends') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_the_wheel_ships_the_cuda_kernels(tmp_path):
    hatchling = pytest.importorskip("hatchling", reason="hatchling builds the wheel")
    assert hatchling
    subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True)
    wheel = next(tmp_path.glob("convflow-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for source in ("common.cuh", "direct.cuh", "depthwise.cuh", "im2col.cuh", "direct.cu",
                   "depthwise.cu", "im2col.cu"):
        assert f"convflow/_kernels/cuda/{source}" in names
    assert "convflow/backends/cupy/__init__.py" in names


def test_readme_documents_the_backend_truthfully():
    readme = (ROOT / "README.md").read_text()
    assert "CONVFLOW_ALLOW_TF32" in readme and "CONVFLOW_DETERMINISTIC" in readme
    assert "not been run on a GPU" in readme
    result = subprocess.run([sys.executable, str(ROOT / "ci" / "readme_tables.py"), "--check"],
                            capture_output=True)
    assert result.returncode == 0, "README's table is stale: run make readme"


def test_cli_info_lists_the_cupy_backend(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "  cupy     " in out and "CONVFLOW_ALLOW_TF32 = False" in out


def test_gpu_check_script_and_benchmark_layers():
    assert subprocess.run(["bash", "-n", str(ROOT / "ci" / "gpu-check.sh")]).returncode == 0
    sys.path.insert(0, str(ROOT / "ci"))
    try:
        import bench_cupy
    finally:
        sys.path.remove(str(ROOT / "ci"))
    layers = bench_cupy.resnet50_layers()
    assert len(layers) == 23 and sum(layer.count for layer in layers) == 53
    stem = layers[0]
    assert (stem.in_channels, stem.size, stem.out_channels, stem.kernel, stem.stride,
            stem.padding) == (3, (224, 224), 64, (7, 7), (2, 2), ((3, 3), (3, 3)))
