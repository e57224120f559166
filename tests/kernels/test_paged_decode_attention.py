"""paged_decode_attention on each kernel backend against the reference, on the unsplit and the split-KV path.

Truth is the reference in float64; the baseline of the tolerance rule is PyTorch's SDPA (math backend) in the input
dtype over the gathered pages of each sequence (tests/kernels/problems.check_decode). The batches mix context
lengths that are multiples of no block size with empty sequences.
"""
import itertools
import math
import re

import pytest
import torch

import neva_kernels as nk
from neva_kernels import backends
from neva_kernels.triton_kernels import memory_bound_configs as configs
from neva_kernels.triton_kernels.paged_decode_attention import paged_decode
from tests.helpers import BACKENDS, on_backend, strided
from tests.kernels.problems import (DECODE_LENGTHS, GPU_DTYPES, INTERPRETER_DTYPES, check_decode, decode_problem,
                                    device_for)
from tests.test_extension import needs_extension


def decode(backend, q, k_cache, v_cache, tables, seq_lens, scale, num_splits):
    """The backend's kernel with the split count forced: 1 the unsplit path, > 1 split-KV with the merge, None the
    heuristic."""
    if backend == "cuda":
        return torch.ops.neva_cuda.paged_decode_attention(q, k_cache, v_cache, tables, seq_lens, scale,
                                                          num_splits or 0)
    return paged_decode(q, k_cache, v_cache, tables, seq_lens, scale, num_splits=num_splits)


def heuristic_splits(backend, batch, kv_heads, max_context, head_dim):
    if backend == "cuda":
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        return torch.ops.neva_cuda.decode_num_splits(batch, kv_heads, max_context, sms)
    return configs.decode_num_splits(batch, kv_heads, max_context, head_dim, torch.device("cuda"))


# (query heads, KV heads, head dim, block size): triton GQA 1 / 4 / 8, head dims 64 / 80 / 128 / 256, block 16 / 32;
# cuda also GQA 32, every compiled head dim and block 7.
TRITON_LAYOUTS = [(4, 4, 64, 16), (8, 2, 80, 32), (8, 1, 128, 16), (8, 1, 256, 32)]
CUDA_LAYOUTS = TRITON_LAYOUTS + [(12, 3, 96, 16), (32, 1, 128, 32), (6, 6, 128, 7)]
CASES = [*(on_backend("triton", dtype, *layout, splits) for dtype, layout, splits in
           itertools.product(INTERPRETER_DTYPES, TRITON_LAYOUTS, [1, 4])),
         *(on_backend("cuda", dtype, *layout, splits) for dtype, layout, splits in
           itertools.product(GPU_DTYPES, CUDA_LAYOUTS, [1, 4, None]))]


@pytest.mark.parametrize("backend,dtype,hq,hkv,d,block_size,num_splits", CASES)
def test_matches_reference_unsplit_and_split(backend, dtype, hq, hkv, d, block_size, num_splits, poisoned_outputs):
    problem = decode_problem(DECODE_LENGTHS, hq, hkv, d, block_size, dtype, device_for(backend))
    check_decode(decode(backend, *problem, d ** -0.5, num_splits), *problem, d ** -0.5)


@pytest.mark.sanitizer
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_splits", [1, 3])
def test_small_problem(backend, num_splits, poisoned_outputs):
    problem = decode_problem([70, 0, 5], 4, 2, 64, 16, torch.float16, device_for(backend))
    check_decode(decode(backend, *problem, 0.125, num_splits), *problem, 0.125)


