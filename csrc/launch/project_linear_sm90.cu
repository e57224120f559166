// The wgmma + TMA projector GEMM: its tensor maps (built on the host for each call) and its launch.
#include "../kernels/gemm_sm90.cuh"
#include "../kernels/tensor_map.h"
#include "launch.h"

namespace neva {
namespace {

// A map of the row-major [rows, k] operand at `base` in boxes of box_rows x kBlockK, 128-byte swizzled.
cudaError_t tile_map(CUtensorMap* map, DType dtype, const void* base, int64_t rows, int64_t k, int64_t row_stride,
                     int box_rows) {
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(row_stride) * 2};  // bytes; the innermost is implied
  const cuuint32_t box[2] = {gemm_sm90::kBlockK, static_cast<cuuint32_t>(box_rows)};
  return encode_tiled_sw128(
      map, dtype == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, base,
      dims, strides, box);
}

template <typename T>
cudaError_t launch(DType dtype, const LinearParams& p, cudaStream_t stream) {
  using namespace gemm_sm90;
  const int64_t tiles = ((p.m + kBlockM - 1) / kBlockM) * ((p.n + kBlockN - 1) / kBlockN);
  if (tiles == 0) return cudaSuccess;
  if (tiles > INT32_MAX || p.m > INT32_MAX || p.n > INT32_MAX || p.k > INT32_MAX) return cudaErrorInvalidValue;
  CUtensorMap x_map, w_map;
  cudaError_t status = tile_map(&x_map, dtype, p.x, p.m, p.k, p.x_row_stride, kBlockM);
  if (status == cudaSuccess) status = tile_map(&w_map, dtype, p.w, p.n, p.k, p.w_row_stride, kBlockN);
  if (status == cudaSuccess) {
    status = cudaFuncSetAttribute(linear_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, shared_bytes());
  }
  if (status != cudaSuccess) return status;
  linear_kernel<T><<<static_cast<unsigned>(tiles), kThreads, shared_bytes(), stream>>>(x_map, w_map, p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_linear_sm90(DType dtype, const LinearParams& params, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat16: return launch<__half>(dtype, params, stream);
    case DType::kBFloat16: return launch<__nv_bfloat16>(dtype, params, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace neva
