// The torch-facing ops of the extension: tensor checks and dispatch only; registered in torch_bindings.cpp.
#pragma once
#include <initializer_list>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "../kernels/params.h"

namespace neva {

void probe_arch(at::Tensor& out);
std::string build_info();
// What the kernels are compiled for: (paged decode head dims, its most query heads per KV head, flash attention
// head dims of the sm80 kernel, of the sm90 kernel).
std::tuple<std::vector<int64_t>, int64_t, std::vector<int64_t>, std::vector<int64_t>> compiled_shapes();

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
std::tuple<at::Tensor, at::Tensor> fused_add_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps,
                                                      const at::Tensor& residual);
at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      double eps, bool zero_centered_weight);
std::tuple<at::Tensor, at::Tensor> fused_add_layer_norm(const at::Tensor& x, const at::Tensor& weight,
                                                        const std::optional<at::Tensor>& bias, double eps,
                                                        bool zero_centered_weight, const at::Tensor& residual);

// num_splits > 0 forces the split-KV count, 0 leaves it to the heuristic.
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& block_tables, const at::Tensor& seq_lens, double softmax_scale,
                                  int64_t num_splits);
int64_t decode_num_splits(int64_t batch, int64_t kv_heads, int64_t max_context, int64_t sm_count);

void append_kv_cache(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache, at::Tensor& v_cache,
                     const at::Tensor& slot_mapping);

// (out, lse) of softmax(q k^T * softmax_scale) v, padded or packed (cu_seqlens), causal bottom-right aligned, GQA;
// the arguments of reference.flash_attention (max_seqlen_k sizes nothing here), and the kernel: 0 picks per device,
// 80 forces the mma.sync kernel, 90 the wgmma + TMA kernel.
std::tuple<at::Tensor, at::Tensor> flash_attention(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal, double softmax_scale,
    const std::optional<at::Tensor>& cu_seqlens_q, const std::optional<at::Tensor>& cu_seqlens_k,
    std::optional<int64_t> max_seqlen_q, std::optional<int64_t> max_seqlen_k, int64_t kernel);

// inputs_embeds rows where image_token_mask is set = Linear(w2, b2)(GELU(Linear(w1, b1)(image_features))), in place;
// the GEMM kernel: 0 picks per device, 80 forces the mma.sync kernel, 90 the wgmma + TMA kernel.
void project_image_tokens(const at::Tensor& image_features, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                          const at::Tensor& w2, const std::optional<at::Tensor>& b2, at::Tensor& inputs_embeds,
                          const at::Tensor& image_token_mask, int64_t kernel);

// ---- checks shared by the ops (common.cpp) ----

using NamedTensors = std::initializer_list<std::pair<const char*, const at::Tensor*>>;

// The kernels' storage type of a float16/bfloat16/float32 tensor; any other dtype is an error naming `name`.
DType storage_type(const char* op, const char* name, const at::Tensor& t);
// Every tensor is a CUDA tensor on the device of the first one.
void check_same_cuda_device(const char* op, NamedTensors tensors);
// Every tensor has the dtype of the first one.
void check_same_dtype(const char* op, NamedTensors tensors);
bool is_aligned_16(const at::Tensor& t);

}  // namespace neva
