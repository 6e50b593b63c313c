// Helpers shared by the CUDA kernel families: launch configuration, 16-byte packs, reductions.
#pragma once

#include "../tensor_utils.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>

namespace pyops::cuda {

constexpr int kThreads = 256;

// Enough blocks to fill the device; kernels loop over the rest (grid-stride), so any int64
// element count works.
inline int64_t blocks_for(int64_t work, int threads = kThreads) {
  const int64_t wanted = (work + threads - 1) / threads;
  const int64_t fill = int64_t{at::cuda::getCurrentDeviceProperties()->multiProcessorCount} * 32;
  return std::max<int64_t>(1, std::min(wanted, fill));
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// kVec elements in one 16-byte load or store.
template <typename scalar_t>
constexpr int vec_size() { return 16 / sizeof(scalar_t); }

template <typename scalar_t>
struct alignas(16) Pack {
  scalar_t v[vec_size<scalar_t>()];
};

// max that propagates NaN, as torch's reductions do.
template <typename T>
__device__ __forceinline__ T nan_max(T a, T b) {
  return (a != a || a > b) ? a : b;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
  return v;
}

// Sum over the block, returned to every thread. `shared` holds 32 values.
template <typename T>
__device__ T block_sum(T v, T* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_sum(v);
  __syncthreads();  // `shared` may still be read from a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) / 32;
  v = threadIdx.x < warps ? shared[threadIdx.x] : T(0);
  if (warp == 0) v = warp_sum(v);
  if (threadIdx.x == 0) shared[0] = v;
  __syncthreads();
  return shared[0];
}

// Running (max, sum of exp(x - max)) of a softmax, merged across threads: the online softmax.
// An aggregate (no constructors), so that it can live in __shared__ memory.
template <typename T>
struct MaxSum {
  T max;
  T sum;

  static __device__ __forceinline__ MaxSum empty() { return {T(-INFINITY), T(0)}; }

  __device__ __forceinline__ void add(T x) { merge(MaxSum{x, T(1)}); }

  // A part whose max is -inf adds nothing (and must not turn exp(-inf - -inf) into NaN).
  __device__ __forceinline__ void merge(MaxSum o) {
    const T m = nan_max(max, o.max);
    const T a = max == T(-INFINITY) ? T(0) : sum * ::exp(max - m);
    const T b = o.max == T(-INFINITY) ? T(0) : o.sum * ::exp(o.max - m);
    max = m;
    sum = a + b;
  }
};

template <typename T>
__device__ __forceinline__ MaxSum<T> warp_max_sum(MaxSum<T> v) {
  for (int offset = 16; offset > 0; offset /= 2) {
    v.merge(MaxSum<T>{__shfl_xor_sync(0xffffffff, v.max, offset),
                      __shfl_xor_sync(0xffffffff, v.sum, offset)});
  }
  return v;
}

// MaxSum over the block, returned to every thread. `shared` holds 32 entries.
template <typename T>
__device__ MaxSum<T> block_max_sum(MaxSum<T> v, MaxSum<T>* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_max_sum(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) / 32;
  v = threadIdx.x < warps ? shared[threadIdx.x] : MaxSum<T>::empty();
  if (warp == 0) v = warp_max_sum(v);
  if (threadIdx.x == 0) shared[0] = v;
  __syncthreads();
  return shared[0];
}

}  // namespace pyops::cuda
