"""Tile sizes, warps and stages of the compute-bound Triton kernels (attention, projector GEMMs), per architecture.

One table per kernel family, keyed by the GPU generation; each entry is the small candidate set the autotuner
times on first use. The generation of the tensors' device comes from neva_kernels.architecture; for CPU tensors
(the Triton interpreter) one small configuration is used so that tests stay fast and cover several tiles.
On sm90, tl.dot lowers to wgmma by itself when the tile has 64+ rows per warp group; on sm80 to mma.sync.
"""
from __future__ import annotations

import triton

from ..architecture import CPU, SM80, SM90

# Every entry below compiles for its architecture without register spills (tests/triton/test_compute_bound_aot.py).

# Forward, (BLOCK_M, BLOCK_N, num_warps, num_stages) per padded head dim. Query tiles of 128 rows feed wgmma;
# the key tile shrinks as the head dim grows so the fp32 accumulator and the K/V stages fit in registers/smem.
_ATTENTION_FORWARD = {
    SM90: {64: [(128, 128, 8, 3), (128, 64, 4, 3)],
           128: [(128, 128, 8, 3), (128, 64, 8, 3)],
           256: [(128, 32, 8, 2), (64, 32, 4, 2)]},
    SM80: {64: [(128, 128, 8, 3), (64, 64, 4, 3)],
           128: [(128, 64, 8, 3), (128, 32, 8, 3)],
           256: [(64, 32, 8, 2), (32, 64, 4, 2)]},
    # The interpreter: unequal tiles so the tests cover the causal diagonal crossing tile borders.
    CPU: {64: [(64, 32, 4, 1)], 128: [(64, 32, 4, 1)], 256: [(32, 32, 4, 1)]},
}

# Backward dK/dV kernel: a program owns a key tile (BLOCK_N) and walks query tiles (BLOCK_M). Two fp32
# accumulators [BLOCK_N, D] and the K/V tiles stay live, hence small tiles and 8 warps; at head dim 256 on sm90
# no wgmma-shaped tile fits without spills, so it runs on mma.sync there. The sm90 stages are the most that triton
# 3.6 (the GPU machine's) also compiles without spills: one more spilled 28-32 bytes there.
_ATTENTION_DKDV = {
    SM90: {64: [(32, 64, 8, 2)],
           128: [(32, 64, 8, 1), (16, 128, 8, 2)],
           256: [(64, 32, 8, 1)]},
    SM80: {64: [(64, 32, 4, 3), (32, 64, 8, 3)],
           128: [(32, 64, 8, 2)],
           256: [(16, 64, 8, 1), (64, 32, 8, 1)]},
    CPU: {64: [(32, 64, 4, 1)], 128: [(32, 64, 4, 1)], 256: [(32, 32, 4, 1)]},
}

# Backward dQ kernel: a program owns a query tile (BLOCK_M) and walks key tiles (BLOCK_N).
_ATTENTION_DQ = {
    SM90: {64: [(128, 32, 4, 3)],
           128: [(128, 32, 8, 2), (64, 64, 4, 2)],
           256: [(32, 32, 4, 1)]},
    SM80: {64: [(64, 64, 4, 3)],
           128: [(128, 32, 8, 2), (64, 64, 4, 2)],
           256: [(64, 32, 8, 1), (32, 32, 4, 1)]},
    CPU: {64: [(64, 32, 4, 1)], 128: [(64, 32, 4, 1)], 256: [(32, 32, 4, 1)]},
}

# Projector GEMMs, (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages). 128 x 256 tiles spill once the
# GELU epilogue joins the accumulator, so 128 x 128 is the largest.
_GEMM = {
    SM90: [(128, 128, 64, 8, 8, 4), (128, 128, 64, 8, 8, 3)],
    SM80: [(128, 128, 32, 8, 8, 3), (64, 128, 32, 8, 4, 4)],
    CPU: [(32, 64, 32, 4, 4, 1)],
}

def padded_head_dim(head_dim: int) -> int:
    """The register tile of the head dim: 64, 128 or 256 (80 and 96 run masked in a 128 tile)."""
    return max(64, triton.next_power_of_2(head_dim))


def _configs(table: dict, block_d: int, names: tuple[str, ...]) -> list[triton.Config]:
    return [triton.Config(dict(zip(names, tiles)), num_warps=warps, num_stages=stages)
            for *tiles, warps, stages in table[block_d]]


def attention_forward_configs(block_d: int, gen: str) -> list[triton.Config]:
    return _configs(_ATTENTION_FORWARD[gen], block_d, ("BLOCK_M", "BLOCK_N"))


def attention_dkdv_configs(block_d: int, gen: str) -> list[triton.Config]:
    return _configs(_ATTENTION_DKDV[gen], block_d, ("BLOCK_M", "BLOCK_N"))


def attention_dq_configs(block_d: int, gen: str) -> list[triton.Config]:
    return _configs(_ATTENTION_DQ[gen], block_d, ("BLOCK_M", "BLOCK_N"))


def gemm_configs(gen: str) -> list[triton.Config]:
    return _configs({0: _GEMM[gen]}, 0, ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"))
