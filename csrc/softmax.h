// softmax and log_softmax over one dim, host side once for both backends: checks, layout,
// output, dtype dispatch. Kernels (a backend's, csrc/cpu/softmax.cpp and csrc/cuda/softmax.cu)
// computes over dense memory walked as {outer, dim, inner}: forward(in, out, shape, log) and
// backward(grad, out, result, shape, log), out being the forward's output.
#pragma once

#include "tensor_utils.h"

#include <ATen/Dispatch.h>
#include <ATen/WrapDimUtils.h>

namespace pyops {

template <typename Backend, typename Kernels, bool log>
at::Tensor softmax_forward(const at::Tensor& self, int64_t dim) {
  constexpr const char* op = log ? "pyops::log_softmax" : "pyops::softmax";
  check_floating(op, self);
  dim = at::maybe_wrap_dim(dim, self.dim());
  const typename Backend::Guard guard(self.device());
  const auto x = dense(self);
  at::Tensor out = Backend::output_like(x);
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), op, [&] {
    Kernels::forward(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                     shape3(x, dim), log);
  });
  return out;
}

template <typename Backend, typename Kernels, bool log>
at::Tensor softmax_backward(const at::Tensor& grad, const at::Tensor& out, int64_t dim) {
  constexpr const char* op = log ? "pyops::log_softmax_backward" : "pyops::softmax_backward";
  check_same_meta(op, grad, out);
  check_floating(op, out);
  dim = at::maybe_wrap_dim(dim, out.dim());
  const typename Backend::Guard guard(out.device());
  const auto y = dense(out);
  const auto g = in_layout_of(grad, y);
  at::Tensor result = Backend::output_like(y);
  if (y.numel() == 0) return result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), op, [&] {
    Kernels::backward(g.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
                      result.mutable_data_ptr<scalar_t>(), shape3(y, dim), log);
  });
  return result;
}

}  // namespace pyops
