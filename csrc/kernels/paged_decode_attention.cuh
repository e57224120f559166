// Paged decode attention: one query token per sequence over its paged K/V cache, flash-decoding style.
//
// One block per (split, KV head, sequence) serves every query head of that KV head, so each K/V page is read
// from memory once per KV head. K/V tiles of kTile tokens are staged in shared memory, double buffered:
//   - sm_80 and any non-"a" build: cp.async (LDGSTS), 16 bytes per thread per copy;
//   - sm_90a: cp.async.bulk, one bulk copy per token row, completing on an mbarrier (no register staging, and
//     a handful of threads issue a whole tile).
// The build picks the variant per cubin, so the driver's choice of cubin for the device picks it at run time.
//
// Threads work in lane groups of 8: a group owns one query head and every groups_per_head-th token of a tile;
// its 8 lanes split the head dimension in 16-byte chunks (8 lanes x 16 bytes = one 128-byte row segment per
// quarter warp: conflict-free shared loads). Each group keeps its own online softmax (max, sum, accumulator),
// updated once per kBatch tokens; the groups of a head merge through shared memory at the end. With num_splits > 1 each block writes its
// normalized partial output and base-2 log-sum-exp, and merge_splits_kernel combines them.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "numeric.cuh"
#include "params.h"
#include "tensor_core_sm90.cuh"

namespace neva {
namespace decode {

constexpr int kLanes = 8;          // lanes per group: one query head, one token at a time
constexpr int kMaxThreads = 256;   // up to 32 query heads per KV head
constexpr int kTileBytes = 8192;   // of K (and again of V) per pipeline stage
constexpr int kMergeThreads = 64;
constexpr int kBatch = 4;          // tokens a lane group scores before it updates its running softmax

__host__ __device__ constexpr int tile_tokens(int element_bytes, int head_dim) {
  int tokens = 64;
  while (tokens > 8 && tokens * head_dim * element_bytes > kTileBytes) tokens /= 2;
  return tokens;
}

inline int threads_for_group(int group) { return group <= 16 ? 128 : (group * kLanes + 31) / 32 * 32; }

inline size_t shared_bytes(int element_bytes, int head_dim, int group) {
  const int groups = threads_for_group(group) / kLanes;
  const size_t tiles = size_t(4) * tile_tokens(element_bytes, head_dim) * head_dim * element_bytes;
  const size_t merge = groups / group > 1 ? size_t(groups) * (head_dim + 2) * sizeof(float) : 0;
  return std::max(tiles, merge);
}

// ---- the two tile loaders -----------------------------------------------------------------------------

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Where token `token` of this (sequence, KV head) lives: the element offset of its row in the cache.
struct PageWalk {
  const int32_t* table_row;
  int block_size, kv_heads, kv_head, head_dim;
  __device__ __forceinline__ int64_t row(int token) const {
    const int64_t page = table_row[token / block_size];
    return ((page * block_size + token % block_size) * kv_heads + kv_head) * head_dim;
  }
};

template <typename T, int kHeadDim, int kTile>
struct CpAsyncTiles {
  static constexpr int kChunks = kHeadDim * int(sizeof(T)) / 16;

  __device__ __forceinline__ void init() {}

  // Copies the tile's tokens [first, first + count) of K and V into stage buffers k_dst / v_dst.
  __device__ __forceinline__ void issue(const T* k_cache, const T* v_cache, const PageWalk& walk, int first,
                                        int count, T* k_dst, T* v_dst, int /*stage*/) {
    for (int i = threadIdx.x; i < count * kChunks; i += blockDim.x) {
      const int t = i / kChunks, chunk = i % kChunks;
      const int64_t src = walk.row(first + t) + chunk * (16 / sizeof(T));
      const int dst = t * kHeadDim + chunk * (16 / sizeof(T));
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(k_dst + dst)),
                   "l"(k_cache + src));
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(v_dst + dst)),
                   "l"(v_cache + src));
    }
    asm volatile("cp.async.commit_group;\n" ::);
  }

  // Waits for tile `tile` (stage `stage`); `more_in_flight`: the next tile was issued after it.
  __device__ __forceinline__ void wait(int /*tile*/, int /*stage*/, bool more_in_flight) {
    if (more_in_flight) {
      asm volatile("cp.async.wait_group 1;\n" ::);
    } else {
      asm volatile("cp.async.wait_group 0;\n" ::);
    }
    __syncthreads();  // every thread's copies of the tile are visible to all
  }
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
template <typename T, int kHeadDim, int kTile>
struct BulkCopyTiles {
  static constexpr int kRowBytes = kHeadDim * int(sizeof(T));
  uint64_t* barriers;  // one per stage, in shared memory

