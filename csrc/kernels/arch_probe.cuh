// A one-thread kernel that reports which compiled variant of the extension the driver picked for this GPU.
// Torch-free, like every kernel header here: raw pointers in, cudaError_t out.
#pragma once
#include <cuda_runtime.h>

namespace neva {

__global__ void arch_probe_kernel(int* out) {
#ifdef __CUDA_ARCH__
  out[0] = __CUDA_ARCH__;
#ifdef __CUDA_ARCH_FEAT_SM90_ALL
  out[1] = 1;  // compiled for sm_90a: wgmma / setmaxnreg are available
#else
  out[1] = 0;
#endif
#endif
}

// out: two ints in device memory; receives (__CUDA_ARCH__, arch-specific variant ? 1 : 0).
inline cudaError_t arch_probe(int* out, cudaStream_t stream) {
  arch_probe_kernel<<<1, 1, 0, stream>>>(out);
  return cudaGetLastError();
}

}  // namespace neva
