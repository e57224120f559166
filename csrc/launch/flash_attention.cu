// The flash attention forward dispatcher: (kernel, dtype, head dim) -> one of the generated instances in
// flash_attention_instances/ (this file only declares them, so it compiles in seconds).
#include <type_traits>

#include "dispatch.cuh"
#include "flash_attention_instances/instances.h"
#include "launch.h"

namespace neva {
namespace {

bool sm80_compiled(int head_dim) { return flash::Sm80HeadDims::contains(head_dim); }

bool sm90_runs_here(int head_dim) {
  return flash::Sm90HeadDims::contains(head_dim) && sm90a_runs_here();
}

}  // namespace

KernelPath flash_attention_kernel(KernelPath kernel, int head_dim) {
  switch (kernel) {
    case KernelPath::kAuto:
      if (sm90_runs_here(head_dim)) return KernelPath::kSm90;
      return sm80_compiled(head_dim) ? KernelPath::kSm80 : KernelPath::kAuto;
    case KernelPath::kSm80: return sm80_compiled(head_dim) ? KernelPath::kSm80 : KernelPath::kAuto;
    case KernelPath::kSm90: return sm90_runs_here(head_dim) ? KernelPath::kSm90 : KernelPath::kAuto;
  }
  return KernelPath::kAuto;
}

std::vector<int64_t> flash_attention_head_dims(KernelPath kernel) {
  return kernel == KernelPath::kSm90 ? flash::Sm90HeadDims::values() : flash::Sm80HeadDims::values();
}

cudaError_t launch_flash_attention(DType dtype, const FlashAttentionParams& params, KernelPath kernel,
                                   cudaStream_t stream) {
  return with_storage_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, float>) {
      return cudaErrorInvalidValue;  // the tiles are sized for 16-bit operands
    } else if (kernel == KernelPath::kSm90) {
      return flash::Sm90HeadDims::dispatch(params.head_dim, [&](auto head_dim) {
        return flash::flash_forward_sm90<T, decltype(head_dim)::value>(params, stream);
      });
    } else if (kernel == KernelPath::kSm80) {
      return flash::Sm80HeadDims::dispatch(params.head_dim, [&](auto head_dim) {
        return flash::flash_forward_sm80<T, decltype(head_dim)::value>(params, stream);
      });
    } else {
      return cudaErrorInvalidValue;  // kAuto must be resolved by flash_attention_kernel first
    }
  });
}

}  // namespace neva
