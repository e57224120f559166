// RMSNorm, optionally fused with the residual add: one block per row, one pass over memory.
//
// A row is split into an unaligned head (< 8 elements up to x's first 16-byte boundary), whole 16-byte vectors,
// and a tail (< 8 elements); thread t owns vectors t, t + blockDim, ... and element t of the head and of the
// tail. The row stays in registers between the reduction and the output (kItems vectors per thread), so x and
// residual are read once. Rows too long for kItems = 16 take the streaming variant (kItems = 0), which
// re-reads h (L2-resident by then) for the output.
//
// No sm90 variant: this is a streaming read-reduce-write of a few KB per row in which every 16-byte load is
// independent; plain vector loads keep enough bytes in flight to reach HBM bandwidth on Hopper too, while a
// bulk copy would add a shared-memory round trip and an mbarrier wait to every row.
#pragma once
#include <algorithm>

#include "numeric.cuh"
#include "params.h"

namespace neva {
namespace rms {

constexpr int kMaxThreads = 512;
constexpr int kMaxItems = 16;

template <typename T, bool kResidual>
struct Row {
  const T* x;
  const T* residual;
  const T* weight;
  T* y;
  T* h;
  int64_t head;  // elements before the first whole vector
  bool weight_vectors_aligned;

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

  __device__ __forceinline__ void store_y(int64_t i, T hv, float rstd) const {
    y[i] = from_float<T>(to_float(hv) * rstd * to_float(weight[i]));
  }

  __device__ __forceinline__ void store_y_vector(int64_t c, const Vec16<T>& hv, float rstd) const {
    const int64_t offset = head + c * Vec16<T>::kSize;
    Vec16<T> w, out;
    if (weight_vectors_aligned) {
      w.load(weight + offset);
    } else {
#pragma unroll
      for (int i = 0; i < Vec16<T>::kSize; ++i) w.elems[i] = weight[offset + i];
    }
#pragma unroll
    for (int i = 0; i < Vec16<T>::kSize; ++i) out.set(i, hv.get(i) * rstd * w.get(i));
    out.store(y + offset);
  }
};

template <typename T>
__device__ __forceinline__ float sum_of_squares(const Vec16<T>& v) {
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < Vec16<T>::kSize; ++i) s += v.get(i) * v.get(i);
  return s;
}

template <typename T, int kItems, bool kResidual>
__global__ void __launch_bounds__(kMaxThreads) rms_norm_kernel(const RmsNormParams p) {
  constexpr int kVec = Vec16<T>::kSize;
  __shared__ float scratch[32];
  const int tid = threadIdx.x;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    Row<T, kResidual> row;
    row.x = static_cast<const T*>(p.x) + r * p.x_row_stride;
    row.residual = kResidual ? static_cast<const T*>(p.residual) + r * p.residual_row_stride : nullptr;
    row.weight = static_cast<const T*>(p.weight);
    row.y = static_cast<T*>(p.y) + r * p.hidden;
    row.h = static_cast<T*>(p.h) + r * p.hidden;
    row.head = std::min<int64_t>(elements_to_alignment(row.x), p.hidden);
    row.weight_vectors_aligned = row.head == 0;
    const int64_t vectors = (p.hidden - row.head) / kVec;
    const int64_t tail_start = row.head + vectors * kVec;

    // The scalar elements of the head and the tail (at most one of each per thread).
    const bool has_head = tid < row.head, has_tail = tid < p.hidden - tail_start;
    const T head_h = has_head ? row.load_h(tid) : from_float<T>(0.f);
    const T tail_h = has_tail ? row.load_h(tail_start + tid) : from_float<T>(0.f);
    float squares = to_float(head_h) * to_float(head_h) + to_float(tail_h) * to_float(tail_h);

    Vec16<T> cached[kItems > 0 ? kItems : 1];
    if constexpr (kItems > 0) {
#pragma unroll
      for (int k = 0; k < kItems; ++k) {
        const int64_t c = tid + int64_t(k) * blockDim.x;
        if (c < vectors) {
          cached[k] = row.load_h_vector(c);
          squares += sum_of_squares(cached[k]);
        }
      }
    } else {
      for (int64_t c = tid; c < vectors; c += blockDim.x) squares += sum_of_squares(row.load_h_vector(c));
    }
    const float rstd = rsqrtf(block_sum(squares, scratch) / float(p.hidden) + p.eps);

    if (has_head) row.store_y(tid, head_h, rstd);
    if (has_tail) row.store_y(tail_start + tid, tail_h, rstd);
    if constexpr (kItems > 0) {
#pragma unroll
      for (int k = 0; k < kItems; ++k) {
        const int64_t c = tid + int64_t(k) * blockDim.x;
        if (c < vectors) row.store_y_vector(c, cached[k], rstd);
      }
    } else {
      // Each thread re-reads only the vectors it wrote itself: no synchronization needed.
      const T* source = kResidual ? row.h : row.x;
      for (int64_t c = tid; c < vectors; c += blockDim.x) {
        Vec16<T> hv;
        hv.load(source + row.head + c * kVec);
        row.store_y_vector(c, hv, rstd);
      }
    }
  }
}

template <typename T, bool kResidual>
cudaError_t launch_with_items(const RmsNormParams& p, int items, int threads, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(p.rows, 1 << 30)));
  switch (items) {
    case 1: rms_norm_kernel<T, 1, kResidual><<<grid, threads, 0, stream>>>(p); break;
    case 2: rms_norm_kernel<T, 2, kResidual><<<grid, threads, 0, stream>>>(p); break;
    case 4: rms_norm_kernel<T, 4, kResidual><<<grid, threads, 0, stream>>>(p); break;
    case 8: rms_norm_kernel<T, 8, kResidual><<<grid, threads, 0, stream>>>(p); break;
    case 16: rms_norm_kernel<T, 16, kResidual><<<grid, threads, 0, stream>>>(p); break;
    default: rms_norm_kernel<T, 0, kResidual><<<grid, threads, 0, stream>>>(p); break;
  }
  return cudaGetLastError();
}

}  // namespace rms

template <typename T>
cudaError_t rms_norm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  // The fewest vectors per thread that cover the row with at most kMaxThreads threads; 0: streaming.
  const int64_t vectors = p.hidden / Vec16<T>::kSize;
  int items = 0;
  for (int k = 1; k <= rms::kMaxItems; k *= 2) {
    if (vectors <= int64_t(k) * rms::kMaxThreads) {
      items = k;
      break;
    }
  }
  const int64_t wanted = items > 0 ? (vectors + items - 1) / items : rms::kMaxThreads;
  const int threads = static_cast<int>(std::max<int64_t>(32, (wanted + 31) / 32 * 32));
  return p.residual != nullptr ? rms::launch_with_items<T, true>(p, items, threads, stream)
                               : rms::launch_with_items<T, false>(p, items, threads, stream);
}

}  // namespace neva
