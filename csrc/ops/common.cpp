#include <c10/util/Exception.h>

#include <cstdint>

#include "ops.h"

namespace neva {

DType storage_type(const char* op, const char* name, const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kFloat: return DType::kFloat32;
    default: TORCH_CHECK(false, op, ": '", name, "' must be float16, bfloat16 or float32, got ", t.scalar_type());
  }
}

void check_same_cuda_device(const char* op, NamedTensors tensors) {
  const auto& [first_name, first] = *tensors.begin();
  for (const auto& [name, t] : tensors) {
    TORCH_CHECK(t->is_cuda(), op, ": '", name, "' must be a CUDA tensor, got one on ", t->device());
    TORCH_CHECK(t->device() == first->device(), op, ": '", name, "' must be on the device of '", first_name, "' (",
                first->device(), "), got ", t->device());
  }
}

void check_same_dtype(const char* op, NamedTensors tensors) {
  const auto& [first_name, first] = *tensors.begin();
  for (const auto& [name, t] : tensors) {
    TORCH_CHECK(t->scalar_type() == first->scalar_type(), op, ": '", name, "' must have the dtype of '", first_name,
                "' (", first->scalar_type(), "), got ", t->scalar_type());
  }
}

bool is_aligned_16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

}  // namespace neva
