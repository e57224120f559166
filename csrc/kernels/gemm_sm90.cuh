// The projector GEMM on Hopper (sm_90a): out rows = act(x @ w^T + bias) with TMA loads and warpgroup MMA.
//
// A block computes a 128x256 tile of the output. One producer warp streams x and w tiles of 64 columns of K
// into a 4-stage ring of shared memory with TMA (cp.async.bulk.tensor, 128-byte swizzle, zero-filled past the
// tensors' edges); each stage has a "full" mbarrier (TMA bytes landed) and an "empty" one (both consumers done
// reading). Two consumer warpgroups each own 64 rows of the tile and issue wgmma m64n256k16 straight from the
// swizzled shared tiles into 128 float32 accumulators per thread, keeping one k-tile of wgmma in flight while
// they wait for the next stage. The epilogue (bias, GELU, the scatter into the output rows) is
// gemm_epilogue.cuh, with the pipeline's shared memory reused as its staging tile.
//
// The producer is a single warp, not a warpgroup: 288 threads leave 224 registers per thread, enough for the
// consumers' accumulators without setmaxnreg. Tile shape and depth are CUTLASS's usual Hopper choice for
// 16-bit GEMMs of this size; they await tuning on a GPU (e.g. 128x128 tiles when M is small, a persistent
// schedule, two accumulating warpgroups ping-ponging their epilogues).
#pragma once
#include <cuda.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "gemm_epilogue.cuh"
#include "params.h"
#include "tensor_core_sm90.cuh"

namespace neva {
namespace gemm_sm90 {

constexpr int kBlockM = 128, kBlockN = 256, kBlockK = 64;  // kBlockK: one 128-byte swizzled row
constexpr int kStages = 4;
constexpr int kConsumers = 2;  // warpgroups of 64 rows each
constexpr int kConsumerThreads = 128 * kConsumers;
constexpr int kThreads = kConsumerThreads + 32;  // + the producer warp
constexpr int kGroupM = 8;
constexpr int kXTileBytes = kBlockM * kBlockK * 2, kWTileBytes = kBlockN * kBlockK * 2;
constexpr int kStageBytes = kXTileBytes + kWTileBytes;
constexpr int kAlignment = 1024;  // of the swizzled tiles
constexpr int shared_bytes() { return kAlignment + kStages * kStageBytes + 2 * kStages * int(sizeof(uint64_t)); }
constexpr int kAccumulators = kBlockN / 2;  // per thread: 64 x 256 over 128 threads

// 128 float registers of d in an inline-asm operand list.
#define NEVA_F8(i)                                                                                          \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
      "+f"(d[i + 7])
#define NEVA_D128                                                                                  \
  NEVA_F8(0), NEVA_F8(8), NEVA_F8(16), NEVA_F8(24), NEVA_F8(32), NEVA_F8(40), NEVA_F8(48), NEVA_F8(56), \
      NEVA_F8(64), NEVA_F8(72), NEVA_F8(80), NEVA_F8(88), NEVA_F8(96), NEVA_F8(104), NEVA_F8(112), NEVA_F8(120)

#define NEVA_D128_REGISTERS \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"

// d (64x256 fragment of the warpgroup) += a (64x16, descriptor) * b (16x256, K-major descriptor).
#define NEVA_WGMMA_M64N256K16(TYPE)                                                                   \
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %130, 0;\n"                                        \
               " wgmma.mma_async.sync.aligned.m64n256k16.f32." TYPE "." TYPE " {" NEVA_D128_REGISTERS \
               "}, %128, %129, p, 1, 1, 0, 0;\n}\n"                                                   \
               : NEVA_D128                                                                            \
               : "l"(a), "l"(b), "r"(1))

template <typename T>
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[kAccumulators], uint64_t a, uint64_t b) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    NEVA_WGMMA_M64N256K16("bf16");
  } else {
    static_assert(std::is_same_v<T, __half>, "wgmma takes __half or __nv_bfloat16 operands here");
    NEVA_WGMMA_M64N256K16("f16");
  }
}
#undef NEVA_WGMMA_M64N256K16
#undef NEVA_D128_REGISTERS
#undef NEVA_D128
#undef NEVA_F8

template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    linear_kernel(const __grid_constant__ CUtensorMap x_map, const __grid_constant__ CUtensorMap w_map,
                  const LinearParams p) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // never launched: the host picks this kernel only where an sm_90a cubin runs
