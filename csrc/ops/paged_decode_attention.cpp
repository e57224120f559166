#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "../launch/launch.h"
#include "ops.h"

namespace neva {
namespace {

constexpr const char* kOp = "paged_decode_attention";
constexpr int64_t kMaxGridDim = 65535;  // batch and KV heads are grid dimensions y and z

void check_inputs(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                  const at::Tensor& block_tables, const at::Tensor& seq_lens) {
  TORCH_CHECK(q.dim() == 3, kOp, ": 'q' must be [batch, q_heads, head_dim], got shape ", q.sizes());
  TORCH_CHECK(k_cache.dim() == 4, kOp, ": 'k_cache' must be [num_blocks, block_size, kv_heads, head_dim], got ",
              k_cache.sizes());
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), kOp, ": 'v_cache' must have the shape of k_cache ",
              k_cache.sizes(), ", got ", v_cache.sizes());
  storage_type(kOp, "q", q);
  check_same_dtype(kOp, {{"q", &q}, {"k_cache", &k_cache}, {"v_cache", &v_cache}});
  check_same_cuda_device(kOp, {{"q", &q}, {"k_cache", &k_cache}, {"v_cache", &v_cache},
                               {"block_tables", &block_tables}, {"seq_lens", &seq_lens}});
  const int64_t batch = q.size(0), q_heads = q.size(1), head_dim = q.size(2), kv_heads = k_cache.size(2);
  TORCH_CHECK(k_cache.size(3) == head_dim, kOp, ": 'k_cache' must have head_dim ", head_dim, " (of q), got ",
              k_cache.size(3));
  const std::vector<int64_t> head_dims = paged_decode_head_dims();
  TORCH_CHECK(std::find(head_dims.begin(), head_dims.end(), head_dim) != head_dims.end(), kOp,
              ": head_dim must be one of ", c10::IntArrayRef(head_dims), ", got ", head_dim);
  TORCH_CHECK(k_cache.numel() > 0, kOp, ": 'k_cache' must have no empty dimension, got ", k_cache.sizes());
  TORCH_CHECK(q_heads % kv_heads == 0 && q_heads / kv_heads <= kPagedDecodeMaxGroup, kOp,
              ": the query heads of 'q' (", q_heads, ") must be a multiple of the KV heads (", kv_heads,
              ") and at most ", kPagedDecodeMaxGroup, " times as many");
  TORCH_CHECK(batch <= kMaxGridDim && kv_heads <= kMaxGridDim, kOp, ": at most ", kMaxGridDim,
              " sequences and KV heads, got ", batch, " and ", kv_heads);
  for (const auto& [name, cache] : {std::pair{"k_cache", &k_cache}, std::pair{"v_cache", &v_cache}}) {
    TORCH_CHECK(cache->is_contiguous() && is_aligned_16(*cache), kOp, ": '", name,
                "' must be contiguous and start 16-byte aligned (pages are copied in 16-byte units)");
  }
  TORCH_CHECK(block_tables.scalar_type() == at::kInt && block_tables.dim() == 2 && block_tables.size(0) == batch,
              kOp, ": 'block_tables' must be int32 [", batch, ", max_blocks], got ", block_tables.scalar_type(), " ",
              block_tables.sizes());
  TORCH_CHECK(seq_lens.scalar_type() == at::kInt && seq_lens.dim() == 1 && seq_lens.size(0) == batch, kOp,
              ": 'seq_lens' must be int32 [", batch, "], got ", seq_lens.scalar_type(), " ", seq_lens.sizes());
  TORCH_CHECK(block_tables.size(1) * k_cache.size(1) <= std::numeric_limits<int32_t>::max(), kOp,
              ": contexts must fit int32 token indices");
}

int sm_count(const at::Tensor& t) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, t.get_device()));
  return count;
}

}  // namespace

