"""Problem makers shared by the per-op kernel tests: random inputs of an op on a device, and the check of a
backend's result against the reference (float64 truth by the tolerance rule of tests/helpers.assert_close_by_rule;
equality for copies).

Triton runs on the GPU where there is one, else under its interpreter (float16/float32: numpy has no bfloat16);
cuda runs on a GPU only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import neva_kernels as nk
from neva_kernels import reference
from tests.helpers import assert_close_by_rule

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETER_DTYPES = [torch.float32, torch.float16]
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def device_for(backend: str) -> str:
    return "cuda" if backend == "cuda" else DEVICE


def _double(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.double()


# ---- rms_norm ------------------------------------------------------------------------------------------

def rms_norm_inputs(shape, dtype, device=DEVICE):
    """x, weight (around 1), residual."""
    x = torch.randn(shape, dtype=dtype, device=device) * 3
    weight = torch.rand(shape[-1], dtype=dtype, device=device) + 0.5
    residual = torch.randn(shape, dtype=dtype, device=device)
    return x, weight, residual


def check_rms_norm(x, weight, residual, eps=1e-5, backend="triton"):
    """`backend`'s rms_norm (fused when residual is given) against the float64 reference, by the rule."""
    out = nk.rms_norm(x, weight, eps, residual=residual, backend=backend)
    baseline = reference.rms_norm(x, weight, eps, residual)
    if residual is None:
        assert_close_by_rule(out, reference.rms_norm(x.double(), weight.double(), eps), baseline, "rms_norm")
        return
    (y, h), (baseline_y, baseline_h) = out, baseline
    # The updated residual is x + residual rounded once to the input dtype: exactly PyTorch's own add.
    assert torch.equal(h, baseline_h), "fused rms_norm: the updated residual differs from x + residual"
    truth_y = reference.rms_norm(h.double(), weight.double(), eps)  # the rounded sum, normalized exactly
    assert_close_by_rule(y, truth_y, baseline_y, "fused rms_norm")


# ---- layer_norm ----------------------------------------------------------------------------------------

LAYER_NORM_VARIANTS = [  # (with bias, zero-centred weight)
    (True, False), (False, True), (True, True)]


def layer_norm_inputs(shape, dtype, device=DEVICE):
    """x with an offset (the mean matters), a weight around 1, bias, residual."""
    x = torch.randn(shape, dtype=dtype, device=device) * 3 + 1.5
    weight = torch.rand(shape[-1], dtype=dtype, device=device) + 0.5
    bias = torch.randn(shape[-1], dtype=dtype, device=device)
    residual = torch.randn(shape, dtype=dtype, device=device)
    return x, weight, bias, residual


def check_layer_norm(x, weight, bias, residual, zero_centered_weight, eps=1e-5, backend="triton"):
    """`backend`'s layer_norm (fused when residual is given) against the float64 reference, by the rule; a
    zero-centred weight is the given one minus 1 (so both variants scale by about the same)."""
    if zero_centered_weight:
        weight = weight - 1
    out = nk.layer_norm(x, weight, bias, eps, residual, zero_centered_weight, backend=backend)
    baseline = reference.layer_norm(x, weight, bias, eps, residual, zero_centered_weight)
    if residual is None:
        truth = reference.layer_norm(x.double(), weight.double(), _double(bias), eps, None, zero_centered_weight)
        assert_close_by_rule(out, truth, baseline, "layer_norm")
        return
    (y, h), (baseline_y, baseline_h) = out, baseline
    assert torch.equal(h, baseline_h), "fused layer_norm: the updated residual differs from x + residual"
    truth_y = reference.layer_norm(h.double(), weight.double(), _double(bias), eps, None, zero_centered_weight)
    assert_close_by_rule(y, truth_y, baseline_y, "fused layer_norm")


# ---- append_kv_cache -----------------------------------------------------------------------------------

def kv_caches(num_blocks, block_size, kv_heads, head_dim, dtype, device=DEVICE):
    """(k_cache, v_cache) [num_blocks, block_size, kv_heads, head_dim], NaN: a slot nobody writes stays NaN."""
    shape = (num_blocks, block_size, kv_heads, head_dim)
    return tuple(torch.full(shape, math.nan, dtype=dtype, device=device) for _ in range(2))


def random_slots(num_tokens, num_slots, slot_dtype, device=DEVICE):
    """Distinct slots for num_tokens tokens, every third one -1 (a padding token)."""
    slots = torch.randperm(num_slots, device=device)[:num_tokens]
    slots[::3] = -1
    return slots.to(slot_dtype)


