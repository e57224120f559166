// Flash attention forward for sm_90a (FlashAttention-3's design), head dims 64 and 128.
//
// One block of three warpgroups per (128 query rows, query head, sequence). Warpgroup 0 is the producer: it gives
// registers back (setmaxnreg) and one thread issues every TMA load (cp.async.bulk.tensor): the Q tile once, then
// K and V tiles of 128 keys into 2-stage rings, each stage with a "full" mbarrier (TMA bytes landed) and an
// "empty" one (both consumers are done reading it). Warpgroups 1 and 2 are consumers of 64 query rows each; they
// take the registers (setmaxnreg) and run
//   S = Q K^T  as wgmma from shared memory (both operands K-major, 128-byte swizzled as TMA wrote them),
//   O += P V   as wgmma with P in registers (the S accumulators re-packed) and V read MN-major (transposed),
// pipelined so that tile j's softmax overlaps the tensor cores: S_j = Q K_j^T and O += P_{j-1} V_{j-1} are issued
// together, the softmax of S_j runs while the second is in flight, and O is rescaled once it has landed.
// Causal masking, bottom-right alignment, GQA and packed batches are as in the sm80 kernel. A packed sequence's
// last K/V tile may hold rows of the next sequence (rows past the tensor arrive as zeros): the mask discards
// their scores, and their V rows are zeroed in shared memory before P V, since P = 0 times a NaN or Inf row
// would still be NaN.
//
// Each wgmma group (S = Q K^T, O += P V) has its own wgmma.fence, with its register operands (the S and O
// accumulators, P) pinned by fence_operands on both sides, as CUTLASS / FlashAttention-3 do: no register write
// drifts between a fence and its wgmma (ptxas would serialize with an injected warpgroup.arrive, warning C7519)
// or above the wait for a group that reads it.
#pragma once
#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "flash_attention_common.cuh"
#include "flash_attention_sm90_wgmma.cuh"
#include "tensor_core_sm90.cuh"
#include "tensor_map.h"

namespace neva {
namespace flash {

template <int kHeadDim>
struct Sm90Config {
  static_assert(kHeadDim == 64 || kHeadDim == 128, "the sm90 kernel is written for head dims 64 and 128");
  static constexpr int kConsumers = 2;  // warpgroups of 64 query rows
  static constexpr int kThreads = 128 * (kConsumers + 1);
  static constexpr int kBlockM = 64 * kConsumers;
  static constexpr int kBlockN = 128;
  static constexpr int kStages = 2;
  static constexpr int kSwizzleCols = 64;  // 16-bit elements per 128-byte swizzled row: one TMA box width
  static constexpr int kColBlocks = kHeadDim / kSwizzleCols;
  static constexpr int kQBytes = kBlockM * kHeadDim * 2;
  static constexpr int kTileBytes = kBlockN * kHeadDim * 2;  // one K or V tile
  static constexpr int kBarriers = 1 + 4 * kStages;           // q_full, k_full/empty, v_full/empty per stage
  static constexpr int kAlignment = 1024;                     // of 128-byte swizzled tiles
  static constexpr int kSharedBytes = kAlignment + kQBytes + 2 * kStages * kTileBytes + 8 * kBarriers;
  static constexpr int kProducerRegisters = 24, kConsumerRegisters = 240;
};

struct Sm90TensorMaps {
  CUtensorMap q, k, v;  // 4-D: (head_dim, token row, head, batch), boxes of 64 x rows x 1 x 1
};

template <typename T, int kHeadDim, bool kCausal>
__global__ void __launch_bounds__(Sm90Config<kHeadDim>::kThreads, 1)
    flash_forward_sm90_kernel(const __grid_constant__ Sm90TensorMaps maps, const FlashAttentionParams p) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // never launched: the host picks this kernel only where an sm_90a cubin runs (sm90a_runs_here)
#else
  using C = Sm90Config<kHeadDim>;
  constexpr int kBlockM = C::kBlockM, kBlockN = C::kBlockN, kStages = C::kStages, kCols = C::kSwizzleCols;