#else
  extern __shared__ unsigned char raw_shared[];
  unsigned char* shared = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(raw_shared) + kAlignment - 1) / kAlignment * kAlignment);
  const auto x_tile = [&](int stage) { return shared + stage * kStageBytes; };
  const auto w_tile = [&](int stage) { return shared + stage * kStageBytes + kXTileBytes; };
  uint64_t* full = reinterpret_cast<uint64_t*>(shared + kStages * kStageBytes);
  uint64_t* empty = full + kStages;

  const int tiles_m = static_cast<int>((p.m + kBlockM - 1) / kBlockM);
  const int tiles_n = static_cast<int>((p.n + kBlockN - 1) / kBlockN);
  int tile_m, tile_n;
  gemm::tile_of_block<kGroupM>(blockIdx.x, tiles_m, tiles_n, tile_m, tile_n);
  const int64_t m0 = int64_t(tile_m) * kBlockM, n0 = int64_t(tile_n) * kBlockN;
  const int k_tiles = static_cast<int>((p.k + kBlockK - 1) / kBlockK);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      sm90::mbarrier_init(&full[s], 1);                      // the producer's arrive.expect_tx
      sm90::mbarrier_init(&empty[s], kConsumerThreads / 32);  // one arrival per consumer warp
    }
    sm90::fence_barrier_init();
  }
  __syncthreads();

  if (warp == kConsumerThreads / 32) {  // the producer
    if (lane == 0) {
      for (int kt = 0; kt < k_tiles; ++kt) {
        const int s = kt % kStages;
        sm90::mbarrier_wait(&empty[s], ((kt / kStages) & 1) ^ 1);
        sm90::mbarrier_arrive_expect_tx(&full[s], kStageBytes);
        sm90::tma_load_2d(x_tile(s), &x_map, &full[s], kt * kBlockK, static_cast<int>(m0));
        sm90::tma_load_2d(w_tile(s), &w_map, &full[s], kt * kBlockK, static_cast<int>(n0));
      }
    }
    return;
  }

  const int consumer = warp / 4;
  float acc[kAccumulators];
#pragma unroll
  for (int i = 0; i < kAccumulators; ++i) acc[i] = 0.f;
  for (int kt = 0; kt < k_tiles; ++kt) {
    const int s = kt % kStages;
    sm90::mbarrier_wait(&full[s], (kt / kStages) & 1);
    __syncwarp();  // wgmma is .aligned: the whole warp leaves the wait loop before it
    const uint64_t a = sm90::wgmma_descriptor_sw128(x_tile(s) + consumer * (kXTileBytes / kConsumers));
    const uint64_t b = sm90::wgmma_descriptor_sw128(w_tile(s));
    sm90::fence_operands(acc);  // the accumulators' zeroing stays before the first wgmma
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBlockK / 16; ++kk) wgmma_m64n256k16<T>(acc, a + 2 * kk, b + 2 * kk);
    sm90::wgmma_commit();
    // The previous k-tile's wgmma are done: its stage goes back to the producer.
    sm90::wgmma_wait<1>();
    if (kt > 0 && lane == 0) sm90::mbarrier_arrive(&empty[(kt - 1) % kStages]);
  }
  sm90::wgmma_wait<0>();
  sm90::fence_operands(acc);  // the epilogue's reads of the accumulators stay after the wait
  sm90::named_barrier_sync(1, kConsumerThreads);  // both warpgroups are done reading the stages

  using Staged = gemm::StagedTile<T, kBlockM, kBlockN>;
  static_assert(Staged::kBytes <= kStages * kStageBytes, "the staging tile reuses the pipeline's shared memory");
  const Staged staged{reinterpret_cast<T*>(shared), p.bias ? static_cast<const T*>(p.bias) + n0 : nullptr, p.gelu,
                      static_cast<int>(std::min<int64_t>(p.n - n0, 1 << 30))};
  const int row0 = consumer * 64 + warp % 4 * 16;
#pragma unroll
  for (int j = 0; j < kBlockN / 8; ++j) staged.put_fragment(&acc[4 * j], row0, 8 * j);
  sm90::named_barrier_sync(1, kConsumerThreads);
  staged.store(p, m0, n0, threadIdx.x, kConsumerThreads);
#endif
}

}  // namespace gemm_sm90
}  // namespace neva
