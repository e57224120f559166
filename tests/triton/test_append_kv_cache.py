"""The triton append_kv_cache writes exactly the reference's slots (a copy: results must be equal, not close)."""
import math

import pytest
import torch

import neva_kernels as nk
from tests.helpers import strided

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def append_both_ways(k, v, num_blocks, block_size, slots):
    """Run the triton kernel and the reference on NaN-filled caches; return both pairs of caches."""
    shape = (num_blocks, block_size, *k.shape[1:])
    caches = {name: [torch.full(shape, math.nan, dtype=k.dtype, device=k.device) for _ in range(2)]
              for name in ("triton", "torch")}
    for backend, (k_cache, v_cache) in caches.items():
        nk.append_kv_cache(k, v, k_cache, v_cache, slots, backend=backend)
    return caches["triton"], caches["torch"]


def assert_same_cache(got, want):
    # NaN marks a slot nobody wrote: it must stay NaN in both, so compare with NaN == NaN.
    assert torch.equal(got.isnan(), want.isnan()), "written slots differ"
    assert torch.equal(got.nan_to_num(), want.nan_to_num()), "written values differ"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("hkv,d,block_size", [(2, 80, 16), (3, 64, 32), (1, 256, 16)])
@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
def test_writes_the_reference_slots_and_skips_padding(dtype, hkv, d, block_size, slot_dtype):
    num_blocks = 6
    slots = torch.tensor([5, block_size, block_size + 1, num_blocks * block_size - 1, -1, 40, -1],
                         dtype=slot_dtype, device=DEVICE)
    k = torch.randn(len(slots), hkv, d, dtype=dtype, device=DEVICE)
    v = torch.randn(len(slots), hkv, d, dtype=dtype, device=DEVICE)
    (k_got, v_got), (k_want, v_want) = append_both_ways(k, v, num_blocks, block_size, slots)
    assert_same_cache(k_got, k_want)
    assert_same_cache(v_got, v_want)
    assert (~k_got.isnan()).flatten(2).all(-1).sum() == (slots >= 0).sum()  # whole rows, one per kept token


def test_reads_non_contiguous_keys_and_values():
    k = torch.randn(4, 2, 64, device=DEVICE)
    v_heads_first = torch.randn(2, 4, 64, device=DEVICE).transpose(0, 1)  # token stride < head stride
    slots = torch.tensor([3, 0, -1, 20], device=DEVICE)
    (k_got, v_got), (k_want, v_want) = append_both_ways(strided(k), v_heads_first, 2, 16, slots)
    assert_same_cache(k_got, k_want)
    assert_same_cache(v_got, v_want)


def test_no_tokens_leaves_the_cache_untouched():
    empty = torch.empty(0, 2, 64, device=DEVICE)
    (k_got, _), _ = append_both_ways(empty, empty, 2, 16, torch.empty(0, dtype=torch.int64, device=DEVICE))
    assert k_got.isnan().all()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hkv,d", [(32, 128), (8, 128), (40, 128), (2, 80)])
def test_gpu_prefill_sized_append(dtype, hkv, d):
    num_blocks, block_size, tokens = 512, 16, 3000
    slots = torch.randperm(num_blocks * block_size, device=DEVICE)[:tokens]
    slots[::7] = -1
    k = torch.randn(tokens, hkv, d, dtype=dtype, device=DEVICE)
    v = torch.randn(tokens, hkv, d, dtype=dtype, device=DEVICE)
    (k_got, v_got), (k_want, v_want) = append_both_ways(k, v, num_blocks, block_size, slots)
    assert_same_cache(k_got, k_want)
    assert_same_cache(v_got, v_want)


def test_custom_op_contract_holds_on_triton():
    k, v = torch.randn(3, 2, 64, device=DEVICE), torch.randn(3, 2, 64, device=DEVICE)
    caches = [torch.zeros(2, 16, 2, 64, device=DEVICE) for _ in range(2)]
    torch.library.opcheck(torch.ops.neva.append_kv_cache,
                          (k, v, *caches, torch.tensor([4, -1, 17], device=DEVICE), "triton"))
