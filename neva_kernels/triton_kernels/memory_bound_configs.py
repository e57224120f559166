"""Launch configurations of the memory-bound Triton kernels, per GPU architecture, in one place.

The kernels are bandwidth-bound: a config only has to keep enough bytes in flight per SM (warps x tile) without
spilling. Hopper (sm90) has more bandwidth per SM than Ampere (sm80), so it gets wider tiles / more warps where
that keeps loads outstanding. The generation comes from neva_kernels.architecture; CPU tensors (the Triton
interpreter) use the sm80 table. These are starting
points chosen from the shapes of the problem; none was timed on a GPU yet (benchmarks/memory_bound.py is where
they get measured).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton

from ..architecture import CPU, SM80, SM90, generation

# rms_norm and layer_norm keep a whole row in registers: rows wider than this are refused (LLaMA- and
# Nemotron-family models use <= 8192).
ROW_NORM_MAX_HIDDEN = 16384
# The backward holds four rows (grad_y, h, weight, the grad_weight sum): wider ones spill, and autograd falls back
# to the torch backward for them.
RMS_NORM_BACKWARD_MAX_HIDDEN = 8192
LAYER_NORM_BACKWARD_MAX_HIDDEN = 8192
# Head dims the decode kernel is compiled for (padded up to a power of two inside the kernel).
DECODE_MAX_HEAD_DIM = 256
# The split-KV merge kernel holds the log-sum-exp of every split of one head in one vector of this length.
DECODE_MAX_SPLITS = 64


@dataclass(frozen=True)
class Launch:
    num_warps: int
    num_stages: int = 1


@dataclass(frozen=True)
class DecodeConfig:
    tile_tokens: int        # keys handled per loop iteration (spanning one or more pages)
    num_warps: int
    num_stages: int
    min_tokens_per_split: int   # a split shorter than this costs more in merging than it gains in parallelism
    waves: int              # programs to aim for, in multiples of the SM count


def arch_of(device: torch.device) -> str:
    """The launch table of `device`: its generation, the sm80 one for CPU tensors run by the interpreter."""
    gen = generation(device)
    return SM80 if gen == CPU else gen


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of `device`; for the CPU interpreter, an H100's 132 (only sizes the split)."""
    if device.type != "cuda":
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


# ---- rms_norm and layer_norm ---------------------------------------------------------------------------

def row_norm_block(hidden: int) -> int:
    """The power-of-two tile that holds one row; at least one 16-byte vector per lane of a warp."""
    return max(triton.next_power_of_2(hidden), 256)


def row_norm_launch(block: int, arch: str) -> Launch:
    """Warps per row: 16 elements per thread on sm80, 8 on sm90 (more warps keep more loads in flight)."""
    elements_per_thread = 16 if arch == SM80 else 8
    return Launch(num_warps=min(max(block // (32 * elements_per_thread), 1), 16))


def row_norm_backward_rows_per_program(rows: int, device: torch.device) -> int:
    """Rows one backward program walks: enough programs to fill every SM a few times, so the partial
    grad_weight sums (one fp32 row per program) stay few."""
    programs = 4 * sm_count(device)
    return max(triton.cdiv(rows, programs), 1)


# ---- paged decode attention ----------------------------------------------------------------------------

_DECODE = {
    # (arch, padded head dim) -> config. Tiles keep K and V tiles (tile x head_dim) within registers + smem.
    (SM80, 64): DecodeConfig(tile_tokens=64, num_warps=4, num_stages=2, min_tokens_per_split=256, waves=2),
    (SM80, 128): DecodeConfig(tile_tokens=64, num_warps=4, num_stages=2, min_tokens_per_split=256, waves=2),
    (SM80, 256): DecodeConfig(tile_tokens=32, num_warps=4, num_stages=2, min_tokens_per_split=256, waves=2),
    (SM90, 64): DecodeConfig(tile_tokens=128, num_warps=8, num_stages=3, min_tokens_per_split=512, waves=2),
    (SM90, 128): DecodeConfig(tile_tokens=64, num_warps=4, num_stages=3, min_tokens_per_split=512, waves=2),
    (SM90, 256): DecodeConfig(tile_tokens=32, num_warps=8, num_stages=3, min_tokens_per_split=512, waves=2),
}


def decode_head_dim_tile(head_dim: int) -> int:
    return max(triton.next_power_of_2(head_dim), 64)


def decode_config(head_dim: int, arch: str) -> DecodeConfig:
    return _DECODE[(arch, decode_head_dim_tile(head_dim))]


def decode_num_splits(batch: int, kv_heads: int, max_context: int, head_dim: int, device: torch.device) -> int:
    """How many programs share one (sequence, KV head)'s context ("flash decoding").

    Without a split there are batch * kv_heads programs; when that leaves SMs idle, the context is cut into
    splits of at least min_tokens_per_split keys until about `waves` programs per SM exist.
    """
    config = decode_config(head_dim, arch_of(device))
    programs = batch * kv_heads
    wanted = triton.cdiv(config.waves * sm_count(device), max(programs, 1))
    affordable = triton.cdiv(max_context, config.min_tokens_per_split)
    return max(1, min(wanted, affordable, DECODE_MAX_SPLITS))


# ---- append_kv_cache and rotary_embedding: one token per program -----------------------------------------

def per_token_launch(elements: int) -> Launch:
    """Warps for a program that moves `elements` values: about 8 per thread, a power of two from 1 to 8."""
    warps = 1
    while warps < 8 and 2 * warps * 256 <= elements:
        warps *= 2
    return Launch(num_warps=warps)