at::Tensor paged_decode_attention(const at::Tensor& q_in, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& block_tables_in, const at::Tensor& seq_lens_in,
                                  double softmax_scale, int64_t num_splits) {
  check_inputs(q_in, k_cache, v_cache, block_tables_in, seq_lens_in);
  TORCH_CHECK(softmax_scale > 0, kOp, ": 'softmax_scale' must be > 0, got ", softmax_scale);
  TORCH_CHECK(num_splits >= 0 && num_splits <= std::numeric_limits<int32_t>::max(), kOp,
              ": 'num_splits' must be >= 0 (0: the heuristic), got ", num_splits);
  const at::Tensor q = q_in.stride(2) == 1 ? q_in : q_in.contiguous();
  const at::Tensor block_tables = block_tables_in.stride(1) == 1 ? block_tables_in : block_tables_in.contiguous();
  const at::Tensor seq_lens = seq_lens_in.contiguous();
  const int64_t batch = q.size(0), q_heads = q.size(1), head_dim = q.size(2);
  const int64_t block_size = k_cache.size(1), kv_heads = k_cache.size(2);
  if (batch == 0) return at::empty({batch, q_heads, head_dim}, q.options());

  const c10::cuda::CUDAGuard guard(q.device());
  const DType dtype = storage_type(kOp, "q", q);
  const PagedDecodePlan plan = plan_paged_decode(dtype, static_cast<int>(head_dim), batch, kv_heads,
                                                 block_tables.size(1) * block_size, sm_count(q),
                                                 static_cast<int>(num_splits));
  TORCH_CHECK(plan.num_splits == 1 || batch * q_heads <= std::numeric_limits<int32_t>::max(), kOp,
              ": split-KV merges one (sequence, query head) per block of a 1-D grid: at most 2^31 - 1 of them, got ",
              batch, " x ", q_heads, " (num_splits 1 has no such limit)");
  at::Tensor out = at::empty({batch, q_heads, head_dim}, q.options());
  at::Tensor partial_out, partial_lse;
  if (plan.num_splits > 1) {
    partial_out = at::empty({batch, q_heads, plan.num_splits, head_dim}, q.options().dtype(at::kFloat));
    partial_lse = at::empty({batch, q_heads, plan.num_splits}, q.options().dtype(at::kFloat));
  }
  PagedDecodeParams params{};
  params.q = q.data_ptr();
  params.k_cache = k_cache.data_ptr();
  params.v_cache = v_cache.data_ptr();
  params.block_tables = block_tables.data_ptr<int32_t>();
  params.seq_lens = seq_lens.data_ptr<int32_t>();
  params.out = out.data_ptr();
  params.partial_out = plan.num_splits > 1 ? partial_out.data_ptr<float>() : nullptr;
  params.partial_lse = plan.num_splits > 1 ? partial_lse.data_ptr<float>() : nullptr;
  params.q_batch_stride = q.stride(0);
  params.q_head_stride = q.stride(1);
  params.block_table_stride = block_tables.stride(0);
  params.batch = static_cast<int>(batch);
  params.q_heads = static_cast<int>(q_heads);
  params.kv_heads = static_cast<int>(kv_heads);
  params.head_dim = static_cast<int>(head_dim);
  params.block_size = static_cast<int>(block_size);
  params.table_width = static_cast<int>(block_tables.size(1));
  params.num_splits = plan.num_splits;
  params.tokens_per_split = plan.tokens_per_split;
  params.softmax_scale = static_cast<float>(softmax_scale);
  C10_CUDA_CHECK(launch_paged_decode_attention(dtype, params, c10::cuda::getCurrentCUDAStream()));
  return out;
}

int64_t decode_num_splits(int64_t batch, int64_t kv_heads, int64_t max_context, int64_t sm_count) {
  TORCH_CHECK(batch >= 0 && kv_heads > 0 && max_context >= 0 && sm_count > 0,
              "decode_num_splits: sizes must be >= 0 (kv_heads, sm_count > 0), got ", batch, ", ", kv_heads, ", ",
              max_context, ", ", sm_count);
  return paged_decode_num_splits(batch, kv_heads, max_context, static_cast<int>(sm_count));
}

}  // namespace neva
