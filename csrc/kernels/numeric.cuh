// Shared device helpers of the memory-bound kernels: float conversions of the three storage types, 16-byte
// vectors of them, and warp / block sums. Conversions are explicit functions because torch's build defines
// __CUDA_NO_HALF_OPERATORS__ and friends.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace neva {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// 16 bytes of T: the unit of every vectorized global and shared memory access here.
template <typename T>
struct Vec16 {
  static constexpr int kSize = 16 / sizeof(T);
  union {
    uint4 raw;
    T elems[kSize];
  };

  __device__ __forceinline__ void load(const T* p) { raw = *reinterpret_cast<const uint4*>(p); }
  __device__ __forceinline__ void store(T* p) const { *reinterpret_cast<uint4*>(p) = raw; }
  __device__ __forceinline__ float get(int i) const { return to_float(elems[i]); }
  __device__ __forceinline__ void set(int i, float v) { elems[i] = from_float<T>(v); }
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// The sum of v over the whole block, returned to every thread. `scratch` holds 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.f;
  v = warp_sum(v);
  __syncthreads();  // scratch may be reused by the caller's next reduction
  return v;
}

// Elements from p to the next 16-byte boundary (0 when p is aligned).
template <typename T>
__device__ __forceinline__ int64_t elements_to_alignment(const T* p) {
  return ((16 - reinterpret_cast<uintptr_t>(p) % 16) % 16) / sizeof(T);
}

}  // namespace neva
