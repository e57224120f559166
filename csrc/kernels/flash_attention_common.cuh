// What the flash attention forward kernels of every architecture share: where a block's sequence lives, which
// key range its query rows see, the masks of the causal / sequence-end tiles, and the online softmax on mma
// accumulator fragments.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "params.h"
#include "tensor_core_sm80.cuh"

namespace neva {
namespace flash {

// Where sequence `batch` starts in the token rows of q and k/v (0 when padded) and how long it is.
struct SequenceBounds {
  int64_t q_start, k_start;
  int len_q, len_k;
};

__device__ __forceinline__ SequenceBounds sequence_bounds(const FlashAttentionParams& p, int batch) {
  if (p.cu_seqlens_q == nullptr) return {0, 0, p.seqlen_q, p.seqlen_k};
  const int q_start = p.cu_seqlens_q[batch], k_start = p.cu_seqlens_k[batch];
  return {q_start, k_start, p.cu_seqlens_q[batch + 1] - q_start, p.cu_seqlens_k[batch + 1] - k_start};
}

// GQA: query head h reads key/value head h / (q_heads / kv_heads), in place, never repeated.
__device__ __forceinline__ int kv_head_of(const FlashAttentionParams& p, int head) {
  return head / (p.q_heads / p.kv_heads);
}

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
  const SequenceBounds b = sequence_bounds(p, batch);
  const int kv_head = kv_head_of(p, head);
  SequenceHead<T> s;
  s.q = static_cast<const T*>(p.q) + batch * p.q_batch_stride + b.q_start * p.q_row_stride + head * p.q_head_stride;
  s.k = static_cast<const T*>(p.k) + batch * p.k_batch_stride + b.k_start * p.k_row_stride +
        kv_head * p.k_head_stride;
  s.v = static_cast<const T*>(p.v) + batch * p.v_batch_stride + b.k_start * p.v_row_stride +
        kv_head * p.v_head_stride;
  s.out = static_cast<T*>(p.out) + batch * p.out_batch_stride + b.q_start * p.out_row_stride +
          head * p.out_head_stride;
  s.lse = p.lse + batch * p.lse_batch_stride + head * p.lse_head_stride + b.q_start;
  s.len_q = b.len_q;
  s.len_k = b.len_k;
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

// Whether query row `row` sees key `col` (both sequence-relative).
__device__ __forceinline__ bool key_visible(bool causal, int row, int col, int len_q, int len_k) {
  return col < len_k && (!causal || col <= row + len_k - len_q);
}

// ---- the online softmax of one thread's two query rows --------------------------------------------------------
// Scores arrive as mma accumulators: s[j] holds columns 8j + 2t, 8j + 2t + 1 (t = lane % 4) of row r0 in s[j][0..1]
// and of row r0 + 8 in s[j][2..3]; a row is spread over the 4 lanes of a quad. This is the m16n8 C fragment of
// mma.sync and, per warp, of wgmma's accumulators, so the sm80 and sm90 kernels share it.

// Sets the scores of the (row, key) pairs that do not attend to -inf; keys start at col0.
template <int kTiles>
__device__ __forceinline__ void mask_scores(float (&s)[kTiles][4], bool causal, int row0, int col0, int len_q,
                                            int len_k) {
  const int t = threadIdx.x % 4;
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (!key_visible(causal, row0 + (e / 2) * 8, col0 + j * 8 + 2 * t + e % 2, len_q, len_k)) s[j][e] = -INFINITY;
    }
  }
}

