#include "../kernels/rms_norm.cuh"
#include "dispatch.cuh"
#include "launch.h"

namespace neva {

cudaError_t launch_rms_norm(DType dtype, const RmsNormParams& params, cudaStream_t stream) {
  return with_storage_type(dtype, [&](auto tag) { return rms_norm<decltype(tag)>(params, stream); });
}

}  // namespace neva
