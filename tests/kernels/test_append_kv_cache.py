"""append_kv_cache on each kernel backend against the reference: an exact copy, padding slots (-1) skipped, every
other slot left as it was (NaN-filled caches show any stray write); int32 and int64 slot mappings; K/V read in
place from strided views and from a fused QKV projection."""
import itertools

import pytest
import torch

from tests.helpers import BACKENDS, on_backend, strided
from tests.kernels.problems import (DEVICE, GPU_DTYPES, INTERPRETER_DTYPES, check_append_kv_cache, device_for,
                                    kv_caches, random_slots)


def dtype_cases(shapes):
    """(backend, dtype, *shape) for every shape: the interpreter's dtypes on triton, all on cuda."""
    return [on_backend(backend, dtype, *shape) for backend, dtypes in (("triton", INTERPRETER_DTYPES),
                                                                        ("cuda", GPU_DTYPES))
            for dtype, shape in itertools.product(dtypes, shapes)]


@pytest.mark.parametrize("backend,dtype,kv_heads,head_dim,block_size", dtype_cases([(2, 80, 16), (3, 64, 32),
                                                                                    (1, 256, 16)]))
@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
def test_writes_the_reference_slots_and_skips_padding(backend, dtype, kv_heads, head_dim, block_size, slot_dtype):
    num_blocks, device = 6, device_for(backend)
    # The first and last slots of blocks, the cache's last slot, padding in the middle and at the end.
    slots = torch.tensor([5, block_size, block_size + 1, num_blocks * block_size - 1, -1, 40, -1],
                         dtype=slot_dtype, device=device)
    k, v = (torch.randn(len(slots), kv_heads, head_dim, dtype=dtype, device=device) for _ in range(2))
    k_cache, v_cache = kv_caches(num_blocks, block_size, kv_heads, head_dim, dtype, device)
    check_append_kv_cache(k, v, k_cache, v_cache, slots, backend)
    assert (~k_cache.isnan()).flatten(2).all(-1).sum() == (slots >= 0).sum()  # whole rows, one per kept token


@pytest.mark.parametrize("backend,dtype,kv_heads,head_dim,block_size", dtype_cases([(2, 64, 16), (8, 128, 32),
                                                                                    (1, 80, 16), (3, 36, 7)]))
@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
def test_random_slots_match_reference(backend, dtype, kv_heads, head_dim, block_size, slot_dtype):
    device = device_for(backend)
    k_cache, v_cache = kv_caches(9, block_size, kv_heads, head_dim, dtype, device)
    k, v = (torch.randn(20, kv_heads, head_dim, dtype=dtype, device=device) for _ in range(2))
    check_append_kv_cache(k, v, k_cache, v_cache, random_slots(20, 9 * block_size, slot_dtype, device), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reads_non_contiguous_keys_and_values(backend):
    device = device_for(backend)
    k = torch.randn(4, 2, 64, device=device)
    v_heads_first = torch.randn(2, 4, 64, device=device).transpose(0, 1)  # token stride < head stride
    k_cache, v_cache = kv_caches(2, 16, 2, 64, torch.float32, device)
    check_append_kv_cache(strided(k), v_heads_first, k_cache, v_cache, torch.tensor([3, 0, -1, 20], device=device),
                          backend)


@pytest.mark.sanitizer
@pytest.mark.parametrize("backend", BACKENDS)
def test_small_copy_and_no_tokens(backend):
    device = device_for(backend)
    k_cache, v_cache = kv_caches(2, 16, 2, 64, torch.float16, device)
    k, v = (torch.randn(5, 2, 64, dtype=torch.float16, device=device) for _ in range(2))
    check_append_kv_cache(k, v, k_cache, v_cache, random_slots(5, 32, torch.int64, device), backend)
    k_cache, v_cache = kv_caches(2, 16, 2, 64, torch.float16, device)
    check_append_kv_cache(k[:0], v[:0], k_cache, v_cache, torch.empty(0, dtype=torch.int32, device=device), backend)
    assert k_cache.isnan().all() and v_cache.isnan().all()  # no tokens: the caches untouched


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_reads_k_and_v_in_place_from_a_fused_qkv_output(backend, dtype):
    q_heads, kv_heads, head_dim, device = 8, 2, 128, device_for(backend)
    qkv = torch.randn(13, q_heads + 2 * kv_heads, head_dim, dtype=dtype, device=device)
    k, v = qkv[:, q_heads:q_heads + kv_heads], qkv[:, q_heads + kv_heads:]
    k_cache, v_cache = kv_caches(4, 16, kv_heads, head_dim, dtype, device)
    check_append_kv_cache(k, v, k_cache, v_cache, random_slots(13, 64, torch.int32, device), backend)
    # Unaligned token rows (an odd offset): cuda's element-wise copy.
    odd = torch.randn(13, 2 * kv_heads * head_dim + 1, dtype=dtype, device=device)[:, 1:]
    k, v = (t.view(13, kv_heads, head_dim) for t in odd.split(kv_heads * head_dim, dim=1))
    check_append_kv_cache(k, v, k_cache, v_cache, random_slots(13, 64, torch.int64, device), backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("kv_heads,head_dim", [(32, 128), (8, 128), (40, 128), (2, 80)])
def test_gpu_prefill_sized_append(backend, dtype, kv_heads, head_dim):
    num_blocks, block_size, tokens = 512, 16, 3000
    slots = torch.randperm(num_blocks * block_size, device="cuda")[:tokens]
    slots[::7] = -1
    k, v = (torch.randn(tokens, kv_heads, head_dim, dtype=dtype, device="cuda") for _ in range(2))
    k_cache, v_cache = kv_caches(num_blocks, block_size, kv_heads, head_dim, dtype, "cuda")
    check_append_kv_cache(k, v, k_cache, v_cache, slots, backend)


def test_custom_op_contract_holds_on_triton():
    k, v = torch.randn(3, 2, 64, device=DEVICE), torch.randn(3, 2, 64, device=DEVICE)
    caches = [torch.zeros(2, 16, 2, 64, device=DEVICE) for _ in range(2)]
    torch.library.opcheck(torch.ops.neva.append_kv_cache,
                          (k, v, *caches, torch.tensor([4, -1, 17], device=DEVICE), "triton"))
