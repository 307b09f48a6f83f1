"""Host-side arithmetic of the cupy backend: pure functions of shapes, no CuPy, no GPU.

* :func:`kernel_args` -- a problem's :class:`~convflow.geometry.Geometry` in the argument
  order of ``CF_GEOM_PARAMS`` (``kernels/cuda/common.cuh``);
* launch geometry (:func:`elementwise_launch`, :func:`reduction_launch`); the GEMM
  algorithms' tiles are :func:`convflow.geometry.plan_tiles`;
* the mapping of a problem onto cuDNN's convolution (:func:`cudnn_mapping`): ``(low, high)``
  padding and outputs that may be fewer than the convolution gives become cuDNN's pre/post
  padding, cropping the input where needed, or, for engines that refuse asymmetric padding,
  symmetric padding plus explicit zeros;
* tensor descriptors (:func:`descriptor`: channels-first or channels-last strides) and the
  plan-cache key (:class:`PlanKey`, with the fused epilogue the graph carries).

Everything here is unit-tested on machines without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...geometry import Geometry
from ...params import ConvProblem, Direction

# Threads per block of the element-wise kernels, and of the reduction kernels (the -D
# CF_BLOCK the sources are compiled with).
ELEMENT_BLOCK = 256
REDUCTION_BLOCK = 256
# Grid-stride loops cover any size, so grids are capped well below the hardware limits.
MAX_ELEMENT_BLOCKS = 65536 * 8
MAX_REDUCTION_BLOCKS = 65536 * 8

# Argument order of CF_GEOM_PARAMS in kernels/cuda/common.cuh.
GEOMETRY_FIELDS = ("n", "c", "id", "ih", "iw", "k", "od", "oh", "ow", "kd", "kh", "kw",
                   "sd", "sh", "sw", "pd", "ph", "pw", "dd", "dh", "dw", "groups")

INT32_MAX = 2**31 - 1


def kernel_args(geometry: Geometry) -> tuple[int, ...]:
    """The CF_GEOM_PARAMS values of *geometry*, in the order of :data:`GEOMETRY_FIELDS`."""
    values = (geometry.n, geometry.c, *geometry.x_spatial, geometry.k, *geometry.y_spatial,
              *geometry.kernel, *geometry.spatial_args, geometry.groups)
    if any(v > INT32_MAX for v in values):
        raise OverflowError(f"a dimension of {geometry} does not fit the kernels' 32-bit ints")
    return values


@dataclass(frozen=True)
class Launch:
    """A kernel launch: grid and block sizes (x only) and dynamic shared memory."""

    grid: int
    block: int
    shared_mem: int = 0


def elementwise_launch(total: int, block: int = ELEMENT_BLOCK) -> Launch:
    """Grid for a grid-stride loop over *total* elements (at least one block)."""
    if total < 0:
        raise ValueError(f"element count must be >= 0, got {total}")
    blocks = max(1, min(-(-total // block), MAX_ELEMENT_BLOCKS))
    return Launch(blocks, block)


def reduction_launch(outputs: int, block: int = REDUCTION_BLOCK) -> Launch:
    """One block per reduced output (grid-stride beyond MAX_REDUCTION_BLOCKS)."""
    if outputs < 0:
        raise ValueError(f"output count must be >= 0, got {outputs}")
    if block & (block - 1) or not 32 <= block <= 1024:
        raise ValueError(f"reduction blocks must be a power of two in [32, 1024], got {block}")
    return Launch(max(1, min(outputs, MAX_REDUCTION_BLOCKS)), block)


# cuDNN --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CudnnMapping:
    """How a problem is handed to cuDNN.

    cuDNN computes ``out = (x + pre + post - extent) // stride + 1`` outputs per spatial dim
    from the input it is given. The problem's input is cropped to ``x_extent`` (elements no
    listed output reads), padded with ``explicit_padding`` zeros on each side (only in
    symmetric mode), and convolved with ``pre_padding`` / ``post_padding``.
    """

    x_extent: tuple[int, ...]
    explicit_padding: tuple[tuple[int, int], ...]
    pre_padding: tuple[int, ...]
    post_padding: tuple[int, ...]
    symmetric: bool

    def cudnn_x_spatial(self) -> tuple[int, ...]:
        return tuple(e + lo + hi for e, (lo, hi) in zip(self.x_extent, self.explicit_padding))

    def is_asymmetric(self) -> bool:
        return self.pre_padding != self.post_padding

    def needs_input_copy(self, x_spatial: tuple[int, ...]) -> bool:
        """Whether cuDNN's input differs from the problem's (a cropped or padded copy)."""
        return self.x_extent != tuple(x_spatial) or any(lo or hi for lo, hi
                                                        in self.explicit_padding)

    def describe(self) -> str:
        text = f"pre_padding={self.pre_padding}, post_padding={self.post_padding}"
        if any(lo or hi for lo, hi in self.explicit_padding):
            text += f", input padded explicitly by {self.explicit_padding}"
        return text


def cudnn_mapping(problem: ConvProblem, symmetric: bool) -> CudnnMapping | str:
    """Map *problem* onto cuDNN's geometry, or return why it cannot be.

    Per spatial dim, any post padding in ``[need, need + stride - 1]`` gives exactly the
    problem's outputs, where ``need = (y - 1) * stride + extent - pre - x``. The value
    closest to the pre padding is chosen, so padding is symmetric whenever the range allows.
    Where even a post padding of 0 gives too many outputs, the input is cropped. With
    ``symmetric``, a remaining asymmetry becomes explicit zeros around the input and equal
    pre and post padding.
    """
    extents, explicit, pres, posts = [], [], [], []
    names = "DHW"[3 - problem.ndim:]
    for name, x, y, k, s, d, (lo, _) in zip(names, problem.x_spatial, problem.y_spatial,
                                            problem.kernel_size, problem.stride,
                                            problem.dilation, problem.padding):
        window = d * (k - 1) + 1
        need = (y - 1) * s + window - lo - x
        extent = x
        if need + s - 1 < 0:
            extent = x + need
            need = 0
            if extent <= 0:
                return (f"along dim {name} every listed output reads only zero padding "
                        f"(low padding {lo}, kernel extent {window}, {y} outputs)")
        post = min(max(lo, need, 0), need + s - 1)
        pre = lo
        pad_low = pad_high = 0
        if symmetric and pre != post:
            common = min(pre, post)
            pad_low, pad_high = pre - common, post - common
            pre = post = common
        extents.append(extent)
        explicit.append((pad_low, pad_high))
        pres.append(pre)
        posts.append(post)
    return CudnnMapping(tuple(extents), tuple(explicit), tuple(pres), tuple(posts), symmetric)


def packed_strides(dims: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a C-contiguous array of shape *dims*."""
    strides = []
    step = 1
    for size in reversed(dims):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def channels_last_strides(dims: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of ``(N, C, *spatial)`` dims whose memory is channels-last,
    ``(N, *spatial, C)`` packed (NHWC, NDHWC; for weights KRSC)."""
    memory = packed_strides((dims[0], *dims[2:], dims[1]))
    return (memory[0], memory[-1], *memory[1:-1])


def descriptor(shape: tuple[int, ...],
               channels_last: bool = False) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """cuDNN dims and strides of an ``(N, C, *spatial)`` array, packed channels-first or,
    with *channels_last*, packed channels-last: the dims stay in cuDNN's NCHW order and the
    strides say where the data lies, so channels-last data is described, not transposed.

    cuDNN's convolutions take 4-D or 5-D tensors, so a 1-D problem gets a unit height:
    ``(N, C, W)`` is described as ``(N, C, 1, W)``.
    """
    dims = tuple(shape)
    if len(dims) == 3:
        dims = (dims[0], dims[1], 1, dims[2])
    return dims, channels_last_strides(dims) if channels_last else packed_strides(dims)


def lift_conv_params(values: tuple[int, ...], fill: int) -> tuple[int, ...]:
    """Stride / padding / dilation of a 1-D problem lifted to 2-D (the unit height)."""
    return (fill, *values) if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class PlanKey:
    """Everything that changes a cuDNN plan; equal keys share one built graph."""

    device: int
    direction: str
    dtype: str
    x_dims: tuple[int, ...]
    x_strides: tuple[int, ...]
    w_dims: tuple[int, ...]
    w_strides: tuple[int, ...]
    y_dims: tuple[int, ...]
    y_strides: tuple[int, ...]
    pre_padding: tuple[int, ...]
    post_padding: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    deterministic: bool
    allow_tf32: bool
    workspace_limit: int
    # Activations (x, y; and the weight, KRSC) described with channels-last strides.
    channels_last: bool = False
    # The fused epilogue after the convolution node: "" (none), "bias" or "bias+<activation>".
    epilogue: str = ""

    @property
    def transposed(self) -> bool:
        """A transposed convolution is the backward-data pass of the one it transposes."""
        return self.direction == Direction.BACKWARD_DATA.value

    @property
    def activation(self) -> str:
        return self.epilogue.partition("+")[2]

    @property
    def bias_dims(self) -> tuple[int, ...]:
        """The bias as cuDNN broadcasts it: one value per channel of the pass's output."""
        dims = self.x_dims if self.transposed else self.y_dims
        return (1, dims[1], *(1 for _ in dims[2:]))


def plan_key(problem: ConvProblem, mapping: CudnnMapping, device: int, *, deterministic: bool,
             allow_tf32: bool, workspace_limit: int, fused: bool = False) -> PlanKey:
    """The cache key of *problem* as mapped onto cuDNN on CUDA device *device*; with *fused*,
    of the graph that adds the bias and applies ``problem.activation`` after the convolution.

    TF32 only exists for float32, so the policy is part of the key for float32 problems only.
    """
    last = problem.channels_last
    x_shape = (*problem.x_shape[:2], *mapping.cudnn_x_spatial())
    x_dims, x_strides = descriptor(x_shape, last)
    w_dims, w_strides = descriptor(problem.w_shape, last)
    y_dims, y_strides = descriptor(problem.y_shape, last)
    epilogue = ""
    if fused:
        epilogue = f"bias+{problem.activation}" if problem.activation else "bias"
    return PlanKey(
        device=device,
        direction=problem.direction.value,
        dtype=problem.dtype,
        x_dims=x_dims, x_strides=x_strides,
        w_dims=w_dims, w_strides=w_strides,
        y_dims=y_dims, y_strides=y_strides,
        pre_padding=lift_conv_params(mapping.pre_padding, 0),
        post_padding=lift_conv_params(mapping.post_padding, 0),
        stride=lift_conv_params(problem.stride, 1),
        dilation=lift_conv_params(problem.dilation, 1),
        groups=problem.groups,
        deterministic=bool(deterministic),
        allow_tf32=bool(allow_tf32) and problem.dtype == "float32",
        workspace_limit=int(workspace_limit),
        channels_last=last,
        epilogue=epilogue,
    )