@pytest.mark.parametrize("backend,dtype", [on_backend("triton", torch.float16), on_backend("cuda", torch.bfloat16)])
def test_public_op_with_strided_query_and_custom_scale(backend, dtype, poisoned_outputs):
    q, k_cache, v_cache, tables, seq_lens = decode_problem([33, 1, 64], 8, 2, 80, 16, dtype, device_for(backend))
    out = nk.paged_decode_attention(strided(q), k_cache, v_cache, tables, seq_lens, 0.3, backend=backend)
    check_decode(out, q, k_cache, v_cache, tables, seq_lens, 0.3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_sequences_empty_gives_zeros_on_both_paths(backend, poisoned_outputs):
    problem = decode_problem([0, 0], 4, 2, 64, 16, torch.float32, device_for(backend))
    for num_splits in (1, 2):
        out = decode(backend, *problem, 0.125, num_splits)
        assert torch.equal(out, torch.zeros_like(out))


# ---- on a GPU: bfloat16 and serving sizes ------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("hq,hkv,d,block_size", [(32, 32, 128, 16), (32, 8, 128, 16), (16, 2, 80, 32),
                                                 (8, 1, 256, 16), (12, 12, 64, 32)])
@pytest.mark.parametrize("num_splits", [None, 1, 7])
def test_gpu_serving_sizes_match_reference(backend, dtype, hq, hkv, d, block_size, num_splits, poisoned_outputs):
    lengths = [1, 17, 1000, 0, 4097, 333, 2048]
    problem = decode_problem(lengths, hq, hkv, d, block_size, dtype, "cuda")
    check_decode(decode(backend, *problem, 1 / math.sqrt(d), num_splits), *problem, 1 / math.sqrt(d))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kv_heads", [32, 8])
def test_gpu_one_sequence_at_64k_takes_the_heuristic_split(backend, kv_heads, poisoned_outputs):
    q, k_cache, v_cache, tables, seq_lens = decode_problem([65536], 32, kv_heads, 128, 16, torch.bfloat16, "cuda")
    assert heuristic_splits(backend, 1, kv_heads, tables.shape[1] * 16, 128) > 1
    out = nk.paged_decode_attention(q, k_cache, v_cache, tables, seq_lens, backend=backend)
    check_decode(out, q, k_cache, v_cache, tables, seq_lens, 128 ** -0.5)


# ---- triton only ---------------------------------------------------------------------------------------

def test_triton_split_path_launches_the_merge_and_unsplit_does_not(monkeypatch):
    """The forced split counts really pick the two paths (a test of the tests above)."""
    from neva_kernels.triton_kernels import paged_decode_attention as module
    launches = []
    real = module._merge_splits_kernel

    class Spy:
        def __getitem__(self, grid):
            launches.append(grid)
            return real[grid]
    monkeypatch.setattr(module, "_merge_splits_kernel", Spy())
    problem = decode_problem([300, 5], 2, 1, 64, 16, torch.float32)
    paged_decode(*problem, 0.125, num_splits=1)
    assert launches == []
    paged_decode(*problem, 0.125, num_splits=4)
    assert launches == [(2 * 2,)]


def test_triton_heuristic_splits_long_contexts_of_small_batches_only():
    cpu = torch.device("cpu")  # the interpreter's stand-in device has an H100's 132 SMs
    sms = configs.sm_count(cpu)
    for head_dim in (64, 80, 128, 256):
        splits = configs.decode_num_splits(batch=1, kv_heads=32, max_context=65536, head_dim=head_dim, device=cpu)
        assert splits > 1 and 32 * splits >= sms, f"batch 1 x 32 KV heads at 64k fills {32 * splits} of {sms} SMs"
        assert configs.decode_num_splits(batch=64, kv_heads=32, max_context=1024, head_dim=head_dim, device=cpu) == 1
        assert configs.decode_num_splits(batch=1, kv_heads=32, max_context=64, head_dim=head_dim, device=cpu) == 1


def test_triton_refuses_calls_outside_the_kernel_with_the_reason():
    def reason(q_heads, kv_heads, d, dtype=torch.float16):
        q, k_cache, _, tables, seq_lens = decode_problem([3], q_heads, kv_heads, d, 16, dtype, device="cpu")
        return backends.why_unable("paged_decode_attention", "triton", torch.device("cuda"),
                                   (q, k_cache, k_cache, tables, seq_lens, 1.0))
    assert reason(4, 4, 128) is None
    assert "head_dim" in reason(2, 2, 288)
    assert "query heads per KV head" in reason(32, 1, 64)
    assert "16-byte" in reason(2, 2, 36)  # 72 bytes per fp16 row


