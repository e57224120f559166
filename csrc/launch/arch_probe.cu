#include <cstring>

#include "../kernels/arch_probe.cuh"
#include "../kernels/tensor_map.h"
#include "launch.h"

namespace neva {

cudaError_t launch_arch_probe(int* out, cudaStream_t stream) { return arch_probe(out, stream); }

bool sm90a_runs_here() {
  if (std::strstr(NEVA_CUDA_ARCHS, "sm_90a") == nullptr || tensor_map_encode_tiled() == nullptr) return false;
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess ||
      major != 9 || minor != 0) {
    return false;
  }
  // The cubin the driver loads for this device: the sm_90a one when the build has it (not PTX of another arch).
  cudaFuncAttributes attributes{};
  return cudaFuncGetAttributes(&attributes, arch_probe_kernel) == cudaSuccess && attributes.binaryVersion == 90;
}

}  // namespace neva
