// Compile-time dispatch of the launchers: the storage type of a DType (f gets a value of that type as a tag),
// and a runtime head dim among the compiled ones (f gets std::integral_constant<int, head_dim>).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>
#include <vector>

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

// The head dims a kernel is compiled for, written once: dispatch(head_dim, f) calls
// f(std::integral_constant<int, head_dim>{}) for a listed one (else returns cudaErrorInvalidValue), and values()
// lists them at run time (error messages, and _C's compiled_shapes() op for the Python side).
template <int... kHeadDims>
struct HeadDimList {
  template <typename F>
  static cudaError_t dispatch(int head_dim, F&& f) {
    cudaError_t result = cudaErrorInvalidValue;
    ((head_dim == kHeadDims && (result = f(std::integral_constant<int, kHeadDims>{}), true)) || ...);
    return result;
  }
  static bool contains(int head_dim) { return ((head_dim == kHeadDims) || ...); }
  static std::vector<int64_t> values() { return {kHeadDims...}; }
};

}  // namespace neva
