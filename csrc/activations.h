// The elementwise activations, a line each: X(name, saved), where `saved` is what the backward
// op takes besides the upstream gradient: the forward's output (out) or its input (self). The
// schemas (csrc/ops.cpp), every backend's registrations (csrc/kernel_lists.h) and the autograd
// (csrc/autograd.cpp) expand this list; a backend supplies one functor per name (its math).
#pragma once

#include "tensor_utils.h"

#include <ATen/Dispatch.h>

#define PYOPS_ACTIVATIONS(X) \
  X(sigmoid, out)            \
  X(tanh, out)               \
  X(relu, out)               \
  X(silu, self)              \
  X(gelu, self)              \
  X(gelu_tanh, self)

namespace pyops {

// "pyops::<name>" and "pyops::<name>_backward", constants so that a dtype error names the op.
namespace names {
#define PYOPS_ACTIVATION_NAMES(name, saved)                        \
  inline constexpr char name[] = "pyops::" #name;                  \
  inline constexpr char name##_backward[] = "pyops::" #name "_backward";
PYOPS_ACTIVATIONS(PYOPS_ACTIVATION_NAMES)
#undef PYOPS_ACTIVATION_NAMES
}  // namespace names

// The host side of every activation, once for all backends. Backend gives Guard (its device
// guard), output_like(x) and map(fn, out, n, in...), which writes fn(in[i]...) to out[i] over
// dense memory. Fn::kIntegers lets integer inputs through (relu, as torch.relu).
template <typename Backend, typename Fn, const char* kName>
void activation_into(const at::Tensor& x, at::Tensor& out) {
  if constexpr (Fn::kIntegers) {
    TORCH_CHECK(x.scalar_type() != at::kBool, "Boolean inputs not supported for ", kName);
    AT_DISPATCH_ALL_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), kName, [&] {
      Backend::map(Fn{}, out.mutable_data_ptr<scalar_t>(), x.numel(), x.const_data_ptr<scalar_t>());
    });
  } else {
    check_floating(kName, x);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), kName, [&] {
      Backend::map(Fn{}, out.mutable_data_ptr<scalar_t>(), x.numel(), x.const_data_ptr<scalar_t>());
    });
  }
}

template <typename Backend, typename Fn, const char* kName>
at::Tensor activation(const at::Tensor& self) {
  const typename Backend::Guard guard(self.device());
  const auto x = dense(self);
  at::Tensor out = Backend::output_like(x);
  activation_into<Backend, Fn, kName>(x, out);
  return out;
}

// In place: dense memory is walked as it lies; anything else computes a copy and writes it back.
template <typename Backend, typename Fn, const char* kName>
void activation_(at::Tensor& self) {
  const typename Backend::Guard guard(self.device());
  if (self.is_non_overlapping_and_dense()) {
    activation_into<Backend, Fn, kName>(self, self);
  } else {
    self.copy_(activation<Backend, Fn, kName>(self));
  }
}

// grad * f'(saved), one pass over (grad, saved); saved is the output or the input as the list says.
template <typename Backend, typename Fn, const char* kName>
at::Tensor activation_backward(const at::Tensor& grad, const at::Tensor& saved) {
  check_same_meta(kName, grad, saved);
  check_floating(kName, saved);
  const typename Backend::Guard guard(saved.device());
  const auto s = dense(saved);
  const auto g = in_layout_of(grad, s);
  at::Tensor result = Backend::output_like(s);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, s.scalar_type(), kName, [&] {
    Backend::map(Fn{}, result.mutable_data_ptr<scalar_t>(), s.numel(),
                 g.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>());
  });
  return result;
}

}  // namespace pyops
