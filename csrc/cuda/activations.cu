// The activations' math on CUDA, one functor per op of csrc/activations.h (called with one
// value the forward, with two (grad, saved) the backward), run by one elementwise kernel:
// 16-byte packs where every pointer is aligned, a scalar tail otherwise.
#include "common.cuh"
#include "../activations.h"
#include "../kernel_lists.h"

namespace pyops::cuda {
namespace {

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

// map() for the shared host code (csrc/activations.h).
struct Backend {
  using Guard = c10::cuda::CUDAGuard;
  static at::Tensor output_like(const at::Tensor& like) { return at::empty_like(like); }
  template <typename Fn, typename scalar_t, typename... In>
  static void map(const Fn& fn, scalar_t* out, int64_t n, const In*... in) {
    launch_map(out, Inputs<scalar_t, sizeof...(In)>{{in...}}, n, fn);
  }
};

template <typename T>
__device__ T sigmoid_of(T x) { return T(1) / (T(1) + ::exp(-x)); }

struct sigmoid {
  static constexpr bool kIntegers = false;
  template <typename T>
  __device__ T operator()(const T (&v)[1]) const { return sigmoid_of(v[0]); }
  template <typename T>  // (grad, out)
  __device__ T operator()(const T (&v)[2]) const { return v[0] * (T(1) - v[1]) * v[1]; }
};

struct tanh {
  static constexpr bool kIntegers = false;
  template <typename T>
  __device__ T operator()(const T (&v)[1]) const { return ::tanh(v[0]); }
  template <typename T>
  __device__ T operator()(const T (&v)[2]) const { return v[0] * (T(1) - v[1] * v[1]); }
};

struct relu {
  static constexpr bool kIntegers = true;
  template <typename T>  // NaN stays NaN, as torch.relu
  __device__ T operator()(const T (&v)[1]) const {
    return (v[0] > T(0) || v[0] != v[0]) ? v[0] : T(0);
  }
  template <typename T>  // zero where out <= 0, as threshold_backward
  __device__ T operator()(const T (&v)[2]) const { return v[1] <= T(0) ? T(0) : v[0]; }
};

struct silu {
  static constexpr bool kIntegers = false;
  template <typename T>
  __device__ T operator()(const T (&v)[1]) const { return v[0] / (T(1) + ::exp(-v[0])); }
  template <typename T>  // (grad, self)
  __device__ T operator()(const T (&v)[2]) const {
    const T s = sigmoid_of(v[1]);
    return v[0] * s * (T(1) + v[1] * (T(1) - s));
  }
};

struct gelu {
  static constexpr bool kIntegers = false;
  template <typename T>
  __device__ T operator()(const T (&v)[1]) const {
    return v[0] * T(0.5) * ::erfc(v[0] * T(-M_SQRT1_2));  // no cancellation for x << 0
  }
  template <typename T>
  __device__ T operator()(const T (&v)[2]) const {
    const T x = v[1];
    const T cdf = T(0.5) * ::erfc(x * T(-M_SQRT1_2));
    const T pdf = T(M_2_SQRTPI * M_SQRT1_2 * 0.5) * ::exp(T(-0.5) * x * x);
    return v[0] * (cdf + x * pdf);
  }
};

constexpr double kGeluBeta = M_SQRT2 * M_2_SQRTPI * 0.5;  // sqrt(2 / pi)
constexpr double kGeluKappa = 0.044715;

struct gelu_tanh {
  static constexpr bool kIntegers = false;
  template <typename T>
  __device__ T operator()(const T (&v)[1]) const {
    const T x = v[0];
    return T(0.5) * x * (T(1) + ::tanh(T(kGeluBeta) * (x + T(kGeluKappa) * x * x * x)));
  }
  template <typename T>
  __device__ T operator()(const T (&v)[2]) const {
    const T x = v[1];
    const T t = ::tanh(T(kGeluBeta) * (x + T(kGeluKappa) * x * x * x));
    const T inner_derivative = T(kGeluBeta) * (T(1) + T(3 * kGeluKappa) * x * x);
    return v[0] * (T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * inner_derivative);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CUDA, m) { PYOPS_ACTIVATION_KERNELS(m); }

}  // namespace pyops::cuda
