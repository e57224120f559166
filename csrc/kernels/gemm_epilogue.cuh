// The epilogue shared by the projector GEMM kernels (gemm_sm80.cuh, gemm_sm90.cuh): bias and GELU applied to the
// float32 accumulators in registers, the tile rounded to T and staged in shared memory, then written out in
// 16-byte row segments to the output rows (row i of the tile goes to out_rows[i] when the GEMM scatters).
//
// Both kernels hold their accumulators in the same per-warp layout: mma.sync m16n8 tiles on sm80 and the
// m64nN wgmma fragment on sm90 (four warps, each a stack of m16n8 tiles) give lane l of a warp the values at
// rows r0 + l/4 and r0 + l/4 + 8, columns c0 + 2*(l%4) + {0, 1} of each 16x8 tile. Staging goes through
// shared memory so that the global stores are whole 16-byte vectors whatever the output's row stride, and a
// scattered row is looked up once per row segment rather than once per fragment.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "numeric.cuh"
#include "params.h"
#include "tensor_core_sm80.cuh"

namespace neva {
namespace gemm {

// erf-GELU, the nn.GELU() default that LLaVA's projector uses.
__device__ __forceinline__ float gelu(float v) { return 0.5f * v * (1.f + erff(v * 0.70710678118654752f)); }

// A kBlockM x kBlockN tile of T in shared memory. Rows are padded by 16 bytes so that the fragment writes of a
// warp (8 rows x 4 lanes) fall into 32 different banks.
template <typename T, int kBlockM, int kBlockN>
struct StagedTile {
  static constexpr int kStride = kBlockN + 16 / int(sizeof(T));
  static constexpr int kBytes = kBlockM * kStride * int(sizeof(T));
  static constexpr int kChunksPerRow = kBlockN * int(sizeof(T)) / 16;

  T* data;
  const T* bias;  // already offset to the tile's first column; nullptr: no bias
  bool gelu;
  int columns_left;  // n - the tile's first column

  __device__ __forceinline__ float activate(float v, int col) const {
    if (bias != nullptr && col < columns_left) v += to_float(bias[col]);
    return gelu ? neva::gemm::gelu(v) : v;
  }

  // The four accumulators c of one 16x8 fragment whose top-left corner is (row0, col0) of the tile.
  __device__ __forceinline__ void put_fragment(const float* c, int row0, int col0) const {
    const int lane = threadIdx.x % 32;
    const int row = row0 + lane / 4, col = col0 + 2 * (lane % 4);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const uint32_t pair = sm80::pack_pair<T>(activate(c[2 * half], col), activate(c[2 * half + 1], col + 1));
      *reinterpret_cast<uint32_t*>(data + (row + 8 * half) * kStride + col) = pair;
    }
  }

  // Writes the staged tile (after a barrier that makes it visible) to rows m0.. and columns n0.. of the
  // output; `thread` in [0, threads) are the participating threads.
  __device__ __forceinline__ void store(const LinearParams& p, int64_t m0, int64_t n0, int thread,
                                        int threads) const {
    T* out = static_cast<T*>(p.out);
    for (int i = thread; i < kBlockM * kChunksPerRow; i += threads) {
      const int row = i / kChunksPerRow, chunk = i % kChunksPerRow;
      const int64_t m = m0 + row;
      if (m >= p.m) break;  // rows grow with i
      const int64_t out_row = p.out_rows != nullptr ? p.out_rows[m] : m;
      const int col = chunk * Vec16<T>::kSize;
      if (out_row < 0 || col >= columns_left) continue;
      T* dst = out + out_row * p.out_row_stride + n0 + col;
      const T* src = data + row * kStride + col;
      if (col + Vec16<T>::kSize <= columns_left && reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
      } else {
        const int count = min(Vec16<T>::kSize, columns_left - col);
        for (int e = 0; e < count; ++e) dst[e] = src[e];
      }
    }
  }
};

// Tile order: bands of kGroupM tile rows walked column by column, so that consecutive blocks share the same
// few weight tiles (and x tiles) in L2.
template <int kGroupM>
__device__ __forceinline__ void tile_of_block(int block, int tiles_m, int tiles_n, int& tile_m, int& tile_n) {
  const int per_band = kGroupM * tiles_n;
  const int first_m = block / per_band * kGroupM;
  const int band_rows = min(tiles_m - first_m, kGroupM);
  tile_m = first_m + block % per_band % band_rows;
  tile_n = block % per_band / band_rows;
}

}  // namespace gemm
}  // namespace neva
