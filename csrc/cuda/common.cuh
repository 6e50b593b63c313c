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

// ---- elementwise: out[i] = fn(in[0][i], ...), 16-byte packs where every pointer is aligned ------

template <typename scalar_t, int kArity>
struct Inputs {
  const scalar_t* ptr[kArity];
};

// out[i] = fn(in[0][i], ..., in[kArity - 1][i]) computed in opmath (float for half types).
// Each thread loads kUnroll packs of every input before computing any: one 16-byte load in
// flight per thread left the copy bandwidth at 96 % where torch's unrolled kernel reaches 102 %.
template <typename scalar_t, int kArity, typename Fn>
__global__ void map_kernel(scalar_t* __restrict__ out, Inputs<scalar_t, kArity> in, int64_t n,
                           bool vectorized, Fn fn) {
  using opmath = at::opmath_type<scalar_t>;
  constexpr int kVec = vec_size<scalar_t>();
  constexpr int kUnroll = 4;
  const int64_t stride = int64_t{blockDim.x} * gridDim.x;
  const int64_t first = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  int64_t tail = 0;
  if (vectorized) {
    const int64_t packs = n / kVec;
    tail = packs * kVec;
    for (int64_t base = first; base < packs; base += kUnroll * stride) {
      Pack<scalar_t> a[kUnroll][kArity];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t p = base + u * stride;
#pragma unroll
        for (int k = 0; k < kArity; ++k) {
          if (p < packs) a[u][k] = reinterpret_cast<const Pack<scalar_t>*>(in.ptr[k])[p];
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t p = base + u * stride;
        if (p >= packs) break;
        Pack<scalar_t> r;
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          opmath v[kArity];
#pragma unroll
          for (int k = 0; k < kArity; ++k) v[k] = static_cast<opmath>(a[u][k].v[j]);
          r.v[j] = static_cast<scalar_t>(fn(v));
        }
        reinterpret_cast<Pack<scalar_t>*>(out)[p] = r;
      }
    }
  }
  for (int64_t i = tail + first; i < n; i += stride) {
    opmath v[kArity];
#pragma unroll
    for (int k = 0; k < kArity; ++k) v[k] = static_cast<opmath>(in.ptr[k][i]);
    out[i] = static_cast<scalar_t>(fn(v));
  }
}

template <typename scalar_t, int kArity, typename Fn>
void launch_map(scalar_t* out, Inputs<scalar_t, kArity> in, int64_t n, Fn fn) {
  if (n == 0) return;
  bool vectorized = aligned16(out);
  for (int k = 0; k < kArity; ++k) vectorized = vectorized && aligned16(in.ptr[k]);
  const int64_t work = vectorized ? (n + vec_size<scalar_t>() - 1) / vec_size<scalar_t>() : n;
  map_kernel<<<blocks_for(work), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      out, in, n, vectorized, fn);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The CUDA side of the host code shared with the CPU (csrc/activations.h, csrc/softmax.h, ...).
struct Backend {
  using Guard = c10::cuda::CUDAGuard;
  static at::Tensor output_like(const at::Tensor& like) { return at::empty_like(like); }
  static at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
    return at::empty(sizes, options);
  }
  template <typename Fn, typename scalar_t, typename... In>
  static void map(const Fn& fn, scalar_t* out, int64_t n, const In*... in) {
    launch_map(out, Inputs<scalar_t, sizeof...(In)>{{in...}}, n, fn);
  }
};

// ---- a row per block -------------------------------------------------------------------------

// Threads per row block: enough for the row, a power of two from 32 to max_threads.
inline int row_threads(int64_t n, int max_threads = 1024) {
  int threads = 32;
  while (threads < max_threads && threads < n) threads *= 2;
  return threads;
}

// Blocks for a block-per-row kernel; the kernel strides over the rest.
inline int64_t row_blocks(int64_t rows) {
  return std::max<int64_t>(1, std::min<int64_t>(rows, 1 << 30));
}

// Rows of n elements at these pointers can be read and written in 16-byte packs.
template <typename scalar_t>
bool rows_packable(const scalar_t* in, const scalar_t* out, int64_t n) {
  return aligned16(in) && (out == nullptr || aligned16(out)) && n % vec_size<scalar_t>() == 0;
}

