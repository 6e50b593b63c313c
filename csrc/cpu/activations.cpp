// The activations' math on CPU, one functor per op of csrc/activations.h: called with one
// vector it is the forward, with two (grad, saved) the backward. The expressions are ATen's
// CPU kernels' (results bit for bit torch's), except where said.
#include "common.h"
#include "../activations.h"
#include "../kernel_lists.h"

#include <cmath>

namespace pyops::cpu {
namespace {

template <typename V>
V sigmoid_of(V x) { return (V(1) + x.neg().exp()).reciprocal(); }

struct sigmoid {
  static constexpr bool kIntegers = false;
  template <typename V> V operator()(V x) const { return sigmoid_of(x); }
  template <typename V> V operator()(V g, V y) const { return g * (V(1) - y) * y; }
};

struct tanh {
  static constexpr bool kIntegers = false;
  template <typename V> V operator()(V x) const { return x.tanh(); }
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
  template <typename V> V operator()(V x) const { return x / (V(1) + x.neg().exp()); }
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
    const auto pdf = V(M_2_SQRTPI * M_SQRT1_2 * 0.5) * (x * x * V(-0.5)).exp();
    return g * (cdf + x * pdf);
  }
};

constexpr double kGeluBeta = M_SQRT2 * M_2_SQRTPI * 0.5;  // sqrt(2 / pi)
constexpr double kGeluKappa = 0.044715;

struct gelu_tanh {
  static constexpr bool kIntegers = false;
  template <typename V> V operator()(V x) const {
    const auto inner = V(kGeluBeta) * (x + V(kGeluKappa) * (x * x * x));
    return V(0.5) * x * (V(1) + inner.tanh());
  }
  template <typename V> V operator()(V g, V x) const {
    const auto t = (V(kGeluBeta) * (x + V(kGeluKappa) * (x * x * x))).tanh();
    const auto left_derivative = V(0.5) * (V(1) + t);
    const auto inner_derivative = V(kGeluBeta) * (V(1) + V(3) * V(kGeluKappa) * (x * x));
    const auto right_derivative = V(0.5) * x * (V(1) - t * t) * inner_derivative;
    return g * (left_derivative + right_derivative);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CPU, m) { PYOPS_ACTIVATION_KERNELS(m); }

}  // namespace pyops::cpu
