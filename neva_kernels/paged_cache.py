"""The paged KV cache: a block allocator (host bookkeeping) and the per-layer K/V page tensors.

A sequence's token t lives in block ``blocks[t // block_size]`` at offset ``t % block_size``; its *slot* is
``block * block_size + offset``, the index that ``append_kv_cache`` writes to. Pages are laid out
[num_blocks, block_size, num_kv_heads, head_dim] per K and V, as vLLM's flash backend and FlashAttention use.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch

from .errors import NevaTypeError, NevaValueError, OutOfBlocksError, expect_int, first_line


class BlockAllocator:
    """Hands out cache blocks to sequences. Every failing call raises and leaves the allocator unchanged."""

    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = expect_int("BlockAllocator", "num_blocks", num_blocks, minimum=1)
        self.block_size = expect_int("BlockAllocator", "block_size", block_size, minimum=1)
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: the lowest free id is handed out first
        self._blocks: dict[Hashable, list[int]] = {}
        self._lengths: dict[Hashable, int] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-expect_int("BlockAllocator", "num_tokens", num_tokens, minimum=0) // self.block_size)

    def __contains__(self, seq_id: Hashable) -> bool:
        return seq_id in self._blocks

    def length(self, seq_id: Hashable) -> int:
        return self._lengths[self._known(seq_id)]

    def blocks(self, seq_id: Hashable) -> list[int]:
        return list(self._blocks[self._known(seq_id)])

    def _known(self, seq_id: Hashable) -> Hashable:
        if seq_id not in self._blocks:
            raise NevaValueError(f"BlockAllocator: unknown sequence {seq_id!r}")
        return seq_id

    def allocate(self, seq_id: Hashable, num_tokens: int) -> list[int]:
        """Start sequence `seq_id` with room for `num_tokens` tokens; returns their slots."""
        expect_int("BlockAllocator", "num_tokens", num_tokens, minimum=0)
        if seq_id in self._blocks:
            raise NevaValueError(f"BlockAllocator: sequence {seq_id!r} is already allocated")
        self._blocks[seq_id], self._lengths[seq_id] = [], 0
        try:
            return self.extend(seq_id, num_tokens)
        except BaseException:  # whatever failed (a bad count, no blocks, an unhashable id), register nothing
            self._blocks.pop(seq_id, None), self._lengths.pop(seq_id, None)
            raise

    def extend(self, seq_id: Hashable, num_new_tokens: int) -> list[int]:
        """Grow sequence `seq_id` by `num_new_tokens` tokens; returns the slots of the new tokens."""
        expect_int("BlockAllocator", "num_new_tokens", num_new_tokens, minimum=0)
        old = self.length(seq_id)
        new = old + num_new_tokens
        needed = self.blocks_for(new) - len(self._blocks[seq_id])
        if needed > len(self._free):
            raise OutOfBlocksError(f"BlockAllocator: sequence {seq_id!r} needs {needed} more blocks of "
                                   f"{self.block_size} tokens, only {len(self._free)} of {self.num_blocks} are free")
        self._blocks[seq_id].extend(self._free.pop() for _ in range(needed))
        self._lengths[seq_id] = new
        return self.slots(seq_id, old, new)

    def free(self, seq_id: Hashable) -> None:
        """Return every block of `seq_id` to the pool."""
        self._free.extend(reversed(self._blocks.pop(self._known(seq_id))))
        del self._lengths[seq_id]

    def slots(self, seq_id: Hashable, start: int = 0, end: int | None = None) -> list[int]:
        """The slots of tokens start..end-1 of `seq_id`."""
        blocks, size = self._blocks[self._known(seq_id)], self.block_size
        end = self._lengths[seq_id] if end is None else end
        if not 0 <= start <= end <= self._lengths[seq_id]:
            raise NevaValueError(f"BlockAllocator: token range {start}..{end} is outside sequence {seq_id!r} "
                                 f"of length {self._lengths[seq_id]}")
        return [blocks[t // size] * size + t % size for t in range(start, end)]

    def block_tables(self, seq_ids: Sequence[Hashable], width: int | None = None, device=None) -> torch.Tensor:
        """int32 [len(seq_ids), width] block tables, padded with block 0 (never read past a sequence's length)."""
        rows = [self._blocks[self._known(s)] for s in seq_ids]
        width = max((len(r) for r in rows), default=0) if width is None else width
        if any(len(r) > width for r in rows):
            raise NevaValueError(f"BlockAllocator: 'width' {width} is smaller than the longest block list "
                                 f"({max(len(r) for r in rows)} blocks)")
        table = torch.zeros(len(rows), width, dtype=torch.int32)
        for i, row in enumerate(rows):
            table[i, :len(row)] = torch.tensor(row, dtype=torch.int32)
        return table.to(device) if device is not None else table

    def seq_lens(self, seq_ids: Sequence[Hashable], device=None) -> torch.Tensor:
        return torch.tensor([self.length(s) for s in seq_ids], dtype=torch.int32, device=device)


class PagedKVCache:
    """K and V pages for every layer, [num_layers, num_blocks, block_size, num_kv_heads, head_dim] each."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float16, device=None):
        sizes = dict(num_layers=num_layers, num_blocks=num_blocks, block_size=block_size, num_kv_heads=num_kv_heads,
                     head_dim=head_dim)
        shape = tuple(expect_int("PagedKVCache", name, value, minimum=1) for name, value in sizes.items())
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise NevaTypeError(f"PagedKVCache: 'dtype' must be a floating-point torch.dtype, got {dtype!r}")
        self.allocator = BlockAllocator(num_blocks, block_size)
        try:
            self.k = torch.zeros(shape, dtype=dtype, device=device)
            self.v = torch.zeros(shape, dtype=dtype, device=device)
        except (RuntimeError, MemoryError) as error:  # torch's CPU and CUDA allocators raise RuntimeError subtypes
            gib = 2 * math.prod(shape) * dtype.itemsize / 2**30
            raise NevaValueError(f"PagedKVCache: cannot allocate K and V pages of shape {list(shape)} {dtype} "
                                 f"({gib:.3g} GiB) on {device or 'cpu'}: {first_line(error)}") from error
        self._layers = [(self.k[i], self.v[i]) for i in range(num_layers)]  # made once, not per layer per step

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(k_cache, v_cache) of one layer: contiguous [num_blocks, block_size, num_kv_heads, head_dim] views."""
        return self._layers[index]
