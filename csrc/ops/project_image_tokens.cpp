#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/nonzero_static.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <optional>

#include "../launch/launch.h"
#include "ops.h"

namespace neva {
namespace {

constexpr const char* kOp = "project_image_tokens";
constexpr int64_t kRowAlignment = 8;  // elements: 16 bytes of a 16-bit type

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

// t [rows, k] as the GEMM kernels read it: unit stride along k, k a multiple of 8, 16-byte aligned start and row
// stride. Otherwise copied into a zero-padded buffer of that shape (zero columns add nothing to the products).
at::Tensor gemm_operand(const at::Tensor& t) {
  const bool readable = t.stride(1) == 1 && t.size(1) % kRowAlignment == 0 && t.stride(0) % kRowAlignment == 0 &&
                        is_aligned_16(t);
  if (readable) return t;
  at::Tensor padded = at::zeros({t.size(0), round_up(t.size(1), kRowAlignment)}, t.options());
  padded.narrow(1, 0, t.size(1)).copy_(t);
  return padded;
}

const void* bias_pointer(const char* name, const std::optional<at::Tensor>& bias, int64_t size,
                         std::optional<at::Tensor>& keep) {
  if (!bias.has_value()) return nullptr;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == size, kOp, ": '", name, "' must have shape [", size, "], got ",
              bias->sizes());
  keep = bias->contiguous();
  return keep->data_ptr();
}

void run(const at::Tensor& image_features, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
         const at::Tensor& w2, const std::optional<at::Tensor>& b2, at::Tensor& inputs_embeds,
         const at::Tensor& image_token_mask, KernelPath kernel) {
  TORCH_CHECK(image_features.dim() == 2 || image_features.dim() == 3, kOp,
              ": 'image_features' must be [N, vision_dim] or [images, tokens, vision_dim], got ",
              image_features.sizes());
  const int64_t vision = image_features.size(-1);
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == vision, kOp, ": 'w1' must be [hidden, ", vision, "], got ", w1.sizes());
  const int64_t hidden = w1.size(0);
  TORCH_CHECK(w2.dim() == 2 && w2.size(1) == hidden, kOp, ": 'w2' must be [text_dim, ", hidden, "], got ",
              w2.sizes());
  const int64_t text = w2.size(0);
  TORCH_CHECK(inputs_embeds.dim() >= 1 && inputs_embeds.size(-1) == text && inputs_embeds.is_contiguous(), kOp,
              ": 'inputs_embeds' must be contiguous with last dim ", text, " (w2's rows), got shape ",
              inputs_embeds.sizes(), inputs_embeds.is_contiguous() ? "" : " (not contiguous)");
  TORCH_CHECK(image_token_mask.scalar_type() == at::kBool &&
                  image_token_mask.sizes() == inputs_embeds.sizes().slice(0, inputs_embeds.dim() - 1),
              kOp, ": 'image_token_mask' must be bool of shape ", inputs_embeds.sizes().slice(0, inputs_embeds.dim() - 1),
              " (inputs_embeds without its last dim), got ", image_token_mask.scalar_type(), " ",
              image_token_mask.sizes());
  const DType dtype = storage_type(kOp, "image_features", image_features);
  TORCH_CHECK(dtype != DType::kFloat32, kOp, ": the cuda projector GEMMs take float16 or bfloat16, got float32");
  check_same_dtype(kOp, {{"image_features", &image_features}, {"w1", &w1}, {"w2", &w2},
                         {"inputs_embeds", &inputs_embeds}});
  check_same_cuda_device(kOp, {{"image_features", &image_features}, {"w1", &w1}, {"w2", &w2},
                               {"inputs_embeds", &inputs_embeds}, {"image_token_mask", &image_token_mask}});
  for (const auto& [name, bias] : {std::pair{"b1", &b1}, std::pair{"b2", &b2}}) {
    if (bias->has_value()) {
      check_same_dtype(kOp, {{"image_features", &image_features}, {name, &**bias}});
      check_same_cuda_device(kOp, {{"image_features", &image_features}, {name, &**bias}});
    }
  }

  const at::Tensor x = gemm_operand(image_features.reshape({-1, vision}));
  const int64_t rows = x.size(0);
  if (rows == 0 || text == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  TORCH_CHECK(kernel != KernelPath::kSm90 || sm90a_runs_here(), kOp,
              ": the wgmma + TMA kernel (90) runs on Hopper GPUs from an sm_90a build only, not on this ",
              x.device(), " (build: " NEVA_CUDA_ARCHS ")");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  std::optional<at::Tensor> b1_kept, b2_kept;
  const at::Tensor w1_rows = gemm_operand(w1), w2_rows = gemm_operand(w2);
  // hidden = GELU(x @ w1^T + b1), the second GEMM's x: padded with zero columns to a multiple of 8 (the first GEMM
  // writes the first `hidden`).
  const int64_t padded_hidden = round_up(hidden, kRowAlignment);
  const at::Tensor hidden_rows = at::empty({rows, padded_hidden}, x.options());
  if (padded_hidden != hidden) hidden_rows.narrow(1, hidden, padded_hidden - hidden).zero_();
  // Row i of the projection goes to the i-th set position of the mask (-1 past the set positions: skipped).
  const at::Tensor out_rows = at::nonzero_static(image_token_mask.reshape({-1}), rows).view({-1});

  const LinearParams first{x.data_ptr(), w1_rows.data_ptr(), bias_pointer("b1", b1, hidden, b1_kept),
                           hidden_rows.data_ptr(), nullptr, rows, hidden, x.size(1), x.stride(0), w1_rows.stride(0),
                           hidden_rows.stride(0), /*gelu=*/true};
  C10_CUDA_CHECK(launch_linear(dtype, first, kernel, stream));
  const LinearParams second{hidden_rows.data_ptr(), w2_rows.data_ptr(), bias_pointer("b2", b2, text, b2_kept),
                            inputs_embeds.data_ptr(), out_rows.data_ptr<int64_t>(), rows, text, padded_hidden,
                            hidden_rows.stride(0), w2_rows.stride(0), text, /*gelu=*/false};
  C10_CUDA_CHECK(launch_linear(dtype, second, kernel, stream));
}

}  // namespace

void project_image_tokens(const at::Tensor& image_features, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                          const at::Tensor& w2, const std::optional<at::Tensor>& b2, at::Tensor& inputs_embeds,
                          const at::Tensor& image_token_mask, int64_t kernel) {
  TORCH_CHECK(kernel == 0 || kernel == 80 || kernel == 90, kOp,
              ": 'kernel' must be 0 (pick per device), 80 (mma.sync) or 90 (wgmma + TMA), got ", kernel);
  run(image_features, w1, b1, w2, b2, inputs_embeds, image_token_mask, static_cast<KernelPath>(kernel));
}

}  // namespace neva
