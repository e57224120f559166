#include "launch.h"

namespace neva {

cudaError_t launch_linear(DType dtype, const LinearParams& params, GemmKernel kernel, cudaStream_t stream) {
  if (kernel == GemmKernel::kAuto) kernel = linear_sm90_runs_here() ? GemmKernel::kSm90 : GemmKernel::kSm80;
  switch (kernel) {
    case GemmKernel::kSm80: return launch_linear_sm80(dtype, params, stream);
    case GemmKernel::kSm90: return launch_linear_sm90(dtype, params, stream);
    case GemmKernel::kAuto: break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace neva
