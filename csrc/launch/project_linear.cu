#include "launch.h"

namespace neva {

cudaError_t launch_linear(DType dtype, const LinearParams& params, KernelPath kernel, cudaStream_t stream) {
  if (kernel == KernelPath::kAuto) kernel = sm90a_runs_here() ? KernelPath::kSm90 : KernelPath::kSm80;
  switch (kernel) {
    case KernelPath::kSm80: return launch_linear_sm80(dtype, params, stream);
    case KernelPath::kSm90: return launch_linear_sm90(dtype, params, stream);
    case KernelPath::kAuto: break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace neva
