// What the flash attention forward kernels of every architecture share: where a block's sequence lives, which
// key range its query rows see, and the masks of the causal / sequence-end tiles.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "params.h"

namespace neva {
namespace flash {

// One (sequence, query head) of the batch: element pointers to row 0 of q, k, v, out and lse, and the lengths.
template <typename T>
struct SequenceHead {
  const T* q;
  const T* k;
  const T* v;
  T* out;
  float* lse;
  int len_q, len_k;
};

template <typename T>
__device__ __forceinline__ SequenceHead<T> sequence_head(const FlashAttentionParams& p, int batch, int head) {
  int64_t q_start = 0, k_start = 0;
  int len_q = p.seqlen_q, len_k = p.seqlen_k;
  if (p.cu_seqlens_q != nullptr) {
    q_start = p.cu_seqlens_q[batch];
    k_start = p.cu_seqlens_k[batch];
    len_q = p.cu_seqlens_q[batch + 1] - static_cast<int>(q_start);
    len_k = p.cu_seqlens_k[batch + 1] - static_cast<int>(k_start);
  }
  const int kv_head = head / (p.q_heads / p.kv_heads);  // GQA: K/V are read in place, never repeated
  SequenceHead<T> s;
  s.q = static_cast<const T*>(p.q) + batch * p.q_batch_stride + q_start * p.q_row_stride + head * p.q_head_stride;
  s.k = static_cast<const T*>(p.k) + batch * p.k_batch_stride + k_start * p.k_row_stride + kv_head * p.k_head_stride;
  s.v = static_cast<const T*>(p.v) + batch * p.v_batch_stride + k_start * p.v_row_stride + kv_head * p.v_head_stride;
  s.out = static_cast<T*>(p.out) + batch * p.out_batch_stride + q_start * p.out_row_stride +
          head * p.out_head_stride;
  s.lse = p.lse + batch * p.lse_batch_stride + head * p.lse_head_stride + q_start;
  s.len_q = len_q;
  s.len_k = len_k;
  return s;
}

// The keys that query rows [m0, m0 + rows) may see, [0, end), and the first key `unmasked_end` up to which every
// one of those rows sees every key (tiles below it need no mask). Causal masks are bottom-right aligned.
struct KeyRange {
  int end, unmasked_end;
};

__device__ __forceinline__ KeyRange key_range(bool causal, int m0, int rows, int len_q, int len_k) {
  if (!causal) return {len_k, len_k};
  const int shift = len_k - len_q;
  const int end = max(min(len_k, m0 + rows + shift), 0);
  const int unmasked_end = max(min(len_k, m0 + shift + 1), 0);
  return {end, unmasked_end};
}

// 2^x in one MUFU.EX2 (2 ulp; -inf gives +0), the exponential of every online softmax here.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Whether query row `row` sees key `col` (both sequence-relative).
__device__ __forceinline__ bool key_visible(bool causal, int row, int col, int len_q, int len_k) {
  return col < len_k && (!causal || col <= row + len_k - len_q);
}

}  // namespace flash
}  // namespace neva
