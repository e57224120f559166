// The flash attention forward dispatcher: (kernel, dtype, head dim) -> one of the generated instances in
// flash_attention_instances/ (this file only declares them, so it compiles in seconds).
#include <type_traits>

#include "dispatch.cuh"
#include "flash_attention_instances/instances.h"
#include "launch.h"

namespace neva {
namespace {

bool sm80_compiled(int head_dim) {
  return flash::with_sm80_head_dim(head_dim, [](auto) { return cudaSuccess; }) == cudaSuccess;
}

}  // namespace

AttentionKernel flash_attention_kernel(AttentionKernel kernel, int head_dim) {
  switch (kernel) {
    case AttentionKernel::kAuto:
    case AttentionKernel::kSm80: return sm80_compiled(head_dim) ? AttentionKernel::kSm80 : AttentionKernel::kAuto;
    case AttentionKernel::kSm90: return AttentionKernel::kAuto;
  }
  return AttentionKernel::kAuto;
}

const char* flash_attention_head_dims(AttentionKernel kernel) {
  return kernel == AttentionKernel::kSm90 ? "none" : flash::kSm80HeadDims;
}

cudaError_t launch_flash_attention(DType dtype, const FlashAttentionParams& params, AttentionKernel kernel,
                                   cudaStream_t stream) {
  return with_storage_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, float>) {
      return cudaErrorInvalidValue;  // the tiles are sized for 16-bit operands
    } else {
      if (kernel != AttentionKernel::kSm80) return cudaErrorInvalidValue;
      return flash::with_sm80_head_dim(params.head_dim, [&](auto head_dim) {
        return flash::flash_forward_sm80<T, decltype(head_dim)::value>(params, stream);
      });
    }
  });
}

}  // namespace neva
