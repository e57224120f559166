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


def _state(allocator: BlockAllocator):
    return allocator.num_free_blocks, {s: (allocator.blocks(s), allocator.length(s)) for s in ("x",) if s in allocator}


@pytest.mark.parametrize("call, error, message", [
    (lambda a: a.allocate("y", -1), nk.NevaValueError, "'num_tokens' must be >= 0, got -1"),
    (lambda a: a.allocate("y", 2.0), nk.NevaTypeError, "'num_tokens' must be an int, got float 2.0"),
    (lambda a: a.allocate("y", None), nk.NevaTypeError, "'num_tokens' must be an int, got NoneType"),
    (lambda a: a.allocate("y", True), nk.NevaTypeError, "'num_tokens' must be an int, got bool"),
    (lambda a: a.allocate(["unhashable"], 1), TypeError, "unhashable"),
    (lambda a: a.allocate("y", 100), OutOfBlocksError, "needs 25 more blocks"),
    (lambda a: a.extend("x", -2), nk.NevaValueError, "'num_new_tokens' must be >= 0, got -2"),
    (lambda a: a.extend("x", "3"), nk.NevaTypeError, "'num_new_tokens' must be an int, got str"),
    (lambda a: a.extend("y", 1), nk.NevaValueError, "unknown sequence 'y'"),
    (lambda a: a.free("y"), nk.NevaValueError, "unknown sequence 'y'"),
])
def test_a_call_that_raises_leaves_the_allocator_unchanged(call, error, message):
    allocator = BlockAllocator(num_blocks=4, block_size=4)
    allocator.allocate("x", 3)
    before = _state(allocator)
    with pytest.raises(error, match=message):
        call(allocator)
    assert _state(allocator) == before and "y" not in allocator
    assert allocator.allocate("y", 4) == [4, 5, 6, 7]  # still fully usable


@pytest.mark.parametrize("args, error, message", [
    ((0, 16), nk.NevaValueError, "BlockAllocator: 'num_blocks' must be >= 1, got 0"),
    ((4, -1), nk.NevaValueError, "BlockAllocator: 'block_size' must be >= 1, got -1"),
    ((4.0, 16), nk.NevaTypeError, "BlockAllocator: 'num_blocks' must be an int, got float"),
    ((4, "16"), nk.NevaTypeError, "BlockAllocator: 'block_size' must be an int, got str"),
])
def test_allocator_arguments_are_checked(args, error, message):
    with pytest.raises(error, match=message):
        BlockAllocator(*args)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(num_layers=0), nk.NevaValueError, "PagedKVCache: 'num_layers' must be >= 1, got 0"),
    (dict(num_blocks=0), nk.NevaValueError, "PagedKVCache: 'num_blocks' must be >= 1, got 0"),
    (dict(block_size=2.5), nk.NevaTypeError, "PagedKVCache: 'block_size' must be an int, got float"),
    (dict(num_kv_heads=-2), nk.NevaValueError, "PagedKVCache: 'num_kv_heads' must be >= 1, got -2"),
    (dict(head_dim=None), nk.NevaTypeError, "PagedKVCache: 'head_dim' must be an int, got NoneType"),
    (dict(dtype=torch.int8), nk.NevaTypeError, "'dtype' must be a floating-point torch.dtype, got torch.int8"),
    (dict(dtype="float16"), nk.NevaTypeError, "'dtype' must be a floating-point torch.dtype, got 'float16'"),
    # 2^50 tokens per block: more bytes than any machine has, refused by the allocator at once
    (dict(block_size=2**50), nk.NevaValueError,
     r"PagedKVCache: cannot allocate K and V pages of shape \[2, 3, 1125899906842624, 2, 8\] torch.float32 "
     r"\([\d.e+]+ GiB\) on cpu"),
    (dict(block_size=2**62), nk.NevaValueError, "PagedKVCache: cannot allocate"),  # the byte count overflows
])
def test_cache_arguments_are_checked_and_allocation_failure_is_one_error(kwargs, error, message):
    sizes = dict(num_layers=2, num_blocks=3, block_size=4, num_kv_heads=2, head_dim=8, dtype=torch.float32)
    with pytest.raises(error, match=message) as caught:
        PagedKVCache(**{**sizes, **kwargs})
    assert "\n" not in str(caught.value)