  __device__ __forceinline__ void init() {
    __shared__ __align__(8) uint64_t stage_barriers[2];
    barriers = stage_barriers;
    if (threadIdx.x == 0) {
      for (int s = 0; s < 2; ++s) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(shared_address(&barriers[s])));
      }
      asm volatile("fence.mbarrier_init.release.cluster;\n" ::);
    }
    __syncthreads();
  }

  __device__ __forceinline__ void issue(const T* k_cache, const T* v_cache, const PageWalk& walk, int first,
                                        int count, T* k_dst, T* v_dst, int stage) {
    const uint32_t barrier = shared_address(&barriers[stage]);
    if (threadIdx.x == 0) {  // the one arrival of this phase; it completes once all bytes have landed
      asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(barrier),
                   "r"(2 * count * kRowBytes));
    }
    for (int t = threadIdx.x; t < count; t += blockDim.x) {
      const int64_t src = walk.row(first + t);
      asm volatile(
          "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
              shared_address(k_dst + t * kHeadDim)),
          "l"(k_cache + src), "r"(kRowBytes), "r"(barrier)
          : "memory");
      asm volatile(
          "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
              shared_address(v_dst + t * kHeadDim)),
          "l"(v_cache + src), "r"(kRowBytes), "r"(barrier)
          : "memory");
    }
  }

  // Stage s serves tiles s, s + 2, ...: tile i completes phase i / 2 of its barrier.
  __device__ __forceinline__ void wait(int tile, int stage, bool /*more_in_flight*/) {
    sm90::mbarrier_wait(&barriers[stage], (tile / 2) & 1);
  }
};
template <typename T, int kHeadDim, int kTile>
using Tiles = BulkCopyTiles<T, kHeadDim, kTile>;
#else
template <typename T, int kHeadDim, int kTile>
using Tiles = CpAsyncTiles<T, kHeadDim, kTile>;
#endif

// ---- the kernels ------------------------------------------------------------------------------------

