"""The cuda paged decode attention against the reference, on a GPU, on the unsplit and the split-KV path.

Problems and the check (float64 reference as truth, PyTorch's SDPA in the input dtype as the baseline of the
tolerance rule) are those of the triton tests: one batch mixes context lengths 1, 17, 1000 (a multiple of
neither block size), 0 and 45."""
import math

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
    return torch.ops.neva_cuda.paged_decode_attention(q, k_cache, v_cache, tables, seq_lens, scale, num_splits)


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


@pytest.mark.parametrize("num_splits", [1, 2])
def test_lengths_past_the_block_table_are_cut_to_its_width(num_splits, poisoned_outputs):
    # Nothing behind a direct call of the kernel op checks seq_lens: lengths past the table's width * block_size
    # must neither read the block ids that follow a row in memory (here another column of a wider table, naming a
    # NaN block) nor drop tokens; the op attends to the tokens the table holds.
    q, k_cache, v_cache, tables, _ = make_problem([200, 5, 130], 4, 2, 64, 16, torch.float16)
    width, nan_block = tables.shape[1], k_cache.shape[0]
    k_cache, v_cache = (torch.cat([c, torch.full_like(c[:1], math.nan)]) for c in (k_cache, v_cache))
    wide = torch.cat([tables, torch.full_like(tables, nan_block)], dim=1)
    seq_lens = torch.tensor([width * 16 + 20, 5, width * 16 + 1000], dtype=torch.int32, device="cuda")
    out = decode(q, k_cache, v_cache, wide[:, :width], seq_lens, 0.125, num_splits)
    check(out, q, k_cache, v_cache, tables, seq_lens.clamp(max=width * 16), 0.125)


def test_split_merge_grid_past_2_31_blocks_is_refused_before_any_allocation():
    # 65535 sequences x 65536 query heads, as broadcast views: only the refusal (before the output's 512 GiB) fits.
    batch, q_heads, kv_heads = 65535, 65536, 2048
    q = torch.zeros(1, 1, 64, dtype=torch.float16, device="cuda").expand(batch, q_heads, 64)
    k_cache = torch.zeros(1, 1, kv_heads, 64, dtype=torch.float16, device="cuda")
    tables = torch.zeros(batch, 128, dtype=torch.int32, device="cuda")
    seq_lens = torch.ones(batch, dtype=torch.int32, device="cuda")
    with pytest.raises(RuntimeError, match=r"at most 2\^31 - 1 of them, got 65535 x 65536"):
        decode(q, k_cache, k_cache, tables, seq_lens, 0.125, 2)


def test_bad_inputs_are_refused_by_the_kernel_op():
    q, k_cache, v_cache, tables, seq_lens = make_problem([5], 4, 2, 64, 16, torch.float16)
    with pytest.raises(RuntimeError, match="head_dim must be one of"):
        torch.ops.neva_cuda.paged_decode_attention(q[..., :48], k_cache[..., :48].contiguous(),
                                                   v_cache[..., :48].contiguous(), tables, seq_lens, 0.1)
    with pytest.raises(RuntimeError, match="16-byte aligned"):
        flat = torch.empty(k_cache.numel() + 1, dtype=k_cache.dtype, device="cuda")
        shifted = flat[1:].view(k_cache.shape)
        torch.ops.neva_cuda.paged_decode_attention(q, shifted, shifted, tables, seq_lens, 0.1)
