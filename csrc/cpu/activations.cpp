// sigmoid, tanh, relu and their backward ops on CPU.
#include "common.h"
#include "../kernel_lists.h"

namespace pyops::cpu {
namespace {

template <typename VecFn>
at::Tensor unary_floating(const at::Tensor& self, const char* op, const VecFn& vec_fn) {
  check_floating(op, self);
  const auto x = dense(self);
  auto out = output_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "pyops", [&] {
    parallel_map(vec_fn, out.mutable_data_ptr<scalar_t>(), x.numel(), x.const_data_ptr<scalar_t>());
  });
  return out;
}

// Backward from the saved output: one pass over (grad, out).
template <typename VecFn>
at::Tensor backward_from_output(const at::Tensor& grad, const at::Tensor& out, const char* op,
                                const VecFn& vec_fn) {
  check_same_meta(op, grad, out);
  check_floating(op, out);
  const auto y = dense(out);
  const auto g = in_layout_of(grad, y);
  auto result = output_like(y);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "pyops", [&] {
    parallel_map(vec_fn, result.mutable_data_ptr<scalar_t>(), y.numel(),
                 g.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>());
  });
  return result;
}

// The same expressions as ATen's CPU kernels, so results match torch bit for bit.
at::Tensor sigmoid(const at::Tensor& self) {
  return unary_floating(self, "pyops::sigmoid", [](auto x) {
    using V = decltype(x);
    return (V(1) + x.neg().exp()).reciprocal();
  });
}

at::Tensor sigmoid_backward(const at::Tensor& grad, const at::Tensor& out) {
  return backward_from_output(grad, out, "pyops::sigmoid_backward", [](auto g, auto y) {
    using V = decltype(y);
    return g * (V(1) - y) * y;
  });
}

at::Tensor tanh(const at::Tensor& self) {
  return unary_floating(self, "pyops::tanh", [](auto x) { return x.tanh(); });
}

at::Tensor tanh_backward(const at::Tensor& grad, const at::Tensor& out) {
  return backward_from_output(grad, out, "pyops::tanh_backward", [](auto g, auto y) {
    using V = decltype(y);
    return g * (V(1) - y * y);
  });
}

// maximum() propagates NaN, as torch.relu does.
const auto relu_vec = [](auto x) {
  using V = decltype(x);
  return at::vec::maximum(x, V(0));
};

void relu_into(const at::Tensor& x, at::Tensor& out) {
  TORCH_CHECK(x.scalar_type() != at::kBool, "Boolean inputs not supported for relu");
  AT_DISPATCH_ALL_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "pyops::relu", [&] {
    parallel_map(relu_vec, out.mutable_data_ptr<scalar_t>(), x.numel(), x.const_data_ptr<scalar_t>());
  });
}

at::Tensor relu(const at::Tensor& self) {
  const auto x = dense(self);
  auto out = output_like(x);
  relu_into(x, out);
  return out;
}

void relu_(at::Tensor& self) {
  if (self.is_non_overlapping_and_dense()) {
    relu_into(self, self);
  } else {
    self.copy_(pyops::cpu::relu(self));
  }
}

at::Tensor relu_backward(const at::Tensor& grad, const at::Tensor& out) {
  return backward_from_output(grad, out, "pyops::relu_backward", [](auto g, auto y) {
    using V = decltype(y);
    // As torch's threshold_backward: zero where y <= 0, so a NaN output passes grad through.
    return V::blendv(g, V(0), y <= V(0));
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(pyops, CPU, m) { PYOPS_ACTIVATION_KERNELS(m); }

}  // namespace pyops::cpu
