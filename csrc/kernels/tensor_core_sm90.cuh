// The sm_90a toolbox as inline PTX: mbarriers, TMA tile loads (cp.async.bulk.tensor) that complete on them, and
// the pieces of warpgroup MMA (wgmma) that do not depend on the tile shape: shared-memory operand descriptors,
// fence, commit and wait. Call these only from code compiled for sm_90a (__CUDA_ARCH_FEAT_SM90_ALL); the
// functions are inline, so an sm_80 compile that includes this header emits none of them.
#pragma once
#include <cuda.h>  // CUtensorMap
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace neva {
namespace sm90 {

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- mbarriers ----

__device__ __forceinline__ void mbarrier_init(uint64_t* barrier, int arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(shared_address(barrier)), "r"(arrivals));
}

// Makes initialized barriers visible to the async proxy (TMA) and the other threads; then __syncthreads().
__device__ __forceinline__ void fence_barrier_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::); }

__device__ __forceinline__ void mbarrier_arrive(uint64_t* barrier) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(shared_address(barrier)) : "memory");
}

// One arrival that also announces `bytes` of asynchronous copies the phase must wait for.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* barrier, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(shared_address(barrier)),
               "r"(bytes)
               : "memory");
}

// A wait that never completes (an arrival or copy that never comes) traps after this long instead of hanging the GPU
// and every later launch: the kernel fails with a launch error in seconds. Far above any real wait, sanitizers
// included, and below 2^32 ns, so the low word of the clock (%globaltimer_lo) measures it across a wrap.
constexpr uint32_t kMbarrierTimeoutNs = 3'000'000'000u;

// Waits until the phase of parity `parity` has completed. On a fresh barrier parity 1 (the phase "before" the
// first) counts as completed, so a producer can wait on its empty barriers from the first round on. One PTX loop:
// written in C++, the deadline's extra live range made the sm90 attention consumers spill.
__device__ __forceinline__ void mbarrier_wait(uint64_t* barrier, uint32_t parity) {
  asm volatile(
      "{\n"
      " .reg .pred done, late;\n"
      " .reg .u32 start, now;\n"
      " mov.u32 start, %%globaltimer_lo;\n"
      "WAIT:\n"
      " mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      " @done bra DONE;\n"
      " mov.u32 now, %%globaltimer_lo;\n"
      " sub.u32 now, now, start;\n"
      " setp.gt.u32 late, now, %2;\n"
      " @late trap;\n"
      " bra WAIT;\n"
      "DONE:\n"
      "}\n" ::"r"(shared_address(barrier)),
      "r"(parity), "n"(kMbarrierTimeoutNs)
      : "memory");
}

// ---- TMA ----

// The box of `map` at element coordinates (x innermost, y) into shared dst, completing on `barrier`. Elements
// outside the tensor arrive as zeros (and still count towards the barrier's bytes).
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, uint64_t* barrier, int x, int y) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::
          "r"(shared_address(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(shared_address(barrier))
      : "memory");
}

// ---- wgmma ----

// Descriptor of a K-major operand tile in shared memory written by TMA with 128-byte swizzle: rows of 64 16-bit
// elements (128 bytes), 8-row groups 1024 bytes apart, the tile 1024-byte aligned. Adding 2 to the descriptor
// moves it 32 bytes (16 elements) along K inside the swizzled rows: the next k16 slice.
__device__ __forceinline__ uint64_t wgmma_descriptor_sw128(const void* tile) {
  const uint64_t start = (shared_address(tile) & 0x3FFFF) >> 4;
  constexpr uint64_t kLeadingByteOffset = 1;          // unused by swizzled K-major layouts
  constexpr uint64_t kStrideByteOffset = 1024 >> 4;   // between 8-row groups
  constexpr uint64_t kSwizzle128B = 1;
  return start | (kLeadingByteOffset << 16) | (kStrideByteOffset << 32) | (kSwizzle128B << 62);
}

// Orders this thread's register accesses before the wgmma that follow (accumulators included).
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most kPending committed wgmma groups of this warpgroup are still running.
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// An empty asm that "rewrites" each register: the compiler cannot move reads or writes of the array across
// it, which pins them after a wgmma_wait (or before a wgmma that reads them).
template <int N, typename R>
__device__ __forceinline__ void fence_operands(R (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if constexpr (std::is_same_v<R, float>) {
      asm volatile("" : "+f"(r[i])::"memory");
    } else {
      asm volatile("" : "+r"(r[i])::"memory");
    }
  }
}

// Orders this thread's earlier generic-proxy writes to shared memory before later async-proxy accesses of it
// (wgmma operand reads, TMA writes); a barrier then extends the order to the threads that issue those.
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// A barrier over `threads` threads (whole warps) only, e.g. the consumer warpgroups without the producer warp.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace sm90
}  // namespace neva
