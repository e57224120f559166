#include "../kernels/row_norm.cuh"
#include "dispatch.cuh"
#include "launch.h"

namespace neva {

cudaError_t launch_row_norm(DType dtype, const RowNormParams& params, cudaStream_t stream) {
  int device = 0, major = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status == cudaSuccess) status = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (status != cudaSuccess) return status;
  const RowNormTuning& tuning = major >= 9 ? kRowNormSm90 : kRowNormSm80;
  return with_storage_type(dtype, [&](auto tag) { return row_norm<decltype(tag)>(params, tuning, stream); });
}

}  // namespace neva
