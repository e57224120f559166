#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <optional>

#include "../launch/launch.h"
#include "ops.h"

namespace neva {
namespace {

// t as [rows, hidden] with unit stride along hidden (a copy only when the last dim is strided).
at::Tensor rows_of(const at::Tensor& t, int64_t hidden) {
  at::Tensor rows = t.reshape({-1, hidden});
  return rows.stride(1) == 1 ? rows : rows.contiguous();
}

// The kernel splits every row at the same 16-byte boundaries in all of its tensors: rows must start at the
// address of the matching output row modulo 16 (else they are copied, which makes them so).
at::Tensor co_aligned(const at::Tensor& rows, const at::Tensor& output) {
  const auto offset = [](const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16; };
  const bool same_start = offset(rows) == offset(output);
  const bool same_step = rows.size(0) <= 1 || (rows.stride(0) - output.size(1)) * rows.element_size() % 16 == 0;
  return same_start && same_step ? rows : rows.clone(at::MemoryFormat::Contiguous);
}

// A per-row parameter (weight, bias) as a contiguous, 16-byte aligned vector of `hidden` elements.
at::Tensor aligned_vector(const char* op, const char* name, const at::Tensor& t, int64_t hidden) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == hidden, op, ": '", name, "' must have shape [", hidden,
              "] (the last dimension of x), got ", t.sizes());
  at::Tensor v = t.contiguous();
  return is_aligned_16(v) ? v : v.clone();
}

// y (and h with a residual) of x's shape, fresh and contiguous: RMSNorm, or LayerNorm when center.
std::tuple<at::Tensor, at::Tensor> run(const char* op, bool center, const at::Tensor& x, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias, double eps, bool zero_centered_weight,
                                       const std::optional<at::Tensor>& residual) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) > 0, op, ": 'x' must have a non-empty last dimension, got shape ",
              x.sizes());
  const int64_t hidden = x.size(-1);
  TORCH_CHECK(eps >= 0, op, ": 'eps' must be >= 0, got ", eps);
  const DType dtype = storage_type(op, "x", x);
  const at::Tensor& res = residual.has_value() ? *residual : x;
  const at::Tensor& b = bias.has_value() ? *bias : weight;
  TORCH_CHECK(res.sizes() == x.sizes(), op, ": 'residual' must have the shape of x ", x.sizes(), ", got ",
              res.sizes());
  check_same_dtype(op, {{"x", &x}, {"weight", &weight}, {"bias", &b}, {"residual", &res}});
  check_same_cuda_device(op, {{"x", &x}, {"weight", &weight}, {"bias", &b}, {"residual", &res}});
  const at::Tensor w = aligned_vector(op, "weight", weight, hidden);
  const at::Tensor shift = aligned_vector(op, "bias", b, hidden);

  at::Tensor y = at::empty({x.numel() / hidden, hidden}, x.options());
  at::Tensor h = residual.has_value() ? at::empty({y.size(0), hidden}, x.options()) : y;
  if (y.numel() > 0) {
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor x_rows = co_aligned(rows_of(x, hidden), y);
    const at::Tensor res_rows = co_aligned(rows_of(res, hidden), y);
    TORCH_INTERNAL_ASSERT(is_aligned_16(y) && is_aligned_16(h), "fresh outputs are 16-byte aligned");
    const RowNormParams params{x_rows.data_ptr(),
                               residual.has_value() ? res_rows.data_ptr() : nullptr,
                               w.data_ptr(),
                               bias.has_value() ? shift.data_ptr() : nullptr,
                               y.data_ptr(),
                               h.data_ptr(),
                               y.size(0),
                               hidden,
                               x_rows.stride(0),
                               res_rows.stride(0),
                               static_cast<float>(eps),
                               zero_centered_weight ? 1.f : 0.f,
                               center};
    C10_CUDA_CHECK(launch_row_norm(dtype, params, c10::cuda::getCurrentCUDAStream()));
  }
  return {y.view(x.sizes()), h.view(x.sizes())};
}

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  return std::get<0>(run("rms_norm", false, x, weight, std::nullopt, eps, false, std::nullopt));
}

std::tuple<at::Tensor, at::Tensor> fused_add_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps,
                                                      const at::Tensor& residual) {
  return run("rms_norm", false, x, weight, std::nullopt, eps, false, residual);
}

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      double eps, bool zero_centered_weight) {
  return std::get<0>(run("layer_norm", true, x, weight, bias, eps, zero_centered_weight, std::nullopt));
}

std::tuple<at::Tensor, at::Tensor> fused_add_layer_norm(const at::Tensor& x, const at::Tensor& weight,
                                                        const std::optional<at::Tensor>& bias, double eps,
                                                        bool zero_centered_weight, const at::Tensor& residual) {
  return run("layer_norm", true, x, weight, bias, eps, zero_centered_weight, residual);
}

}  // namespace neva
