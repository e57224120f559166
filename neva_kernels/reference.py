"""Pure-PyTorch definitions of every op: the ground truth of the tests and the ``torch`` backend.

Written for clarity, not speed. Arithmetic runs in float32 (float64 for float64 inputs) and the result is cast
once to the input dtype at the end. Inputs are assumed valid: the public functions in ``neva_kernels.ops``
check them first. Each function has the signature that every backend implements for that op.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ---- rms_norm and layer_norm ---------------------------------------------------------------------------

def residual_stream(x: Tensor, residual: Tensor | None) -> Tensor:
    """h = x, or x + residual rounded once to x's dtype: the stream an unfused model carries."""
    if residual is None:
        return x
    cdt = compute_dtype(x)
    if x.dtype == cdt:  # already the compute dtype: the same sum without three no-op casts (a decode-path cost)
        return x + residual
    return (x.to(cdt) + residual.to(cdt)).to(x.dtype)


def rms_norm(x: Tensor, weight: Tensor, eps: float, residual: Tensor | None = None):
    """y = h / sqrt(mean(h^2) + eps) * weight with h = x, or h = x + residual.

    With a residual, returns (y, h) where h is rounded to x's dtype before it is normalized, exactly as an
    unfused ``residual = x + residual; y = norm(residual)`` computes it.
    """
    cdt = compute_dtype(x)
    h = residual_stream(x, residual)
    hf = h.to(cdt)
    y = hf * torch.rsqrt(hf.pow(2).mean(dim=-1, keepdim=True) + eps) * weight.to(cdt)
    y = y.to(x.dtype).contiguous()
    return y if residual is None else (y, h.contiguous())


def rms_norm_backward(grad_y: Tensor, h: Tensor, weight: Tensor, eps: float):
    """Gradients of y = rms_norm(h) * weight: returns (grad_h, grad_weight).

    With r = 1/sqrt(mean(h^2) + eps) and n = h * r: grad_weight = sum over rows of grad_y * n, and
    grad_h = r * (g - n * mean(g * n)) where g = grad_y * weight. (For the fused residual form, h is the
    updated residual and grad_x = grad_residual = grad_h + the gradient arriving at the residual output.)
    """
    cdt = compute_dtype(h)
    hf, g = h.to(cdt), grad_y.to(cdt) * weight.to(cdt)
    r = torch.rsqrt(hf.pow(2).mean(dim=-1, keepdim=True) + eps)
    n = hf * r
    grad_h = r * (g - n * (g * n).mean(dim=-1, keepdim=True))
    grad_weight = (grad_y.to(cdt) * n).reshape(-1, h.shape[-1]).sum(dim=0)
    return grad_h.to(h.dtype).contiguous(), grad_weight.to(weight.dtype)


def _norm_scale(weight: Tensor, zero_centered_weight: bool, cdt: torch.dtype) -> Tensor:
    """The factor applied to the normalized row: weight, or 1 + weight for a zero-centred weight (LayerNorm1p)."""
    return weight.to(cdt) + 1.0 if zero_centered_weight else weight.to(cdt)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float, residual: Tensor | None = None,
               zero_centered_weight: bool = False):
    """y = (h - mean(h)) / sqrt(var(h) + eps) * w + bias, w = weight or 1 + weight, h = x or x + residual.

    var is the biased variance (mean of squared deviations), as torch.nn.LayerNorm computes it. With a residual,
    returns (y, h) as rms_norm does.
    """
    cdt = compute_dtype(x)
    h = residual_stream(x, residual)
    centered = h.to(cdt) - h.to(cdt).mean(dim=-1, keepdim=True)
    y = centered * torch.rsqrt(centered.pow(2).mean(dim=-1, keepdim=True) + eps)
    y = y * _norm_scale(weight, zero_centered_weight, cdt)
    if bias is not None:
        y = y + bias.to(cdt)
    y = y.to(x.dtype).contiguous()
    return y if residual is None else (y, h.contiguous())


