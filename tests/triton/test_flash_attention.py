"""The triton flash_attention forward against the float64 reference, by the tolerance rule.

On CPU the kernels run in the Triton interpreter (float16/float32, small shapes); the tests marked gpu run the
same checks compiled, in bfloat16/float16 at realistic shapes. The baseline of the rule is PyTorch computing
the same attention in the input dtype (SDPA's math backend; per sequence for packed batches).
"""
import math

import pytest
import torch
import torch.nn.functional as F

import neva_kernels as nk
from neva_kernels import reference
from tests.helpers import assert_close_by_rule, strided

INTERPRETER_DTYPES = [torch.float16, torch.float32]
GPU_DTYPES = [torch.bfloat16, torch.float16]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (batch, seqlen_q, seqlen_k, q heads, kv heads, head dim): GQA 1 and 4, Sq < Sk, Sq > Sk (causal rows that
# see no key), tiles that do not divide the lengths.
PADDED_SHAPES = [(2, 37, 53, 2, 2, 64), (1, 70, 40, 4, 1, 80), (2, 65, 65, 4, 1, 128)]
# Sequence lengths of packed batches (query, key): one token, odd, several tiles, empty.
VARLEN_LENGTHS = [((1, 17, 300, 0), (1, 300, 17, 0))]


def low_precision_attention(q, k, v, causal, scale):
    """PyTorch's own attention in the dtype of q ([B, S, H, D] layout): the rule's baseline."""
    group = q.shape[2] // k.shape[2]
    qt, kt, vt = (t.transpose(1, 2).repeat_interleave(n, 1) for t, n in ((q, 1), (k, group), (v, group)))
    mask = None
    if causal:
        mask = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool, device=q.device).tril(k.shape[1] - q.shape[1])
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale)
    # SDPA gives NaN on rows that see no key; the op's contract (and FlashAttention's) is 0 there.
    return out.transpose(1, 2).nan_to_num(0.0)


def packed_inputs(lengths_q, lengths_k, hq, hkv, d, dtype, device=DEVICE):
    cu = (lambda lengths: torch.tensor([0, *lengths], device=device).cumsum(0).to(torch.int32))
    q = torch.randn(sum(lengths_q), hq, d, dtype=dtype, device=device)
    k, v = (torch.randn(sum(lengths_k), hkv, d, dtype=dtype, device=device) for _ in range(2))
    return q, k, v, cu(lengths_q), cu(lengths_k)


def per_sequence(fn, q, k, v, cu_q, cu_k, *args):
    """Apply a padded-layout attention `fn` to each sequence of a packed batch; outputs concatenated."""
    outs = []
    bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
    for (q0, q1), (k0, k1) in zip(zip(bounds_q, bounds_q[1:]), zip(bounds_k, bounds_k[1:])):
        outs.append(fn(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], *args)[0])
    return torch.cat(outs)


def check_forward(q, k, v, causal, cu_q=None, cu_k=None, scale=None, backend="triton"):
    """Run the forward of `backend` and compare out and lse with the float64 reference."""
    scale = scale or 1 / math.sqrt(q.shape[-1])
    out, lse = nk.flash_attention(q, k, v, causal, scale, cu_q, cu_k, return_lse=True, backend=backend)
    check_outputs(out, lse, q, k, v, causal, cu_q, cu_k, scale)


def check_outputs(out, lse, q, k, v, causal, cu_q, cu_k, scale):
    """out and lse of one forward call against the float64 reference, by the tolerance rule."""
    truth_out, truth_lse = reference.flash_attention(q.double(), k.double(), v.double(), causal, scale, cu_q, cu_k)
    if cu_q is None:
        baseline = low_precision_attention(q, k, v, causal, scale)
    else:
        baseline = per_sequence(low_precision_attention, q, k, v, cu_q, cu_k, causal, scale)
    assert_close_by_rule(out, truth_out, baseline, "out")
    # lse: -inf exactly where the reference has it (rows that see no key), else the rule against an fp32 lse.
    assert lse.dtype == torch.float32 and torch.equal(lse.isinf(), truth_lse.isinf())
    finite = ~truth_lse.isinf()
    _, baseline_lse = reference.flash_attention(q, k, v, causal, scale, cu_q, cu_k)
    assert_close_by_rule(lse[finite], truth_lse[finite], baseline_lse[finite], "lse")


@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("batch,sq,sk,hq,hkv,d", PADDED_SHAPES)
def test_padded_matches_reference(dtype, causal, batch, sq, sk, hq, hkv, d, poisoned_outputs):
    q = torch.randn(batch, sq, hq, d, dtype=dtype, device=DEVICE)
    k, v = (torch.randn(batch, sk, hkv, d, dtype=dtype, device=DEVICE) for _ in range(2))
    check_forward(q, k, v, causal)


@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lengths_q,lengths_k", VARLEN_LENGTHS)
def test_packed_varlen_matches_reference(dtype, causal, lengths_q, lengths_k, poisoned_outputs):
    q, k, v, cu_q, cu_k = packed_inputs(lengths_q, lengths_k, 2, 1, 64, dtype)
    check_forward(q, k, v, causal, cu_q, cu_k)


@pytest.mark.parametrize("d", [40, 96, 256])
def test_head_dims_padded_to_the_tile(d, poisoned_outputs):
    """Head dims that are not a power of two run masked in the next tile; 256 is the largest."""
    q = torch.randn(1, 33, 2, d, dtype=torch.float16, device=DEVICE)
    k, v = (torch.randn(1, 45, 1, d, dtype=torch.float16, device=DEVICE) for _ in range(2))
    check_forward(q, k, v, causal=True)


def test_non_contiguous_inputs_and_custom_scale(poisoned_outputs):
    q = strided(torch.randn(2, 29, 4, 64, dtype=torch.float16, device=DEVICE))
    k = torch.randn(2, 4, 31, 64, dtype=torch.float16, device=DEVICE).transpose(1, 2)  # [B, S, H, D], strided
    v = strided(torch.randn(2, 31, 4, 64, dtype=torch.float16, device=DEVICE))
    check_forward(q, k, v, causal=False, scale=0.3)


def test_unsupported_calls_say_why():
    q = torch.randn(1, 4, 2, 64, dtype=torch.float64, device=DEVICE)
    with pytest.raises(nk.BackendUnavailableError, match="float64"):
        nk.flash_attention(q, q, q, backend="triton")


# ---- compiled, on a GPU ----------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("batch,sq,sk,hq,hkv,d", [(2, 1024, 1024, 16, 16, 64), (1, 2048, 2048, 32, 8, 128),
                                                  (2, 513, 1537, 8, 2, 80), (1, 1000, 1000, 4, 1, 256)])
def test_gpu_padded_matches_reference(dtype, causal, batch, sq, sk, hq, hkv, d, poisoned_outputs):
    q = torch.randn(batch, sq, hq, d, dtype=dtype, device="cuda")
    k, v = (torch.randn(batch, sk, hkv, d, dtype=dtype, device="cuda") for _ in range(2))
    check_forward(q, k, v, causal)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_packed_varlen_matches_reference(dtype, causal, poisoned_outputs):
    lengths = ((1, 17, 300, 2048, 0, 777), (1, 300, 17, 2048, 5, 777))
    q, k, v, cu_q, cu_k = packed_inputs(*lengths, 32, 8, 128, dtype, device="cuda")
    check_forward(q, k, v, causal, cu_q, cu_k)
