// The projector GEMM on tensor cores with mma.sync (sm_80 and later): out rows = act(x @ w^T + bias).
//
// A block computes a 128x128 tile of the output with 4 warps of 64x64. x and w tiles of 64 columns of K
// stream through a 3-stage cp.async (LDGSTS) pipeline in shared memory; fragments come out with ldmatrix and
// feed mma.sync m16n8k16 (float32 accumulation). Shared-memory rows are 128 bytes with their 16-byte chunks
// XOR-swizzled by the row index, so that both the cp.async writes and the ldmatrix reads of 8 rows hit 8
// different chunk positions (no bank conflicts). Tails in M, N and K (a multiple of 8: whole chunks) are
// zero-filled by cp.async's source size, never read past the tensors. The epilogue (bias, GELU, the scatter into the output rows) is gemm_epilogue.cuh.
//
// Tile shape and depth are the usual sm_80 choice for 16-bit GEMMs of this size (CUTLASS's 128x128_64x3 with
// 64x64 warp tiles); they await tuning on a GPU.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>

#include "gemm_epilogue.cuh"
#include "params.h"
#include "tensor_core_sm80.cuh"

namespace neva {
namespace gemm_sm80 {

constexpr int kBlockM = 128, kBlockN = 128, kBlockK = 64;
constexpr int kStages = 3;
constexpr int kWarpsM = 2, kWarpsN = 2;
constexpr int kThreads = 32 * kWarpsM * kWarpsN;
constexpr int kWarpM = kBlockM / kWarpsM, kWarpN = kBlockN / kWarpsN;  // 64 x 64
constexpr int kFragsM = kWarpM / 16, kFragsN = kWarpN / 8;              // m16 and n8 fragments per warp
constexpr int kChunksPerRow = kBlockK * 2 / 16;                          // 16-byte chunks in a 128-byte row
constexpr int kGroupM = 8;

constexpr int stage_elements() { return (kBlockM + kBlockN) * kBlockK; }
constexpr int shared_bytes() { return kStages * stage_elements() * 2; }
static_assert(kChunksPerRow == 8, "the swizzle assumes 128-byte rows of 8 chunks");

// Element offset of (row, chunk) in a tile of 128-byte rows, the chunk XOR-swizzled by the row.
__device__ __forceinline__ int swizzled(int row, int chunk) {
  return row * kBlockK + ((chunk ^ (row % 8)) * 8);
}

// The rows of one operand tile this thread copies: rows first_row + i * kRowStep, its chunk fixed.
template <typename T, int kRows>
struct TileLoader {
  static constexpr int kRowStep = kThreads / kChunksPerRow;
  static constexpr int kCopies = kRows / kRowStep;
  const T* base;  // the operand
  const T* src;   // element (first_row, chunk * 8) of the operand's tile
  int64_t row_stride;
  int rows_left;  // operand rows from the tile's first row to the operand's end
  int first_row, chunk;

  __device__ __forceinline__ TileLoader(const T* operand, int64_t stride, int64_t tile_row0, int64_t rows)
      : base(operand), row_stride(stride) {
    first_row = threadIdx.x / kChunksPerRow;
    chunk = threadIdx.x % kChunksPerRow;
    rows_left = static_cast<int>(std::min<int64_t>(rows - tile_row0, kRows));
    src = operand + (tile_row0 + first_row) * stride + chunk * 8;
  }

