"""flash_attention's backward on triton (the one kernel backend with one), through autograd, against the float64
reference, by the tolerance rule.

Gradients flow from both outputs (out and lse) with random upstream gradients. The baseline of the rule is
PyTorch's autograd through the same attention computed in the input dtype.
"""
import math

import pytest
import torch

import neva_kernels as nk
from neva_kernels import backends, reference
from tests.helpers import assert_close_by_rule, strided
from tests.kernels.problems import (DEVICE, FLASH_PADDED_SHAPES, FLASH_VARLEN_LENGTHS, INTERPRETER_DTYPES,
                                    TENSOR_CORE_DTYPES, flash_packed_inputs)


def low_precision_attention_with_lse(q, k, v, causal, scale):
    """Attention with its lse in the dtype of q ([B, S, H, D]), differentiable by autograd: the baseline."""
    group = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(group, 2), v.repeat_interleave(group, 2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if causal:
        seen = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool, device=q.device).tril(k.shape[1] - q.shape[1])
        scores = scores.masked_fill(~seen, -math.inf)
    lse = torch.logsumexp(scores, dim=-1)
    # Rows that see no key: lse = -inf, probabilities 0 (masked_fill's backward zeroes their NaN gradients).
    probs = torch.exp(scores - torch.where(lse.isinf(), 0.0, lse)[..., None])
    return torch.einsum("bhqk,bkhd->bqhd", probs, v), lse


def baseline_gradients(q, k, v, causal, scale, grad_out, grad_lse, cu_q=None, cu_k=None):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    if cu_q is None:
        out, lse = low_precision_attention_with_lse(*leaves, causal, scale)
    else:
        pieces = []
        bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
        for (q0, q1), (k0, k1) in zip(zip(bounds_q, bounds_q[1:]), zip(bounds_k, bounds_k[1:])):
            o, l = low_precision_attention_with_lse(leaves[0][None, q0:q1], leaves[1][None, k0:k1],
                                                    leaves[2][None, k0:k1], causal, scale)
            pieces.append((o[0], l[0]))
        out, lse = torch.cat([o for o, _ in pieces]), torch.cat([l for _, l in pieces], dim=1)
    torch.autograd.backward((out, lse), (grad_out, grad_lse.to(lse.dtype)))
    return [t.grad for t in leaves]


def check_backward(q, k, v, causal, cu_q=None, cu_k=None):
    scale = 1 / math.sqrt(q.shape[-1])
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out, lse = nk.flash_attention(*leaves, causal, scale, cu_q, cu_k, return_lse=True, backend="triton")
    grad_out, grad_lse = torch.randn_like(out), torch.randn_like(lse)
    torch.autograd.backward((out, lse), (grad_out, grad_lse))
    wide = [t.double() for t in (q, k, v)]
    truth_out, truth_lse = reference.flash_attention(*wide, causal, scale, cu_q, cu_k)
    truth = reference.flash_attention_backward(grad_out.double(), grad_lse.double(), *wide, truth_out, truth_lse,
                                               causal, scale, cu_q, cu_k)
    baseline = baseline_gradients(q, k, v, causal, scale, grad_out, grad_lse, cu_q, cu_k)
    for name, leaf, want, base in zip(("grad_q", "grad_k", "grad_v"), leaves, truth, baseline):
        assert_close_by_rule(leaf.grad, want, base, name)


@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("batch,sq,sk,hq,hkv,d", FLASH_PADDED_SHAPES)
def test_padded_gradients_match_reference(dtype, causal, batch, sq, sk, hq, hkv, d, poisoned_outputs):
    q = torch.randn(batch, sq, hq, d, dtype=dtype, device=DEVICE)
    k, v = (torch.randn(batch, sk, hkv, d, dtype=dtype, device=DEVICE) for _ in range(2))
    check_backward(q, k, v, causal)


@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lengths_q,lengths_k", FLASH_VARLEN_LENGTHS)
def test_packed_varlen_gradients_match_reference(dtype, causal, lengths_q, lengths_k, poisoned_outputs):
    q, k, v, cu_q, cu_k = flash_packed_inputs(lengths_q, lengths_k, 2, 1, 64, dtype)
    check_backward(q, k, v, causal, cu_q, cu_k)


def test_head_dim_256_and_non_contiguous_inputs(poisoned_outputs):
    q = strided(torch.randn(1, 21, 2, 256, dtype=torch.float16, device=DEVICE))
    k = torch.randn(1, 2, 26, 256, dtype=torch.float16, device=DEVICE).transpose(1, 2)
    v = strided(torch.randn(1, 26, 2, 256, dtype=torch.float16, device=DEVICE))
    check_backward(q, k, v, causal=True)


def test_autograd_picks_the_triton_backward():
    q = torch.randn(1, 8, 2, 64, dtype=torch.float16, device=DEVICE)
    lse = torch.zeros(1, 2, 8, device=DEVICE)
    args = (q, lse, q, q, q, q, lse, True, 0.125, None, None, None, None)  # grad_out, grad_lse, q, k, v, out, lse, ...
    assert backends.choose_backward("flash_attention_backward", "triton", q.device, args) == "triton"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", TENSOR_CORE_DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("batch,sq,sk,hq,hkv,d", [(2, 1024, 1024, 16, 16, 64), (1, 2048, 2048, 16, 4, 128),
                                                  (2, 513, 1537, 8, 2, 80), (1, 1000, 1000, 4, 1, 256)])
def test_gpu_padded_gradients_match_reference(dtype, causal, batch, sq, sk, hq, hkv, d, poisoned_outputs):
    q = torch.randn(batch, sq, hq, d, dtype=dtype, device="cuda")
    k, v = (torch.randn(batch, sk, hkv, d, dtype=dtype, device="cuda") for _ in range(2))
    check_backward(q, k, v, causal)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", TENSOR_CORE_DTYPES)
def test_gpu_packed_varlen_gradients_match_reference(dtype, poisoned_outputs):
    lengths = ((1, 17, 300, 2048, 0, 777), (1, 300, 17, 2048, 5, 777))
    q, k, v, cu_q, cu_k = flash_packed_inputs(*lengths, 16, 4, 128, dtype, device="cuda")
    check_backward(q, k, v, True, cu_q, cu_k)
