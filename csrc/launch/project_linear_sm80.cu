#include "../kernels/gemm_sm80.cuh"
#include "launch.h"

namespace neva {

cudaError_t launch_linear_sm80(DType dtype, const LinearParams& params, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat16: return gemm_sm80::linear<__half>(params, stream);
    case DType::kBFloat16: return gemm_sm80::linear<__nv_bfloat16>(params, stream);
    default: return cudaErrorInvalidValue;  // tensor cores take 16-bit inputs here
  }
}

}  // namespace neva
