"""The cuda append_kv_cache against the reference, on a GPU: an exact copy, padding slots (-1) skipped, every
other slot left as it was; int32 and int64 slot mappings; K/V read in place from a fused QKV projection."""
import pytest
import torch

import neva_kernels as nk
from neva_kernels import reference
from tests.test_extension import needs_extension

pytestmark = [pytest.mark.gpu, needs_extension]


def make_caches(num_blocks, block_size, kv_heads, head_dim, dtype):
    shape = (num_blocks, block_size, kv_heads, head_dim)
    return torch.randn(shape, dtype=dtype, device="cuda"), torch.randn(shape, dtype=dtype, device="cuda")


def random_slots(num_tokens, num_slots, slot_dtype):
    slots = torch.randperm(num_slots, device="cuda")[:num_tokens]
    slots[::3] = -1  # padding tokens
    return slots.to(slot_dtype)


def check(k, v, k_cache, v_cache, slots):
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    reference.append_kv_cache(k, v, expected_k, expected_v, slots)
    nk.append_kv_cache(k, v, k_cache, v_cache, slots, backend="cuda")
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("kv_heads,head_dim,block_size", [(2, 64, 16), (8, 128, 32), (1, 80, 16), (3, 36, 7)])
def test_matches_reference(dtype, slot_dtype, kv_heads, head_dim, block_size):
    k_cache, v_cache = make_caches(9, block_size, kv_heads, head_dim, dtype)
    k = torch.randn(20, kv_heads, head_dim, dtype=dtype, device="cuda")
    v = torch.randn(20, kv_heads, head_dim, dtype=dtype, device="cuda")
    check(k, v, k_cache, v_cache, random_slots(20, 9 * block_size, slot_dtype))


@pytest.mark.sanitizer
def test_small_copy_and_empty_call():
    k_cache, v_cache = make_caches(2, 16, 2, 64, torch.float16)
    k, v = (torch.randn(5, 2, 64, dtype=torch.float16, device="cuda") for _ in range(2))
    check(k, v, k_cache, v_cache, random_slots(5, 32, torch.int64))
    check(k[:0], v[:0], k_cache, v_cache, torch.empty(0, dtype=torch.int32, device="cuda"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_reads_k_and_v_in_place_from_a_fused_qkv_output(dtype):
    q_heads, kv_heads, head_dim = 8, 2, 128
    qkv = torch.randn(13, q_heads + 2 * kv_heads, head_dim, dtype=dtype, device="cuda")
    k, v = qkv[:, q_heads:q_heads + kv_heads], qkv[:, q_heads + kv_heads:]
    k_cache, v_cache = make_caches(4, 16, kv_heads, head_dim, dtype)
    check(k, v, k_cache, v_cache, random_slots(13, 64, torch.int32))
    # Unaligned token rows (an odd head_dim offset): the element-wise copy.
    odd = torch.randn(13, 2 * kv_heads * head_dim + 1, dtype=dtype, device="cuda")[:, 1:]
    k, v = (t.view(13, kv_heads, head_dim) for t in odd.split(kv_heads * head_dim, dim=1))
    check(k, v, k_cache, v_cache, random_slots(13, 64, torch.int64))