def layer_norm_backward(grad_y: Tensor, h: Tensor, weight: Tensor, eps: float, zero_centered_weight: bool = False):
    """Gradients of y = layer_norm(h) * w + bias: returns (grad_h, grad_weight, grad_bias).

    With r = 1/sqrt(var(h) + eps), n = (h - mean(h)) * r and g = grad_y * w: grad_h = r * (g - mean(g) -
    n * mean(g * n)); grad_weight = sum over rows of grad_y * n (also for 1 + weight); grad_bias = sum of grad_y.
    """
    cdt = compute_dtype(h)
    hf, grad_yf = h.to(cdt), grad_y.to(cdt)
    centered = hf - hf.mean(dim=-1, keepdim=True)
    r = torch.rsqrt(centered.pow(2).mean(dim=-1, keepdim=True) + eps)
    n = centered * r
    g = grad_yf * _norm_scale(weight, zero_centered_weight, cdt)
    grad_h = r * (g - g.mean(dim=-1, keepdim=True) - n * (g * n).mean(dim=-1, keepdim=True))
    rows = (lambda t: t.reshape(-1, h.shape[-1]))
    grad_weight, grad_bias = rows(grad_yf * n).sum(dim=0), rows(grad_yf).sum(dim=0)
    return grad_h.to(h.dtype).contiguous(), grad_weight.to(weight.dtype), grad_bias.to(weight.dtype)


# ---- attention -----------------------------------------------------------------------------------------

def _scores(q: Tensor, k: Tensor, causal: bool, scale: float, key_valid: Tensor | None = None):
    """Scaled, masked scores [B, Hq, Sq, Sk] of q [B, Sq, Hq, D] against k [B, Sk, Hkv, D] (k repeated per group).

    The causal mask is aligned bottom-right: query i sees keys j <= i + Sk - Sq. `key_valid` [B, Sk] masks
    keys out. Returns (scores, the float copy of k repeated to Hq heads).
    """
    cdt = compute_dtype(q)
    kf = k.to(cdt).repeat_interleave(q.shape[2] // k.shape[2], dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.to(cdt), kf) * scale
    sq, sk = q.shape[1], k.shape[1]
    visible = torch.ones(sq, sk, dtype=torch.bool, device=q.device)
    if causal:
        visible = torch.tril(visible, diagonal=sk - sq)
    visible = visible[None, None]
    if key_valid is not None:
        visible = visible & key_valid[:, None, None, :]
    return scores.masked_fill(~visible, -math.inf), kf


def _probabilities(scores: Tensor, lse: Tensor) -> Tensor:
    # exp(-inf - 0) = 0 on rows that see no key; subtracting their -inf lse would make NaN.
    return torch.exp(scores - torch.where(torch.isinf(lse), 0.0, lse)[..., None])


def _attend(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, key_valid: Tensor | None = None):
    """Attention of q [B, Sq, Hq, D] over k, v [B, Sk, Hkv, D] -> (out [B, Sq, Hq, D], lse [B, Hq, Sq]).

    Rows that see no key give out = 0 and lse = -inf.
    """
    scores, _ = _scores(q, k, causal, scale, key_valid)
    lse = torch.logsumexp(scores, dim=-1)
    vf = v.to(scores.dtype).repeat_interleave(q.shape[2] // k.shape[2], dim=2)
    return torch.einsum("bhqk,bkhd->bqhd", _probabilities(scores, lse), vf), lse


def _attend_backward(grad_out: Tensor, grad_lse: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                     causal: bool, scale: float):
    """FlashAttention-2's backward in plain tensor algebra, from the saved out and lse only ([B, S, H, D] layout).

    P = exp(S - lse); dV = P^T dO; dP = dO V^T; dS = P (dP - rowsum(dO * O) + dlse); dQ = dS K scale;
    dK = dS^T Q scale; K/V gradients of a GQA group are summed onto their shared head.
    """
    cdt = compute_dtype(q)
    group = q.shape[2] // k.shape[2]
    scores, kf = _scores(q, k, causal, scale)
    probs = _probabilities(scores, lse.to(cdt))
    grad_out_f = grad_out.to(cdt)
    vf = v.to(cdt).repeat_interleave(group, dim=2)
    delta = (grad_out_f * out.to(cdt)).sum(dim=-1).transpose(1, 2)  # [B, Hq, Sq]
    grad_probs = torch.einsum("bqhd,bkhd->bhqk", grad_out_f, vf)
    grad_scores = probs * (grad_probs - delta[..., None] + grad_lse.to(cdt)[..., None])
    grad_q = torch.einsum("bhqk,bkhd->bqhd", grad_scores, kf) * scale
    grad_k = torch.einsum("bhqk,bqhd->bkhd", grad_scores, q.to(cdt)) * scale
    grad_v = torch.einsum("bhqk,bqhd->bkhd", probs, grad_out_f)
    fold = (lambda g: g.unflatten(2, (k.shape[2], group)).sum(dim=3))
    return grad_q, fold(grad_k), fold(grad_v)


def lse_shape(q: Tensor, packed: bool) -> tuple[int, ...]:
    """The shape of flash_attention's log-sum-exp for `q`: [B, Hq, Sq] padded, [Hq, total_q] packed."""
    return (q.shape[1], q.shape[0]) if packed else (q.shape[0], q.shape[2], q.shape[1])


def flash_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool, softmax_scale: float,
                    cu_seqlens_q: Tensor | None = None, cu_seqlens_k: Tensor | None = None,
                    max_seqlen_q: int | None = None, max_seqlen_k: int | None = None):
    """softmax(q k^T * scale) v per sequence -> (out like q, lse in float32, float64 for float64 inputs).

    Padded layout: q [B, Sq, Hq, D], k/v [B, Sk, Hkv, D], lse [B, Hq, Sq].
    Packed layout (cu_seqlens given): q [total_q, Hq, D], k/v [total_k, Hkv, D], lse [Hq, total_q].
    max_seqlen_* only size kernel launches; the reference does not need them.
    """
    if cu_seqlens_q is None:
        out, lse = _attend(q, k, v, causal, softmax_scale)
        return out.to(q.dtype).contiguous(), lse.contiguous()
    out = torch.zeros(q.shape, dtype=compute_dtype(q), device=q.device)
    lse = torch.full(lse_shape(q, packed=True), -math.inf, dtype=compute_dtype(q), device=q.device)
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for i in range(len(bounds_q) - 1):
        (q0, q1), (k0, k1) = bounds_q[i:i + 2], bounds_k[i:i + 2]
        o, l = _attend(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], causal, softmax_scale)
        out[q0:q1], lse[:, q0:q1] = o[0], l[0]
    return out.to(q.dtype), lse


