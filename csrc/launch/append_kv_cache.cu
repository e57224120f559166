#include "../kernels/append_kv_cache.cuh"
#include "dispatch.cuh"
#include "launch.h"

namespace neva {

cudaError_t launch_append_kv_cache(DType dtype, const AppendKvCacheParams& params, cudaStream_t stream) {
  // A copy: fp16 and bf16 share the 2-byte kernel.
  return with_storage_type(dtype, [&](auto tag) { return append_kv_cache<sizeof(tag)>(params, stream); });
}

}  // namespace neva
