// The arguments of the memory-bound kernels: plain structs of raw pointers, sizes and strides (in elements),
// shared by the torch-free kernel headers (kernels/*.cuh), their launchers (launch/*.cu) and the torch glue.
#pragma once
#include <cstdint>

namespace neva {

// The storage types of the kernels; the ops layer maps torch dtypes onto it.
enum class DType { kFloat16, kBFloat16, kFloat32 };

// The per-row norms: y = (h - mean) / sqrt(mean((h - mean)^2) + eps) * (weight + weight_offset) + bias per row,
// with mean = mean(h) when center (LayerNorm) and 0 otherwise (RMSNorm); h = x or x + residual rounded to the
// storage type. Precondition (the ops layer ensures it, copying when needed): the rows of x, residual, y and h
// start at the same address modulo 16, and weight and bias start 16-byte aligned, so one vector split of a row
// fits all of them.
struct RowNormParams {
  const void* x;
  const void* residual;  // nullptr: no residual add
  const void* weight;
  const void* bias;      // nullptr: no shift
  void* y;               // [rows, hidden], contiguous
  void* h;               // [rows, hidden], contiguous; written only with a residual
  int64_t rows, hidden, x_row_stride, residual_row_stride;
  float eps;
  float weight_offset;   // 1 for a zero-centred weight (LayerNorm1p), else 0
  bool center;
};

// One query token per sequence over paged K/V caches [num_blocks, block_size, kv_heads, head_dim].
struct PagedDecodeParams {
  const void* q;  // [batch, q_heads, head_dim], unit stride along head_dim
  const void* k_cache;
  const void* v_cache;
  const int32_t* block_tables;  // [batch, table_width], unit stride along a row
  const int32_t* seq_lens;      // [batch]; lengths past table_width * block_size are cut to it
  void* out;                    // [batch, q_heads, head_dim], contiguous, q's dtype
  float* partial_out;           // [batch, q_heads, num_splits, head_dim] when num_splits > 1
  float* partial_lse;           // [batch, q_heads, num_splits], base-2 log-sum-exp, when num_splits > 1
  int64_t q_batch_stride, q_head_stride, block_table_stride;
  int batch, q_heads, kv_heads, head_dim, block_size;
  int table_width;  // blocks per row of block_tables; table_width * block_size fits int32
  int num_splits, tokens_per_split;  // from plan_paged_decode
  float softmax_scale;
};

// How the context of one (sequence, KV head) is cut into splits; tokens_per_split is a multiple of the tile.
struct PagedDecodePlan {
  int num_splits;
  int tokens_per_split;
};

// Copies k[i], v[i] ([kv_heads, head_dim], unit stride along head_dim) to row slot_mapping[i] of the caches.
struct AppendKvCacheParams {
  const void* k;
  const void* v;
  void* k_cache;  // contiguous [num_blocks * block_size, kv_heads, head_dim]
  void* v_cache;
  const void* slot_mapping;  // int32 or int64 [num_tokens]; -1 skips the token
  bool slot_is_int64;
  int64_t num_tokens, kv_heads, head_dim;
  int64_t k_token_stride, k_head_stride, v_token_stride, v_head_stride;
};

// Flash attention forward over padded [batch, seq, heads, head_dim] or packed [tokens, heads, head_dim] + cu_seqlens
// tensors. Strides are in elements; every row (one token of one head) has unit stride and starts 16-byte aligned.
struct FlashAttentionParams {
  const void* q;
  const void* k;
  const void* v;
  void* out;                   // q's layout and dtype
  float* lse;                  // natural-log log-sum-exp of the scaled scores per (batch, head, query row)
  const int32_t* cu_seqlens_q; // [batch + 1] when packed (batch strides are then 0), else nullptr
  const int32_t* cu_seqlens_k;
  int64_t q_batch_stride, q_row_stride, q_head_stride;
  int64_t k_batch_stride, k_row_stride, k_head_stride;
  int64_t v_batch_stride, v_row_stride, v_head_stride;
  int64_t out_batch_stride, out_row_stride, out_head_stride;
  int64_t lse_batch_stride, lse_head_stride;  // rows of lse have unit stride
  int batch, q_heads, kv_heads, head_dim;
  int seqlen_q, seqlen_k;  // padded: the lengths; packed: seqlen_q is the longest query sequence (grid size)
  int total_q, total_k;    // packed: the token rows of q and of k/v (bounds of the sm90 kernel's tensor maps)
  bool causal;             // bottom-right aligned: query i sees keys j <= i + len_k - len_q
  float scale_log2;        // softmax_scale * log2(e): the kernels exponentiate with exp2
};

// Which architecture's kernel of a compute-bound op (flash attention, projector GEMM) runs: picked per device, or
// forced (tests, benchmarks of the sm80 path on Hopper). The values are what the ops' `kernel` argument takes.
enum class KernelPath { kAuto = 0, kSm80 = 80, kSm90 = 90 };

// One projector GEMM: out[out_rows[i]] = act(x[i] @ w^T + bias) for i < m (out_rows null: out[i]), with
// x [m, k] and w [n, k] (nn.Linear's layout), act = GELU (erf) or identity, float32 accumulation.
// Preconditions (the ops layer ensures them, zero-padding copies when needed): x, w and out have unit stride
// along their last dim; k is a multiple of 8 and x and w start 16-byte aligned with row strides of a multiple
// of 16 bytes (whole 16-byte chunks, TMA's rules); out_rows[i] < 0 skips row i.
struct LinearParams {
  const void* x;
  const void* w;
  const void* bias;  // [n] or nullptr
  void* out;
  const int64_t* out_rows;  // [m] or nullptr
  int64_t m, n, k, x_row_stride, w_row_stride, out_row_stride;
  bool gelu;
};

}  // namespace neva