def flash_attention_backward(grad_out: Tensor, grad_lse: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                             lse: Tensor, causal: bool, softmax_scale: float, cu_seqlens_q: Tensor | None = None,
                             cu_seqlens_k: Tensor | None = None, max_seqlen_q: int | None = None,
                             max_seqlen_k: int | None = None):
    """Gradients (grad_q, grad_k, grad_v) of flash_attention, in the layouts of q, k, v."""
    args = (causal, softmax_scale)
    if cu_seqlens_q is None:
        grads = _attend_backward(grad_out, grad_lse, q, k, v, out, lse, *args)
        return tuple(g.to(t.dtype).contiguous() for g, t in zip(grads, (q, k, v)))
    grads = [torch.zeros(t.shape, dtype=compute_dtype(q), device=q.device) for t in (q, k, v)]
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for i in range(len(bounds_q) - 1):
        qs, ks = slice(*bounds_q[i:i + 2]), slice(*bounds_k[i:i + 2])
        one = _attend_backward(grad_out[None, qs], grad_lse[None, :, qs], q[None, qs], k[None, ks], v[None, ks],
                               out[None, qs], lse[None, :, qs], *args)
        grads[0][qs], grads[1][ks], grads[2][ks] = (g[0] for g in one)
    return tuple(g.to(t.dtype) for g, t in zip(grads, (q, k, v)))


def paged_decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, seq_lens: Tensor,
                           softmax_scale: float) -> Tensor:
    """One query token per sequence over its pages: q [B, Hq, D] -> out [B, Hq, D].

    Sequence b's token t lives in block block_tables[b, t // block_size] at offset t % block_size. Entries of
    block_tables past a sequence's length are never read (they may hold anything). seq_len 0 gives zeros.
    """
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    batch, max_blocks = block_tables.shape
    used = torch.arange(max_blocks, device=q.device)[None] * block_size < seq_lens[:, None]
    pages = torch.where(used, block_tables, 0).long()
    keys = k_cache[pages].reshape(batch, max_blocks * block_size, num_kv_heads, head_dim)
    values = v_cache[pages].reshape(batch, max_blocks * block_size, num_kv_heads, head_dim)
    key_valid = torch.arange(max_blocks * block_size, device=q.device)[None] < seq_lens[:, None]
    out, _ = _attend(q[:, None], keys, values, False, softmax_scale, key_valid)
    return out[:, 0].to(q.dtype).contiguous()


