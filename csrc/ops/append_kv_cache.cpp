#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

#include "../launch/launch.h"
#include "ops.h"

namespace neva {

void append_kv_cache(const at::Tensor& k_in, const at::Tensor& v_in, at::Tensor& k_cache, at::Tensor& v_cache,
                     const at::Tensor& slot_mapping_in) {
  constexpr const char* kOp = "append_kv_cache";
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  v_cache.sizes() == k_cache.sizes(),
              kOp, ": 'k_cache' and 'v_cache' must be contiguous [num_blocks, block_size, kv_heads, head_dim] of one "
              "shape, got ", k_cache.sizes(), " and ", v_cache.sizes());
  const int64_t kv_heads = k_cache.size(2), head_dim = k_cache.size(3);
  TORCH_CHECK(k_in.dim() == 3 && k_in.size(1) == kv_heads && k_in.size(2) == head_dim && v_in.sizes() == k_in.sizes(),
              kOp, ": 'k' and 'v' must be [num_tokens, ", kv_heads, ", ", head_dim, "] (of the cache), got ",
              k_in.sizes(), " and ", v_in.sizes());
  TORCH_CHECK((slot_mapping_in.scalar_type() == at::kInt || slot_mapping_in.scalar_type() == at::kLong) &&
                  slot_mapping_in.dim() == 1 && slot_mapping_in.size(0) == k_in.size(0),
              kOp, ": 'slot_mapping' must be int32 or int64 [", k_in.size(0), "], got ",
              slot_mapping_in.scalar_type(), " ", slot_mapping_in.sizes());
  const DType dtype = storage_type(kOp, "k", k_in);
  check_same_dtype(kOp, {{"k", &k_in}, {"v", &v_in}, {"k_cache", &k_cache}, {"v_cache", &v_cache}});
  check_same_cuda_device(kOp, {{"k", &k_in}, {"v", &v_in}, {"k_cache", &k_cache}, {"v_cache", &v_cache},
                               {"slot_mapping", &slot_mapping_in}});
  if (k_in.size(0) == 0) return;

  const at::Tensor k = k_in.stride(2) == 1 ? k_in : k_in.contiguous();
  const at::Tensor v = v_in.stride(2) == 1 ? v_in : v_in.contiguous();
  const at::Tensor slot_mapping = slot_mapping_in.contiguous();
  const c10::cuda::CUDAGuard guard(k.device());
  const AppendKvCacheParams params{k.data_ptr(),       v.data_ptr(),      k_cache.data_ptr(),
                                   v_cache.data_ptr(), slot_mapping.data_ptr(),
                                   slot_mapping.scalar_type() == at::kLong,
                                   k.size(0),          kv_heads,          head_dim,
                                   k.stride(0),        k.stride(1),       v.stride(0),
                                   v.stride(1)};
  C10_CUDA_CHECK(launch_append_kv_cache(dtype, params, c10::cuda::getCurrentCUDAStream()));
}

}  // namespace neva
