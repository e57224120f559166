"""The references (and so the torch backend) against independent formulations computed in float64.

Each test calls the public op with backend="torch" and compares it with another way of computing the same
thing: SDPA's math backend, HF transformers' LLaMA formulas, nn.Linear + GELU + masked_scatter, complex
multiplication, a slot-by-slot loop. Tolerances follow the rule in tests/helpers.py.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb
from transformers.models.nemotron.modeling_nemotron import apply_rotary_pos_emb as nemotron_apply_rotary_pos_emb

import neva_kernels as nk
from neva_kernels import reference
from tests.helpers import assert_close_by_rule, strided

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


# ---- rms_norm ------------------------------------------------------------------------------------------

def hf_rms_norm(x, weight, eps):
    norm = LlamaRMSNorm(x.shape[-1], eps=eps).to(dtype=x.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        return norm(x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 769), (3, 5, 5120), (7, 64)])
def test_rms_norm_matches_hf_llama_formula(dtype, shape, poisoned_outputs):
    x = torch.randn(shape, dtype=dtype) * 3
    weight = torch.rand(shape[-1], dtype=dtype) + 0.5
    out = nk.rms_norm(x, weight, 1e-5, backend="torch")
    assert_close_by_rule(out, hf_rms_norm(x.double(), weight.double(), 1e-5), hf_rms_norm(x, weight, 1e-5), "rms_norm")


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_residual_rms_norm_matches_unfused(dtype, poisoned_outputs):
    x, residual = torch.randn(2, 9, 769, dtype=dtype), torch.randn(2, 9, 769, dtype=dtype)
    weight = torch.rand(769, dtype=dtype) + 0.5
    out, new_residual = nk.rms_norm(strided(x), weight, 1e-6, residual=residual, backend="torch")
    unfused_sum = x + residual  # PyTorch's own add, rounded to dtype: the residual stream of an unfused model
    assert torch.equal(new_residual, unfused_sum)
    truth = hf_rms_norm(unfused_sum.double(), weight.double(), 1e-6)
    assert_close_by_rule(out, truth, hf_rms_norm(unfused_sum, weight, 1e-6), "fused rms_norm")


def torch_layer_norm(x, weight, bias, eps, zero_centered_weight):
    """F.layer_norm, with 1 + weight for the zero-centred form (transformers' NemotronLayerNorm1P)."""
    return F.layer_norm(x, x.shape[-1:], weight + 1 if zero_centered_weight else weight, bias, eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 769), (3, 5, 1024), (7, 64), (2, 1)])
