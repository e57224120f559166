// Host entry points of the kernels, compiled by nvcc in csrc/launch/*.cu without torch headers, so that the
// heavy torch includes stay in the few C++ files of csrc/ops/ (compiled once by the host compiler).
#pragma once
#include <cuda_runtime.h>

namespace neva {

cudaError_t launch_arch_probe(int* out, cudaStream_t stream);

}  // namespace neva