  extern __shared__ unsigned char shared_raw[];
  unsigned char* const shared = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(shared_raw) + C::kAlignment - 1) / C::kAlignment * C::kAlignment);
  T* const q_tile = reinterpret_cast<T*>(shared);  // [kColBlocks][kBlockM][64], swizzled
  const auto k_tile = [&](int s) { return reinterpret_cast<T*>(shared + C::kQBytes + s * C::kTileBytes); };
  const auto v_tile = [&](int s) {
    return reinterpret_cast<T*>(shared + C::kQBytes + (kStages + s) * C::kTileBytes);
  };
  uint64_t* const barriers = reinterpret_cast<uint64_t*>(shared + C::kQBytes + 2 * kStages * C::kTileBytes);
  uint64_t* const q_full = barriers;
  uint64_t* const k_full = barriers + 1;
  uint64_t* const k_empty = k_full + kStages;
  uint64_t* const v_full = k_empty + kStages;
  uint64_t* const v_empty = v_full + kStages;

  const int m_block = gridDim.x - 1 - blockIdx.x, head = blockIdx.y, batch = blockIdx.z;
  const SequenceBounds bounds = sequence_bounds(p, batch);
  const int m0 = m_block * kBlockM;
  if (m0 >= bounds.len_q) return;
  const KeyRange keys = key_range(kCausal, m0, kBlockM, bounds.len_q, bounds.len_k);
  const int n_tiles = (keys.end + kBlockN - 1) / kBlockN;

  if (threadIdx.x == 0) {
    sm90::mbarrier_init(q_full, 1);
    for (int s = 0; s < kStages; ++s) {
      sm90::mbarrier_init(&k_full[s], 1);
      sm90::mbarrier_init(&v_full[s], 1);
      sm90::mbarrier_init(&k_empty[s], 128 * C::kConsumers);
      sm90::mbarrier_init(&v_empty[s], 128 * C::kConsumers);
    }
    sm90::fence_barrier_init();
  }
  __syncthreads();

  if (threadIdx.x < 128) {  // ---- producer warpgroup ----
    sm90::setmaxnreg_dec<C::kProducerRegisters>();
    if (threadIdx.x != 0 || n_tiles == 0) return;
    const int packed = p.cu_seqlens_q != nullptr;
    const int batch_coord = packed ? 0 : batch, kv_head = kv_head_of(p, head);
    const int q_row = static_cast<int>(bounds.q_start) + m0, k_row = static_cast<int>(bounds.k_start);
    sm90::mbarrier_arrive_expect_tx(q_full, C::kQBytes);
    for (int c = 0; c < C::kColBlocks; ++c) {
      sm90::tma_load_4d(q_tile + c * kBlockM * kCols, &maps.q, q_full, c * kCols, q_row, head, batch_coord);
    }
    for (int tile = 0; tile < n_tiles; ++tile) {
      const int s = tile % kStages;
      const uint32_t phase = (tile / kStages) & 1;
      const int row = k_row + tile * kBlockN;
      sm90::mbarrier_wait(&k_empty[s], phase ^ 1);
      sm90::mbarrier_arrive_expect_tx(&k_full[s], C::kTileBytes);
      for (int c = 0; c < C::kColBlocks; ++c) {
        sm90::tma_load_4d(k_tile(s) + c * kBlockN * kCols, &maps.k, &k_full[s], c * kCols, row, kv_head, batch_coord);
      }
      sm90::mbarrier_wait(&v_empty[s], phase ^ 1);
      sm90::mbarrier_arrive_expect_tx(&v_full[s], C::kTileBytes);
      for (int c = 0; c < C::kColBlocks; ++c) {
        sm90::tma_load_4d(v_tile(s) + c * kBlockN * kCols, &maps.v, &v_full[s], c * kCols, row, kv_head, batch_coord);
      }
    }
    return;
  }

  // ---- consumer warpgroups ----
  sm90::setmaxnreg_inc<C::kConsumerRegisters>();
  const int consumer = threadIdx.x / 128 - 1, tid = threadIdx.x % 128;
  const int warp = tid / 32, g = tid % 32 / 4;  // g: the accumulator fragment row of this lane (and g + 8)
  const int warp_row = consumer * 64 + warp * 16;  // the warp's first row in the block's tile
  const int row0 = m0 + warp_row + g;              // sequence rows of this thread: row0 and row0 + 8
  float o[kHeadDim / 8][4] = {};
  OnlineSoftmax softmax;
  const auto wait = [](uint64_t* barrier, uint32_t parity) {
    sm90::mbarrier_wait(barrier, parity);
    __syncwarp();  // wgmma is .aligned: the whole warp leaves the wait loop before it
  };
  // Zeroes rows [first_row, kBlockN) of a landed K/V tile, all 128 bytes of each row in every column block (the
  // swizzle permutes 16-byte chunks within a row only), shared by both consumers; the proxy fence and the
  // consumers' barrier make the zeros visible to the wgmma (async proxy) that either consumer issues next.
  const auto zero_rows_from = [&](T* tile, int first_row) {
    constexpr int kChunksPerRow = C::kColBlocks * 8;
    uint4* const chunks = reinterpret_cast<uint4*>(tile);
    for (int i = first_row * kChunksPerRow + consumer * 128 + tid; i < kBlockN * kChunksPerRow;
         i += 128 * C::kConsumers) {
      const int row = i / kChunksPerRow, block = i % kChunksPerRow / 8;
      chunks[(block * kBlockN + row) * 8 + i % 8] = make_uint4(0, 0, 0, 0);
    }
    sm90::fence_proxy_async_shared();
    sm90::named_barrier_sync(1, 128 * C::kConsumers);
  };

  if (n_tiles > 0) {
    float s[kBlockN / 8][4];
    uint32_t p_frag[kBlockN / 16][4];
    auto& s_acc = reinterpret_cast<float(&)[kBlockN / 2]>(s);
    auto& o_acc = reinterpret_cast<float(&)[kHeadDim / 2]>(o);
    auto& p_regs = reinterpret_cast<uint32_t(&)[kBlockN / 4]>(p_frag);
    // The register operands of the P V wgmma (O, P): fenced before its wgmma.fence and after the wait for it.
    const auto fence_pv_operands = [&] {
      sm90::fence_operands(o_acc);
      sm90::fence_operands(p_regs);
    };
    // S = Q K^T over the head dim, one committed group: 4 k16 steps per 64-column swizzle block (+32 bytes = +2 in
    // the descriptor).
    const auto issue_qk = [&](int stage) {
      sm90::fence_operands(s_acc);
      sm90::wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kHeadDim / 16; ++ks) {
        const int c = ks / 4, step = 2 * (ks % 4);
        const uint64_t a = sm90::wgmma_descriptor_sw128(q_tile + (c * kBlockM + consumer * 64) * kCols) + step;
        const uint64_t b = sm90::wgmma_descriptor_sw128(k_tile(stage) + c * kBlockN * kCols) + step;
        sm90::wgmma_ss<T, kBlockN, 0>(s_acc, a, b, ks > 0);
      }
      sm90::wgmma_commit();
    };
    // O += P V over the keys, one committed group: 16 keys (2048 bytes of V rows) per step; V's head-dim blocks
    // are a tile apart. Its own wgmma.fence: the wait for V between the two groups is a branch, across which
    // ptxas would otherwise not trust the registers and serialize (C7519).
    const auto issue_pv = [&](int stage) {
      fence_pv_operands();
      sm90::wgmma_fence();
#pragma unroll
      for (int kc = 0; kc < kBlockN / 16; ++kc) {
        const uint64_t b = sm90::wgmma_descriptor_mn_sw128(v_tile(stage) + kc * 16 * kCols, kBlockN * kCols * 2);
        sm90::wgmma_rs<T, kHeadDim, 1>(o_acc, p_frag[kc], b, true);
      }
      sm90::wgmma_commit();
    };
    // The softmax of the fresh S of tile `tile`; returns the factor O must be rescaled by.
    const auto softmax_of = [&](int tile, float (&alpha)[2]) {
      const int n0 = tile * kBlockN;
      if (n0 + kBlockN > keys.unmasked_end) mask_scores(s, kCausal, row0, n0, bounds.len_q, bounds.len_k);
      softmax.update(s, p.scale_log2, alpha);
    };
    const auto pack_probabilities = [&] {
#pragma unroll
      for (int kc = 0; kc < kBlockN / 16; ++kc) probabilities_fragment<T>(p_frag[kc], s, kc);
    };

    wait(q_full, 0);
    wait(&k_full[0], 0);
    issue_qk(0);
    sm90::wgmma_wait<0>();
    sm90::fence_operands(s_acc);
    sm90::mbarrier_arrive(&k_empty[0]);
    float alpha[2];
    softmax_of(0, alpha);
    pack_probabilities();

    for (int tile = 1; tile < n_tiles; ++tile) {
      const int stage = tile % kStages, previous = (tile - 1) % kStages;
      wait(&k_full[stage], (tile / kStages) & 1);
      issue_qk(stage);
      wait(&v_full[previous], ((tile - 1) / kStages) & 1);
      issue_pv(previous);
      sm90::wgmma_wait<1>();  // S of this tile; P V of the previous one may still run
      sm90::fence_operands(s_acc);
      sm90::mbarrier_arrive(&k_empty[stage]);
      softmax_of(tile, alpha);
      sm90::wgmma_wait<0>();
      fence_pv_operands();
      sm90::mbarrier_arrive(&v_empty[previous]);
      OnlineSoftmax::rescale(o, alpha);
      pack_probabilities();
    }
    const int last = (n_tiles - 1) % kStages;
    wait(&v_full[last], ((n_tiles - 1) / kStages) & 1);
    const int rows_in_sequence = bounds.len_k - (n_tiles - 1) * kBlockN;  // of the last tile
    if (rows_in_sequence < kBlockN) zero_rows_from(v_tile(last), rows_in_sequence);
    issue_pv(last);
    sm90::wgmma_wait<0>();
    fence_pv_operands();
    sm90::mbarrier_arrive(&v_empty[last]);
  }

  // Epilogue: O / l through this warp's own rows of the Q tile (its wgmma are done), with the tile's 128-byte
  // swizzle so that both the fragment writes and the 16-byte row reads are conflict-free.
  const SequenceHead<T> seq = sequence_head<T>(p, batch, head);
  const auto staged = [&](int row, int col) {  // row in the block's tile, col in the head dim
    return q_tile + ((col / kCols) * kBlockM + row) * kCols + (((col % kCols) / 8) ^ (row % 8)) * 8 + col % 8;
  };
  store_warp_output<kHeadDim>(o, softmax, seq, p.out_row_stride, m0 + warp_row,
                              [&](int r, int col) { return staged(warp_row + r, col); });
