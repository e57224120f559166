#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "../launch/launch.h"
#include "ops.h"

namespace neva {

void probe_arch(at::Tensor& out) {
  TORCH_CHECK(out.is_cuda(), "probe_arch: 'out' must be a CUDA tensor, got ", out.device());
  TORCH_CHECK(out.scalar_type() == at::kInt && out.is_contiguous() && out.numel() >= 2,
              "probe_arch: 'out' must be a contiguous int32 tensor of at least 2 elements, got ", out.scalar_type(),
              " with ", out.numel(), " elements");
  const c10::cuda::CUDAGuard guard(out.device());
  C10_CUDA_CHECK(launch_arch_probe(out.data_ptr<int>(), c10::cuda::getCurrentCUDAStream()));
}

std::string build_info() {
  return "CUDA runtime " + std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10) +
         ", architectures " NEVA_CUDA_ARCHS;
}

std::tuple<std::vector<int64_t>, int64_t, std::vector<int64_t>, std::vector<int64_t>> compiled_shapes() {
  return {paged_decode_head_dims(), kPagedDecodeMaxGroup, flash_attention_head_dims(KernelPath::kSm80),
          flash_attention_head_dims(KernelPath::kSm90)};
}

}  // namespace neva
