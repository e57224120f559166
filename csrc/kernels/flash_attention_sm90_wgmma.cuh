// Warpgroup MMA (wgmma) for the sm_90a flash attention forward: m64nNk16 with fp32 accumulators, N = 64 or 128,
// A from shared memory (SS: S = Q K^T) or from registers (RS: O += P V, P being the re-packed S accumulators).
// Call only from code compiled for sm_90a (__CUDA_ARCH_FEAT_SM90_ALL).
//
// Register layouts (PTX ISA, wgmma .m64nNk16): warp w of the warpgroup owns rows 16w..16w+15; accumulator
// d[4j..4j+3] is the mma.sync m16n8 C fragment of columns 8j..8j+7, and the four A registers of RS are the
// mma.sync m16n8k16 A fragment, so S accumulators of two adjacent 8-key tiles are the A operand of 16 keys.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace neva {
namespace sm90 {

// Descriptor of a tile written by TMA with 128-byte swizzle whose 16-byte chunks run along the MN dimension
// ("transposed" operand, e.g. V [keys, head_dim] as the B of P V): 64 MN elements per 128-byte row, K rows 128
// bytes apart, 8-row K groups 1024 bytes apart (stride byte offset), the next 64 MN elements
// `mn_block_bytes` further (leading byte offset). The tile is 1024-byte aligned.
__device__ __forceinline__ uint64_t wgmma_descriptor_mn_sw128(const void* tile, uint32_t mn_block_bytes) {
  const uint64_t start = (static_cast<uint32_t>(__cvta_generic_to_shared(tile)) & 0x3FFFF) >> 4;
  constexpr uint64_t kStrideByteOffset = 1024 >> 4;
  constexpr uint64_t kSwizzle128B = 1;
  return start | (uint64_t(mn_block_bytes >> 4) << 16) | (kStrideByteOffset << 32) | (kSwizzle128B << 62);
}

#define NEVA_FA_F8(i) \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
      "+f"(d[i + 7])
#define NEVA_FA_D32 NEVA_FA_F8(0), NEVA_FA_F8(8), NEVA_FA_F8(16), NEVA_FA_F8(24)
#define NEVA_FA_D64 NEVA_FA_D32, NEVA_FA_F8(32), NEVA_FA_F8(40), NEVA_FA_F8(48), NEVA_FA_F8(56)
#define NEVA_FA_R32 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define NEVA_FA_R64 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"

#define NEVA_FA_WGMMA_SS_N64(TYPE) \
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %34, 0;\n" \
               " wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " {" NEVA_FA_R32 \
               "}, %32, %33, p, 1, 1, 0, %35;\n}\n" \
               : NEVA_FA_D32 \
               : "l"(a), "l"(b), "r"(int(accumulate)), "n"(kTransB))
#define NEVA_FA_WGMMA_RS_N64(TYPE) \
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %37, 0;\n" \
               " wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " {" NEVA_FA_R32 \
               "}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n" \
               : NEVA_FA_D32 \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(int(accumulate)), "n"(kTransB))
#define NEVA_FA_WGMMA_SS_N128(TYPE) \
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %66, 0;\n" \
               " wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " {" NEVA_FA_R64 \
               "}, %64, %65, p, 1, 1, 0, %67;\n}\n" \
               : NEVA_FA_D64 \
               : "l"(a), "l"(b), "r"(int(accumulate)), "n"(kTransB))
#define NEVA_FA_WGMMA_RS_N128(TYPE) \
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %69, 0;\n" \
               " wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE " {" NEVA_FA_R64 \
               "}, {%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n" \
               : NEVA_FA_D64 \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(int(accumulate)), "n"(kTransB))

// d (64 x N) = a (64 x 16, shared, K-major) * b (16 x N, shared; kTransB: MN-major) [+ d when accumulate].
template <typename T, int N, int kTransB>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t a, uint64_t b, bool accumulate) {
  static_assert(N == 64 || N == 128, "wgmma_ss is written out for N = 64 and 128");
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  static_assert(kBf16 || std::is_same_v<T, __half>, "wgmma takes __half or __nv_bfloat16 operands here");
  if constexpr (N == 64 && kBf16) {
    NEVA_FA_WGMMA_SS_N64("bf16");
  } else if constexpr (N == 64) {
    NEVA_FA_WGMMA_SS_N64("f16");
  } else if constexpr (kBf16) {
    NEVA_FA_WGMMA_SS_N128("bf16");
  } else {
    NEVA_FA_WGMMA_SS_N128("f16");
  }
}

// d (64 x N) = a (64 x 16, registers) * b (16 x N, shared; kTransB: MN-major) [+ d when accumulate].
template <typename T, int N, int kTransB>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t b, bool accumulate) {
  static_assert(N == 64 || N == 128, "wgmma_rs is written out for N = 64 and 128");
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  static_assert(kBf16 || std::is_same_v<T, __half>, "wgmma takes __half or __nv_bfloat16 operands here");
  if constexpr (N == 64 && kBf16) {
    NEVA_FA_WGMMA_RS_N64("bf16");
  } else if constexpr (N == 64) {
    NEVA_FA_WGMMA_RS_N64("f16");
  } else if constexpr (kBf16) {
    NEVA_FA_WGMMA_RS_N128("bf16");
  } else {
    NEVA_FA_WGMMA_RS_N128("f16");
  }
}

#undef NEVA_FA_WGMMA_SS_N64
#undef NEVA_FA_WGMMA_RS_N64
#undef NEVA_FA_WGMMA_SS_N128
#undef NEVA_FA_WGMMA_RS_N128
#undef NEVA_FA_R32
#undef NEVA_FA_R64
#undef NEVA_FA_D32
#undef NEVA_FA_D64
#undef NEVA_FA_F8

// Hands registers back to (dec) or takes them from (inc) the SM's pool for the whole warpgroup: the producer
// warpgroup shrinks so the consumers can grow past what 384 threads could otherwise get.
template <int kRegisters>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}
template <int kRegisters>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}

// The box at element coordinates (c0 innermost .. c3) of a 4-D tensor map into shared dst, completing on barrier.
__device__ __forceinline__ void tma_load_4d(void* dst, const void* map, uint64_t* barrier, int c0, int c1, int c2,
                                            int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(static_cast<uint32_t>(__cvta_generic_to_shared(dst))),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3),
      "r"(static_cast<uint32_t>(__cvta_generic_to_shared(barrier)))
      : "memory");
}

}  // namespace sm90
}  // namespace neva
