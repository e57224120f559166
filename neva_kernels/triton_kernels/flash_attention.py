"""flash_attention forward in Triton: one program per (query tile, batch * head), online softmax in fp32.

The scores live in log2 units (log2(e) is folded into the scale, so exp2 replaces exp). Padded [B, S, H, D] and
packed [total, H, D] + cu_seqlens batches share one kernel: a packed batch is a batch of one row block per
sequence whose start comes from cu_seqlens. GQA reads key/value head h // group without copying K/V.
Causal masks are bottom-right aligned; the key tiles a query tile needs split in two ranges: tiles every row
sees in full (no mask arithmetic) and the tiles on the diagonal or past the sequence end (masked).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .. import backends
from ..architecture import generation
from ..reference import lse_shape
from ._common import LN2_IN_KERNEL, LOG2E, dot_precision, dtype_refusal, unit_stride
from .compute_bound_configs import attention_forward_configs, padded_head_dim


# ---- helpers shared with the backward kernels ----------------------------------------------------------------

@triton.jit
def sequence_bounds(b, cu_seqlens_ptr, fixed_length, VARLEN: tl.constexpr):
    """(first row, length) of sequence b: from cu_seqlens when packed, else (0, the padded length)."""
    if VARLEN:
        start = tl.load(cu_seqlens_ptr + b).to(tl.int64)
        length = (tl.load(cu_seqlens_ptr + b + 1) - start).to(tl.int32)
    else:
        start = 0
        length = fixed_length
    return start, length


@triton.jit
def program_sequences(cu_q_ptr, cu_k_ptr, num_heads, seqlen_q, seqlen_k, VARLEN: tl.constexpr):
    """(batch, head, first query row, query length, first key row, key length) of this program's axis-0 index,
    which runs over batch * num_heads."""
    bh = tl.program_id(0)
    b = bh // num_heads
    q_start, len_q = sequence_bounds(b, cu_q_ptr, seqlen_q, VARLEN)
    k_start, len_k = sequence_bounds(b, cu_k_ptr, seqlen_k, VARLEN)
    return b, bh % num_heads, q_start, len_q, k_start, len_k


@triton.jit
def load_rows(ptrs, rows, num_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CHECK_ROWS: tl.constexpr):
    """A [rows, BLOCK_D] tile; rows >= num_rows (when checked) and features >= HEAD_DIM read as 0."""
    if CHECK_ROWS:
        if HEAD_DIM == BLOCK_D:
            tile = tl.load(ptrs, mask=rows[:, None] < num_rows, other=0.0)
        else:
            tile = tl.load(ptrs, mask=(rows[:, None] < num_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    else:
        if HEAD_DIM == BLOCK_D:
            tile = tl.load(ptrs)
        else:
            tile = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    return tile


@triton.jit
def store_rows(ptrs, tile, rows, num_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    if HEAD_DIM == BLOCK_D:
        tl.store(ptrs, tile, mask=rows[:, None] < num_rows)
    else:
        tl.store(ptrs, tile, mask=(rows[:, None] < num_rows) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def key_ranges(start_m, len_q, len_k, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """For the query tile at start_m: key tiles [0, full) seen whole by every row, [full, end) to be masked.

    Query i sees keys j <= i + len_k - len_q (causal), all j < len_k otherwise; `full` is a multiple of BLOCK_N.
    """
    if CAUSAL:
        shift = len_k - len_q
        end = tl.maximum(tl.minimum(len_k, start_m + BLOCK_M + shift), 0)
        full = tl.maximum(tl.minimum(len_k, start_m + shift + 1), 0)
    else:
        end = len_k
        full = len_k
    return full // BLOCK_N * BLOCK_N, end


@triton.jit
def visible(offs_m, offs_n, len_k, shift, CAUSAL: tl.constexpr):
    """[M, N] mask of the (query, key) pairs that attend: key inside the sequence and, if causal, not after i."""
    seen = offs_n[None, :] < len_k
    if CAUSAL:
        seen = seen & (offs_n[None, :] <= offs_m[:, None] + shift)
    return seen


# ---- forward ---------------------------------------------------------------------------------------------

@triton.jit
def _forward_tiles(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d, lo, hi, len_k, shift,
                   qk_scale, CAUSAL: tl.constexpr, MASKED: tl.constexpr, HEAD_DIM: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = load_rows(k_base + offs_n[:, None] * stride_ks + offs_d[None, :], offs_n, len_k, offs_d, HEAD_DIM,
                      BLOCK_D, MASKED)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if MASKED:
            s = tl.where(visible(offs_m, offs_n, len_k, shift, CAUSAL), s, -float("inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # A row that has seen no key yet keeps max -inf: subtract 0 instead so exp2 gives 0, not NaN.
            m_sub = tl.where(m_new == -float("inf"), 0.0, m_new)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_sub = m_new
        p = tl.math.exp2(s - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = load_rows(v_base + offs_n[:, None] * stride_vs + offs_d[None, :], offs_n, len_k, offs_d, HEAD_DIM,
                      BLOCK_D, MASKED)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _flash_forward_kernel(q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, cu_q_ptr, cu_k_ptr,
                          stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                          stride_vb, stride_vs, stride_vh, stride_ob, stride_os, stride_oh,
                          stride_lb, stride_lh, stride_ls,
                          num_heads, group, seqlen_q, seqlen_k, qk_scale, seq_bucket,
                          CAUSAL: tl.constexpr, VARLEN: tl.constexpr, HEAD_DIM: tl.constexpr,
                          BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    b, h, q_start, len_q, k_start, len_k = program_sequences(cu_q_ptr, cu_k_ptr, num_heads, seqlen_q, seqlen_k, VARLEN)
    # Axis 1 is launched last-tile first: under a causal mask the last query tiles are the heaviest.
    start_m = (tl.num_programs(1) - 1 - tl.program_id(1)) * BLOCK_M
    if start_m >= len_q:
        return
    b64 = b.to(tl.int64)
    kv_h = h // group
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = load_rows(q_ptr + b64 * stride_qb + q_start * stride_qs + h * stride_qh
                  + offs_m[:, None] * stride_qs + offs_d[None, :], offs_m, len_q, offs_d, HEAD_DIM, BLOCK_D, True)
    k_base = k_ptr + b64 * stride_kb + k_start * stride_ks + kv_h * stride_kh
    v_base = v_ptr + b64 * stride_vb + k_start * stride_vs + kv_h * stride_vh

    m_i = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    full, end = key_ranges(start_m, len_q, len_k, CAUSAL, BLOCK_M, BLOCK_N)
    shift = len_k - len_q
    acc, l_i, m_i = _forward_tiles(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d, 0, full,
                                   len_k, shift, qk_scale, CAUSAL, False, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
    acc, l_i, m_i = _forward_tiles(acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, offs_m, offs_d, full, end,
                                   len_k, shift, qk_scale, CAUSAL, True, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)

    # Rows that saw no key: l = 0 and acc = 0 -> out 0, lse -inf.
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    store_rows(out_ptr + b64 * stride_ob + q_start * stride_os + h * stride_oh
               + offs_m[:, None] * stride_os + offs_d[None, :], out.to(out_ptr.dtype.element_ty), offs_m, len_q,
               offs_d, HEAD_DIM, BLOCK_D)
    lse = tl.where(l_i == 0.0, -float("inf"), (m_i + tl.math.log2(l_safe)) * LN2_IN_KERNEL)  # ln, not log2
    tl.store(lse_ptr + b64 * stride_lb + h * stride_lh + (q_start + offs_m) * stride_ls, lse, mask=offs_m < len_q)


# ---- host side -------------------------------------------------------------------------------------------

@functools.cache
def _forward_kernel(block_d: int, gen: str):
    return triton.autotune(configs=attention_forward_configs(block_d, gen),
                           key=["seq_bucket", "CAUSAL", "VARLEN", "HEAD_DIM"])(_flash_forward_kernel)


class Layout:
    """How a call's tensors map onto the kernels' (batch, row, head) strides, padded or packed."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
        self.varlen = cu_seqlens_q is not None
        self.num_heads, self.head_dim = q.shape[-2], q.shape[-1]
        self.group = q.shape[-2] // k.shape[-2]
        if self.varlen:
            self.batch = cu_seqlens_q.shape[0] - 1
            self.seqlen_q = self.seqlen_k = 0  # read from cu_seqlens by the kernels
            lengths = (lambda cu: int((cu[1:] - cu[:-1]).max()) if self.batch else 0)
            self.max_q = max_seqlen_q if max_seqlen_q is not None else lengths(cu_seqlens_q)
            self.max_k = max_seqlen_k if max_seqlen_k is not None else lengths(cu_seqlens_k)
            self.cu_q, self.cu_k = cu_seqlens_q, cu_seqlens_k
        else:
            self.batch, self.seqlen_q, self.seqlen_k = q.shape[0], q.shape[1], k.shape[1]
            self.max_q, self.max_k = self.seqlen_q, self.seqlen_k
            self.cu_q = self.cu_k = None
        self.block_d = padded_head_dim(self.head_dim)
        self.generation = generation(q.device)
        self.dot_precision = dot_precision(q.dtype)

    def strides(self, t: torch.Tensor) -> tuple[int, int, int]:
        """(batch, row, head) strides of a [B, S, H, D] or packed [total, H, D] tensor (batch stride 0 if packed)."""
        return (0, *t.stride()[:2]) if self.varlen else t.stride()[:3]

    def lse_strides(self, lse: torch.Tensor) -> tuple[int, int, int]:
        """(batch, head, row) strides of lse [B, H, S] or packed [H, total]."""
        return (0, *lse.stride()) if self.varlen else lse.stride()

    def seq_bucket(self) -> int:
        """The autotuning key of the lengths: powers of two, so ragged batches do not retune every call."""
        return triton.next_power_of_2(max(self.max_q, self.max_k, 1))


