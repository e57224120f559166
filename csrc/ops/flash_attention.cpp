#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>

#include "../launch/launch.h"
#include "ops.h"

namespace neva {
namespace {

constexpr const char* kOp = "flash_attention";
constexpr int64_t kMaxGridDim = 65535;  // query heads and sequences are grid dimensions y and z
constexpr double kLog2e = 1.4426950408889634;

// The kernels copy rows in 16-byte chunks: unit stride along head_dim, every other stride a multiple of 16 bytes,
// a 16-byte aligned start. Else a fresh copy (.contiguous() would keep a contiguous view with a misaligned start).
at::Tensor with_row_alignment(const at::Tensor& t) {
  bool aligned = t.stride(-1) == 1 && is_aligned_16(t);
  for (int64_t d = 0; d + 1 < t.dim(); ++d) aligned = aligned && t.stride(d) * t.element_size() % 16 == 0;
  return aligned ? t : t.clone(at::MemoryFormat::Contiguous);
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const std::optional<at::Tensor>& cu_seqlens_q, const std::optional<at::Tensor>& cu_seqlens_k) {
  const bool packed = cu_seqlens_q.has_value();
  TORCH_CHECK(packed == cu_seqlens_k.has_value(), kOp, ": 'cu_seqlens_q' and 'cu_seqlens_k' must be given together");
  const int64_t rank = packed ? 3 : 4;
  const char* layout = packed ? "[total_tokens, heads, head_dim] (packed, with cu_seqlens)"
                              : "[batch, seq, heads, head_dim]";
  for (const auto& [name, t] : {std::pair{"q", &q}, std::pair{"k", &k}, std::pair{"v", &v}}) {
    TORCH_CHECK(t->dim() == rank, kOp, ": '", name, "' must be ", layout, ", got shape ", t->sizes());
  }
  const DType dtype = storage_type(kOp, "q", q);
  TORCH_CHECK(dtype != DType::kFloat32, kOp, ": 'q' must be float16 or bfloat16 (the cuda kernels' tiles are "
              "sized for 16-bit operands), got float32");
  check_same_dtype(kOp, {{"q", &q}, {"k", &k}, {"v", &v}});
  check_same_cuda_device(kOp, {{"q", &q}, {"k", &k}, {"v", &v}});
  const int64_t head_dim = q.size(-1), kv_heads = k.size(-2);
  TORCH_CHECK(k.size(-1) == head_dim && (packed || k.size(0) == q.size(0)), kOp,
              ": 'k' must have the batch and head_dim of q, got shape ", k.sizes(), " for q ", q.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), kOp, ": 'v' must have the shape of k ", k.sizes(), ", got ", v.sizes());
  TORCH_CHECK(kv_heads > 0 && q.size(-2) % kv_heads == 0, kOp, ": the query heads of 'q' (", q.size(-2),
              ") must be a multiple of the key/value heads of 'k' (", kv_heads, ")");
  TORCH_CHECK(q.size(-2) <= kMaxGridDim, kOp, ": at most ", kMaxGridDim, " query heads, got ", q.size(-2));
  if (!packed) {
    TORCH_CHECK(q.size(0) <= kMaxGridDim, kOp, ": at most ", kMaxGridDim, " sequences, got ", q.size(0));
    return;
  }
  for (const auto& [name, cu] :
       {std::pair{"cu_seqlens_q", &*cu_seqlens_q}, std::pair{"cu_seqlens_k", &*cu_seqlens_k}}) {
    TORCH_CHECK(cu->scalar_type() == at::kInt && cu->dim() == 1 && cu->size(0) >= 1, kOp, ": '", name,
                "' must be int32 [batch + 1], got ", cu->scalar_type(), " ", cu->sizes());
    check_same_cuda_device(kOp, {{"q", &q}, {name, cu}});
  }
  TORCH_CHECK(cu_seqlens_k->size(0) == cu_seqlens_q->size(0), kOp, ": 'cu_seqlens_k' must have the length of "
              "cu_seqlens_q (", cu_seqlens_q->size(0), "), got ", cu_seqlens_k->size(0));
  TORCH_CHECK(cu_seqlens_q->size(0) - 1 <= kMaxGridDim, kOp, ": at most ", kMaxGridDim, " sequences, got ",
              cu_seqlens_q->size(0) - 1);
  TORCH_CHECK(std::max(q.size(0), k.size(0)) <= std::numeric_limits<int32_t>::max(), kOp,
              ": packed batches must fit int32 token offsets");
}

// The longest query sequence of a packed batch, once both offset tensors are checked as the kernels rely on them:
// from 0, never decreasing, to the token count (the sm90 kernel's tensor maps span all of k and v, so keys past
// cu_seqlens_k[-1] would reach the last sequence). One device-to-host copy of the offsets: a sync.
int64_t checked_longest_query(const at::Tensor& cu_q, const at::Tensor& cu_k, int64_t total_q, int64_t total_k) {
  const at::Tensor host = at::stack({cu_q, cu_k}).cpu();
  const auto offsets = host.accessor<int32_t, 2>();
  const int64_t ends = host.size(1);
  int64_t longest = 0;
  for (const auto& [i, name, total] :
       {std::tuple{0, "cu_seqlens_q", total_q}, std::tuple{1, "cu_seqlens_k", total_k}}) {
    TORCH_CHECK(offsets[i][0] == 0 && offsets[i][ends - 1] == total, kOp, ": '", name,
                "' must start at 0 and end at the token count ", total, ", got ", offsets[i][0], " .. ",
                offsets[i][ends - 1]);
    for (int64_t b = 0; b + 1 < ends; ++b) {
      const int64_t length = int64_t(offsets[i][b + 1]) - offsets[i][b];
      TORCH_CHECK(length >= 0, kOp, ": '", name, "' must never decrease, got ", offsets[i][b], " then ",
                  offsets[i][b + 1], " at ", b);
      if (i == 0) longest = std::max(longest, length);
    }
  }
  return longest;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> flash_attention(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, bool causal, double softmax_scale,
    const std::optional<at::Tensor>& cu_seqlens_q, const std::optional<at::Tensor>& cu_seqlens_k,
    std::optional<int64_t> max_seqlen_q, std::optional<int64_t> /*max_seqlen_k*/, int64_t kernel_choice) {
  check_inputs(q_in, k_in, v_in, cu_seqlens_q, cu_seqlens_k);
  TORCH_CHECK(softmax_scale > 0 && std::isfinite(softmax_scale), kOp, ": 'softmax_scale' must be > 0, got ",
              softmax_scale);
  TORCH_CHECK(kernel_choice == 0 || kernel_choice == 80 || kernel_choice == 90, kOp,
              ": 'kernel' must be 0 (per device), 80 (mma.sync) or 90 (wgmma + TMA), got ", kernel_choice);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const int64_t head_dim = q_in.size(-1);
  const auto requested = static_cast<KernelPath>(kernel_choice);
  const KernelPath kernel = flash_attention_kernel(requested, static_cast<int>(head_dim));
  TORCH_CHECK(kernel != KernelPath::kAuto, kOp, ": no ",
              requested == KernelPath::kAuto ? "" : (requested == KernelPath::kSm80 ? "sm80 " : "sm90 "),
              "cuda kernel for head_dim ", head_dim, " on this device (compiled head dims: ",
              c10::IntArrayRef(flash_attention_head_dims(requested)), ")");

  const bool packed = cu_seqlens_q.has_value();
  at::Tensor cu_q, cu_k;
  int64_t max_q = 0;
  if (packed) {
    cu_q = cu_seqlens_q->contiguous();
    cu_k = cu_seqlens_k->contiguous();
    const int64_t longest = checked_longest_query(cu_q, cu_k, q_in.size(0), k_in.size(0));
    max_q = max_seqlen_q.value_or(longest);
    // Below the longest sequence, the grid would leave that sequence's last query rows unwritten.
    TORCH_CHECK(max_q >= longest && max_q <= q_in.size(0), kOp, ": 'max_seqlen_q' must be in ", longest, "..",
                q_in.size(0), " (the longest query sequence .. the query tokens), got ", max_q);
  }
  const at::Tensor q = with_row_alignment(q_in), k = with_row_alignment(k_in), v = with_row_alignment(v_in);
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = packed ? at::empty({q.size(1), q.size(0)}, q.options().dtype(at::kFloat))
                          : at::empty({q.size(0), q.size(2), q.size(1)}, q.options().dtype(at::kFloat));
  if (q.numel() == 0) return {out, lse};

  FlashAttentionParams p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  const int row = packed ? 0 : 1;  // dims: [batch,] row, head, head_dim
  p.q_batch_stride = packed ? 0 : q.stride(0);
  p.k_batch_stride = packed ? 0 : k.stride(0);
  p.v_batch_stride = packed ? 0 : v.stride(0);
  p.out_batch_stride = packed ? 0 : out.stride(0);
  p.q_row_stride = q.stride(row);
  p.k_row_stride = k.stride(row);
  p.v_row_stride = v.stride(row);
  p.out_row_stride = out.stride(row);
  p.q_head_stride = q.stride(row + 1);
  p.k_head_stride = k.stride(row + 1);
  p.v_head_stride = v.stride(row + 1);
  p.out_head_stride = out.stride(row + 1);
  p.lse_batch_stride = packed ? 0 : lse.stride(0);
  p.lse_head_stride = lse.stride(packed ? 0 : 1);
  p.q_heads = static_cast<int>(q.size(row + 1));
  p.kv_heads = static_cast<int>(k.size(row + 1));
  p.head_dim = static_cast<int>(head_dim);
  p.causal = causal;
  p.scale_log2 = static_cast<float>(softmax_scale * kLog2e);
  if (packed) {
    p.cu_seqlens_q = cu_q.data_ptr<int32_t>();
    p.cu_seqlens_k = cu_k.data_ptr<int32_t>();
    p.batch = static_cast<int>(cu_q.size(0) - 1);
    p.seqlen_q = static_cast<int>(max_q);  // sizes the grid; the lengths come from cu_seqlens
    p.total_q = static_cast<int>(q.size(0));
    p.total_k = static_cast<int>(k.size(0));
  } else {
    p.batch = static_cast<int>(q.size(0));
    p.seqlen_q = static_cast<int>(q.size(1));
    p.seqlen_k = static_cast<int>(k.size(1));
  }
  if (p.batch == 0 || p.seqlen_q == 0) return {out, lse};
  C10_CUDA_CHECK(launch_flash_attention(storage_type(kOp, "q", q), p, kernel, c10::cuda::getCurrentCUDAStream()));
  return {out, lse};
}

}  // namespace neva