#endif
}

// A 4-D map (head_dim, rows, heads, batches) of q, k or v, in boxes of 64 x box_rows x 1 x 1, 128-byte swizzled.
template <typename T>
cudaError_t sm90_tensor_map(CUtensorMap* map, const void* base, int head_dim, int rows, int heads, int batches,
                            int64_t row_stride, int64_t head_stride, int64_t batch_stride, int box_rows) {
  const cuuint64_t dims[4] = {cuuint64_t(head_dim), cuuint64_t(rows), cuuint64_t(heads), cuuint64_t(batches)};
  // Byte strides of dims 1..3; a batch of one (packed) still needs a valid stride.
  const cuuint64_t strides[3] = {cuuint64_t(row_stride) * 2, cuuint64_t(head_stride) * 2,
                                 cuuint64_t(batches > 1 ? batch_stride : row_stride) * 2};
  const cuuint32_t box[4] = {64, cuuint32_t(box_rows), 1, 1};
  constexpr CUtensorMapDataType kType =
      std::is_same_v<T, __nv_bfloat16> ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  return encode_tiled_sw128(map, kType, 4, base, dims, strides, box);
}

template <typename T, int kHeadDim>
cudaError_t flash_forward_sm90(const FlashAttentionParams& p, cudaStream_t stream) {
  using C = Sm90Config<kHeadDim>;
  const bool packed = p.cu_seqlens_q != nullptr;
  const int batches = packed ? 1 : p.batch;
  const int q_rows = packed ? p.total_q : p.seqlen_q, k_rows = packed ? p.total_k : p.seqlen_k;
  Sm90TensorMaps maps{};
  cudaError_t error = sm90_tensor_map<T>(&maps.q, p.q, kHeadDim, q_rows, p.q_heads, batches, p.q_row_stride,
                                         p.q_head_stride, p.q_batch_stride, C::kBlockM);
  if (error == cudaSuccess && k_rows > 0) {
    error = sm90_tensor_map<T>(&maps.k, p.k, kHeadDim, k_rows, p.kv_heads, batches, p.k_row_stride,
                               p.k_head_stride, p.k_batch_stride, C::kBlockN);
  }
  if (error == cudaSuccess && k_rows > 0) {
    error = sm90_tensor_map<T>(&maps.v, p.v, kHeadDim, k_rows, p.kv_heads, batches, p.v_row_stride,
                               p.v_head_stride, p.v_batch_stride, C::kBlockN);
  }
  if (error != cudaSuccess) return error;
  const auto kernel = p.causal ? flash_forward_sm90_kernel<T, kHeadDim, true>
                               : flash_forward_sm90_kernel<T, kHeadDim, false>;
  error = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSharedBytes);
  if (error != cudaSuccess) return error;
  const dim3 grid((p.seqlen_q + C::kBlockM - 1) / C::kBlockM, p.q_heads, p.batch);
  kernel<<<grid, C::kThreads, C::kSharedBytes, stream>>>(maps, p);
  return cudaGetLastError();
}

}  // namespace flash
}  // namespace neva
