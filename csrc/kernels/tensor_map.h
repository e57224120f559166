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

// Encodes a tiled map of `rank` dims (innermost first; byte strides of dims 1.. only) whose boxes have 128-byte
// rows, read with 128-byte swizzle and zero fill outside the tensor. cudaErrorNotSupported where the driver lacks
// the entry point, cudaErrorInvalidValue where it refuses the map.
inline cudaError_t encode_tiled_sw128(CUtensorMap* map, CUtensorMapDataType type, cuuint32_t rank, const void* base,
                                      const cuuint64_t* dims, const cuuint64_t* byte_strides, const cuuint32_t* box) {
  const auto encode = tensor_map_encode_tiled();
  if (encode == nullptr) return cudaErrorNotSupported;
  const cuuint32_t element_strides[5] = {1, 1, 1, 1, 1};
  const CUresult result = encode(map, type, rank, const_cast<void*>(base), dims, byte_strides, box, element_strides,
                                 CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                 CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return result == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

}  // namespace neva
