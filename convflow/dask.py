"""Convolutions of dask arrays, chunk by chunk, on one machine or a cluster.

``convflow.dask.conv2d(x, w, ...)`` takes a ``dask.array.Array`` chunked in any way along
the batch and spatial axes and returns a lazy dask array equal to what ``convflow.conv2d``
gives on the whole array::

    import dask.array as da
    import convflow.dask

    x = da.random.default_rng(0).random((1, 3, 40_000, 40_000), dtype="float32",
                                        chunks=(1, 3, 4096, 4096))
    y = convflow.dask.conv2d(x, w, b, padding="same")      # lazy, chunks of ~4096 x 4096

How the graph is built
----------------------
The arguments are normalized and checked exactly as ``convflow.conv2d`` does (same errors,
raised here, before any graph exists). The plan is made per *output* chunk
(:mod:`convflow.chunking`): for each one, the input positions its outputs read, including
the padding region, are cut from the neighbouring input chunks (``getitem`` tasks, so only
the halo travels between workers), concatenated, and convolved with just the zero padding that
the window needs; for the padding modes reflect / replicate / circular the window's padding
positions are cut from the right places of the whole array (backwards, repeated or from the
far end), so the whole array is never padded.
Channel axes are gathered into one chunk. The weight and bias are one graph key each, so
each worker receives them once. Every chunk is computed by ``convflow.conv{n}d`` on the
worker, which picks its backend by the usual rules (CuPy chunks go to the cupy backend).

Importing this module imports dask; ``import convflow`` never does.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np

from . import checks
from .backends import validate_backend_name
from .chunking import OutputChunk, Piece, plan_forward, plan_transposed
from .errors import ArgumentTypeError, ShapeError
from .params import ConvParams
from .tensor import as_tensor

try:
    import dask.array as da
    from dask.array.utils import meta_from_array
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph
except ImportError as exc:  # pragma: no cover - exercised only without dask
    raise ImportError(
        f"convflow.dask needs dask[array] ({exc}); install it with: pip install 'convflow[dask]'"
    ) from exc

__all__ = ["conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d"]

@dataclass(frozen=True)
class _ChunkCall:
    """Everything one chunk's task needs besides its arrays (a plain object, so the graph
    never mistakes its tuples for keys or tasks)."""

    function: str
    transposed: bool
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    backend: str | None
    padding: tuple[tuple[int, int], ...]
    output_padding: tuple[int, ...]
    shape: tuple[int, ...]
    meta: Any


def _cut(block: Any, index: tuple[slice, ...], repeats: tuple[int, ...]) -> Any:
    """A piece of a chunk, with single positions repeated along the spatial axes that
    replicate the array's edge (``repeats`` per spatial axis)."""
    piece = block[index]
    for axis, count in enumerate(repeats, start=2):
        if count > 1:
            piece = np.repeat(piece, count, axis=axis)
    return piece


def _concatenate(nested: Any, axis: int) -> Any:
    """Concatenate nested lists of pieces, the outer list along ``axis``."""
    if not isinstance(nested, list):
        return nested
    parts = [_concatenate(part, axis + 1) for part in nested]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)


def _conv_chunk(pieces: Any, weight: Any, bias: Any, call: _ChunkCall) -> Any:
    """One output chunk, on a worker: the window from its pieces, then convflow's own call."""
    import convflow

    if pieces is None:
        # No input reaches this chunk: every output is the bias alone (or zero).
        out = np.zeros_like(call.meta, shape=call.shape)
        if bias is not None:
            out += np.asarray(bias, like=call.meta).reshape((-1,) + (1,) * len(call.stride))
        return out
    window = _concatenate(pieces, 2)
    function = getattr(convflow, call.function)
    if call.transposed:
        y = function(window, weight, bias, call.stride, call.padding, call.output_padding,
                     call.groups, call.dilation, backend=call.backend)
    else:
        y = function(window, weight, bias, call.stride, call.padding, call.dilation, call.groups,
                     backend=call.backend)
    if tuple(y.shape) != call.shape:  # pragma: no cover - a planning bug, never the user's
        raise RuntimeError(f"convflow.dask: chunk of shape {tuple(y.shape)} computed where "
                           f"{call.shape} was planned ({call})")
    return y


