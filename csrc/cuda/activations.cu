// The activations' math on CUDA, one functor per op of csrc/activations.h (called with one
// value the forward, with two (grad, saved) the backward), run by map_kernel (common.cuh).
#include "common.cuh"
#include "../activations.h"
#include "../kernel_lists.h"

namespace pyops::cuda {
namespace {

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

// x s with s = sigmoid(2u), as on the CPU (csrc/cpu/activations.cpp says why).
struct gelu_tanh {
  static constexpr bool kIntegers = false;
  template <typename T>
  __device__ static T inner(T x) { return T(kGeluBeta) * (x + T(kGeluKappa) * x * x * x); }
  template <typename T>
  __device__ T operator()(const T (&v)[1]) const {
    return v[0] / (T(1) + ::exp(T(-2) * inner(v[0])));
  }
  template <typename T>
  __device__ T operator()(const T (&v)[2]) const {
    const T x = v[1];
    const T e = ::exp(T(-2) * inner(x));
    const T s = T(1) / (T(1) + e);
    const T rest = s > T(0.5) ? e * s : T(1) - s;
    const T inner_derivative = T(kGeluBeta) * (T(1) + T(3 * kGeluKappa) * x * x);
    return v[0] * (s + T(2) * x * s * rest * inner_derivative);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CUDA, m) { PYOPS_ACTIVATION_KERNELS(m); }

}  // namespace pyops::cuda