// 2^x in one MUFU.EX2 (2 ulp; -inf gives +0), the exponential of every online softmax here.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Running max (log2 units, of scores * scale_log2) and this thread's share of the running sum for rows r0, r0 + 8.
struct OnlineSoftmax {
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.f, 0.f};  // the quad's shares are summed once, in finish()

  // Turns a tile of raw scores into probabilities relative to the new running max, in place; alpha[r] is the
  // factor the accumulated output of row r must be multiplied by before this tile's P V is added.
  template <int kTiles>
  __device__ __forceinline__ void update(float (&s)[kTiles][4], float scale_log2, float (&alpha)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < kTiles; ++j) tile_max = fmaxf(tile_max, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      const float new_max = fmaxf(row_max[r], tile_max * scale_log2);
      // A row that has seen no key yet keeps max -inf: subtract 0 instead, so exp2 gives 0 rather than NaN.
      const float subtract = new_max == -INFINITY ? 0.f : new_max;
      alpha[r] = fast_exp2(row_max[r] - subtract);
      row_max[r] = new_max;
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < kTiles; ++j) {
#pragma unroll
        for (int e = 2 * r; e < 2 * r + 2; ++e) {
          s[j][e] = fast_exp2(fmaf(s[j][e], scale_log2, -subtract));
          sum += s[j][e];
        }
      }
      row_sum[r] = row_sum[r] * alpha[r] + sum;
    }
  }

  // o: accumulators in the same fragment layout as s.
  template <int kTiles>
  __device__ __forceinline__ static void rescale(float (&o)[kTiles][4], const float (&alpha)[2]) {
#pragma unroll
    for (int j = 0; j < kTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o[j][e] *= alpha[e / 2];
    }
  }

  // The factor that normalizes each row's output (0 for a row that saw no key: its output is 0) and its
  // natural-log log-sum-exp (-inf there).
  __device__ __forceinline__ void finish(float (&inv_sum)[2], float (&lse)[2]) const {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float sum = row_sum[r];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      inv_sum[r] = sum == 0.f ? 0.f : 1.f / sum;
      lse[r] = sum == 0.f ? -INFINITY : (row_max[r] + log2f(sum)) * 0.69314718055994531f;
    }
  }
};

// The epilogue of one warp's 16 query rows, sequence rows [first_row, first_row + 16): O / l rounded to T into
// shared memory at staged(r, col) (r: the warp's row 0..15), the LSE, then 16-byte row stores to seq.out (rows
// past the sequence skipped). staged() is each kernel's own layout (padded rows on sm80, swizzled on sm90).
template <int kHeadDim, typename T, typename Staged>
__device__ __forceinline__ void store_warp_output(const float (&o)[kHeadDim / 8][4], const OnlineSoftmax& softmax,
                                                  const SequenceHead<T>& seq, int64_t out_row_stride,
                                                  int first_row, Staged staged) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  float inv_sum[2], lse[2];
  softmax.finish(inv_sum, lse);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
#pragma unroll
    for (int j = 0; j < kHeadDim / 8; ++j) {
      *reinterpret_cast<uint32_t*>(staged(g + 8 * r, j * 8 + 2 * t)) =
          sm80::pack_pair<T>(o[j][2 * r] * inv_sum[r], o[j][2 * r + 1] * inv_sum[r]);
    }
    const int row = first_row + g + 8 * r;
    if (t == 0 && row < seq.len_q) seq.lse[row] = lse[r];
  }
  __syncwarp();  // a warp stores back only the rows it wrote
  constexpr int kChunksPerRow = kHeadDim / 8;
#pragma unroll
  for (int i = 0; i < 16 * kChunksPerRow / 32; ++i) {
    const int chunk = i * 32 + lane;
    const int r = chunk / kChunksPerRow, col = chunk % kChunksPerRow * 8;
    if (first_row + r < seq.len_q) {
      *reinterpret_cast<uint4*>(seq.out + (first_row + r) * out_row_stride + col) =
          *reinterpret_cast<const uint4*>(staged(r, col));
    }
  }
}

// The A fragment (16 x 16 keys, 16-bit) of P V for keys 16 kc .. 16 kc + 15: probabilities of 8-key tiles 2 kc and
// 2 kc + 1, re-packed; no shuffle, the accumulator layout is already the operand layout.
template <typename T, int kTiles>
__device__ __forceinline__ void probabilities_fragment(uint32_t (&a)[4], const float (&p)[kTiles][4], int kc) {
  a[0] = sm80::pack_pair<T>(p[2 * kc][0], p[2 * kc][1]);
  a[1] = sm80::pack_pair<T>(p[2 * kc][2], p[2 * kc][3]);
  a[2] = sm80::pack_pair<T>(p[2 * kc + 1][0], p[2 * kc + 1][1]);
  a[3] = sm80::pack_pair<T>(p[2 * kc + 1][2], p[2 * kc + 1][3]);
}

}  // namespace flash
}  // namespace neva