@dataclass(frozen=True)
class _Operand:
    """The weight or bias: its shape and dtype for the checks, and its one graph key."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    key: Any
    layer: dict[Any, Any]
    collection: Any


def _operand(op: str, name: str, value: Any) -> _Operand:
    if isinstance(value, da.Array):
        if any(np.isnan(s) for s in value.shape):
            raise ShapeError(f"{op}: {name} has unknown size {value.shape}; call "
                             f"{name}.compute_chunk_sizes() first")
        whole = value.rechunk(value.shape) if value.npartitions > 1 else value
        key = whole.__dask_keys__()
        while isinstance(key, list):
            key = key[0]
        return _Operand(tuple(int(s) for s in whole.shape), np.dtype(whole.dtype), key, {},
                        whole)
    t, _ = as_tensor(value, op, name)
    key = f"convflow-{name}-{tokenize(t.data)}"
    return _Operand(t.shape, t.dtype, key, {key: t.data}, None)


def _dask_input(op: str, input: Any) -> Any:
    if input is None:
        raise ArgumentTypeError(f"{op}: argument 'input' is None; expected a dask.array.Array")
    if not isinstance(input, da.Array):
        raise ArgumentTypeError(
            f"{op}: convflow.dask.{op} takes a dask.array.Array as input, but got "
            f"{type(input).__name__}; wrap it with dask.array.from_array(input, chunks=...), "
            f"or call convflow.{op} for data in memory"
        )
    if any(np.isnan(s) for s in input.shape):
        raise ShapeError(f"{op}: input has unknown chunk sizes (shape {input.shape}); call "
                         f"input.compute_chunk_sizes() first")
    return input


def _conv(op: str, ndim: int, input: Any, weight: Any, bias: Any, stride: Any, padding: Any,
          dilation: Any, groups: Any, padding_mode: Any, backend: Any,
          transposed: bool = False, output_padding: Any = 0) -> Any:
    if getattr(da, "array_expr_enabled", lambda: False)():
        raise NotImplementedError(
            f"convflow.dask.{op} builds classic dask arrays (a HighLevelGraph), but dask's array "
            f"query planning is enabled (dask config 'array.query-planning'); set it to False "
            f"before dask.array is first imported"
        )
    x = _dask_input(op, input)
    w = _operand(op, "weight", weight)
    b = None if bias is None else _operand(op, "bias", bias)
    token = tokenize(op, x.name, w.key, None if b is None else b.key, stride, padding, dilation,
                     groups, padding_mode, backend, transposed, output_padding)
    dtype = checks.check_dtypes(op, [("input", np.dtype(x.dtype)), ("weight", w.dtype),
                                     ("bias", None if b is None else b.dtype)])
    unbatched = checks.check_operand_ranks(op, ndim, x.shape, w.shape, transposed)
    if unbatched:
        x = x[None]
    params = ConvParams.normalize(op, ndim, stride=stride, padding=padding, dilation=dilation,
                                  groups=groups, transposed=transposed,
                                  output_padding=output_padding, padding_mode=padding_mode,
                                  input_spatial=x.shape[2:], kernel_spatial=w.shape[2:])
    bias_shape = None if b is None else b.shape
    if transposed:
        out_shape = checks.check_transposed(op, x.shape, w.shape, bias_shape, params)
    else:
        out_shape = checks.check_forward(op, x.shape, w.shape, bias_shape, params)
    if backend is not None:
        backend = validate_backend_name(backend, op)

    if x.numblocks[1] > 1:
        x = x.rechunk({1: -1})
    kernel = w.shape[2:]
    plans: list[list[OutputChunk]] = []
    for axis in range(ndim):
        chunks, k = x.chunks[2 + axis], kernel[axis]
        s, d = params.stride[axis], params.dilation[axis]
        if transposed:
            plans.append(plan_transposed(chunks, k, s, d, params.padding[axis],
                                         params.output_padding[axis]))
        else:
            plans.append(plan_forward(chunks, k, s, d, params.padding[axis],
                                      params.padding_mode))
    y = _graph(op, ndim, x, w, b, params, plans, out_shape, dtype, backend, token)
    return y[0] if unbatched else y


def _graph(op: str, ndim: int, x: Any, w: _Operand, b: _Operand | None,
           params: ConvParams, plans: list[list[OutputChunk]], out_shape: tuple[int, ...],
           dtype: np.dtype[Any], backend: str | None, token: str) -> Any:
    name = f"{op}-{token}"
    halo = f"convflow-halo-{token}"
    layer: dict[Any, Any] = {**w.layer, **(b.layer if b is not None else {})}
    meta = meta_from_array(x._meta, ndim=ndim + 2, dtype=dtype)
    function = f"conv_transpose{ndim}d" if params.transposed else f"conv{ndim}d"
    c_out = out_shape[1]
    channel_chunks = (c_out,)
    spatial_chunks = tuple(tuple(chunk.size for chunk in plan) for plan in plans)
    for n_block, n in enumerate(x.chunks[0]):
        for out_index in product(*(range(len(plan)) for plan in plans)):
            chunks = [plan[i] for plan, i in zip(plans, out_index)]
            call = _ChunkCall(function, params.transposed, params.stride, params.dilation,
                              params.groups, backend, tuple(c.padding for c in chunks),
                              tuple(c.output_padding for c in chunks),
                              (n, c_out, *(c.size for c in chunks)), meta)
            pieces: Any = None
            if all(c.reads_input for c in chunks):
                pieces = _pieces_tree(layer, x.name, halo, n_block, chunks)
            key = (name, n_block, 0, *out_index)
            layer[key] = (_conv_chunk, pieces, w.key, None if b is None else b.key, call)
    dependencies = [x, *(o.collection for o in (w, b) if o is not None and o.collection is not None)]
    graph = HighLevelGraph.from_collections(name, layer, dependencies=dependencies)
    chunks_all = (x.chunks[0], channel_chunks, *spatial_chunks)
    return da.Array(graph, name, chunks_all, meta=meta)


def _pieces_tree(layer: dict[Any, Any], source: str, halo: str, n_block: int,
                 chunks: Sequence[OutputChunk]) -> Any:
    """Nested lists (one level per spatial dim) of the keys of the window's pieces. Whole
    input chunks are used as they are; parts are cut by a task where the chunk lives, so
    only the part travels."""

    def build(level: int, parts: tuple[Piece, ...]) -> Any:
        if level < len(chunks):
            return [build(level + 1, (*parts, p)) for p in chunks[level].pieces]
        key = (source, n_block, 0, *(p.block for p in parts))
        if all(p.plain for p in parts):
            return key
        index = (slice(None), slice(None), *(_slice(p) for p in parts))
        repeats = tuple(p.repeat for p in parts)
        cut = (halo, n_block, *(v for p in parts for v in (p.block, p.start, p.stop,
                                                           p.reverse, p.repeat)))
        if cut not in layer:
            layer[cut] = ((operator.getitem, key, index) if all(r == 1 for r in repeats)
                          else (_cut, key, index, repeats))
        return cut

    return build(0, ())


def _slice(piece: Piece) -> slice:
    if piece.reverse:
        return slice(piece.stop - 1, piece.start - 1 if piece.start else None, -1)
    return slice(piece.start, piece.stop)


def conv1d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: Any = 1, *, padding_mode: str = "zeros",
           backend: str | None = None) -> Any:
    """:func:`convflow.conv1d` of a dask array; see :func:`conv2d`."""
    return _conv("conv1d", 1, input, weight, bias, stride, padding, dilation, groups,
                 padding_mode, backend)


def conv2d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: Any = 1, *, padding_mode: str = "zeros",
           backend: str | None = None) -> Any:
    """:func:`convflow.conv2d` of a ``dask.array.Array``, as a lazy dask array.

    ``input`` may be chunked in any way along the batch and spatial axes (its channel axis is
    gathered into one chunk); ``weight`` and ``bias`` are arrays in memory (numpy, CuPy) or
    dask arrays (gathered into one chunk). The arguments mean what they mean for
    :func:`convflow.conv2d` and are checked the same way, here, before any graph is built.

    Returns a dask array of shape ``(N, C_out, H_out, W_out)`` (or unbatched), chunked like
    the batch of ``input``, with all output channels in one chunk and spatial chunks that
    follow the input's (about ``chunk / stride`` each). Each chunk is computed on a worker by
    ``convflow.conv2d`` on the input chunk plus a halo of about the kernel's extent, so a
    worker needs memory for about twice that window, the output chunk, the weight and
    ``CONVFLOW_WORKSPACE_MB`` per running task (see the README, "Beyond one machine").
    """
    return _conv("conv2d", 2, input, weight, bias, stride, padding, dilation, groups,
                 padding_mode, backend)


def conv3d(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: Any = 1, *, padding_mode: str = "zeros",
           backend: str | None = None) -> Any:
    """:func:`convflow.conv3d` of a dask array; see :func:`conv2d`."""
    return _conv("conv3d", 3, input, weight, bias, stride, padding, dilation, groups,
                 padding_mode, backend)


def conv_transpose1d(input: Any, weight: Any, bias: Any = None, stride: Any = 1,
                     padding: Any = 0, output_padding: Any = 0, groups: Any = 1,
                     dilation: Any = 1, *, backend: str | None = None) -> Any:
    """:func:`convflow.conv_transpose1d` of a dask array; see :func:`conv_transpose2d`."""
    return _conv("conv_transpose1d", 1, input, weight, bias, stride, padding, dilation, groups,
                 "zeros", backend, transposed=True, output_padding=output_padding)


def conv_transpose2d(input: Any, weight: Any, bias: Any = None, stride: Any = 1,
                     padding: Any = 0, output_padding: Any = 0, groups: Any = 1,
                     dilation: Any = 1, *, backend: str | None = None) -> Any:
    """:func:`convflow.conv_transpose2d` of a ``dask.array.Array``, as a lazy dask array.

    Same arguments and checks as :func:`convflow.conv_transpose2d`. Each output chunk is
    computed from the input chunk whose contributions land in it plus a halo of about
    ``kernel extent / stride`` inputs; output chunks are about ``chunk * stride``.
    """
    return _conv("conv_transpose2d", 2, input, weight, bias, stride, padding, dilation, groups,
                 "zeros", backend, transposed=True, output_padding=output_padding)


def conv_transpose3d(input: Any, weight: Any, bias: Any = None, stride: Any = 1,
                     padding: Any = 0, output_padding: Any = 0, groups: Any = 1,
                     dilation: Any = 1, *, backend: str | None = None) -> Any:
    """:func:`convflow.conv_transpose3d` of a dask array; see :func:`conv_transpose2d`."""
    return _conv("conv_transpose3d", 3, input, weight, bias, stride, padding, dilation, groups,
                 "zeros", backend, transposed=True, output_padding=output_padding)

