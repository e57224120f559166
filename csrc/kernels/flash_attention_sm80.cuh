// Flash attention forward for sm_80 (FlashAttention-2's design), also the fallback on Hopper.
//
// One block of kWarps warps per (query tile of kBlockM rows, query head, sequence); each warp owns 16 query rows
// and keeps their Q fragments in registers for the whole key loop. K/V tiles of kBlockN keys stream through a
// kStages-deep cp.async ring in shared memory; S = Q K^T and O += P V run on mma.sync m16n8k16 (fp32
// accumulation) with operands fetched by ldmatrix (V transposed on the fly). The softmax is online, in
// registers, in log2 units; the P fragments are the S accumulators re-packed to 16 bits, never stored.
//
// Shared rows are padded by 16 bytes (kRowStride = head_dim + 8 elements): the 8 rows an ldmatrix phase reads
// then start in 8 distinct bank groups for every head dim that is a multiple of 16, without an XOR swizzle.
// Causal blocks stop at their last visible key tile and mask only the tiles on the diagonal or past the
// sequence end; the grid runs the heaviest (last) query tiles first.
#pragma once
#include <cuda_runtime.h>

#include "flash_attention_common.cuh"
#include "tensor_core_sm80.cuh"

namespace neva {
namespace flash {

template <int kHeadDim>
struct Sm80Config {
  static_assert(kHeadDim % 16 == 0 && kHeadDim <= 256, "head dims are multiples of 16 up to 256");
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBlockM = 16 * kWarps;
  // Registers bound the key tile: S holds kBlockN / 2 floats per thread beside O's kHeadDim / 2.
  static constexpr int kBlockN = kHeadDim <= 128 ? 64 : 32;
  static constexpr int kStages = 2;
  // Q fragments of head dim 256 would take 64 more registers per thread and spill: they are re-read from a
  // shared Q tile of their own at every key tile instead.
  static constexpr bool kQInRegisters = kHeadDim <= 128;
  static constexpr int kRowStride = kHeadDim + 8;
  static constexpr int kTileElems = kBlockN * kRowStride;  // one K or V tile
  static constexpr int kStageElems = 2 * kTileElems;
  static constexpr int kRingElems = kStages * kStageElems;
  static constexpr int kQElems = kBlockM * kRowStride;
  static constexpr int kSharedBytes = (kRingElems + (kQInRegisters ? 0 : kQElems)) * 2;
  // With Q in registers its tile is staged in the last ring stage; the output tile always uses the first.
  static_assert(kQElems <= kStageElems, "a Q tile must fit in one stage");
};

// Copies rows [0, kRows) of a [rows, kHeadDim] tile (row stride `stride`) into shared rows of kRowStride
// elements, asynchronously; rows >= valid_rows are zero-filled (row 0 must exist).
template <int kRows, int kHeadDim, int kRowStride, int kThreads, typename T>
__device__ __forceinline__ void load_tile_async(T* dst, const T* src, int64_t stride, int valid_rows) {
  constexpr int kChunksPerRow = kHeadDim * 2 / 16;
  constexpr int kChunks = kRows * kChunksPerRow;
  static_assert(kChunks % kThreads == 0, "whole copy rounds per thread");
#pragma unroll
  for (int i = 0; i < kChunks / kThreads; ++i) {
    const int chunk = i * kThreads + threadIdx.x;
    const int row = chunk / kChunksPerRow, col = chunk % kChunksPerRow * 8;
    const bool valid = row < valid_rows;
    sm80::cp_async_16(dst + row * kRowStride + col, src + (valid ? row : 0) * stride + col, valid);
  }
}

template <typename T, int kHeadDim, bool kCausal>
__global__ void __launch_bounds__(Sm80Config<kHeadDim>::kThreads)
    flash_forward_sm80_kernel(const FlashAttentionParams p) {
  using C = Sm80Config<kHeadDim>;
  constexpr int kBlockM = C::kBlockM, kBlockN = C::kBlockN, kStages = C::kStages, kStride = C::kRowStride;
  constexpr int kKSteps = kHeadDim / 16;  // k-steps of Q K^T
  constexpr int kSTiles = kBlockN / 8;    // n-tiles of S
  constexpr int kOTiles = kHeadDim / 8;   // n-tiles of O

  extern __shared__ __align__(16) unsigned char shared_raw[];
  T* const ring = reinterpret_cast<T*>(shared_raw);
  const auto k_stage = [&](int stage) { return ring + stage * C::kStageElems; };
  const auto v_stage = [&](int stage) { return ring + stage * C::kStageElems + C::kTileElems; };

  const int m_block = gridDim.x - 1 - blockIdx.x;
  const SequenceHead<T> seq = sequence_head<T>(p, blockIdx.z, blockIdx.y);
  const int m0 = m_block * kBlockM;
  if (m0 >= seq.len_q) return;
  const KeyRange keys = key_range(kCausal, m0, kBlockM, seq.len_q, seq.len_k);
  const int n_tiles = (keys.end + kBlockN - 1) / kBlockN;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4;  // the accumulator fragment row of this lane (and g + 8)
  // ldmatrix addressing: lane l gives row l % 8 of matrix l / 8.
  const int lm_row = lane % 8, lm_matrix = lane / 8;

  float o[kOTiles][4] = {};
  OnlineSoftmax softmax;

  const auto load_kv = [&](int tile) {
    const int n0 = tile * kBlockN, stage = tile % kStages;
    load_tile_async<kBlockN, kHeadDim, kStride, C::kThreads>(k_stage(stage), seq.k + n0 * p.k_row_stride,
                                                              p.k_row_stride, seq.len_k - n0);
    load_tile_async<kBlockN, kHeadDim, kStride, C::kThreads>(v_stage(stage), seq.v + n0 * p.v_row_stride,
                                                              p.v_row_stride, seq.len_k - n0);
  };

  if (n_tiles > 0) {
    T* const q_tile = C::kQInRegisters ? k_stage(kStages - 1) : ring + C::kRingElems;
    load_tile_async<kBlockM, kHeadDim, kStride, C::kThreads>(q_tile, seq.q + m0 * p.q_row_stride, p.q_row_stride,
                                                              seq.len_q - m0);
    sm80::cp_async_commit();
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < n_tiles) load_kv(s);
      sm80::cp_async_commit();
    }
    // The A fragment of Q for k-step ks (rows of this warp, head-dim columns [16 ks, 16 ks + 16)).
    const auto load_q_fragment = [&](uint32_t(&a)[4], int ks) {
      const int row = warp * 16 + (lm_matrix % 2) * 8 + lm_row, col = ks * 16 + (lm_matrix / 2) * 8;
      sm80::ldmatrix_x4(a, q_tile + row * kStride + col);
    };
    uint32_t q_frag[C::kQInRegisters ? kKSteps : 1][4];
    if constexpr (C::kQInRegisters) {
      sm80::cp_async_wait<kStages - 1>();  // the Q group
      __syncthreads();
#pragma unroll
      for (int ks = 0; ks < kKSteps; ++ks) load_q_fragment(q_frag[ks], ks);
      __syncthreads();  // the last stage is free for K/V again
    }

