"""Chunk arithmetic for :mod:`convflow.dask`: pure functions of integers, one spatial dim at a time.

The plan is made per *output* chunk. For each output chunk ``[start, stop)`` along a spatial
dim it says which input positions the outputs read (the window), which pieces of which
input chunks make up that window, and the padding (forward) or cropping (transposed) that
makes a convolution of the window alone produce exactly those outputs.

Forward, with effective kernel ``ke``, stride ``s`` and padding ``(lo, hi)``: output ``o``
reads input positions ``[o*s - lo, o*s - lo + ke)``, so outputs ``[start, stop)`` read
``[start*s - lo, (stop - 1)*s - lo + ke)``. Positions outside ``[0, size)`` lie in the
padding: zeros are supplied by padding the window; for reflect / replicate / circular those
positions are read from inside the input (backwards, repeated or wrapped around), so the
window is all data and the whole array is never padded.

Transposed, with cropping ``(lo, hi)`` and ``output_padding``: input ``i`` adds to full
output positions ``[i*s, i*s + ke)``, and output ``q`` is full position ``q + lo``. The
window is every input whose contributions can reach ``[start + lo, stop + lo)``; the local
convolution is cropped so its output starts at ``start``, and given local ``output_padding``
where the chunk extends past the window's last contribution (gaps when ``s > ke``, or the
global ``output_padding`` at the high end).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from . import shapes


@dataclass(frozen=True)
class Piece:
    """Positions ``[start, stop)`` of source chunk number ``block`` (chunk-local positions),
    read backwards when ``reverse`` (reflected padding), each repeated ``repeat`` times
    (replicated padding: a single position)."""

    block: int
    start: int
    stop: int
    whole: bool
    reverse: bool = False
    repeat: int = 1

    @property
    def plain(self) -> bool:
        """The whole chunk as it is: no cut, no copy."""
        return self.whole and not self.reverse and self.repeat == 1


@dataclass(frozen=True)
class OutputChunk:
    """One output chunk along one spatial dim and how to compute it from its window.

    ``pieces`` concatenated in order are the window. ``padding`` is the window's zero padding
    (forward) or the cropping of its transposed convolution's output (transposed);
    ``output_padding`` is the transposed convolution's extra high end. A chunk with no pieces
    reads no input at all (it lies wholly in zero padding or output padding): its value is
    the bias alone.
    """

    start: int
    stop: int
    pieces: tuple[Piece, ...]
    padding: tuple[int, int]
    output_padding: int = 0

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def reads_input(self) -> bool:
        return bool(self.pieces)


def boundaries(chunks: Sequence[int]) -> list[int]:
    """Cumulative chunk boundaries: ``(3, 4, 2)`` -> ``[0, 3, 7, 9]``."""
    result = [0]
    for c in chunks:
        result.append(result[-1] + int(c))
    return result


def pieces(chunks: Sequence[int], start: int, stop: int, reverse: bool = False,
           repeat: int = 1) -> tuple[Piece, ...]:
    """The parts of the chunks that hold positions ``[start, stop)``, in order (backwards
    when ``reverse``)."""
    found = []
    bounds = boundaries(chunks)
    for block, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        a, b = max(lo, start), min(hi, stop)
        if a < b:
            found.append(Piece(block, a - lo, b - lo, b - a == hi - lo, reverse, repeat))
    return tuple(reversed(found)) if reverse else tuple(found)


def padded_pieces(chunks: Sequence[int], start: int, stop: int,
                  mode: str) -> tuple[Piece, ...]:
    """The pieces making up positions ``[start, stop)`` of the input padded with ``mode``
    (reflect, replicate or circular), as numpy.pad's reflect / edge / wrap define them:
    positions below 0 or from ``size`` on are read from inside the input (the checks have
    made sure each padding is smaller than the input for reflect, at most it for circular)."""
    size = sum(chunks)
    low = (start, min(0, stop))
    high = (max(size, start), stop)
    found: list[Piece] = []
    if low[0] < low[1]:
        if mode == "reflect":      # position p < 0 reads -p
            found += pieces(chunks, 1 - low[1], 1 - low[0], reverse=True)
        elif mode == "replicate":  # reads 0
            found += pieces(chunks, 0, 1, repeat=low[1] - low[0])
        else:                      # circular: reads p + size
            found += pieces(chunks, low[0] + size, low[1] + size)
    found += pieces(chunks, max(start, 0), min(stop, size))
    if high[0] < high[1]:
        if mode == "reflect":      # position p >= size reads 2 * (size - 1) - p
            found += pieces(chunks, 2 * size - 1 - high[1], 2 * size - 1 - high[0], reverse=True)
        elif mode == "replicate":  # reads size - 1
            found += pieces(chunks, size - 1, size, repeat=high[1] - high[0])
        else:                      # circular: reads p - size
            found += pieces(chunks, high[0] - size, high[1] - size)
    return tuple(found)


def _output_bounds(input_bounds: Sequence[int], out_size: int, stride: int,
                   shift: int) -> list[int]:
    """Output chunk boundaries: output ``o`` goes with the input chunk holding position
    ``o * stride + shift``; empty output chunks are dropped."""
    result = [0]
    for b in input_bounds[1:-1]:
        edge = min(max(-(-(b - shift) // stride), 0), out_size)
        if edge > result[-1]:
            result.append(edge)
    if out_size > result[-1]:
        result.append(out_size)
    return result


def plan_forward(chunks: Sequence[int], kernel: int, stride: int, dilation: int,
                 padding: tuple[int, int], mode: str = "zeros") -> list[OutputChunk]:
    """Output chunks of a forward convolution along one dim of an input chunked as
    ``chunks``. With ``mode="zeros"`` each window is zero-padded where it leaves the input;
    with another padding mode the window's padding positions are read from the input."""
    size = sum(chunks)
    lo, hi = padding
    ke = shapes.effective_kernel_size(kernel, dilation)
    out_size = shapes.conv_output_size(size, kernel, stride, lo, hi, dilation)
    # Output o's window is centred near input position o * stride - lo + (ke - 1) // 2.
    edges = _output_bounds(boundaries(chunks), out_size, stride, (ke - 1) // 2 - lo)
    plan = []
    for start, stop in itertools.pairwise(edges):
        a = start * stride - lo
        b = (stop - 1) * stride - lo + ke
        if mode != "zeros" and (lo or hi):
            plan.append(OutputChunk(start, stop, padded_pieces(chunks, a, b, mode), (0, 0)))
            continue
        a_in, b_in = max(a, 0), min(b, size)
        if a_in >= b_in:
            plan.append(OutputChunk(start, stop, (), (0, 0)))
            continue
        plan.append(OutputChunk(start, stop, pieces(chunks, a_in, b_in), (a_in - a, b - b_in)))
    return plan


def plan_transposed(chunks: Sequence[int], kernel: int, stride: int, dilation: int,
                    crop: tuple[int, int], output_padding: int) -> list[OutputChunk]:
    """Output chunks of a transposed convolution along one dim of an input chunked as
    ``chunks`` (``crop``: the call's padding, cropped from each end of the full output)."""
    size = sum(chunks)
    lo, hi = crop
    ke = shapes.effective_kernel_size(kernel, dilation)
    out_size = shapes.transposed_output_size(size, kernel, stride, lo, hi, dilation,
                                             output_padding)
    # Output q (full position q + lo) goes with the input chunk whose first input's
    # contributions start at or before q + lo: a chunk boundary b becomes b * stride - lo.
    edges = _output_bounds([b * stride for b in boundaries(chunks)], out_size, 1, lo)
    plan = []
    for start, stop in itertools.pairwise(edges):
        p0, p1 = start + lo, stop + lo
        end = min((p1 - 1) // stride + 1, size)
        if max(-(-(p0 - ke + 1) // stride), 0) >= end:
            # No input reaches these outputs (output_padding beyond the last contribution).
            plan.append(OutputChunk(start, stop, (), (0, 0)))
            continue
        # Rounded down (one input too many at worst) so the local cropping is never negative.
        first = max((p0 - ke + 1) // stride, 0)
        crop_low = p0 - first * stride
        reach = (end - 1) * stride + ke
        crop_high, extra = (reach - p1, 0) if reach >= p1 else (0, p1 - reach)
        plan.append(OutputChunk(start, stop, pieces(chunks, first, end),
                                (crop_low, crop_high), extra))
    return plan
