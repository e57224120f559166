#include "../kernels/arch_probe.cuh"
#include "launch.h"

namespace neva {

cudaError_t launch_arch_probe(int* out, cudaStream_t stream) { return arch_probe(out, stream); }

}  // namespace neva