def supports(q, k, v, causal, softmax_scale, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
             max_seqlen_k=None) -> str | None:
    refusal = dtype_refusal("flash_attention kernels", q.dtype, q.is_cuda)
    if refusal is not None:
        return refusal
    if q.shape[-1] > 256:
        return f"the triton flash_attention kernels take head_dim <= 256, got {q.shape[-1]}"
    return None


@backends.register("flash_attention", "triton", supports=supports)
def flash_attention(q, k, v, causal, softmax_scale, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
                    max_seqlen_k=None):
    q, k, v = (unit_stride(t) for t in (q, k, v))
    layout = Layout(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(lse_shape(q, layout.varlen), dtype=torch.float32, device=q.device)
    if q.numel() == 0:
        return out, lse
    grid = (lambda meta: (layout.batch * layout.num_heads, triton.cdiv(layout.max_q, meta["BLOCK_M"])))
    _forward_kernel(layout.block_d, layout.generation)[grid](
        q, k, v, out, lse, layout.cu_q, layout.cu_k,
        *layout.strides(q), *layout.strides(k), *layout.strides(v), *layout.strides(out), *layout.lse_strides(lse),
        layout.num_heads, layout.group, layout.seqlen_q, layout.seqlen_k, softmax_scale * LOG2E,
        layout.seq_bucket(), CAUSAL=causal, VARLEN=layout.varlen, HEAD_DIM=layout.head_dim,
        BLOCK_D=layout.block_d, DOT_PRECISION=layout.dot_precision)
    return out, lse

