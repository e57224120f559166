"""flash_attention backward in Triton, FlashAttention-2's algorithm from the saved out and lse only.

Three kernels, no atomics (deterministic, and safe to autotune by re-running):
  1. preprocess: delta = rowsum(dO * O) - grad_lse per query row (grad_lse enters dS exactly as -delta does:
     dS = P (dP - rowsum(dO * O) + grad_lse));
  2. dK/dV: a program owns one key tile of one key/value head and walks the query tiles that see it, for every
     query head of the GQA group, so the group's sum accumulates in registers;
  3. dQ: a program owns one query tile and walks its key tiles (the forward's ranges).
P is recomputed from the scores and lse; scores stay in log2 units as in the forward.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .. import backends
from ._common import LOG2E, LOG2E_IN_KERNEL, unit_stride
from .compute_bound_configs import attention_dkdv_configs, attention_dq_configs
from .flash_attention import (Layout, key_ranges, load_rows, program_sequences, sequence_bounds, store_rows, supports,
                              visible)

PREPROCESS_ROWS = 64


@triton.jit
def _preprocess_kernel(out_ptr, grad_out_ptr, grad_lse_ptr, delta_ptr, cu_q_ptr,
                       stride_ob, stride_os, stride_oh, stride_gb, stride_gs, stride_gh,
                       stride_glb, stride_glh, stride_gls, stride_db, stride_dh, stride_ds,
                       num_heads, seqlen_q, VARLEN: tl.constexpr,
                       HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    bh = tl.program_id(0)
    start_m = tl.program_id(1) * BLOCK_M
    b = bh // num_heads
    h = bh % num_heads
    q_start, len_q = sequence_bounds(b, cu_q_ptr, seqlen_q, VARLEN)
    if start_m >= len_q:
        return
    b64 = b.to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    rows = q_start + offs_m
    o = load_rows(out_ptr + b64 * stride_ob + h * stride_oh + rows[:, None] * stride_os + offs_d[None, :],
                  offs_m, len_q, offs_d, HEAD_DIM, BLOCK_D, True)
    do = load_rows(grad_out_ptr + b64 * stride_gb + h * stride_gh + rows[:, None] * stride_gs + offs_d[None, :],
                   offs_m, len_q, offs_d, HEAD_DIM, BLOCK_D, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    delta -= tl.load(grad_lse_ptr + b64 * stride_glb + h * stride_glh + rows * stride_gls, mask=offs_m < len_q)
    tl.store(delta_ptr + b64 * stride_db + h * stride_dh + rows * stride_ds, delta, mask=offs_m < len_q)


@triton.jit
def _query_ranges(start_n, len_q, len_k, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """For the key tile at start_n: query tiles [lo, full) to be masked, [full, end) that see the whole tile."""
    end = tl.cdiv(len_q, BLOCK_M) * BLOCK_M
    if CAUSAL:
        shift = len_k - len_q  # query i sees keys j <= i + shift
        lo = tl.maximum(start_n - shift, 0) // BLOCK_M * BLOCK_M
        full = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - shift, 0), BLOCK_M) * BLOCK_M
        full = tl.minimum(tl.maximum(full, lo), end)
    else:
        lo = 0
        full = 0
    return lo, full, end


@triton.jit
def _row_stats(lse_base, delta_base, stride_ls, stride_ds, offs_m, len_q):
    """lse in log2 units (rows past the sequence: +inf, so P = 0; rows that saw no key: 0, their P is masked)."""
    lse = tl.load(lse_base + offs_m * stride_ls, mask=offs_m < len_q, other=float("inf"))
    lse = tl.where(lse == -float("inf"), 0.0, lse) * LOG2E_IN_KERNEL
    delta = tl.load(delta_base + offs_m * stride_ds, mask=offs_m < len_q, other=0.0)
    return lse, delta


@triton.jit
def _dkdv_tiles(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qs, stride_gs, stride_ls, stride_ds,
                offs_n, offs_d, lo, hi, len_q, len_k, qk_scale, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr):
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = load_rows(q_base + offs_m[:, None] * stride_qs + offs_d[None, :], offs_m, len_q, offs_d, HEAD_DIM,
                      BLOCK_D, True)
        do = load_rows(do_base + offs_m[:, None] * stride_gs + offs_d[None, :], offs_m, len_q, offs_d, HEAD_DIM,
                       BLOCK_D, True)
        lse, delta = _row_stats(lse_base, delta_base, stride_ls, stride_ds, offs_m, len_q)
        # Transposed tiles [keys, queries]: dK and dV are sums over queries.
        p_t = tl.math.exp2(tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale - lse[None, :])
        if MASKED:
            p_t = tl.where(tl.trans(visible(offs_m, offs_n, len_k, len_k - len_q, CAUSAL)), p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _dkdv_kernel(q_ptr, k_ptr, v_ptr, grad_out_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, cu_q_ptr, cu_k_ptr,
                 stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                 stride_gb, stride_gs, stride_gh, stride_lb, stride_lh, stride_ls,
                 stride_dkb, stride_dks, stride_dkh, stride_dvb, stride_dvs, stride_dvh,
                 num_kv_heads, group, seqlen_q, seqlen_k, qk_scale, softmax_scale, seq_bucket,
                 CAUSAL: tl.constexpr, VARLEN: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    b, kv_h, q_start, len_q, k_start, len_k = program_sequences(cu_q_ptr, cu_k_ptr, num_kv_heads, seqlen_q,
                                                                seqlen_k, VARLEN)
    start_n = tl.program_id(1) * BLOCK_N  # under a causal mask the first key tiles are the heaviest: first
    if start_n >= len_k:
        return
    b64 = b.to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = load_rows(k_ptr + b64 * stride_kb + kv_h * stride_kh + (k_start + offs_n[:, None]) * stride_ks
                  + offs_d[None, :], offs_n, len_k, offs_d, HEAD_DIM, BLOCK_D, True)
    v = load_rows(v_ptr + b64 * stride_vb + kv_h * stride_vh + (k_start + offs_n[:, None]) * stride_vs
                  + offs_d[None, :], offs_n, len_k, offs_d, HEAD_DIM, BLOCK_D, True)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo, full, end = _query_ranges(start_n, len_q, len_k, CAUSAL, BLOCK_M, BLOCK_N)
    for g in range(group):
        h = kv_h * group + g
        q_base = q_ptr + b64 * stride_qb + h * stride_qh + q_start * stride_qs
        do_base = grad_out_ptr + b64 * stride_gb + h * stride_gh + q_start * stride_gs
        lse_base = lse_ptr + b64 * stride_lb + h * stride_lh + q_start * stride_ls
        delta_base = delta_ptr + b64 * stride_lb + h * stride_lh + q_start * stride_ls  # delta has lse's layout
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qs, stride_gs, stride_ls,
                             stride_ls, offs_n, offs_d, lo, full, len_q, len_k, qk_scale, CAUSAL, True, HEAD_DIM,
                             BLOCK_D, BLOCK_M, DOT_PRECISION)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qs, stride_gs, stride_ls,
                             stride_ls, offs_n, offs_d, full, end, len_q, len_k, qk_scale, CAUSAL, False, HEAD_DIM,
                             BLOCK_D, BLOCK_M, DOT_PRECISION)
    store_rows(dk_ptr + b64 * stride_dkb + kv_h * stride_dkh + (k_start + offs_n[:, None]) * stride_dks
               + offs_d[None, :], (dk * softmax_scale).to(dk_ptr.dtype.element_ty), offs_n, len_k, offs_d, HEAD_DIM,
               BLOCK_D)
    store_rows(dv_ptr + b64 * stride_dvb + kv_h * stride_dvh + (k_start + offs_n[:, None]) * stride_dvs
               + offs_d[None, :], dv.to(dv_ptr.dtype.element_ty), offs_n, len_k, offs_d, HEAD_DIM, BLOCK_D)


@triton.jit
def _dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d, lo, hi, len_k, shift,
              qk_scale, CAUSAL: tl.constexpr, MASKED: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = load_rows(k_base + offs_n[:, None] * stride_ks + offs_d[None, :], offs_n, len_k, offs_d, HEAD_DIM,
                      BLOCK_D, MASKED)
        v = load_rows(v_base + offs_n[:, None] * stride_vs + offs_d[None, :], offs_n, len_k, offs_d, HEAD_DIM,
                      BLOCK_D, MASKED)
        p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale - lse[:, None])
        if MASKED:
            p = tl.where(visible(offs_m, offs_n, len_k, shift, CAUSAL), p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _dq_kernel(q_ptr, k_ptr, v_ptr, grad_out_ptr, lse_ptr, delta_ptr, dq_ptr, cu_q_ptr, cu_k_ptr,
               stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
               stride_gb, stride_gs, stride_gh, stride_lb, stride_lh, stride_ls, stride_dqb, stride_dqs, stride_dqh,
               num_heads, group, seqlen_q, seqlen_k, qk_scale, softmax_scale, seq_bucket,
               CAUSAL: tl.constexpr, VARLEN: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
               DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    b, h, q_start, len_q, k_start, len_k = program_sequences(cu_q_ptr, cu_k_ptr, num_heads, seqlen_q, seqlen_k, VARLEN)
    start_m = (tl.num_programs(1) - 1 - tl.program_id(1)) * BLOCK_M  # heaviest (last) query tiles first
    if start_m >= len_q:
        return
    b64 = b.to(tl.int64)
    kv_h = h // group
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    rows = q_start + offs_m
    q = load_rows(q_ptr + b64 * stride_qb + h * stride_qh + rows[:, None] * stride_qs + offs_d[None, :], offs_m,
                  len_q, offs_d, HEAD_DIM, BLOCK_D, True)
    do = load_rows(grad_out_ptr + b64 * stride_gb + h * stride_gh + rows[:, None] * stride_gs + offs_d[None, :],
                   offs_m, len_q, offs_d, HEAD_DIM, BLOCK_D, True)
    row_base = b64 * stride_lb + h * stride_lh + q_start * stride_ls
    lse, delta = _row_stats(lse_ptr + row_base, delta_ptr + row_base, stride_ls, stride_ls, offs_m, len_q)
    k_base = k_ptr + b64 * stride_kb + kv_h * stride_kh + k_start * stride_ks
    v_base = v_ptr + b64 * stride_vb + kv_h * stride_vh + k_start * stride_vs
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    full, end = key_ranges(start_m, len_q, len_k, CAUSAL, BLOCK_M, BLOCK_N)
    shift = len_k - len_q
    dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d, 0, full, len_k, shift,
                   qk_scale, CAUSAL, False, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
    dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d, full, end, len_k,
                   shift, qk_scale, CAUSAL, True, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
    store_rows(dq_ptr + b64 * stride_dqb + h * stride_dqh + rows[:, None] * stride_dqs + offs_d[None, :],
               (dq * softmax_scale).to(dq_ptr.dtype.element_ty), offs_m, len_q, offs_d, HEAD_DIM, BLOCK_D)


# ---- host side -------------------------------------------------------------------------------------------

AUTOTUNE_KEY = ["seq_bucket", "CAUSAL", "VARLEN", "HEAD_DIM"]


@functools.cache
def _dkdv_kernel_for(block_d: int, gen: str):
    return triton.autotune(configs=attention_dkdv_configs(block_d, gen), key=AUTOTUNE_KEY)(_dkdv_kernel)


@functools.cache
def _dq_kernel_for(block_d: int, gen: str):
    return triton.autotune(configs=attention_dq_configs(block_d, gen), key=AUTOTUNE_KEY)(_dq_kernel)


@backends.register("flash_attention_backward", "triton",
                   supports=lambda grad_out, grad_lse, q, k, v, *rest: supports(q, k, v, *rest[2:]))
def flash_attention_backward(grad_out, grad_lse, q, k, v, out, lse, causal, softmax_scale, cu_seqlens_q=None,
                             cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None):
    q, k, v, out, grad_out = (unit_stride(t) for t in (q, k, v, out, grad_out))
    layout = Layout(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    grad_q, grad_k, grad_v = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    if q.numel() == 0 or k.numel() == 0:
        return grad_q.zero_(), grad_k.zero_(), grad_v.zero_()
    lse = lse.contiguous()
    delta = torch.empty_like(lse)
    common = (layout.cu_q, layout.cu_k, *layout.strides(q), *layout.strides(k), *layout.strides(v),
              *layout.strides(grad_out), *layout.lse_strides(lse))
    sizes = (layout.group, layout.seqlen_q, layout.seqlen_k, softmax_scale * LOG2E, softmax_scale, layout.seq_bucket())
    flags = dict(CAUSAL=causal, VARLEN=layout.varlen, HEAD_DIM=layout.head_dim, BLOCK_D=layout.block_d,
                 DOT_PRECISION=layout.dot_precision)
    heads = layout.batch * layout.num_heads
    _preprocess_kernel[(heads, triton.cdiv(layout.max_q, PREPROCESS_ROWS))](
        out, grad_out, grad_lse, delta, layout.cu_q, *layout.strides(out), *layout.strides(grad_out),
        *layout.lse_strides(grad_lse), *layout.lse_strides(delta), layout.num_heads, layout.seqlen_q,
        VARLEN=layout.varlen, HEAD_DIM=layout.head_dim, BLOCK_D=layout.block_d,
        BLOCK_M=PREPROCESS_ROWS)
    kv_heads = layout.num_heads // layout.group
    key_tiles = (lambda meta: (layout.batch * kv_heads, triton.cdiv(layout.max_k, meta["BLOCK_N"])))
    _dkdv_kernel_for(layout.block_d, layout.generation)[key_tiles](
        q, k, v, grad_out, lse, delta, grad_k, grad_v, *common, *layout.strides(grad_k), *layout.strides(grad_v),
        kv_heads, *sizes, **flags)
    _dq_kernel_for(layout.block_d, layout.generation)[lambda meta: (heads, triton.cdiv(layout.max_q, meta["BLOCK_M"]))](
        q, k, v, grad_out, lse, delta, grad_q, *common, *layout.strides(grad_q), layout.num_heads, *sizes, **flags)
    return grad_q, grad_k, grad_v
