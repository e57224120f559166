// The per-row norms, RMSNorm and LayerNorm, optionally fused with the residual add: one block per row, one pass
// over memory. kCenter subtracts the row mean (LayerNorm, two block reductions: the mean, then the variance about
// it); without it the row is divided by its root mean square (RMSNorm, one reduction).
//
// A row is split into an unaligned head (< 8 elements up to x's first 16-byte boundary), whole 16-byte vectors,
// and a tail (< 8 elements); thread t owns vectors t, t + blockDim, ... and element t of the head and of the
// tail. The row stays in registers between the reductions and the output (kItems vectors per thread), so x and
// residual are read once. Rows too long for kItems = 8 (over 32768 half or 16384 float elements) take the
// streaming variant (kItems = 0), which re-reads h (L2-resident by then) for each later pass; each thread re-reads
// only what it wrote itself. (kItems = 16 spills on both architectures once the output pass also reads a bias.)
//
// No sm90 kernel of its own: this is a streaming read-reduce-write of a few KB per row in which every 16-byte
// load is independent; plain vector loads keep enough bytes in flight to reach HBM bandwidth on Hopper too, while
// a bulk copy would add a shared-memory round trip and an mbarrier wait to every row. What differs per
// architecture is the launch shape (RowNormTuning).
#pragma once
#include <algorithm>

#include "numeric.cuh"
#include "params.h"

namespace neva {

// How a row is spread over a block: at most max_threads threads, each holding at least min_items vectors.
struct RowNormTuning {
  int max_threads;
  int min_items;
};
// Starting points, not yet measured (benchmarks/layer_norm.py and memory_bound.py measure them): Ampere gets two
// independent 16-byte loads per thread before the first reduction; Hopper, with more bandwidth per SM to cover,
// more warps per row (one vector per thread while the row fits in 512 threads).
inline constexpr RowNormTuning kRowNormSm80{512, 2};
inline constexpr RowNormTuning kRowNormSm90{512, 1};

namespace norm {

constexpr int kMaxThreads = 512;
constexpr int kMaxItems = 8;

template <typename T, bool kResidual>
struct Row {
  const T* x;
  const T* residual;
  const T* weight;
  const T* bias;  // nullptr: no shift
  T* y;
  T* h;
  int64_t head;  // elements before the first whole vector
  float weight_offset;

  // h at element i (x + residual rounded to T, stored to the h output), as T.
  __device__ __forceinline__ T load_h(int64_t i) const {
    if constexpr (!kResidual) {
      return x[i];
    } else {
      const T sum = from_float<T>(to_float(x[i]) + to_float(residual[i]));
      h[i] = sum;
      return sum;
    }
  }

  // h for vector c, as load_h does it element-wise.
  __device__ __forceinline__ Vec16<T> load_h_vector(int64_t c) const {
    const int64_t offset = head + c * Vec16<T>::kSize;
    Vec16<T> hv;
    hv.load(x + offset);
    if constexpr (kResidual) {
      Vec16<T> rv;
      rv.load(residual + offset);
#pragma unroll
      for (int i = 0; i < Vec16<T>::kSize; ++i) hv.set(i, hv.get(i) + rv.get(i));
      hv.store(h + offset);
    }
    return hv;
  }

  // h as the streaming passes after the first re-read it (no second store of h).
  __device__ __forceinline__ Vec16<T> reload_h_vector(int64_t c) const {
    Vec16<T> hv;
    hv.load((kResidual ? h : x) + head + c * Vec16<T>::kSize);
    return hv;
  }

  __device__ __forceinline__ float output(float hv, float mean, float rstd, int64_t i) const {
    const float scaled = (hv - mean) * rstd * (to_float(weight[i]) + weight_offset);
    return bias != nullptr ? scaled + to_float(bias[i]) : scaled;
  }

  __device__ __forceinline__ void store_y(int64_t i, T hv, float mean, float rstd) const {
    y[i] = from_float<T>(output(to_float(hv), mean, rstd, i));
  }

  // Vector c of y; weight and bias are read as vectors when the row's split falls on their 16-byte boundaries.
  __device__ __forceinline__ void store_y_vector(int64_t c, const Vec16<T>& hv, float mean, float rstd) const {
    const int64_t offset = head + c * Vec16<T>::kSize;
    Vec16<T> out;
    if (head == 0) {
      Vec16<T> w, b;
      w.load(weight + offset);
      if (bias != nullptr) b.load(bias + offset);
#pragma unroll
      for (int i = 0; i < Vec16<T>::kSize; ++i) {
        const float scaled = (hv.get(i) - mean) * rstd * (w.get(i) + weight_offset);
        out.set(i, bias != nullptr ? scaled + b.get(i) : scaled);
      }
    } else {
#pragma unroll
      for (int i = 0; i < Vec16<T>::kSize; ++i) out.set(i, output(hv.get(i), mean, rstd, offset + i));
    }
    out.store(y + offset);
  }
};

template <typename T>
__device__ __forceinline__ float sum_of(const Vec16<T>& v) {
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < Vec16<T>::kSize; ++i) s += v.get(i);
  return s;
}

template <typename T>
__device__ __forceinline__ float squared_deviations(const Vec16<T>& v, float mean) {
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < Vec16<T>::kSize; ++i) s += (v.get(i) - mean) * (v.get(i) - mean);
  return s;
}