def append_kv_cache(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> None:
    """Write token i's k[i], v[i] [Hkv, D] to slot slot_mapping[i] = block * block_size + offset, in place.

    Slot -1 marks a padding token: it is skipped.
    """
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k_cache.view(-1, *k_cache.shape[2:])[slots] = k[keep].to(k_cache.dtype)
    v_cache.view(-1, *v_cache.shape[2:])[slots] = v[keep].to(v_cache.dtype)


# ---- rotary embedding ----------------------------------------------------------------------------------

def _rotate(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
    """Rotate the first rot_dim features of every head of x [..., H, D]; cos/sin are [..., 1, rot_dim / 2]."""
    rot_dim = 2 * cos.shape[-1]
    xr = x[..., :rot_dim].to(cos.dtype)
    if interleaved:  # GPT-J style: pairs (x0, x1), (x2, x3), ...
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        rotated = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    else:  # GPT-NeoX / LLaMA style: pairs (x_i, x_{i + rot_dim/2})
        x1, x2 = xr[..., :rot_dim // 2], xr[..., rot_dim // 2:]
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return torch.cat((rotated.to(x.dtype), x[..., rot_dim:]), dim=-1).contiguous()


def rotary_embedding(q: Tensor, k: Tensor, positions: Tensor, cos_sin_cache: Tensor, interleaved: bool = False):
    """Rotary position embedding of q [..., Hq, D] and k [..., Hkv, D] at positions [...] -> (q', k').

    cos_sin_cache [max_position, rot_dim] holds cos(pos * inv_freq) in its first half and sin in its second;
    the first rot_dim features of each head are rotated, the rest pass through.
    """
    cdt = compute_dtype(q)
    cos, sin = cos_sin_cache[positions.long()].to(cdt).unsqueeze(-2).chunk(2, dim=-1)
    return _rotate(q, cos, sin, interleaved), _rotate(k, cos, sin, interleaved)


def rotary_cos_sin_cache(rot_dim: int, max_position: int, base: float = 10000.0,
                         dtype: torch.dtype = torch.float32, device=None, scaling_factor: float = 1.0) -> Tensor:
    """The [max_position, rot_dim] cache of cos | sin that rotary_embedding reads (LLaMA's frequencies, divided
    by the linear RoPE scaling factor), computed in float64 and cast once."""
    inv_freq = 1.0 / base ** (torch.arange(0, rot_dim, 2, dtype=torch.float64, device=device) / rot_dim)
    angles = torch.arange(max_position, dtype=torch.float64, device=device)[:, None] * (inv_freq / scaling_factor)[None]
    return torch.cat((angles.cos(), angles.sin()), dim=-1).to(dtype)


# ---- image-token projection ----------------------------------------------------------------------------

def image_projection(image_features: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None) -> Tensor:
    """LLaVA's mlp2x_gelu projector, Linear -> GELU (erf) -> Linear, as rows [N, D_text] in float32/64."""
    cdt = compute_dtype(image_features)
    as_cdt = (lambda t: None if t is None else t.to(cdt))
    hidden = F.gelu(F.linear(image_features.reshape(-1, image_features.shape[-1]).to(cdt), as_cdt(w1), as_cdt(b1)))
    return F.linear(hidden, as_cdt(w2), as_cdt(b2))


def image_token_rows(image_token_mask: Tensor, count: int) -> Tensor:
    """Indices of the `count` flattened embedding rows that receive image features, in order.

    nonzero_static keeps the shape known without reading the mask, so autograd and torch.compile can trace it.
    """
    return torch.nonzero_static(image_token_mask.reshape(-1), size=count).squeeze(1)


def project_image_tokens(image_features: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
                         inputs_embeds: Tensor, image_token_mask: Tensor) -> None:
    """Write the projected features, in order, into the rows of inputs_embeds [..., D] where the mask is set."""
    rows = image_projection(image_features, w1, b1, w2, b2).to(inputs_embeds.dtype)
    inputs_embeds.view(-1, inputs_embeds.shape[-1])[image_token_rows(image_token_mask, rows.shape[0])] = rows


def project_image_tokens_functional(image_features: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor,
                                    b2: Tensor | None, inputs_embeds: Tensor, image_token_mask: Tensor) -> Tensor:
    """As project_image_tokens, into a copy of inputs_embeds that is returned (differentiable)."""
    out = inputs_embeds.clone()
    project_image_tokens(image_features, w1, b1, w2, b2, out, image_token_mask)
    return out
