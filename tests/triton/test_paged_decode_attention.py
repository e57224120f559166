"""The triton paged decode attention against the reference, on both the unsplit and the split-KV path.

Truth is the reference in float64. The baseline of the tolerance rule is PyTorch's SDPA (math backend) in the
input dtype over the gathered pages of each sequence. One batch mixes context lengths 1, 17, 1000 (a multiple
of neither block size), 0 and 45, so every call has partial tiles, partial pages and an empty sequence.
"""
import math
import re

import pytest
import torch
import torch.nn.functional as F

import neva_kernels as nk
from neva_kernels import backends, reference
from neva_kernels.triton_kernels import memory_bound_configs as configs
from neva_kernels.triton_kernels.paged_decode_attention import paged_decode
from tests.helpers import assert_close_by_rule, strided

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LENGTHS = [1, 17, 1000, 0, 45]
# (query heads, KV heads, head dim, block size): GQA 1 / 4 / 8, head dims 64 / 80 / 128 / 256, block 16 / 32.
HEAD_LAYOUTS = [(4, 4, 64, 16), (8, 2, 80, 32), (8, 1, 128, 16), (8, 1, 256, 32)]


def make_problem(lengths, hq, hkv, d, block_size, dtype, device=DEVICE, spare_blocks=3):
    """Caches with more blocks than used, and tables whose entries past each length point anywhere."""
    width = max(-(-n // block_size) for n in lengths) + 1
    num_blocks = width * len(lengths) + spare_blocks
    k_cache = torch.randn(num_blocks, block_size, hkv, d, dtype=dtype, device=device)
    v_cache = torch.randn(num_blocks, block_size, hkv, d, dtype=dtype, device=device)
    tables = torch.randperm(num_blocks, device=device)[:width * len(lengths)].reshape(len(lengths), width)
    seq_lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    q = torch.randn(len(lengths), hq, d, dtype=dtype, device=device)
    return q, k_cache, v_cache, tables.to(torch.int32), seq_lens


def sdpa_over_gathered_pages(q, k_cache, v_cache, table_row, length, scale):
    """Sequence b's attention by PyTorch in q's dtype: gather its tokens, repeat KV heads, SDPA (math)."""
    block_size = k_cache.shape[1]
    tokens = torch.arange(length, device=q.device)
    pages, offsets = table_row.long()[tokens // block_size], tokens % block_size
    k, v = k_cache[pages, offsets], v_cache[pages, offsets]  # [length, Hkv, D]
    group = q.shape[0] // k.shape[1]
    k, v = (t.repeat_interleave(group, dim=1).transpose(0, 1) for t in (k, v))  # [Hq, length, D]
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        return F.scaled_dot_product_attention(q[:, None], k, v, scale=scale)[:, 0]


def check(out, q, k_cache, v_cache, tables, seq_lens, scale):
    truth = reference.paged_decode_attention(q.double(), k_cache.double(), v_cache.double(), tables, seq_lens, scale)
    for b, length in enumerate(seq_lens.tolist()):
        if length == 0:
            assert torch.equal(out[b], torch.zeros_like(out[b])), f"sequence {b} of length 0 is not zeros"
            continue
        baseline = sdpa_over_gathered_pages(q[b], k_cache, v_cache, tables[b], length, scale)
        assert_close_by_rule(out[b], truth[b], baseline, f"sequence {b} (length {length})")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("hq,hkv,d,block_size", HEAD_LAYOUTS)
@pytest.mark.parametrize("num_splits", [1, 4])
def test_matches_reference_unsplit_and_split(dtype, hq, hkv, d, block_size, num_splits, poisoned_outputs):
    q, k_cache, v_cache, tables, seq_lens = make_problem(LENGTHS, hq, hkv, d, block_size, dtype)
    out = paged_decode(q, k_cache, v_cache, tables, seq_lens, d ** -0.5, num_splits=num_splits)
    check(out, q, k_cache, v_cache, tables, seq_lens, d ** -0.5)


def test_split_path_launches_the_merge_and_unsplit_does_not(monkeypatch):
    """The forced split counts really pick the two paths (a test of the tests above)."""
    from neva_kernels.triton_kernels import paged_decode_attention as module
    launches = []
    real = module._merge_splits_kernel

    class Spy:
        def __getitem__(self, grid):
            launches.append(grid)
            return real[grid]
    monkeypatch.setattr(module, "_merge_splits_kernel", Spy())
    q, k_cache, v_cache, tables, seq_lens = make_problem([300, 5], 2, 1, 64, 16, torch.float32)
    paged_decode(q, k_cache, v_cache, tables, seq_lens, 0.125, num_splits=1)
    assert launches == []
    paged_decode(q, k_cache, v_cache, tables, seq_lens, 0.125, num_splits=4)
    assert launches == [(2 * 2,)]


def test_public_op_with_strided_query_and_custom_scale(poisoned_outputs):
    q, k_cache, v_cache, tables, seq_lens = make_problem([33, 1, 64], 8, 2, 80, 16, torch.float16)
    out = nk.paged_decode_attention(strided(q), k_cache, v_cache, tables, seq_lens, 0.3, backend="triton")
    check(out, q, k_cache, v_cache, tables, seq_lens, 0.3)


def test_all_sequences_empty_gives_zeros_on_both_paths(poisoned_outputs):
    q, k_cache, v_cache, tables, seq_lens = make_problem([0, 0], 4, 2, 64, 16, torch.float32)
    for num_splits in (1, 2):
        out = paged_decode(q, k_cache, v_cache, tables, seq_lens, 0.125, num_splits=num_splits)
        assert torch.equal(out, torch.zeros_like(out))


def test_heuristic_splits_long_contexts_of_small_batches_only():
    cpu = torch.device("cpu")  # the interpreter's stand-in device has an H100's 132 SMs
    sms = configs.sm_count(cpu)
    for head_dim in (64, 80, 128, 256):
        splits = configs.decode_num_splits(batch=1, kv_heads=32, max_context=65536, head_dim=head_dim, device=cpu)
        assert splits > 1 and 32 * splits >= sms, f"batch 1 x 32 KV heads at 64k fills {32 * splits} of {sms} SMs"
        assert configs.decode_num_splits(batch=64, kv_heads=32, max_context=1024, head_dim=head_dim, device=cpu) == 1
        assert configs.decode_num_splits(batch=1, kv_heads=32, max_context=64, head_dim=head_dim, device=cpu) == 1


def test_calls_outside_the_kernel_are_refused_with_the_reason():
    def reason(q_heads, kv_heads, d, dtype=torch.float16):
        q, k_cache, _, tables, seq_lens = make_problem([3], q_heads, kv_heads, d, 16, dtype, device="cpu")
        return backends.why_unable("paged_decode_attention", "triton", torch.device("cuda"),
                                   (q, k_cache, k_cache, tables, seq_lens, 1.0))
    assert reason(4, 4, 128) is None
    assert "head_dim" in reason(2, 2, 288)
    assert "query heads per KV head" in reason(32, 1, 64)
    assert "16-byte" in reason(2, 2, 36)  # 72 bytes per fp16 row


def test_a_misaligned_cache_is_unavailable_not_an_error_of_the_kernel(monkeypatch):
    """A cache starting off a 16-byte boundary is a reason of the support check: backend="triton" is
    BackendUnavailableError, and the automatic choice moves on to the next backend."""
    q, k_cache, v_cache, tables, seq_lens = make_problem([20, 3], 4, 2, 64, 16, torch.float32)
    flat = torch.empty(k_cache.numel() + 1, dtype=k_cache.dtype, device=k_cache.device)
    shifted = flat[1:].view(k_cache.shape).copy_(k_cache)
    reason = "the triton paged decode reads 16-byte vectors: 'k_cache' must start 16-byte aligned"
    with pytest.raises(nk.BackendUnavailableError, match=re.escape(reason)):
        nk.paged_decode_attention(q, shifted, v_cache, tables, seq_lens, 0.125, backend="triton")
    # The automatic order as on a GPU without cuda measurements: triton, then torch.
    monkeypatch.setattr(backends, "_preference", lambda op, device: ("triton", "torch"))
    monkeypatch.setattr(backends, "_candidates", {})  # the choices cached under the real order
    aligned, misaligned = ((q, cache, v_cache, tables, seq_lens, 0.125) for cache in (k_cache, shifted))
    assert backends.choose("paged_decode_attention", q.device, aligned) == "triton"
    assert backends.choose("paged_decode_attention", q.device, misaligned) == "torch"
    torch.testing.assert_close(nk.paged_decode_attention(*misaligned),
                               nk.paged_decode_attention(*aligned, backend="torch"), rtol=0, atol=0)


# ---- on a GPU: bfloat16 and serving sizes ------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hq,hkv,d,block_size", [(32, 32, 128, 16), (32, 8, 128, 16), (16, 2, 80, 32),
                                                 (8, 1, 256, 16), (12, 12, 64, 32)])
@pytest.mark.parametrize("num_splits", [None, 1, 7])
def test_gpu_matches_reference(dtype, hq, hkv, d, block_size, num_splits, poisoned_outputs):
    lengths = [1, 17, 1000, 0, 4097, 333, 2048]
    q, k_cache, v_cache, tables, seq_lens = make_problem(lengths, hq, hkv, d, block_size, dtype)
    out = paged_decode(q, k_cache, v_cache, tables, seq_lens, 1 / math.sqrt(d), num_splits=num_splits)
    check(out, q, k_cache, v_cache, tables, seq_lens, 1 / math.sqrt(d))


@pytest.mark.gpu
def test_gpu_one_sequence_at_64k_takes_the_split_path(poisoned_outputs):
    q, k_cache, v_cache, tables, seq_lens = make_problem([65536], 32, 32, 128, 16, torch.bfloat16)
    out = nk.paged_decode_attention(q, k_cache, v_cache, tables, seq_lens, backend="triton")
    check(out, q, k_cache, v_cache, tables, seq_lens, 128 ** -0.5)


def test_custom_op_contract_holds_on_triton():
    args = make_problem([20, 0, 5], 4, 2, 64, 16, torch.float16)
    torch.library.opcheck(torch.ops.neva.paged_decode_attention, (*args, 0.125, "triton"))