@pytest.mark.parametrize("zero_centered_weight", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_layer_norm_matches_torch_layer_norm(dtype, shape, zero_centered_weight, with_bias, poisoned_outputs):
    x = torch.randn(shape, dtype=dtype) * 3 + 2  # an offset: the mean matters
    weight = torch.rand(shape[-1], dtype=dtype) - 0.5 if zero_centered_weight else torch.rand(shape[-1], dtype=dtype)
    bias = torch.randn(shape[-1], dtype=dtype) if with_bias else None
    out = nk.layer_norm(strided(x), weight, bias, 1e-5, zero_centered_weight=zero_centered_weight, backend="torch")
    as_double = (lambda t: None if t is None else t.double())
    truth = torch_layer_norm(x.double(), weight.double(), as_double(bias), 1e-5, zero_centered_weight)
    baseline = torch_layer_norm(x.float(), weight.float(), None if bias is None else bias.float(), 1e-5,
                                zero_centered_weight).to(dtype)
    assert_close_by_rule(out, truth, baseline, "layer_norm")


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_residual_layer_norm_matches_unfused(dtype, poisoned_outputs):
    x, residual = torch.randn(2, 9, 769, dtype=dtype), torch.randn(2, 9, 769, dtype=dtype)
    weight, bias = torch.rand(769, dtype=dtype) - 0.5, torch.randn(769, dtype=dtype)
    out, new_residual = nk.layer_norm(x, weight, bias, 1e-5, residual=strided(residual), zero_centered_weight=True,
                                      backend="torch")
    unfused_sum = x + residual
    assert torch.equal(new_residual, unfused_sum)
    truth = torch_layer_norm(unfused_sum.double(), weight.double(), bias.double(), 1e-5, True)
    baseline = torch_layer_norm(unfused_sum.float(), weight.float(), bias.float(), 1e-5, True).to(dtype)
    assert_close_by_rule(out, truth, baseline, "fused layer_norm")


@pytest.mark.parametrize("zero_centered_weight", [False, True])
def test_layer_norm_backward_matches_autograd_of_torch_layer_norm(zero_centered_weight):
    """The closed-form gradients against autograd through F.layer_norm, in float64."""
    h = (torch.randn(4, 3, 37, dtype=torch.float64) * 2 + 1).requires_grad_(True)
    weight = torch.randn(37, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(37, dtype=torch.float64, requires_grad=True)
    grad_y = torch.randn(4, 3, 37, dtype=torch.float64)
    torch_layer_norm(h, weight, bias, 1e-5, zero_centered_weight).backward(grad_y)
    grads = reference.layer_norm_backward(grad_y, h.detach(), weight.detach(), 1e-5, zero_centered_weight)
    for got, want in zip(grads, (h.grad, weight.grad, bias.grad)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# ---- flash_attention -----------------------------------------------------------------------------------

def sdpa_fp64(q, k, v, causal, scale):
    """SDPA's math backend in float64, [B, S, H, D] layout, bottom-right causal mask built explicitly."""
    qt, kt, vt = (t.double().transpose(1, 2) for t in (q, k, v))
    group = q.shape[2] // k.shape[2]
    kt, vt = kt.repeat_interleave(group, 1), vt.repeat_interleave(group, 1)
    mask = None
    if causal:
        sq, sk = q.shape[1], k.shape[1]
        mask = torch.ones(sq, sk, dtype=torch.bool).tril(diagonal=sk - sq)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale)
    scores = torch.einsum("bhqd,bhkd->bhqk", qt, kt) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    return out.transpose(1, 2), torch.logsumexp(scores, dim=-1)


def sdpa_low_precision(q, k, v, causal, scale):
    """The same attention computed by PyTorch in the input dtype: the baseline of the tolerance rule."""
    group = q.shape[2] // k.shape[2]
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(group, 1), v.transpose(1, 2).repeat_interleave(group, 1)
    mask = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool).tril(diagonal=k.shape[1] - q.shape[1]) if causal else None
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale).transpose(1, 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("batch,sq,sk,hq,hkv,d", [
    (2, 37, 37, 4, 4, 64),    # self-attention, GQA 1
    (1, 1, 53, 8, 2, 80),     # one query token, GQA 4, head dim 80
    (3, 17, 120, 8, 1, 128),  # seqlen_q != seqlen_k, MQA (GQA 8)
    (1, 29, 29, 16, 2, 256),  # GQA 8, largest head dim
])
def test_flash_attention_matches_sdpa_math(dtype, causal, batch, sq, sk, hq, hkv, d, poisoned_outputs):
    q = torch.randn(batch, sq, hq, d, dtype=dtype)
    k, v = torch.randn(batch, sk, hkv, d, dtype=dtype), torch.randn(batch, sk, hkv, d, dtype=dtype)
    scale = 1 / math.sqrt(d)
    out, lse = nk.flash_attention(q, strided(k), v, causal=causal, return_lse=True, backend="torch")
    truth, truth_lse = sdpa_fp64(q, k, v, causal, scale)
    assert_close_by_rule(out, truth, sdpa_low_precision(q, k, v, causal, scale), "flash_attention out")
    assert lse.dtype == torch.float32 and lse.shape == (batch, hq, sq)
    torch.testing.assert_close(lse.double(), truth_lse, atol=1e-4, rtol=1e-5)


def test_flash_attention_query_without_visible_keys_gives_zeros():
    """Causal with seqlen_q > seqlen_k: the first queries see no key (bottom-right alignment)."""
    q, k, v = torch.randn(1, 6, 2, 32), torch.randn(1, 4, 2, 32), torch.randn(1, 4, 2, 32)
    out, lse = nk.flash_attention(q, k, v, causal=True, return_lse=True, backend="torch")
    assert torch.equal(out[:, :2], torch.zeros_like(out[:, :2])) and torch.isneginf(lse[..., :2]).all()
    # Query 2 sees key 0, ..., query 5 sees all 4 keys (SDPA itself gives NaN on the rows that see nothing).
    torch.testing.assert_close(out[:, 2:].double(), sdpa_fp64(q, k, v, True, 32 ** -0.5)[0][:, 2:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_packed_varlen_matches_per_sequence_sdpa(dtype, causal, poisoned_outputs):
    lengths_q, lengths_k = [1, 17, 300, 5], [1, 40, 300, 9]
    hq, hkv, d = 4, 2, 80
    cu_q = torch.tensor([0, *torch.tensor(lengths_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(lengths_k).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(sum(lengths_q), hq, d, dtype=dtype)
    k, v = torch.randn(sum(lengths_k), hkv, d, dtype=dtype), torch.randn(sum(lengths_k), hkv, d, dtype=dtype)
    out, lse = nk.flash_attention(q, k, v, causal, None, cu_q, cu_k, max(lengths_q), max(lengths_k), return_lse=True,
                                  backend="torch")
    assert lse.shape == (hq, sum(lengths_q))
    for i in range(len(lengths_q)):
        qs, ks = slice(cu_q[i], cu_q[i + 1]), slice(cu_k[i], cu_k[i + 1])
        truth, truth_lse = sdpa_fp64(q[None, qs], k[None, ks], v[None, ks], causal, d ** -0.5)
        baseline = sdpa_low_precision(q[None, qs], k[None, ks], v[None, ks], causal, d ** -0.5)
        assert_close_by_rule(out[None, qs], truth, baseline, f"sequence {i}")
        torch.testing.assert_close(lse[:, qs].double(), truth_lse[0], atol=1e-4, rtol=1e-5)


# ---- paged decode and the KV cache ---------------------------------------------------------------------

def gather_pages(cache, table_row, length):
    """A sequence's first `length` tokens, read block by block from the paged cache."""
    block_size = cache.shape[1]
    blocks = [cache[int(table_row[t // block_size]), t % block_size] for t in range(length)]
    return torch.stack(blocks) if blocks else cache.new_empty(0, *cache.shape[2:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("hq,hkv,d", [(4, 4, 64), (8, 2, 80), (16, 2, 128)])
def test_paged_decode_matches_gathered_attention(dtype, block_size, hq, hkv, d, poisoned_outputs):
    lengths = [1, 17, 100, block_size * 3, 0]
    num_blocks = 40
    k_cache = torch.randn(num_blocks, block_size, hkv, d, dtype=dtype)
    v_cache = torch.randn(num_blocks, block_size, hkv, d, dtype=dtype)
    width = max(-(-n // block_size) for n in lengths) + 1
    block_tables = torch.stack([torch.randperm(num_blocks)[:width] for _ in lengths]).to(torch.int32)
    seq_lens = torch.tensor(lengths, dtype=torch.int32)
    q = torch.randn(len(lengths), hq, d, dtype=dtype)
    out = nk.paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, backend="torch")
    for b, length in enumerate(lengths):
        if length == 0:
            assert torch.equal(out[b], torch.zeros_like(out[b]))
            continue
        k = gather_pages(k_cache, block_tables[b], length)[None]
        v = gather_pages(v_cache, block_tables[b], length)[None]
        truth, _ = sdpa_fp64(q[b, None, None], k, v, False, d ** -0.5)
        assert_close_by_rule(out[b], truth[0, 0], sdpa_low_precision(q[b, None, None], k, v, False, d ** -0.5)[0, 0],
                             f"sequence {b}")


def test_append_kv_cache_writes_each_slot_and_skips_padding():
    num_blocks, block_size, hkv, d = 6, 16, 2, 80
    k_cache = torch.full((num_blocks, block_size, hkv, d), math.nan)
    v_cache = torch.full((num_blocks, block_size, hkv, d), math.nan)
    slots = torch.tensor([5, 16, 17, 95, -1, 40, -1], dtype=torch.int64)
    k, v = torch.randn(7, hkv, d), torch.randn(7, hkv, d)
    nk.append_kv_cache(k, v, k_cache, v_cache, slots, backend="torch")
    written = torch.zeros(num_blocks, block_size, dtype=torch.bool)
    for i, slot in enumerate(slots.tolist()):
        if slot < 0:
            continue
        block, offset = divmod(slot, block_size)
        assert torch.equal(k_cache[block, offset], k[i]) and torch.equal(v_cache[block, offset], v[i])
        written[block, offset] = True
    assert k_cache[~written].isnan().all() and v_cache[~written].isnan().all()


# ---- rotary embedding ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hf_apply,rot_dim", [(apply_rotary_pos_emb, 80), (nemotron_apply_rotary_pos_emb, 40),
                                              (nemotron_apply_rotary_pos_emb, 20)],
                         ids=["llama-full", "nemotron-half", "nemotron-quarter"])
def test_rotary_neox_matches_hf_llama_and_nemotron(dtype, hf_apply, rot_dim, poisoned_outputs):
    """NeoX pairs over the first rot_dim features, the rest passed through: as transformers' LLaMA applies it to
    whole heads and its Nemotron to the partial_rotary_factor of each head."""
    tokens, hq, hkv, d = 23, 4, 2, 80
    q, k = torch.randn(tokens, hq, d, dtype=dtype), torch.randn(tokens, hkv, d, dtype=dtype)
    positions = torch.randint(0, 500, (tokens,))
    cache = reference.rotary_cos_sin_cache(rot_dim, 512, base=10000.0)
    q_out, k_out = nk.rotary_embedding(strided(q), k, positions, cache, backend="torch")
    cos, sin = cache[positions].double().chunk(2, dim=-1)
    cos, sin = torch.cat((cos, cos), -1)[None], torch.cat((sin, sin), -1)[None]  # HF's [1, T, rot_dim] layout
    truth_q, truth_k = hf_apply(q.double().transpose(0, 1)[None], k.double().transpose(0, 1)[None], cos, sin)
    base_q, base_k = hf_apply(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos.to(dtype), sin.to(dtype))
    assert_close_by_rule(q_out, truth_q[0].transpose(0, 1), base_q[0].transpose(0, 1), "rotary q")
    assert_close_by_rule(k_out, truth_k[0].transpose(0, 1), base_k[0].transpose(0, 1), "rotary k")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rotary_interleaved_partial_matches_complex_rotation(dtype, poisoned_outputs):
    """GPT-J pairs (2i, 2i+1) rotate as complex numbers by e^{i * pos * freq}; only the first rot_dim features."""
    batch, seq, h, d, rot_dim = 2, 9, 3, 64, 32
    x = torch.randn(batch, seq, h, d, dtype=dtype)
    positions = torch.arange(seq).repeat(batch, 1) + torch.tensor([[0], [7]])
    cache = reference.rotary_cos_sin_cache(rot_dim, 64)
    out, _ = nk.rotary_embedding(x, x[..., :1, :], positions, cache, interleaved=True, backend="torch")
    inv_freq = 1.0 / 10000 ** (torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim)
    phase = torch.polar(torch.ones(1, dtype=torch.float64), positions[..., None].double() * inv_freq)[:, :, None]
    pairs = torch.view_as_complex(x[..., :rot_dim].double().reshape(batch, seq, h, rot_dim // 2, 2).contiguous())
    truth = torch.cat((torch.view_as_real(pairs * phase).flatten(-2), x[..., rot_dim:].double()), -1)
    baseline_pairs = torch.view_as_complex(x[..., :rot_dim].float().reshape(batch, seq, h, rot_dim // 2, 2).contiguous())
    baseline = torch.cat((torch.view_as_real(baseline_pairs * phase.cfloat()).flatten(-2).to(dtype), x[..., rot_dim:]), -1)
    assert_close_by_rule(out, truth, baseline, "interleaved rotary")
    assert torch.equal(out[..., rot_dim:], x[..., rot_dim:])


# ---- image-token projection ----------------------------------------------------------------------------

def projector_modules(vision_dim, hidden, text_dim, bias, dtype):
    return torch.nn.Sequential(torch.nn.Linear(vision_dim, hidden, bias=bias), torch.nn.GELU(),
                               torch.nn.Linear(hidden, text_dim, bias=bias)).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("images,bias", [(1, True), (3, False), (5, True)])
def test_projection_matches_linear_gelu_masked_scatter(dtype, images, bias):
    tokens_per_image, vision_dim, hidden, text_dim, batch, seq = 7, 33, 65, 769, 2, 60
    mlp = projector_modules(vision_dim, hidden, text_dim, bias, dtype)
    features = torch.randn(images, tokens_per_image, vision_dim, dtype=dtype)
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    mask.view(-1)[torch.randperm(batch * seq)[:images * tokens_per_image]] = True
    embeds = torch.full((batch, seq, text_dim), math.nan, dtype=dtype)
    embeds[~mask] = torch.randn(int((~mask).sum()), text_dim, dtype=dtype)
    text_rows = embeds[~mask].clone()
    w1, b1, w2, b2 = (p.detach() for p in (mlp[0].weight, mlp[0].bias, mlp[2].weight, mlp[2].bias)) if bias else \
        (mlp[0].weight.detach(), None, mlp[2].weight.detach(), None)
    with torch.no_grad():
        result = nk.project_image_tokens(features, w1, b1, w2, b2, embeds, mask, backend="torch")
        truth = embeds.double().masked_scatter(mask[..., None], mlp.double()(features.double()))
        baseline = embeds.masked_scatter(mask[..., None], mlp.to(dtype)(features))
    assert result is embeds, "inference calls write in place"
    assert torch.equal(embeds[~mask], text_rows), "text rows must not change"
    assert_close_by_rule(embeds, truth, baseline, "projection")
