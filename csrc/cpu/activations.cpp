// The activations' math on CPU, one functor per op of csrc/activations.h: called with one
// vector it is the forward, with two (grad, saved) the backward. The expressions are ATen's
// CPU kernels', except where said, with exp_of and tanh_of for exp and tanh (as accurate as
// ATen's Sleef calls).
#include "common.h"
#include "../activations.h"
#include "../kernel_lists.h"

#include <cmath>

namespace pyops::cpu {
namespace {

template <typename V>
V sigmoid_of(V x) { return (V(1) + exp_of(x.neg())).reciprocal(); }

struct sigmoid {
  static constexpr bool kIntegers = false;
  template <typename V> V operator()(V x) const { return sigmoid_of(x); }
  template <typename V> V operator()(V g, V y) const { return g * (V(1) - y) * y; }
};

struct tanh {
  static constexpr bool kIntegers = false;
  template <typename V> V operator()(V x) const { return tanh_of(x); }
  template <typename V> V operator()(V g, V y) const { return g * (V(1) - y * y); }
};

struct relu {
  static constexpr bool kIntegers = true;
  // maximum() propagates NaN, as torch.relu does.
  template <typename V> V operator()(V x) const { return at::vec::maximum(x, V(0)); }
  // As torch's threshold_backward: zero where y <= 0, so a NaN output passes grad through.
  template <typename V> V operator()(V g, V y) const { return V::blendv(g, V(0), y <= V(0)); }
};

struct silu {
  static constexpr bool kIntegers = false;
  template <typename V> V operator()(V x) const { return x / (V(1) + exp_of(x.neg())); }
  template <typename V> V operator()(V g, V x) const {
    const auto s = sigmoid_of(x);
    return g * s * (V(1) + x * (V(1) - s));
  }
};

// x * Phi(x) with Phi(x) = erfc(-x / sqrt 2) / 2: torch's 1 + erf(x / sqrt 2) cancels for
// x << 0, losing up to a few hundred ulps of the result there.
struct gelu {
  static constexpr bool kIntegers = false;
  template <typename V> V operator()(V x) const {
    return x * V(0.5) * (x * V(-M_SQRT1_2)).erfc();
  }
  template <typename V> V operator()(V g, V x) const {
    const auto cdf = V(0.5) * (x * V(-M_SQRT1_2)).erfc();
    const auto pdf = V(M_2_SQRTPI * M_SQRT1_2 * 0.5) * exp_of(x * x * V(-0.5));
    return g * (cdf + x * pdf);
  }
};

constexpr double kGeluBeta = M_SQRT2 * M_2_SQRTPI * 0.5;  // sqrt(2 / pi)
constexpr double kGeluKappa = 0.044715;

// 0.5 x (1 + tanh(u)) = x s with s = sigmoid(2u) = 1 / (1 + exp(-2u)), and the derivative's
// 1 - tanh(u)^2 = 4 s (1 - s): torch's 1 + tanh(u) cancels for x << 0 (and 1 - s is taken as
// exp(-2u) s where s > 1/2, so it does not cancel either).
struct gelu_tanh {
  static constexpr bool kIntegers = false;
  template <typename V> static V inner(V x) {
    return V(kGeluBeta) * (x + V(kGeluKappa) * (x * x * x));
  }
  template <typename V> V operator()(V x) const {
    return x * (V(1) + exp_of(V(-2) * inner(x))).reciprocal();
  }
  template <typename V> V operator()(V g, V x) const {
    const V e = exp_of(V(-2) * inner(x));
    const V s = (V(1) + e).reciprocal();
    const V rest = V::blendv(V(1) - s, e * s, s > V(0.5));  // 1 - s
    const V inner_derivative = V(kGeluBeta) * (V(1) + V(3) * V(kGeluKappa) * (x * x));
    return g * (s + V(2) * x * s * rest * inner_derivative);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CPU, m) { PYOPS_ACTIVATION_KERNELS(m); }

}  // namespace pyops::cpu
