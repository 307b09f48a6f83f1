"""What the numba backend's rules and plans need from its kernels, without numba.

The rules, variants and workspace estimates run on every call's first selection, and the
first calls of a process run ``numpy_taps`` while numba starts on a background thread
(:mod:`.warmup`), so nothing here may import numba: the constants that shape the kernels
live here (the kernel modules import them from here: one place), with Winograd's tiling
plan, which its workspace estimate and its kernels share.
"""

from __future__ import annotations

import importlib.util
from typing import NamedTuple


def module_missing(name: str) -> str:
    """Why module *name* cannot be imported ("" when it is installed), found without
    importing it (the rules ask before anything heavy is imported)."""
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError) as exc:
        return f"{name} cannot be found ({exc}); pip install {name}"
    return "" if found else f"{name} is not installed; pip install {name}"

# Below this many floating-point operations a call runs single-threaded: waking the thread
# pool costs more than it saves.
SERIAL_FLOPS = 4_000_000


# im2col + GEMM tiles (algorithms._Im2colLayout): the columns of one tile and the GEMM's
# output are written by one step and read back by the next (the GEMM, col2im or the copy
# into y), so a tile sized to stay in the last-level cache, not to the whole workspace
# budget, is read back from cache. Measured on this machine's 32 MiB L3 (2 threads, float32,
# forward and both gradients of seven ResNet-50 and VGG-19 3x3 layers, each tile size in its
# own process, interleaved three times): 8 MiB took 0.83 of the time of 64 MiB tiles (the
# default budget; 0.60-0.65 on 56x56 batch-8 layers, no layer more than 5% slower), 4 MiB
# 0.92 (its GEMMs are too narrow on 512-channel layers) and 2 MiB 1.01.
IM2COL_TILE_BYTES = 8 << 20


def im2col_tile_bytes(budget: int) -> int:
    """The scratch one im2col tile may use under a workspace budget of *budget* bytes."""
    return min(budget, IM2COL_TILE_BYTES)


# Packed direct convolution (kernels.packed_direct): output channels per pass, (channel, tap)
# pairs per step, positions per chunk of accumulators, and the vector width runs round to.
PACKED_CO_BLOCK = 4
PACKED_PAIRS_PER_STEP = 3
PACKED_CHUNK = 768
PACKED_VECTOR = 8


# Frequencies one job of the FFT's product kernels (fft_kernels.py) handles: a few KiB of
# each operand.
FREQUENCY_BLOCK = 1024


# Winograd F(4x4, 3x3) (winograd.py) ------------------------------------------------------
OUTPUT_TILE = 4
KERNEL = 3
ALPHA = OUTPUT_TILE + KERNEL - 1  # 6: the input patch and transformed tile side


# A block's V and M (36 x channels x tiles each) are sized to stay in a core's L2 cache.
BLOCK_BYTES = 768 << 10
MIN_BLOCK_TILES = 8
JOBS_PER_THREAD = 2
MAX_BLOCK_TILES = 256
# Tiles (or filter channels) transformed together, in vector lanes.
LANES = 16

def tiles_of(n_images: int, out_h: int, out_w: int) -> int:
    return n_images * -(-out_h // OUTPUT_TILE) * -(-out_w // OUTPUT_TILE)


def block_tiles(tiles: int, channels: int, threads: int, itemsize: int) -> int:
    """Tiles per job: V and M of a block within BLOCK_BYTES, and at least two jobs per
    thread when there are tiles enough (so the pool stays balanced)."""
    per_tile = 2 * ALPHA * ALPHA * channels * itemsize
    fitting = max(MIN_BLOCK_TILES, min(MAX_BLOCK_TILES, BLOCK_BYTES // per_tile))
    balanced = -(-tiles // (JOBS_PER_THREAD * max(1, threads)))
    return max(MIN_BLOCK_TILES, min(fitting, balanced))


def leading_dimension(block: int, channels: int, itemsize: int) -> int:
    """Columns of a block's V or M rows: whole lane groups, widened (by at most LANES) so
    that the stride between transformed elements is not near a multiple of 4 KiB: the 36
    rows a lane group writes would then fall into the same few L1 cache sets."""
    columns = -(-block // LANES) * LANES
    for ld in range(columns, columns + LANES + 1):
        offset = (ld * channels * itemsize) % 4096
        if min(offset, 4096 - offset) >= 256:
            return ld
    return columns


class Plan(NamedTuple):
    """How a call runs: tiles per job, V and M leading dimensions, pool parts."""

    block: int
    ld_v: int
    ld_m: int
    parts: int

    @classmethod
    def of(cls, n_images: int, out_h: int, out_w: int, c_per_group: int, k_per_group: int,
           groups: int, threads: int, itemsize: int) -> Plan:
        tiles = tiles_of(n_images, out_h, out_w)
        block = block_tiles(tiles, max(c_per_group, k_per_group), threads, itemsize)
        jobs = groups * -(-tiles // block)
        return cls(block, leading_dimension(block, c_per_group, itemsize),
                   leading_dimension(block, k_per_group, itemsize), max(1, min(threads, jobs)))

    def scratch_elements(self, c_per_group: int, k_per_group: int) -> int:
        """V and M of one part."""
        return ALPHA * ALPHA * (c_per_group * self.ld_v + k_per_group * self.ld_m)


# From this many channels (per group, the larger side) the phased steps run.
PHASED_MIN_CHANNELS = 256
# The phased steps' chunk of tiles: V and M within this many bytes.
PHASED_CHUNK_BYTES = 16 << 20


def phased(c_per_group: int, k_per_group: int) -> bool:
    return max(c_per_group, k_per_group) >= PHASED_MIN_CHANNELS


def phased_chunk(tiles: int, c_per_group: int, k_per_group: int, itemsize: int) -> int:
    per_tile = ALPHA * ALPHA * (c_per_group + k_per_group) * itemsize
    return max(LANES, min(tiles, PHASED_CHUNK_BYTES // per_tile // LANES * LANES))


def workspace_bytes(n_images: int, out_h: int, out_w: int, n_out: int, c_per_group: int,
                    groups: int, threads: int, itemsize: int) -> int:
    """The transformed filters plus V and M (every part's block, or one phased chunk)."""
    k_per_group = n_out // groups
    filters = ALPHA * ALPHA * n_out * c_per_group
    if phased(c_per_group, k_per_group):
        tiles = tiles_of(n_images, out_h, out_w)
        ld = leading_dimension(phased_chunk(tiles, c_per_group, k_per_group, itemsize),
                               max(c_per_group, k_per_group), itemsize)
        return (filters + ALPHA * ALPHA * (c_per_group + k_per_group) * ld) * itemsize
    plan = Plan.of(n_images, out_h, out_w, c_per_group, k_per_group, groups, threads, itemsize)
    return (filters + plan.parts * plan.scratch_elements(c_per_group, k_per_group)) * itemsize
