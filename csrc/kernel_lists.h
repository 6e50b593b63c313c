// The kernels of each op family, one list for every backend: a backend defines each kernel under
// its operator's name (csrc/ops.cpp) in its own namespace and expands its family's list in its
// TORCH_LIBRARY_IMPL block, so the CPU and CUDA registrations cannot drift apart.
#pragma once

#include "activations.h"

#include <torch/library.h>

#define PYOPS_IMPL(m, op) m.impl(#op, &op)

// Every activation of csrc/activations.h, from the backend's policy `Backend` and its functors
// named after the ops: `silu` computes pyops::silu and silu_ (called with one value) and
// pyops::silu_backward (called with two).
#define PYOPS_IMPL_ACTIVATION(name, saved)                                              \
  m.impl(#name, &::pyops::activation<Backend, name, ::pyops::names::name>);            \
  m.impl(#name "_", &::pyops::activation_<Backend, name, ::pyops::names::name>);       \
  m.impl(#name "_backward",                                                             \
         &::pyops::activation_backward<Backend, name, ::pyops::names::name##_backward>);
#define PYOPS_ACTIVATION_KERNELS(m) PYOPS_ACTIVATIONS(PYOPS_IMPL_ACTIVATION)

// softmax_forward<log> and softmax_backward_impl<log> serve softmax and log_softmax.
#define PYOPS_SOFTMAX_KERNELS(m)                               \
  m.impl("softmax", &softmax_forward<false>);                  \
  m.impl("log_softmax", &softmax_forward<true>);               \
  m.impl("softmax_backward", &softmax_backward_impl<false>);   \
  m.impl("log_softmax_backward", &softmax_backward_impl<true>)

#define PYOPS_CROSS_ENTROPY_KERNELS(m)            \
  PYOPS_IMPL(m, cross_entropy);                   \
  PYOPS_IMPL(m, cross_entropy_backward);          \
  PYOPS_IMPL(m, cross_entropy_grad_in_forward);   \
  PYOPS_IMPL(m, scale_unless_one_);               \
  PYOPS_IMPL(m, nll_loss);                        \
  PYOPS_IMPL(m, nll_loss_backward)

#define PYOPS_LOSS_KERNELS(m)                                \
  PYOPS_IMPL(m, mse_loss);                                   \
  PYOPS_IMPL(m, mse_loss_backward);                          \
  PYOPS_IMPL(m, binary_cross_entropy_with_logits);           \
  PYOPS_IMPL(m, binary_cross_entropy_with_logits_backward);  \
  PYOPS_IMPL(m, binary_cross_entropy);                       \
  PYOPS_IMPL(m, binary_cross_entropy_backward);              \
  PYOPS_IMPL(m, hinge_loss);                                 \
  PYOPS_IMPL(m, hinge_loss_backward);                        \
  PYOPS_IMPL(m, multi_margin_loss);                          \
  PYOPS_IMPL(m, multi_margin_loss_backward)
