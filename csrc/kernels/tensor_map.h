// Host side of TMA: the driver's cuTensorMapEncodeTiled, reached through the runtime's entry-point query so the
// extension needs no link against libcuda.
#pragma once
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

namespace neva {

// cuTensorMapEncodeTiled, or null where the driver lacks it.
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encode_tiled() {
  static const PFN_cuTensorMapEncodeTiled_v12000 function = [] {
    void* found = nullptr;
    cudaDriverEntryPointQueryResult status{};
    const cudaError_t error =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &found, 12000, cudaEnableDefault, &status);
    return error == cudaSuccess && status == cudaDriverEntryPointSuccess
               ? reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(found)
               : nullptr;
  }();
  return function;
}

}  // namespace neva
