// Host entry points of the kernels, compiled by nvcc in csrc/launch/*.cu without torch headers, so that the
// heavy torch includes stay in the few C++ files of csrc/ops/ (compiled once by the host compiler).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "../kernels/params.h"

// The GPU architectures of this build, e.g. "sm_80+sm_90a": setup.py derives it from TORCH_CUDA_ARCH_LIST (default
// neva_kernels/cuda_archs.py), the one source of both.
#ifndef NEVA_CUDA_ARCHS
#error "NEVA_CUDA_ARCHS is defined by setup.py"
#endif

namespace neva {

cudaError_t launch_arch_probe(int* out, cudaStream_t stream);

// Whether the sm_90a kernels (wgmma, TMA, setmaxnreg) run on the current device: compute capability 9.0 exactly
// (the only one sm_90a code runs on), a build that carries sm_90a code and whose 9.0 cubin the driver picks, and
// a driver with the tensor-map entry point. Every kernel path that needs sm_90a asks this one function.
bool sm90a_runs_here();

// RMSNorm or LayerNorm (params.center), launched with the tuning of the current device's architecture.
cudaError_t launch_row_norm(DType dtype, const RowNormParams& params, cudaStream_t stream);

cudaError_t launch_append_kv_cache(DType dtype, const AppendKvCacheParams& params, cudaStream_t stream);

// The head dimensions paged decode attention is compiled for, and its most query heads per KV head.
std::vector<int64_t> paged_decode_head_dims();
inline constexpr int kPagedDecodeMaxGroup = 32;

// The split heuristic alone: splits per (sequence, KV head) for `sm_count` SMs.
int paged_decode_num_splits(int64_t batch, int64_t kv_heads, int64_t max_context, int sm_count);

// The split count (requested_splits > 0 forces it, else the heuristic) and tokens per split, for contexts of
// at most max_context tokens; the caller sizes the partial buffers of params from it.
PagedDecodePlan plan_paged_decode(DType dtype, int head_dim, int64_t batch, int64_t kv_heads, int64_t max_context,
                                  int sm_count, int requested_splits);

cudaError_t launch_paged_decode_attention(DType dtype, const PagedDecodeParams& params, cudaStream_t stream);

// Flash attention forward (float16 and bfloat16). flash_attention_kernel resolves kAuto for the current device and
// returns the kernel that will run, or kAuto when `kernel` is not compiled for this head dim and device (then
// flash_attention_head_dims lists the head dims it has: kSm90's, or for kAuto and kSm80 the sm80 kernel's).
KernelPath flash_attention_kernel(KernelPath kernel, int head_dim);
std::vector<int64_t> flash_attention_head_dims(KernelPath kernel);
cudaError_t launch_flash_attention(DType dtype, const FlashAttentionParams& params, KernelPath kernel,
                                   cudaStream_t stream);

// The projector GEMMs (float16 and bfloat16): the mma.sync kernel; the wgmma + TMA kernel (where
// sm90a_runs_here); and launch_linear, which runs the kernel `kernel` names (kAuto: the wgmma kernel where it
// runs, else the mma.sync one).
cudaError_t launch_linear_sm80(DType dtype, const LinearParams& params, cudaStream_t stream);
cudaError_t launch_linear_sm90(DType dtype, const LinearParams& params, cudaStream_t stream);
cudaError_t launch_linear(DType dtype, const LinearParams& params, KernelPath kernel, cudaStream_t stream);

}  // namespace neva
