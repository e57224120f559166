#include <algorithm>
#include <type_traits>

#include "../kernels/paged_decode_attention.cuh"
#include "dispatch.cuh"
#include "launch.h"

namespace neva {
namespace {

constexpr int kMinTokensPerSplit = 256;
constexpr int kMaxSplits = 64;
constexpr int kWaves = 2;  // blocks per SM the split heuristic aims for

// The head dims compiled (the Python side reads them through _C's compiled_shapes()).
using DecodeHeadDims = HeadDimList<64, 80, 96, 128, 256>;

}  // namespace

std::vector<int64_t> paged_decode_head_dims() { return DecodeHeadDims::values(); }

// Enough blocks for kWaves per SM, but no split shorter than kMinTokensPerSplit tokens of the longest possible
// context, and at most kMaxSplits.
int paged_decode_num_splits(int64_t batch, int64_t kv_heads, int64_t max_context, int sm_count) {
  const int64_t blocks = std::max<int64_t>(batch * kv_heads, 1);
  const int64_t wanted = (int64_t(kWaves) * sm_count + blocks - 1) / blocks;
  const int64_t affordable = (max_context + kMinTokensPerSplit - 1) / kMinTokensPerSplit;
  return static_cast<int>(std::clamp<int64_t>(std::min(wanted, affordable), 1, kMaxSplits));
}

// Capped at one tile per split and rounded so that every split but the last holds whole tiles.
PagedDecodePlan plan_paged_decode(DType dtype, int head_dim, int64_t batch, int64_t kv_heads, int64_t max_context,
                                  int sm_count, int requested_splits) {
  int element_bytes = 0;
  with_storage_type(dtype, [&](auto tag) {
    element_bytes = sizeof(tag);
    return cudaSuccess;
  });
  const int64_t tile = decode::tile_tokens(element_bytes, head_dim);
  const int64_t tiles = std::max<int64_t>((max_context + tile - 1) / tile, 1);
  int64_t splits = requested_splits > 0 ? requested_splits
                                        : paged_decode_num_splits(batch, kv_heads, max_context, sm_count);
  splits = std::min(splits, tiles);
  const int64_t tiles_per_split = (tiles + splits - 1) / splits;
  return {static_cast<int>((tiles + tiles_per_split - 1) / tiles_per_split),
          static_cast<int>(tiles_per_split * tile)};
}

cudaError_t launch_paged_decode_attention(DType dtype, const PagedDecodeParams& params, cudaStream_t stream) {
  return with_storage_type(dtype, [&](auto tag) {
    return DecodeHeadDims::dispatch(params.head_dim, [&](auto head_dim) {
      return paged_decode_attention<decltype(tag), decltype(head_dim)::value>(params, stream);
    });
  });
}

}  // namespace neva
