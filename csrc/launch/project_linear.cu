#include "launch.h"

namespace neva {

bool linear_sm90_runs_here() { return false; }  // the wgmma + TMA kernel is not written yet

cudaError_t launch_linear(DType dtype, const LinearParams& params, GemmKernel kernel, cudaStream_t stream) {
  switch (kernel) {
    case GemmKernel::kAuto:
    case GemmKernel::kSm80: return launch_linear_sm80(dtype, params, stream);
    case GemmKernel::kSm90: return cudaErrorNotSupported;
  }
  return cudaErrorInvalidValue;
}

}  // namespace neva
