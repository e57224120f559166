// append_kv_cache: copy each new token's K and V rows ([kv_heads, head_dim]) into its slot of the paged caches.
// One block per token; a pure copy, so the kernel is templated on the element size, not the dtype, and moves
// 16-byte units whenever every row and head starts 16-byte aligned (kVectorized), else single elements.
//
// No sm90 variant: each token moves only kv_heads * head_dim elements to one scattered slot; a bulk copy would
// stage them through shared memory behind an mbarrier for no gain over direct 16-byte loads and stores.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <cuda_runtime.h>

#include "params.h"

namespace neva {
namespace append {

constexpr int kMaxThreads = 256;

template <int kElementBytes>
struct Element;
template <>
struct Element<2> { using type = uint16_t; };
template <>
struct Element<4> { using type = uint32_t; };

template <int kElementBytes, typename Slot, bool kVectorized>
__global__ void __launch_bounds__(kMaxThreads) append_kv_cache_kernel(const AppendKvCacheParams p) {
  using E = typename Element<kElementBytes>::type;
  using Unit = std::conditional_t<kVectorized, uint4, E>;
  constexpr int kPerUnit = sizeof(Unit) / sizeof(E);
  const int64_t row_elements = p.kv_heads * p.head_dim;
  for (int64_t token = blockIdx.x; token < p.num_tokens; token += gridDim.x) {
    const int64_t slot = static_cast<const Slot*>(p.slot_mapping)[token];
    if (slot < 0) continue;  // a padding token
    const E* k = static_cast<const E*>(p.k) + token * p.k_token_stride;
    const E* v = static_cast<const E*>(p.v) + token * p.v_token_stride;
    E* k_row = static_cast<E*>(p.k_cache) + slot * row_elements;
    E* v_row = static_cast<E*>(p.v_cache) + slot * row_elements;
    for (int64_t e = int64_t(threadIdx.x) * kPerUnit; e < row_elements; e += int64_t(blockDim.x) * kPerUnit) {
      const int64_t head = e / p.head_dim, dim = e % p.head_dim;  // a unit never crosses heads
      *reinterpret_cast<Unit*>(k_row + e) = *reinterpret_cast<const Unit*>(k + head * p.k_head_stride + dim);
      *reinterpret_cast<Unit*>(v_row + e) = *reinterpret_cast<const Unit*>(v + head * p.v_head_stride + dim);
    }
  }
}

template <int kElementBytes, typename Slot>
cudaError_t launch(const AppendKvCacheParams& p, cudaStream_t stream) {
  const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  constexpr int64_t kVec = 16 / kElementBytes;
  const bool vectorized = p.head_dim % kVec == 0 && p.k_token_stride % kVec == 0 && p.k_head_stride % kVec == 0 &&
                          p.v_token_stride % kVec == 0 && p.v_head_stride % kVec == 0 && aligned(p.k) &&
                          aligned(p.v) && aligned(p.k_cache) && aligned(p.v_cache);
  const int64_t units = p.kv_heads * p.head_dim / (vectorized ? kVec : 1);
  const int threads = static_cast<int>(std::min<int64_t>(kMaxThreads, (units + 31) / 32 * 32));
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(p.num_tokens, 1 << 30)));
  if (vectorized) {
    append_kv_cache_kernel<kElementBytes, Slot, true><<<grid, threads, 0, stream>>>(p);
  } else {
    append_kv_cache_kernel<kElementBytes, Slot, false><<<grid, threads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace append

template <int kElementBytes>
cudaError_t append_kv_cache(const AppendKvCacheParams& p, cudaStream_t stream) {
  if (p.num_tokens == 0 || p.kv_heads * p.head_dim == 0) return cudaSuccess;
  return p.slot_is_int64 ? append::launch<kElementBytes, int64_t>(p, stream)
                         : append::launch<kElementBytes, int32_t>(p, stream);
}

}  // namespace neva
