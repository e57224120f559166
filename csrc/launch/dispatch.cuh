// Compile-time dispatch of the launchers: the storage type of a DType (f gets a value of that type as a tag),
// and a runtime head dim among the compiled ones (f gets std::integral_constant<int, head_dim>).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "../kernels/params.h"

namespace neva {

template <typename F>
cudaError_t with_storage_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
    case DType::kFloat32: return f(float{});
  }
  return cudaErrorInvalidValue;
}

// f(std::integral_constant<int, head_dim>{}) when head_dim is one of kHeadDims, else cudaErrorInvalidValue.
template <int... kHeadDims, typename F>
cudaError_t with_head_dim(int head_dim, F&& f) {
  cudaError_t result = cudaErrorInvalidValue;
  ((head_dim == kHeadDims && (result = f(std::integral_constant<int, kHeadDims>{}), true)) || ...);
  return result;
}

}  // namespace neva