// Calls fn(index, value) for every element of the row this thread owns, packed when allowed;
// four packs loaded before any is used, to keep loads in flight.
template <typename scalar_t, typename Fn>
__device__ __forceinline__ void for_row(const scalar_t* row, int64_t n, bool packed, Fn fn) {
  constexpr int kVec = vec_size<scalar_t>();
  constexpr int kUnroll = 4;
  int64_t tail = 0;
  if (packed) {
    const int64_t packs = n / kVec;
    tail = packs * kVec;
    const Pack<scalar_t>* src = reinterpret_cast<const Pack<scalar_t>*>(row);
    for (int64_t first = threadIdx.x; first < packs; first += int64_t{kUnroll} * blockDim.x) {
      Pack<scalar_t> pack[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t p = first + int64_t{u} * blockDim.x;
        if (p < packs) pack[u] = src[p];
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t p = first + int64_t{u} * blockDim.x;
        if (p < packs) {
#pragma unroll
          for (int j = 0; j < kVec; ++j) fn(p * kVec + j, pack[u].v[j]);
        }
      }
    }
  }
  for (int64_t i = tail + threadIdx.x; i < n; i += blockDim.x) fn(i, row[i]);
}

// exp for the softmax family: the hardware's exp2 for float (2 instructions instead of about 8,
// which decides the speed of bfloat16 rows). Its relative error, below 3e-7 plus |x| * 9e-8, is
// no larger than the rounding of the argument x - max itself; double keeps the exact exp.
template <typename T>
__device__ __forceinline__ T fast_exp(T x) { return ::exp(x); }
template <>
__device__ __forceinline__ float fast_exp(float x) { return __expf(x); }

// max that propagates NaN, as torch's reductions do.
template <typename T>
__device__ __forceinline__ T nan_max(T a, T b) {
  return (a != a || a > b) ? a : b;
}

struct Plus {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct NanMax {
  template <typename T>
  __device__ T operator()(T a, T b) const { return nan_max(a, b); }
};

template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffff, v, offset));
  return v;
}

// op over the block's values, returned to every thread. `shared` holds 32 values.
template <typename T, typename Op>
__device__ T block_reduce(T v, T* shared, T identity, Op op) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_reduce(v, op);
  __syncthreads();  // `shared` may still be read from a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) / 32;
  v = threadIdx.x < warps ? shared[threadIdx.x] : identity;
  if (warp == 0) v = warp_reduce(v, op);
  if (threadIdx.x == 0) shared[0] = v;
  __syncthreads();
  return shared[0];
}

template <typename T>
__device__ T block_sum(T v, T* shared) { return block_reduce(v, shared, T(0), Plus{}); }

template <typename T>
__device__ T block_max(T v, T* shared) { return block_reduce(v, shared, T(-INFINITY), NanMax{}); }

// Running (max, sum of exp(x - max)) of a softmax, merged across threads: the online softmax.
// An aggregate (no constructors), so that it can live in __shared__ memory.
template <typename T>
struct MaxSum {
  T max;
  T sum;

  static __device__ __forceinline__ MaxSum empty() { return {T(-INFINITY), T(0)}; }

  // One exp per element: the sum is rescaled only when x raises the max. A max of +inf makes
  // the sum NaN, as exp(inf - inf) does in the two-pass form.
  __device__ __forceinline__ void add(T x) {
    const bool raises = x > max || x != x;
    const T m = raises ? x : max;
    const T e = x == T(-INFINITY) ? T(0) : fast_exp((raises ? max : x) - m);
    sum = raises ? sum * e + (x == T(INFINITY) ? T(NAN) : T(1)) : sum + e;
    max = m;
  }

  // A part whose max is -inf adds nothing (and must not turn exp(-inf - -inf) into NaN).
  __device__ __forceinline__ void merge(MaxSum o) {
    const T m = nan_max(max, o.max);
    const T a = max == T(-INFINITY) ? T(0) : sum * fast_exp(max - m);
    const T b = o.max == T(-INFINITY) ? T(0) : o.sum * fast_exp(o.max - m);
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
  // A row of -inf only has a NaN sum, as exp(-inf - -inf) gives in the two-pass form.
  return shared[0].max == T(-INFINITY) ? MaxSum<T>{shared[0].max, T(NAN)} : shared[0];
}

}  // namespace pyops::cuda
