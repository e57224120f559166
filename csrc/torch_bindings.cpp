// The one registry of the extension's ops: torch.ops.neva_cuda.*, a schema and a line of comment each.
// (The namespace "neva" belongs to the public, backend-dispatching custom ops defined in Python.)
#include <Python.h>
#include <torch/library.h>

#include "ops/ops.h"

TORCH_LIBRARY(neva_cuda, m) {
  // Writes (__CUDA_ARCH__ of the cubin that ran, 1 if arch-specific like sm_90a) into out[0:2].
  m.def("probe_arch(Tensor(a!) out) -> ()");
  m.impl("probe_arch", c10::DeviceType::CUDA, &neva::probe_arch);

  // The CUDA runtime and the GPU architectures the extension was compiled for.
  m.def("build_info() -> str", &neva::build_info);

  // What the kernels are compiled for; neva_kernels.cuda_backend reads it instead of keeping copies.
  m.def("compiled_shapes() -> (int[] decode_head_dims, int decode_max_group, int[] flash_sm80_head_dims, "
        "int[] flash_sm90_head_dims)",
        &neva::compiled_shapes);

  // y = x / rms(x) * weight over the last dimension (float32 accumulation), as a fresh tensor.
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.impl("rms_norm", c10::DeviceType::CUDA, &neva::rms_norm);

  // (y, h): h = x + residual rounded to x's dtype (the updated residual), y = rms_norm(h), in one pass.
  m.def("fused_add_rms_norm(Tensor x, Tensor weight, float eps, Tensor residual) -> (Tensor, Tensor)");
  m.impl("fused_add_rms_norm", c10::DeviceType::CUDA, &neva::fused_add_rms_norm);

  // y = (x - mean) / std * weight + bias over the last dimension (1 + weight when zero_centered_weight).
  m.def("layer_norm(Tensor x, Tensor weight, Tensor? bias, float eps, bool zero_centered_weight) -> Tensor");
  m.impl("layer_norm", c10::DeviceType::CUDA, &neva::layer_norm);

  // (y, h): h = x + residual rounded to x's dtype (the updated residual), y = layer_norm(h), in one pass.
  m.def("fused_add_layer_norm(Tensor x, Tensor weight, Tensor? bias, float eps, bool zero_centered_weight, "
        "Tensor residual) -> (Tensor, Tensor)");
  m.impl("fused_add_layer_norm", c10::DeviceType::CUDA, &neva::fused_add_layer_norm);

  // out [B, Hq, D]: each sequence's one query token over its first seq_lens[b] tokens of the paged K/V cache;
  // num_splits > 0 forces the split-KV count (tests force both paths), 0 leaves it to the heuristic.
  m.def("paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor seq_lens, "
        "float softmax_scale, int num_splits=0) -> Tensor");
  m.impl("paged_decode_attention", c10::DeviceType::CUDA, &neva::paged_decode_attention);

  // The split heuristic of paged_decode_attention: splits per (sequence, KV head) on a GPU of sm_count SMs.
  m.def("decode_num_splits(int batch, int kv_heads, int max_context, int sm_count) -> int", &neva::decode_num_splits);

  // Writes k[i], v[i] into slot slot_mapping[i] of the caches, in place; slot -1 skips the token.
  m.def("append_kv_cache(Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slot_mapping) -> ()");
  m.impl("append_kv_cache", c10::DeviceType::CUDA, &neva::append_kv_cache);

  // (out, lse): softmax(q k^T * softmax_scale) v per sequence and head; padded [B, S, H, D] or packed + cu_seqlens;
  // kernel 0 picks per device, 80 forces mma.sync, 90 wgmma + TMA (tests, benchmarks).
  m.def("flash_attention(Tensor q, Tensor k, Tensor v, bool causal, float softmax_scale, Tensor? cu_seqlens_q, "
        "Tensor? cu_seqlens_k, int? max_seqlen_q, int? max_seqlen_k, int kernel=0) -> (Tensor, Tensor)");
  m.impl("flash_attention", c10::DeviceType::CUDA, &neva::flash_attention);

  // inputs_embeds[image_token_mask] = Linear(w2, b2)(GELU(Linear(w1, b1)(image_features))), row i to set row i;
  // kernel 0 picks per device, 80 forces mma.sync, 90 wgmma + TMA (tests).
  m.def("project_image_tokens(Tensor image_features, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
        "Tensor(a!) inputs_embeds, Tensor image_token_mask, int kernel=0) -> ()");
  m.impl("project_image_tokens", c10::DeviceType::CUDA, &neva::project_image_tokens);
}

// Importing neva_kernels._C loads this library, which runs the registration above; the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "neva CUDA kernels (see torch.ops.neva_cuda)", -1,
                               nullptr};
  return PyModule_Create(&module);
}