  // Copies columns [k0, k0 + kBlockK) of the tile into dst; chunks at or past k (a multiple of 8) read as zero.
  __device__ __forceinline__ void load(T* dst, int64_t k0, int64_t k) const {
    const bool column_inside = k0 + chunk * 8 < k;
#pragma unroll
    for (int i = 0; i < kCopies; ++i) {
      const int row = first_row + i * kRowStep;
      const bool inside = column_inside && row < rows_left;
      const T* from = inside ? src + int64_t(i) * kRowStep * row_stride + k0 : base;  // base: a valid address
      sm80::cp_async_16(dst + swizzled(row, chunk), from, inside);
    }
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) linear_kernel(const LinearParams p) {
  extern __shared__ __align__(128) unsigned char shared[];
  T* stages = reinterpret_cast<T*>(shared);
  const int tiles_m = static_cast<int>((p.m + kBlockM - 1) / kBlockM);
  const int tiles_n = static_cast<int>((p.n + kBlockN - 1) / kBlockN);
  int tile_m, tile_n;
  gemm::tile_of_block<kGroupM>(blockIdx.x, tiles_m, tiles_n, tile_m, tile_n);
  const int64_t m0 = int64_t(tile_m) * kBlockM, n0 = int64_t(tile_n) * kBlockN;

  const TileLoader<T, kBlockM> x_loader(static_cast<const T*>(p.x), p.x_row_stride, m0, p.m);
  const TileLoader<T, kBlockN> w_loader(static_cast<const T*>(p.w), p.w_row_stride, n0, p.n);
  const auto x_tile = [&](int stage) { return stages + stage * stage_elements(); };
  const auto w_tile = [&](int stage) { return stages + stage * stage_elements() + kBlockM * kBlockK; };
  const int k_tiles = static_cast<int>((p.k + kBlockK - 1) / kBlockK);
  const auto load_stage = [&](int kt) {
    if (kt < k_tiles) {
      x_loader.load(x_tile(kt % kStages), int64_t(kt) * kBlockK, p.k);
      w_loader.load(w_tile(kt % kStages), int64_t(kt) * kBlockK, p.k);
    }
    sm80::cp_async_commit();  // an empty group past the end keeps the wait count uniform
  };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_m = warp / kWarpsN * kWarpM, warp_n = warp % kWarpsN * kWarpN;
  float acc[kFragsM][kFragsN][4] = {};

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) load_stage(s);

  for (int kt = 0; kt < k_tiles; ++kt) {
    sm80::cp_async_wait<kStages - 2>();
    __syncthreads();  // tile kt has landed for every thread, and every warp is done with the stage refilled next
    load_stage(kt + kStages - 1);
    const T* xs = x_tile(kt % kStages);
    const T* ws = w_tile(kt % kStages);
#pragma unroll
    for (int ks = 0; ks < kBlockK / 16; ++ks) {
      uint32_t a[kFragsM][4], b[kFragsN][2];
#pragma unroll
      for (int i = 0; i < kFragsM; ++i) {
        // Lanes 0-15 address rows 0-15 at k 0-7, lanes 16-31 the same rows at k 8-15.
        const int row = warp_m + i * 16 + lane % 16;
        sm80::ldmatrix_x4(a[i], xs + swizzled(row, ks * 2 + lane / 16));
      }
#pragma unroll
      for (int j = 0; j < kFragsN; j += 2) {
        // Two n8 fragments at once: lanes 0-7 / 8-15 address n 0-7 at k 0-7 / 8-15, lanes 16-31 n 8-15.
        const int row = warp_n + j * 8 + lane % 8 + lane / 16 * 8;
        uint32_t r[4];
        sm80::ldmatrix_x4(r, ws + swizzled(row, ks * 2 + lane / 8 % 2));
        b[j][0] = r[0], b[j][1] = r[1], b[j + 1][0] = r[2], b[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < kFragsM; ++i) {
#pragma unroll
        for (int j = 0; j < kFragsN; ++j) sm80::mma_m16n8k16<T>(acc[i][j], a[i], b[j][0], b[j][1]);
      }
    }
  }
  sm80::cp_async_wait<0>();
  __syncthreads();  // the pipeline's shared memory becomes the staging tile

  using Staged = gemm::StagedTile<T, kBlockM, kBlockN>;
  static_assert(Staged::kBytes <= shared_bytes(), "the staging tile reuses the pipeline's shared memory");
  const Staged staged{reinterpret_cast<T*>(shared), p.bias ? static_cast<const T*>(p.bias) + n0 : nullptr, p.gelu,
                      static_cast<int>(std::min<int64_t>(p.n - n0, 1 << 30))};
#pragma unroll
  for (int i = 0; i < kFragsM; ++i) {
#pragma unroll
    for (int j = 0; j < kFragsN; ++j) staged.put_fragment(acc[i][j], warp_m + i * 16, warp_n + j * 8);
  }
  __syncthreads();
  staged.store(p, m0, n0, threadIdx.x, kThreads);
}

template <typename T>
cudaError_t linear(const LinearParams& p, cudaStream_t stream) {
  const int64_t tiles = ((p.m + kBlockM - 1) / kBlockM) * ((p.n + kBlockN - 1) / kBlockN);
  if (tiles == 0) return cudaSuccess;
  if (tiles > INT32_MAX) return cudaErrorInvalidValue;
  const cudaError_t status =
      cudaFuncSetAttribute(linear_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, shared_bytes());
  if (status != cudaSuccess) return status;
  linear_kernel<T><<<static_cast<unsigned>(tiles), kThreads, shared_bytes(), stream>>>(p);
  return cudaGetLastError();
}

}  // namespace gemm_sm80
}  // namespace neva