def test_a_misaligned_cache_is_unavailable_on_triton_not_an_error_of_the_kernel(monkeypatch):
    """A cache starting off a 16-byte boundary is a reason of the support check: backend="triton" is
    BackendUnavailableError, and the automatic choice moves on to the next backend."""
    q, k_cache, v_cache, tables, seq_lens = decode_problem([20, 3], 4, 2, 64, 16, torch.float32)
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


def test_custom_op_contract_holds_on_triton():
    args = decode_problem([20, 0, 5], 4, 2, 64, 16, torch.float16)
    torch.library.opcheck(torch.ops.neva.paged_decode_attention, (*args, 0.125, "triton"))


# ---- cuda only: the kernel op called directly ----------------------------------------------------------

@pytest.mark.gpu
@needs_extension
@pytest.mark.parametrize("num_splits", [1, 2])
def test_cuda_lengths_past_the_block_table_are_cut_to_its_width(num_splits, poisoned_outputs):
    # Nothing behind a direct call of the kernel op checks seq_lens: lengths past the table's width * block_size
    # must neither read the block ids that follow a row in memory (here another column of a wider table, naming a
    # NaN block) nor drop tokens; the op attends to the tokens the table holds.
    q, k_cache, v_cache, tables, _ = decode_problem([200, 5, 130], 4, 2, 64, 16, torch.float16, "cuda")
    width, nan_block = tables.shape[1], k_cache.shape[0]
    k_cache, v_cache = (torch.cat([c, torch.full_like(c[:1], math.nan)]) for c in (k_cache, v_cache))
    wide = torch.cat([tables, torch.full_like(tables, nan_block)], dim=1)
    seq_lens = torch.tensor([width * 16 + 20, 5, width * 16 + 1000], dtype=torch.int32, device="cuda")
    out = decode("cuda", q, k_cache, v_cache, wide[:, :width], seq_lens, 0.125, num_splits)
    check_decode(out, q, k_cache, v_cache, tables, seq_lens.clamp(max=width * 16), 0.125)


@pytest.mark.gpu
@needs_extension
def test_cuda_split_merge_grid_past_2_31_blocks_is_refused_before_any_allocation():
    # 65535 sequences x 65536 query heads, as broadcast views: only the refusal (before the output's 512 GiB) fits.
    batch, q_heads, kv_heads = 65535, 65536, 2048
    q = torch.zeros(1, 1, 64, dtype=torch.float16, device="cuda").expand(batch, q_heads, 64)
    k_cache = torch.zeros(1, 1, kv_heads, 64, dtype=torch.float16, device="cuda")
    tables = torch.zeros(batch, 128, dtype=torch.int32, device="cuda")
    seq_lens = torch.ones(batch, dtype=torch.int32, device="cuda")
    with pytest.raises(RuntimeError, match=r"at most 2\^31 - 1 of them, got 65535 x 65536"):
        decode("cuda", q, k_cache, k_cache, tables, seq_lens, 0.125, 2)


@pytest.mark.gpu
@needs_extension
def test_cuda_bad_inputs_are_refused_by_the_kernel_op():
    q, k_cache, v_cache, tables, seq_lens = decode_problem([5], 4, 2, 64, 16, torch.float16, "cuda")
    with pytest.raises(RuntimeError, match="head_dim must be one of"):
        torch.ops.neva_cuda.paged_decode_attention(q[..., :48], k_cache[..., :48].contiguous(),
                                                   v_cache[..., :48].contiguous(), tables, seq_lens, 0.1)
    with pytest.raises(RuntimeError, match="16-byte aligned"):
        flat = torch.empty(k_cache.numel() + 1, dtype=k_cache.dtype, device="cuda")
        shifted = flat[1:].view(k_cache.shape)
        torch.ops.neva_cuda.paged_decode_attention(q, shifted, shifted, tables, seq_lens, 0.1)
