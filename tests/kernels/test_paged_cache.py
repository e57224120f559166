"""The block allocator and the paged KV cache: bookkeeping, typed errors, and the ops working through them."""
import pytest
import torch

import neva_kernels as nk
from neva_kernels import BlockAllocator, OutOfBlocksError, PagedKVCache


def test_allocate_extend_free_returns_every_block():
    allocator = BlockAllocator(num_blocks=8, block_size=4)
    assert allocator.allocate("a", 5) == [0, 1, 2, 3, 4]  # blocks 0 and 1; lowest ids first
    assert allocator.allocate("b", 4) == [8, 9, 10, 11]
    assert allocator.extend("a", 4) == [5, 6, 7, 12]  # fills block 1, then takes block 3 (block 2 is b's)
    assert allocator.blocks("a") == [0, 1, 3] and allocator.length("a") == 9 and allocator.num_free_blocks == 4
    assert allocator.slots("a", 7, 9) == [1 * 4 + 3, 3 * 4 + 0]
    allocator.free("a")
    allocator.free("b")
    assert allocator.num_free_blocks == 8 and "a" not in allocator


def test_running_out_of_blocks_raises_and_leaves_the_allocator_unchanged():
    allocator = BlockAllocator(num_blocks=3, block_size=16)
    allocator.allocate(0, 20)
    before = (allocator.num_free_blocks, allocator.blocks(0), allocator.length(0))
    with pytest.raises(OutOfBlocksError, match="needs 2 more blocks of 16 tokens, only 1 of 3 are free"):
        allocator.extend(0, 30)
    assert (allocator.num_free_blocks, allocator.blocks(0), allocator.length(0)) == before
    with pytest.raises(OutOfBlocksError):
        allocator.allocate(1, 17)
    assert 1 not in allocator and allocator.num_free_blocks == 1


def test_bookkeeping_errors_name_the_problem():
    allocator = BlockAllocator(num_blocks=2, block_size=4)
    allocator.allocate("x", 3)
    with pytest.raises(nk.NevaValueError, match="already allocated"):
        allocator.allocate("x", 1)
    with pytest.raises(nk.NevaValueError, match="unknown sequence 'y'"):
        allocator.free("y")
    with pytest.raises(nk.NevaValueError, match="token range 0..4 is outside sequence 'x' of length 3"):
        allocator.slots("x", 0, 4)
    with pytest.raises(nk.NevaValueError, match="'num_new_tokens' must be >= 0"):
        allocator.extend("x", -1)
    with pytest.raises(nk.NevaValueError, match="must be >= 1"):
        BlockAllocator(0, 16)


def test_tables_and_slots_drive_append_and_decode_exactly():
    """Prefill three sequences through the allocator, then decode: equals attention over the plain K/V."""
    hkv, hq, d, lengths = 2, 8, 80, [1, 17, 40]
    cache = PagedKVCache(num_layers=2, num_blocks=12, block_size=16, num_kv_heads=hkv, head_dim=d,
                         dtype=torch.float32)
    k_cache, v_cache = cache.layer(1)
    keys = [torch.randn(n, hkv, d) for n in lengths]
    values = [torch.randn(n, hkv, d) for n in lengths]
    slots = [cache.allocator.allocate(i, n) for i, n in enumerate(lengths)]
    nk.append_kv_cache(torch.cat(keys), torch.cat(values), k_cache, v_cache, torch.tensor(sum(slots, [])))
    q = torch.randn(3, hq, d)
    out = nk.paged_decode_attention(q, k_cache, v_cache, cache.allocator.block_tables(range(3), width=4),
                                    cache.allocator.seq_lens(range(3)))
    for i in range(3):
        expected = nk.flash_attention(q[i][None, None], keys[i][None], values[i][None])
        torch.testing.assert_close(out[i], expected[0, 0])
    assert torch.equal(cache.layer(0)[0], torch.zeros_like(k_cache)), "other layers untouched"
    for i in range(3):
        cache.allocator.free(i)
    assert cache.allocator.num_free_blocks == 12


def test_block_table_width_too_small_is_an_error():
    allocator = BlockAllocator(num_blocks=4, block_size=2)
    allocator.allocate("s", 5)
    with pytest.raises(nk.NevaValueError, match="'width' 2 is smaller than the longest block list \\(3 blocks\\)"):
        allocator.block_tables(["s"], width=2)