template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kMaxThreads) paged_decode_kernel(const PagedDecodeParams p) {
  using V = Vec16<T>;
  constexpr int kVec = V::kSize;
  constexpr int kChunks = kHeadDim / kVec;
  constexpr int kChunksPerLane = (kChunks + kLanes - 1) / kLanes;
  constexpr int kTile = tile_tokens(sizeof(T), kHeadDim);
  static_assert(kHeadDim % kVec == 0, "head_dim rows must be whole 16-byte vectors");

  extern __shared__ __align__(128) unsigned char shared[];
  T* k_tiles = reinterpret_cast<T*>(shared);  // [2][kTile][kHeadDim]
  T* v_tiles = k_tiles + 2 * kTile * kHeadDim;

  const int split = blockIdx.x, kv_head = blockIdx.y, batch = blockIdx.z;
  const int group = p.q_heads / p.kv_heads;
  const int groups = blockDim.x / kLanes, lane_group = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int groups_per_head = groups / group;
  const int head_in_group = lane_group / groups_per_head, slot = lane_group % groups_per_head;
  const bool active = head_in_group < group;
  const int q_head = kv_head * group + head_in_group;
  const unsigned group_mask = 0xffu << (threadIdx.x % 32 / kLanes * kLanes);

  // Tokens past the table's width have no block: cut there rather than read block ids past the row (nothing
  // behind a direct call of the C++ op checks seq_lens).
  const int seq_len = min(p.seq_lens[batch], p.table_width * p.block_size);
  const int start = split * p.tokens_per_split;
  const int end = min(start + p.tokens_per_split, seq_len);
  const int num_tiles = end > start ? (end - start + kTile - 1) / kTile : 0;

  // q pre-scaled so that scores come out in base 2: exp(s * scale) = exp2(s * scale * log2(e)).
  float q[kChunksPerLane][kVec], acc[kChunksPerLane][kVec];
  const float scale_log2 = p.softmax_scale * 1.4426950408889634f;
  const T* q_row = static_cast<const T*>(p.q) + batch * p.q_batch_stride + int64_t(q_head) * p.q_head_stride;
#pragma unroll
  for (int j = 0; j < kChunksPerLane; ++j) {
    const int chunk = lane + j * kLanes;
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      q[j][i] = active && chunk < kChunks ? to_float(q_row[chunk * kVec + i]) * scale_log2 : 0.f;
      acc[j][i] = 0.f;
    }
  }
  float running_max = -INFINITY, running_sum = 0.f;

  const T* k_cache = static_cast<const T*>(p.k_cache);
  const T* v_cache = static_cast<const T*>(p.v_cache);
  const PageWalk walk{p.block_tables + batch * p.block_table_stride, p.block_size, p.kv_heads, kv_head, kHeadDim};
  Tiles<T, kHeadDim, kTile> tiles;
  tiles.init();
  const auto issue = [&](int tile) {
    const int first = start + tile * kTile, stage = tile % 2;
    tiles.issue(k_cache, v_cache, walk, first, min(kTile, end - first), k_tiles + stage * kTile * kHeadDim,
                v_tiles + stage * kTile * kHeadDim, stage);
  };
  if (num_tiles > 0) issue(0);
  for (int tile = 0; tile < num_tiles; ++tile) {
    const bool prefetch = tile + 1 < num_tiles;
    if (prefetch) issue(tile + 1);
    const int stage = tile % 2;
    tiles.wait(tile, stage, prefetch);
    const T* k_tile = k_tiles + stage * kTile * kHeadDim;
    const T* v_tile = v_tiles + stage * kTile * kHeadDim;
    const int count = min(kTile, end - (start + tile * kTile));
    if (active) {
      // kBatch tokens at a time: their dot products and shuffles are independent (instruction-level
      // parallelism), and the running max and accumulator are rescaled once per batch.
      for (int first = slot; first < count; first += kBatch * groups_per_head) {
        float scores[kBatch];
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
          const int t = first + b * groups_per_head;
          scores[b] = 0.f;
#pragma unroll
          for (int j = 0; j < kChunksPerLane; ++j) {
            const int chunk = lane + j * kLanes;
            if (t < count && chunk < kChunks) {
              V k;
              k.load(k_tile + t * kHeadDim + chunk * kVec);
#pragma unroll
              for (int i = 0; i < kVec; ++i) scores[b] += q[j][i] * k.get(i);
            }
          }
        }
#pragma unroll
        for (int offset = kLanes / 2; offset > 0; offset /= 2) {
#pragma unroll
          for (int b = 0; b < kBatch; ++b) scores[b] += __shfl_xor_sync(group_mask, scores[b], offset);
        }
        float new_max = running_max;
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
          if (first + b * groups_per_head < count) new_max = fmaxf(new_max, scores[b]);
        }
        // The batch's first token exists, so new_max is finite; the correction is 0 while running_max is -inf.
        const float correction = exp2f(running_max - new_max);
        running_max = new_max;
        running_sum *= correction;
#pragma unroll
        for (int j = 0; j < kChunksPerLane; ++j) {
#pragma unroll
          for (int i = 0; i < kVec; ++i) acc[j][i] *= correction;
        }
#pragma unroll
        for (int b = 0; b < kBatch; ++b) {
          const int t = first + b * groups_per_head;
          if (t >= count) break;
          const float weight = exp2f(scores[b] - new_max);
          running_sum += weight;
#pragma unroll
          for (int j = 0; j < kChunksPerLane; ++j) {
            const int chunk = lane + j * kLanes;
            if (chunk < kChunks) {
              V v;
              v.load(v_tile + t * kHeadDim + chunk * kVec);
#pragma unroll
              for (int i = 0; i < kVec; ++i) acc[j][i] += weight * v.get(i);
            }
          }
        }
      }
    }
    __syncthreads();  // the stage is free for the tile after next
  }

  // The groups of one head merge their (max, sum, accumulator) through shared memory (the tiles are done).
  if (groups_per_head > 1) {
    float* merge_acc = reinterpret_cast<float*>(shared);  // [groups][kHeadDim]
    float* merge_max = merge_acc + groups * kHeadDim;
    float* merge_sum = merge_max + groups;
    if (active) {
#pragma unroll
      for (int j = 0; j < kChunksPerLane; ++j) {
        const int chunk = lane + j * kLanes;
        if (chunk < kChunks) {
#pragma unroll
          for (int i = 0; i < kVec; ++i) merge_acc[lane_group * kHeadDim + chunk * kVec + i] = acc[j][i];
        }
      }
      if (lane == 0) {
        merge_max[lane_group] = running_max;
        merge_sum[lane_group] = running_sum;
      }
    }
    __syncthreads();
    if (active && slot == 0) {
      const int first_group = lane_group;
      float top = -INFINITY;
      for (int g = 0; g < groups_per_head; ++g) top = fmaxf(top, merge_max[first_group + g]);
      running_max = top;
      running_sum = 0.f;
#pragma unroll
      for (int j = 0; j < kChunksPerLane; ++j) {
#pragma unroll
        for (int i = 0; i < kVec; ++i) acc[j][i] = 0.f;
      }
      // Groups that saw no token have max -inf and weight 0; if no group saw one, top is -inf: skip.
      for (int g = 0; g < groups_per_head && top != -INFINITY; ++g) {
        const float w = exp2f(merge_max[first_group + g] - top);
        running_sum += w * merge_sum[first_group + g];
#pragma unroll
        for (int j = 0; j < kChunksPerLane; ++j) {
          const int chunk = lane + j * kLanes;
          if (chunk < kChunks) {
#pragma unroll
            for (int i = 0; i < kVec; ++i) acc[j][i] += w * merge_acc[(first_group + g) * kHeadDim + chunk * kVec + i];
          }
        }
      }
    }
  }

  if (!active || slot != 0) return;
  // A split (or sequence) without tokens has sum 0: its output is 0 and its log-sum-exp -inf.
  const float inverse_sum = running_sum > 0.f ? 1.f / running_sum : 0.f;
  const int64_t row = int64_t(batch) * p.q_heads + q_head;
  if (p.num_splits == 1) {
    T* out = static_cast<T*>(p.out) + row * kHeadDim;
#pragma unroll
    for (int j = 0; j < kChunksPerLane; ++j) {
      const int chunk = lane + j * kLanes;
      if (chunk < kChunks) {
        V o;
#pragma unroll
        for (int i = 0; i < kVec; ++i) o.set(i, acc[j][i] * inverse_sum);
        o.store(out + chunk * kVec);
      }
    }
    return;
  }
  const int64_t partial = row * p.num_splits + split;
  float* out = p.partial_out + partial * kHeadDim;