template <typename T, int kItems, bool kResidual, bool kCenter>
__global__ void __launch_bounds__(kMaxThreads) row_norm_kernel(const RowNormParams p) {
  constexpr int kVec = Vec16<T>::kSize;
  __shared__ float scratch[32];
  const int tid = threadIdx.x;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    Row<T, kResidual> row;
    row.x = static_cast<const T*>(p.x) + r * p.x_row_stride;
    row.residual = kResidual ? static_cast<const T*>(p.residual) + r * p.residual_row_stride : nullptr;
    row.weight = static_cast<const T*>(p.weight);
    row.bias = static_cast<const T*>(p.bias);
    row.y = static_cast<T*>(p.y) + r * p.hidden;
    row.h = static_cast<T*>(p.h) + r * p.hidden;
    row.head = std::min<int64_t>(elements_to_alignment(row.x), p.hidden);
    row.weight_offset = p.weight_offset;
    const int64_t vectors = (p.hidden - row.head) / kVec;
    const int64_t tail_start = row.head + vectors * kVec;

    // The scalar elements of the head and the tail (at most one of each per thread).
    const bool has_head = tid < row.head, has_tail = tid < p.hidden - tail_start;
    const T head_h = has_head ? row.load_h(tid) : from_float<T>(0.f);
    const T tail_h = has_tail ? row.load_h(tail_start + tid) : from_float<T>(0.f);
    const auto scalar_deviations = [&](float mean) {
      const float head_d = has_head ? to_float(head_h) - mean : 0.f;
      const float tail_d = has_tail ? to_float(tail_h) - mean : 0.f;
      return head_d * head_d + tail_d * tail_d;
    };

    // First pass: the row into registers (or, streaming, h stored), with its sum when centring.
    Vec16<T> cached[kItems > 0 ? kItems : 1];
    float sum = to_float(head_h) + to_float(tail_h);
    float squares = 0.f;
    if constexpr (kItems > 0) {
#pragma unroll
      for (int k = 0; k < kItems; ++k) {
        const int64_t c = tid + int64_t(k) * blockDim.x;
        if (c < vectors) {
          cached[k] = row.load_h_vector(c);
          if constexpr (kCenter) sum += sum_of(cached[k]);
          else squares += squared_deviations(cached[k], 0.f);
        }
      }
    } else {
      for (int64_t c = tid; c < vectors; c += blockDim.x) {
        const Vec16<T> hv = row.load_h_vector(c);
        if constexpr (kCenter) sum += sum_of(hv);
        else squares += squared_deviations(hv, 0.f);
      }
    }

    float mean = 0.f;
    if constexpr (kCenter) {
      // Second pass: squared deviations about the mean (more accurate than E[h^2] - mean^2).
      mean = block_sum(sum, scratch) / float(p.hidden);
      if constexpr (kItems > 0) {
#pragma unroll
        for (int k = 0; k < kItems; ++k) {
          if (tid + int64_t(k) * blockDim.x < vectors) squares += squared_deviations(cached[k], mean);
        }
      } else {
        for (int64_t c = tid; c < vectors; c += blockDim.x) squares += squared_deviations(row.reload_h_vector(c), mean);
      }
    }
    const float rstd = rsqrtf(block_sum(squares + scalar_deviations(mean), scratch) / float(p.hidden) + p.eps);

    if (has_head) row.store_y(tid, head_h, mean, rstd);
    if (has_tail) row.store_y(tail_start + tid, tail_h, mean, rstd);
    if constexpr (kItems > 0) {
#pragma unroll
      for (int k = 0; k < kItems; ++k) {
        const int64_t c = tid + int64_t(k) * blockDim.x;
        if (c < vectors) row.store_y_vector(c, cached[k], mean, rstd);
      }
    } else {
      for (int64_t c = tid; c < vectors; c += blockDim.x) row.store_y_vector(c, row.reload_h_vector(c), mean, rstd);
    }
  }
}

template <typename T, bool kResidual, bool kCenter>
cudaError_t launch_with_items(const RowNormParams& p, int items, int threads, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(p.rows, 1 << 30)));
  switch (items) {
    case 1: row_norm_kernel<T, 1, kResidual, kCenter><<<grid, threads, 0, stream>>>(p); break;
    case 2: row_norm_kernel<T, 2, kResidual, kCenter><<<grid, threads, 0, stream>>>(p); break;
    case 4: row_norm_kernel<T, 4, kResidual, kCenter><<<grid, threads, 0, stream>>>(p); break;
    case 8: row_norm_kernel<T, 8, kResidual, kCenter><<<grid, threads, 0, stream>>>(p); break;
    default: row_norm_kernel<T, 0, kResidual, kCenter><<<grid, threads, 0, stream>>>(p); break;
  }
  return cudaGetLastError();
}

template <typename T, bool kCenter>
cudaError_t launch_with_residual(const RowNormParams& p, int items, int threads, cudaStream_t stream) {
  return p.residual != nullptr ? launch_with_items<T, true, kCenter>(p, items, threads, stream)
                               : launch_with_items<T, false, kCenter>(p, items, threads, stream);
}

}  // namespace norm

template <typename T>
cudaError_t row_norm(const RowNormParams& p, const RowNormTuning& tuning, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  // The fewest vectors per thread (at least tuning.min_items) that cover the row with at most tuning.max_threads
  // threads; 0: streaming.
  const int max_threads = std::min(tuning.max_threads, norm::kMaxThreads);
  const int64_t vectors = p.hidden / Vec16<T>::kSize;
  int items = 0;
  for (int k = 1; k <= norm::kMaxItems; k *= 2) {
    if (k >= tuning.min_items && vectors <= int64_t(k) * max_threads) {
      items = k;
      break;
    }
  }
  const int64_t wanted = items > 0 ? (vectors + items - 1) / items : max_threads;
  const int threads = static_cast<int>(std::max<int64_t>(32, (wanted + 31) / 32 * 32));
  return p.center ? norm::launch_with_residual<T, true>(p, items, threads, stream)
                  : norm::launch_with_residual<T, false>(p, items, threads, stream);
}

}  // namespace neva