def check_append_kv_cache(k, v, k_cache, v_cache, slots, backend):
    """`backend`'s append writes exactly the reference's slots (a copy: equal, not close) and leaves the others."""
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    reference.append_kv_cache(k, v, expected_k, expected_v, slots)
    nk.append_kv_cache(k, v, k_cache, v_cache, slots, backend=backend)
    for got, want in ((k_cache, expected_k), (v_cache, expected_v)):
        assert torch.equal(got.isnan(), want.isnan()), "written slots differ"
        assert torch.equal(got.nan_to_num(), want.nan_to_num()), "written values differ"


# ---- paged_decode_attention ----------------------------------------------------------------------------

# One batch mixes context lengths 1, 17, 1000 (a multiple of neither block size), 0 and 45: partial tiles, partial
# pages and an empty sequence in every call.
DECODE_LENGTHS = [1, 17, 1000, 0, 45]


def decode_problem(lengths, hq, hkv, d, block_size, dtype, device=DEVICE, spare_blocks=3):
    """(q, k_cache, v_cache, block_tables, seq_lens): caches with more blocks than used, and tables whose entries
    past each length point anywhere."""
    width = max(-(-n // block_size) for n in lengths) + 1
    num_blocks = width * len(lengths) + spare_blocks
    k_cache = torch.randn(num_blocks, block_size, hkv, d, dtype=dtype, device=device)
    v_cache = torch.randn(num_blocks, block_size, hkv, d, dtype=dtype, device=device)
    tables = torch.randperm(num_blocks, device=device)[:width * len(lengths)].reshape(len(lengths), width)
    seq_lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    q = torch.randn(len(lengths), hq, d, dtype=dtype, device=device)
    return q, k_cache, v_cache, tables.to(torch.int32), seq_lens


def _sdpa_over_gathered_pages(q, k_cache, v_cache, table_row, length, scale):
    """Sequence b's attention by PyTorch in q's dtype: gather its tokens, repeat KV heads, SDPA (math)."""
    block_size = k_cache.shape[1]
    tokens = torch.arange(length, device=q.device)
    pages, offsets = table_row.long()[tokens // block_size], tokens % block_size
    k, v = k_cache[pages, offsets], v_cache[pages, offsets]  # [length, Hkv, D]
    group = q.shape[0] // k.shape[1]
    k, v = (t.repeat_interleave(group, dim=1).transpose(0, 1) for t in (k, v))  # [Hq, length, D]
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        return F.scaled_dot_product_attention(q[:, None], k, v, scale=scale)[:, 0]


def check_decode(out, q, k_cache, v_cache, tables, seq_lens, scale):
    """out against the float64 reference; the baseline is PyTorch's SDPA in the input dtype over each sequence's
    gathered pages. A sequence of length 0 gives zeros."""
    truth = reference.paged_decode_attention(q.double(), k_cache.double(), v_cache.double(), tables, seq_lens, scale)
    for b, length in enumerate(seq_lens.tolist()):
        if length == 0:
            assert torch.equal(out[b], torch.zeros_like(out[b])), f"sequence {b} of length 0 is not zeros"
            continue
        baseline = _sdpa_over_gathered_pages(q[b], k_cache, v_cache, tables[b], length, scale)
        assert_close_by_rule(out[b], truth[b], baseline, f"sequence {b} (length {length})")


# ---- project_image_tokens ------------------------------------------------------------------------------

TENSOR_CORE_DTYPES = [torch.bfloat16, torch.float16]


def projector_inputs(images, tokens, vision, hidden, text, seq, dtype, bias=True, device=DEVICE):
    """(features, w1, b1, w2, b2, embeds, mask): image rows placed at random positions of a [batch, seq] prompt
    batch with room for all of them."""
    batch = -(-images * tokens // seq) + 1
    rand = (lambda *shape, scale=1.0: torch.randn(*shape, dtype=dtype, device=device) * scale)
    features = rand(images, tokens, vision)
    w1, w2 = rand(hidden, vision, scale=vision ** -0.5), rand(text, hidden, scale=hidden ** -0.5)
    b1, b2 = (rand(hidden), rand(text)) if bias else (None, None)
    embeds = rand(batch, seq, text)
    mask = torch.zeros(batch * seq, dtype=torch.bool, device=device)
    mask[torch.randperm(batch * seq, device=device)[:images * tokens]] = True
    return features, w1, b1, w2, b2, embeds, mask.reshape(batch, seq)


def _eager_projection(features, w1, b1, w2, b2, embeds, mask):
    """As HF transformers' LLaVA runs it: linear, GELU, linear, masked_scatter into the embeddings."""
    rows = F.linear(F.gelu(F.linear(features.reshape(-1, features.shape[-1]), w1, b1)), w2, b2)
    return embeds.masked_scatter(mask[..., None], rows)


def check_projection(features, w1, b1, w2, b2, embeds, mask, backend):
    """`backend`'s public op on a copy of embeds: written in place, and checked by check_projected."""
    out = embeds.clone()
    returned = nk.project_image_tokens(features, w1, b1, w2, b2, out, mask, backend=backend)
    assert returned is out
    check_projected(out, features, w1, b1, w2, b2, embeds, mask)


def check_projected(out, features, w1, b1, w2, b2, embeds, mask):
    """out: embeds with the projection written into its image-token rows, by whichever kernel. Other rows come
    back bit for bit; the image rows against the float64 reference, the baseline PyTorch eager in the input dtype."""
    truth = _double(embeds).clone()
    reference.project_image_tokens(*map(_double, (features, w1, b1, w2, b2)), truth, mask)
    assert torch.equal(out[~mask], embeds[~mask]), "a row that is not an image token was changed"
    assert_close_by_rule(out, truth, _eager_projection(features, w1, b1, w2, b2, embeds, mask), "projected rows")


# ---- flash_attention -----------------------------------------------------------------------------------

# (batch, seqlen_q, seqlen_k, q heads, kv heads, head dim): GQA 1 and 4, Sq < Sk, Sq > Sk (causal rows that
# see no key), tiles that do not divide the lengths.
FLASH_PADDED_SHAPES = [(2, 37, 53, 2, 2, 64), (1, 70, 40, 4, 1, 80), (2, 65, 65, 4, 1, 128)]
# Sequence lengths of packed batches (query, key): one token, odd, several tiles, empty.
FLASH_VARLEN_LENGTHS = [((1, 17, 300, 0), (1, 300, 17, 0))]


def flash_padded_inputs(batch, sq, sk, hq, hkv, d, dtype, device=DEVICE):
    q = torch.randn(batch, sq, hq, d, dtype=dtype, device=device)
    k, v = (torch.randn(batch, sk, hkv, d, dtype=dtype, device=device) for _ in range(2))
    return q, k, v


def flash_packed_inputs(lengths_q, lengths_k, hq, hkv, d, dtype, device=DEVICE):
    """(q, k, v, cu_seqlens_q, cu_seqlens_k) of a packed batch of sequences of the given lengths."""
    cu = (lambda lengths: torch.tensor([0, *lengths], device=device).cumsum(0).to(torch.int32))
    q = torch.randn(sum(lengths_q), hq, d, dtype=dtype, device=device)
    k, v = (torch.randn(sum(lengths_k), hkv, d, dtype=dtype, device=device) for _ in range(2))
    return q, k, v, cu(lengths_q), cu(lengths_k)


def _low_precision_attention(q, k, v, causal, scale):
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


def _per_sequence(fn, q, k, v, cu_q, cu_k, *args):
    """Apply a padded-layout attention `fn` to each sequence of a packed batch; outputs concatenated."""
    outs = []
    bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
    for (q0, q1), (k0, k1) in zip(zip(bounds_q, bounds_q[1:]), zip(bounds_k, bounds_k[1:])):
        outs.append(fn(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], *args)[0])
    return torch.cat(outs)


def check_flash_outputs(out, lse, q, k, v, causal, cu_q, cu_k, scale):
    """out and lse of one forward call against the float64 reference, by the tolerance rule; the baseline is SDPA's
    math backend in the input dtype (per sequence for packed batches)."""
    truth_out, truth_lse = reference.flash_attention(q.double(), k.double(), v.double(), causal, scale, cu_q, cu_k)
    if cu_q is None:
        baseline = _low_precision_attention(q, k, v, causal, scale)
    else:
        baseline = _per_sequence(_low_precision_attention, q, k, v, cu_q, cu_k, causal, scale)
    assert_close_by_rule(out, truth_out, baseline, "out")
    # lse: -inf exactly where the reference has it (rows that see no key), else the rule against an fp32 lse.
    assert lse.dtype == torch.float32 and torch.equal(lse.isinf(), truth_lse.isinf())
    finite = ~truth_lse.isinf()
    _, baseline_lse = reference.flash_attention(q, k, v, causal, scale, cu_q, cu_k)
    assert_close_by_rule(lse[finite], truth_lse[finite], baseline_lse[finite], "lse")


def check_flash_forward(q, k, v, causal, cu_q=None, cu_k=None, scale=None, backend="triton"):
    """`backend`'s public op, out and lse checked against the float64 reference."""
    scale = scale or 1 / math.sqrt(q.shape[-1])
    out, lse = nk.flash_attention(q, k, v, causal, scale, cu_q, cu_k, return_lse=True, backend=backend)
    check_flash_outputs(out, lse, q, k, v, causal, cu_q, cu_k, scale)
