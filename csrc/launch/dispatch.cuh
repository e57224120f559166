// Compile-time dispatch of the launchers: the storage type of a DType (f gets a value of that type as a tag).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

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

}  // namespace neva
