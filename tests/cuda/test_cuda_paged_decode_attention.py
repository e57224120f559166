"""The cuda paged decode attention against the reference, on a GPU, on the unsplit and the split-KV path.

Problems and the check (float64 reference as truth, PyTorch's SDPA in the input dtype as the baseline of the
tolerance rule) are those of the triton tests: one batch mixes context lengths 1, 17, 1000 (a multiple of
neither block size), 0 and 45."""
import pytest
import torch

import neva_kernels as nk
from tests.helpers import strided
from tests.test_extension import needs_extension
from tests.triton.test_paged_decode_attention import LENGTHS, check, make_problem

pytestmark = [pytest.mark.gpu, needs_extension]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (query heads, KV heads, head dim, block size): GQA 1 / 4 / 8 / 32, every compiled head dim, block 16 / 32 / 7.
HEAD_LAYOUTS = [(4, 4, 64, 16), (8, 2, 80, 32), (8, 1, 128, 16), (8, 1, 256, 32), (12, 3, 96, 16),
                (32, 1, 128, 32), (6, 6, 128, 7)]


def decode(q, k_cache, v_cache, tables, seq_lens, scale, num_splits):
    """num_splits 1: the unsplit path; > 1: forced split-KV with the merge; 0: the heuristic."""
    return torch.ops.neva_cuda.paged_decode_attention_with_splits(q, k_cache, v_cache, tables, seq_lens, scale,
                                                                  num_splits)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hq,hkv,d,block_size", HEAD_LAYOUTS)
@pytest.mark.parametrize("num_splits", [1, 4, 0])
def test_matches_reference_unsplit_and_split(dtype, hq, hkv, d, block_size, num_splits, poisoned_outputs):
    q, k_cache, v_cache, tables, seq_lens = make_problem(LENGTHS, hq, hkv, d, block_size, dtype)
    out = decode(q, k_cache, v_cache, tables, seq_lens, d ** -0.5, num_splits)
    check(out, q, k_cache, v_cache, tables, seq_lens, d ** -0.5)


@pytest.mark.sanitizer
@pytest.mark.parametrize("num_splits", [1, 3])
def test_small_problem(num_splits, poisoned_outputs):
    q, k_cache, v_cache, tables, seq_lens = make_problem([70, 0, 5], 4, 2, 64, 16, torch.float16)
    out = decode(q, k_cache, v_cache, tables, seq_lens, 0.125, num_splits)
    check(out, q, k_cache, v_cache, tables, seq_lens, 0.125)


def test_public_op_with_strided_query_and_custom_scale(poisoned_outputs):
    q, k_cache, v_cache, tables, seq_lens = make_problem([33, 1, 64], 8, 2, 80, 16, torch.bfloat16)
    out = nk.paged_decode_attention(strided(q), k_cache, v_cache, tables, seq_lens, 0.3, backend="cuda")
    check(out, q, k_cache, v_cache, tables, seq_lens, 0.3)


def test_all_sequences_empty_gives_zeros_on_both_paths(poisoned_outputs):
    q, k_cache, v_cache, tables, seq_lens = make_problem([0, 0], 4, 2, 64, 16, torch.float32)
    for num_splits in (1, 2):
        out = decode(q, k_cache, v_cache, tables, seq_lens, 0.125, num_splits)
        assert torch.equal(out, torch.zeros_like(out))


def test_one_sequence_at_64k_takes_the_heuristic_split(poisoned_outputs):
    q, k_cache, v_cache, tables, seq_lens = make_problem([65536], 32, 8, 128, 16, torch.bfloat16)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert torch.ops.neva_cuda.decode_num_splits(1, 8, tables.shape[1] * 16, sms) > 1
    out = nk.paged_decode_attention(q, k_cache, v_cache, tables, seq_lens, backend="cuda")
    check(out, q, k_cache, v_cache, tables, seq_lens, 128 ** -0.5)


def test_bad_inputs_are_refused_by_the_kernel_op():
    q, k_cache, v_cache, tables, seq_lens = make_problem([5], 4, 2, 64, 16, torch.float16)
    with pytest.raises(RuntimeError, match="head_dim must be one of"):
        torch.ops.neva_cuda.paged_decode_attention(q[..., :48], k_cache[..., :48].contiguous(),
                                                   v_cache[..., :48].contiguous(), tables, seq_lens, 0.1)
    with pytest.raises(RuntimeError, match="16-byte aligned"):
        flat = torch.empty(k_cache.numel() + 1, dtype=k_cache.dtype, device="cuda")
        shifted = flat[1:].view(k_cache.shape)
        torch.ops.neva_cuda.paged_decode_attention(q, shifted, shifted, tables, seq_lens, 0.1)