    const int row0 = m0 + warp * 16 + g;  // this thread's rows: row0 and row0 + 8
    for (int tile = 0; tile < n_tiles; ++tile) {
      if (tile + kStages - 1 < n_tiles) load_kv(tile + kStages - 1);
      sm80::cp_async_commit();
      sm80::cp_async_wait<kStages - 1>();
      __syncthreads();
      const T* const k_tile = k_stage(tile % kStages);
      const T* const v_tile = v_stage(tile % kStages);
      const int n0 = tile * kBlockN;

      // S = Q K^T: ldmatrix gives the B fragments of two key n-tiles (low and high k halves) at once.
      float s[kSTiles][4] = {};
#pragma unroll
      for (int ks = 0; ks < kKSteps; ++ks) {
        if constexpr (!C::kQInRegisters) load_q_fragment(q_frag[0], ks);
        const uint32_t(&a)[4] = q_frag[C::kQInRegisters ? ks : 0];
#pragma unroll
        for (int np = 0; np < kSTiles / 2; ++np) {
          uint32_t b[4];
          const int row = np * 16 + (lm_matrix / 2) * 8 + lm_row, col = ks * 16 + (lm_matrix % 2) * 8;
          sm80::ldmatrix_x4(b, k_tile + row * kStride + col);
          sm80::mma_m16n8k16<T>(s[2 * np], a, b[0], b[1]);
          sm80::mma_m16n8k16<T>(s[2 * np + 1], a, b[2], b[3]);
        }
      }

      if (n0 + kBlockN > keys.unmasked_end) mask_scores(s, kCausal, row0, n0, seq.len_q, seq.len_k);
      float alpha[2];
      softmax.update(s, p.scale_log2, alpha);
      OnlineSoftmax::rescale(o, alpha);

      // O += P V: the S accumulators of key n-tiles 2j, 2j+1 are exactly the A fragment of key chunk j.
#pragma unroll
      for (int kc = 0; kc < kBlockN / 16; ++kc) {
        uint32_t a[4];
        probabilities_fragment<T>(a, s, kc);
#pragma unroll
        for (int dp = 0; dp < kOTiles / 2; ++dp) {
          uint32_t b[4];
          const int row = kc * 16 + (lm_matrix % 2) * 8 + lm_row, col = dp * 16 + (lm_matrix / 2) * 8;
          sm80::ldmatrix_x4_trans(b, v_tile + row * kStride + col);
          sm80::mma_m16n8k16<T>(o[2 * dp], a, b[0], b[1]);
          sm80::mma_m16n8k16<T>(o[2 * dp + 1], a, b[2], b[3]);
        }
      }
      __syncthreads();  // every warp is done with this stage before it is refilled
    }
    sm80::cp_async_wait<0>();  // only empty groups remain; nothing may land in the ring after this
  }

  // Epilogue: O / l through shared memory (the first stage) to 16-byte row stores; lse = (max + log2 l) ln 2.
  T* const o_tile = ring + warp * 16 * kStride;
  store_warp_output<kHeadDim>(o, softmax, seq, p.out_row_stride, m0 + warp * 16,
                              [&](int r, int col) { return o_tile + r * kStride + col; });
}

template <typename T, int kHeadDim>
cudaError_t flash_forward_sm80(const FlashAttentionParams& p, cudaStream_t stream) {
  using C = Sm80Config<kHeadDim>;
  const auto kernel = p.causal ? flash_forward_sm80_kernel<T, kHeadDim, true>
                               : flash_forward_sm80_kernel<T, kHeadDim, false>;
  cudaError_t error = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSharedBytes);
  if (error != cudaSuccess) return error;
  const dim3 grid((p.seqlen_q + C::kBlockM - 1) / C::kBlockM, p.q_heads, p.batch);
  kernel<<<grid, C::kThreads, C::kSharedBytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace flash
}  // namespace neva