#pragma unroll
  for (int j = 0; j < kChunksPerLane; ++j) {
    const int chunk = lane + j * kLanes;
    if (chunk < kChunks) {
#pragma unroll
      for (int i = 0; i < kVec; i += 4) {
        *reinterpret_cast<float4*>(out + chunk * kVec + i) =
            make_float4(acc[j][i] * inverse_sum, acc[j][i + 1] * inverse_sum, acc[j][i + 2] * inverse_sum,
                        acc[j][i + 3] * inverse_sum);
      }
    }
  }
  if (lane == 0) p.partial_lse[partial] = running_sum > 0.f ? running_max + log2f(running_sum) : -INFINITY;
}

// out[b, h] = sum_s 2^(lse_s - top) o_s / sum_s 2^(lse_s - top) over the splits that saw keys; else 0.
template <typename T>
__global__ void __launch_bounds__(kMergeThreads) merge_splits_kernel(const PagedDecodeParams p) {
  const int64_t row = blockIdx.x;
  const float* lse = p.partial_lse + row * p.num_splits;
  const float* partial = p.partial_out + row * p.num_splits * p.head_dim;
  float top = -INFINITY;
  for (int s = 0; s < p.num_splits; ++s) top = fmaxf(top, lse[s]);
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    float total = 0.f, acc = 0.f;
    for (int s = 0; s < p.num_splits && top != -INFINITY; ++s) {
      if (lse[s] == -INFINITY) continue;
      const float w = exp2f(lse[s] - top);
      total += w;
      acc += w * partial[s * p.head_dim + d];
    }
    static_cast<T*>(p.out)[row * p.head_dim + d] = from_float<T>(total > 0.f ? acc / total : 0.f);
  }
}

}  // namespace decode

template <typename T, int kHeadDim>
cudaError_t paged_decode_attention(const PagedDecodeParams& p, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  if (p.num_splits > 1 && int64_t(p.batch) * p.q_heads > INT32_MAX) return cudaErrorInvalidValue;  // merge grid.x
  const int group = p.q_heads / p.kv_heads;
  const dim3 grid(p.num_splits, p.kv_heads, p.batch);
  const size_t shared = decode::shared_bytes(sizeof(T), kHeadDim, group);
  decode::paged_decode_kernel<T, kHeadDim><<<grid, decode::threads_for_group(group), shared, stream>>>(p);
  if (p.num_splits > 1) {
    decode::merge_splits_kernel<T>
        <<<static_cast<unsigned>(p.batch * p.q_heads), decode::kMergeThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace neva
